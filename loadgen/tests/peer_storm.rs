//! Smoke test of `herald-loadgen storm` against a peer: a small reconnect storm against the Node
//! `ws` server (`ops/bench/node-ws-server.js`) must bring every client back, resubscribed, and
//! write its JSON report. Skipped, with the reason printed, when node or the server's `ws`
//! dependency is not installed (`ops/test.sh` installs it with `npm ci` when node and npm are
//! there).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

const CLIENTS: u64 = 200;

#[test]
fn a_node_ws_storm_brings_every_client_back() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("ops/bench/node-ws-server.js");
    if Command::new("node").arg("--version").output().is_err() {
        println!("skipped: no `node` on PATH");
        return;
    }
    if !root.join("ops/bench/node_modules/ws/package.json").exists() {
        println!("skipped: the Node server's `ws` is not installed (npm ci --prefix ops/bench)");
        return;
    }
    let json = std::env::temp_dir().join(format!("herald-peer-storm-{}.json", std::process::id()));
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_herald-loadgen"))
        .args(["storm", "--target", "node-ws", "--drop", "cut"])
        .args(["--conns", &CLIENTS.to_string(), "--per-process", "100"])
        .args(["--namespaces", "50", "--publishes", "200", "--rate", "500"])
        .args(["--timeout-s", "60"])
        .arg("--node-ws-script")
        .arg(&script)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("herald-loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "storm failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let _ = std::fs::remove_file(&json);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["target"], "node-ws", "{text}");
    assert_eq!(report["server"], "node", "{text}");
    assert_eq!(report["clients"], CLIENTS, "{text}");
    assert_eq!(report["resubscribed"]["clients"], CLIENTS, "{text}");
    assert!(report["all_resubscribed_seconds"].is_f64(), "{text}");
    assert_eq!(
        report["sessions_dropped"], CLIENTS,
        "every client was cut: {text}"
    );
    assert_eq!(report["publishes"], 200, "{text}");
    assert!(
        report["missing"].as_u64().is_some_and(|m| m <= CLIENTS),
        "{text}"
    );
    assert!(
        stdout.contains("node ("),
        "the report names the system: {stdout}"
    );
    println!(
        "storm of {CLIENTS} node-ws clients ran in {:?}",
        started.elapsed()
    );
}
