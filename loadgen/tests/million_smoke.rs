//! Smoke test of `herald-loadgen million`, so the tool does not rot: 3000 connections held by
//! `lean-hold` children over the distributed path (nats-server + relay + 2 `SO_REUSEPORT`
//! gateways), a broadcast to every connection, a reconnect storm (every gateway SIGKILLed
//! and restarted, a change published while they are down), and a rolling restart with drain (each
//! gateway in turn SIGTERMed, its clients sent GOAWAY, replaced; a change published during the
//! first drain). Every connection must subscribe, get the broadcast and the changes published
//! during the storm and the rolling restart: 0 missed.
//!
//! Like the end-to-end tests it needs nats-server 2.10+ (`$HERALD_NATS_SERVER`, which
//! `ops/test.sh` exports, else the pyenv one or `PATH`) and the `herald-gateway` and
//! `herald-relay` binaries beside this package's (`cargo build --workspace --bins`, which
//! `ops/test.sh` runs first).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

const CONNS: u64 = 3000;

/// `target/<profile>/<name>`, beside `herald-loadgen`.
fn sibling(name: &str) -> PathBuf {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_herald-loadgen"));
    let bin = loadgen.with_file_name(name);
    assert!(
        bin.is_file(),
        "no {} beside {}: run `cargo build --workspace --bins` (ops/test.sh does) first",
        name,
        loadgen.display()
    );
    bin
}

#[test]
fn a_small_million_run_connects_broadcasts_and_storms_with_nothing_missed() {
    let json =
        std::env::temp_dir().join(format!("herald-million-smoke-{}.json", std::process::id()));
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald-loadgen"));
    cmd.arg("million")
        .args(["--conns", &CONNS.to_string(), "--steps", "1500,3000"])
        .args([
            "--gateways",
            "2",
            "--per-holder",
            "1500",
            "--namespaces",
            "100",
        ])
        .args([
            "--storm",
            "--rolling",
            "--drain-s",
            "1",
            "--step-timeout-s",
            "60",
            "--deliver-timeout-s",
            "60",
        ])
        .args(["--max-seconds", "120"])
        .arg("--gateway-bin")
        .arg(sibling("herald-gateway"))
        .arg("--relay-bin")
        .arg(sibling("herald-relay"))
        .arg("--json")
        .arg(&json);
    if let Some(nats) = std::env::var_os("HERALD_NATS_SERVER") {
        cmd.arg("--nats-server").arg(nats);
    }
    let out = cmd.output().expect("herald-loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "million failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let _ = std::fs::remove_file(&json);
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["stopped"], serde_json::Value::Null, "{text}");
    assert_eq!(r["gateways"], 2, "{text}");
    assert_eq!(r["holders"], 2, "{text}");
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{text}");
    let last = &steps[1];
    assert_eq!(last["subscribed"], CONNS, "all subscribed: {text}");
    assert_eq!(
        last["gateway_connections"].as_f64(),
        Some(CONNS as f64),
        "the gateways count them all: {text}"
    );
    assert!(last["nats_subscriptions"].as_u64().is_some(), "{text}");
    let b = &r["broadcast"];
    assert_eq!(b["expected"], CONNS, "{text}");
    assert_eq!(b["delivered"], CONNS, "{text}");
    assert_eq!(b["missed"], 0, "{text}");
    assert!(b["last_delivery_seconds"].as_f64().is_some(), "{text}");
    let s = &r["storm"];
    assert_eq!(s["connections"], CONNS, "{text}");
    assert_eq!(s["missed"], 0, "nothing missed across the storm: {text}");
    assert!(s["all_back_seconds"].as_f64().is_some(), "all back: {text}");
    assert!(s["all_caught_up_seconds"].as_f64().is_some(), "{text}");
    assert!(s["sessions_after_kill"].as_u64() >= Some(CONNS), "{text}");
    let rolling = &r["rolling"];
    assert_eq!(rolling["connections"], CONNS, "{text}");
    assert_eq!(
        rolling["missed"], 0,
        "nothing missed across the rolling restart: {text}"
    );
    assert!(rolling["all_back_seconds"].as_f64().is_some(), "{text}");
    assert!(
        rolling["goaways"].as_u64() >= Some(1),
        "the drains sent GOAWAY: {text}"
    );
    println!("million smoke ran in {:?}:\n{stdout}", started.elapsed());
}
