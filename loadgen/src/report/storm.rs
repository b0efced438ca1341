//! The "Reconnect storm" section of the generated block, from `storm --json` reports of Herald
//! and its peers.

use super::{name_of, thousands};
use serde_json::Value;
use std::fmt::Write as _;

/// The "Reconnect storm" section: one row per `storm --json` report, Herald first.
pub(super) fn section(w: &mut String, storms: &[Value]) -> std::fmt::Result {
    let mut storms: Vec<&Value> = storms.iter().collect();
    storms.sort_by_key(|s| match s["target"].as_str() {
        Some("herald") => 0,
        Some("nats-ws") => 1,
        Some("node-ws") => 2,
        _ => 3,
    });
    let is_peer = |s: &Value| s["target"].as_str() != Some("herald");
    let resubscribed = |s: &Value| s["all_resubscribed_seconds"].as_f64();
    let best = storms
        .iter()
        .filter(|s| is_peer(s))
        .filter_map(|s| resubscribed(s))
        .filter(|v| *v > 0.0)
        .reduce(f64::min);
    let first = storms[0];
    let n = |s: &Value, k: &str| s[k].as_f64().unwrap_or(0.0);
    writeln!(w, "\n### Reconnect storm\n")?;
    writeln!(
        w,
        "`herald-loadgen storm --target …`, one system after another: {} clients (client i \
         subscribed to namespace i mod {}), every connection dropped at once, and {} changes \
         published at {}/s from the drop (restart: from when the server was back). *restart*: \
         the server SIGKILLed and started again on the same ports; *cut*: every client drops its \
         socket, the server stays up. Herald's clients are `herald_client::Client`s (backoff with \
         full jitter, resubscription with cursors); the peers' clients reconnect with the same \
         backoff and subscribe again.\n",
        thousands(n(first, "clients")),
        first["namespaces"],
        thousands(n(first, "publishes")),
        first["rate"]
    )?;
    writeln!(
        w,
        "*Missing* counts clients below their namespace's last published change when the storm \
         ended. Herald's clients resubscribe with their cursors and get what they missed, so it \
         must be 0. The peers have no replay: a change published while a client was away is lost \
         to it, and a client that was away when its namespace's last change came never catches \
         up; for them the storm ends {} s after publishing finished and every client \
         resubscribed.\n",
        crate::storm::PEER_SETTLE.as_secs()
    )?;
    writeln!(
        w,
        "| system | clients | drop | all resubscribed after | ÷ best peer | all caught up after | \
         changes published during the storm | missing | reconnects/s | server RSS before → after |"
    )?;
    writeln!(w, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for s in storms {
        let name = name_of(s["target"].as_str().unwrap_or("?"));
        let name = if is_peer(s) {
            name
        } else {
            format!("**{name}**")
        };
        let secs = |v: f64| format!("{v:.2} s");
        let ratio = match (resubscribed(s), best) {
            (Some(v), Some(b)) => format!("{:.2}", v / b),
            _ => "n/a".into(),
        };
        let caught_up = match s["all_caught_up_seconds"].as_f64() {
            Some(v) => secs(v),
            None => format!(
                "never: {} clients missed the last change",
                thousands(n(s, "missing"))
            ),
        };
        let mib = |m: &Value| {
            m["rss_bytes"]
                .as_f64()
                .map_or("n/a".into(), |b| format!("{:.1}", b / 1048576.0))
        };
        writeln!(
            w,
            "| {name} | {} | {} | {} | {ratio} | {caught_up} | {} | {} | {} | {} → {} MiB |",
            thousands(n(s, "clients")),
            s["drop"].as_str().unwrap_or("?"),
            resubscribed(s).map_or("not within the timeout".into(), secs),
            thousands(n(s, "publishes")),
            thousands(n(s, "missing")),
            thousands(n(s, "reconnects_per_second")),
            mib(&s["server_before"]),
            mib(&s["server_after"]),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::render;
    use super::super::tests::{args, machine, path};
    use serde_json::{Value, json};

    fn storm(target: &str, resubscribed: f64, caught_up: Option<f64>, missing: u64) -> Value {
        json!({
            "target": target, "drop": "restart", "clients": 15000, "namespaces": 1000,
            "publishes": 5000, "rate": 1000, "all_resubscribed_seconds": resubscribed,
            "all_caught_up_seconds": caught_up, "missing": missing,
            "reconnects_per_second": 4321.4,
            "server_before": {"rss_bytes": 10_485_760}, "server_after": {"rss_bytes": 11_534_336}
        })
    }

    #[test]
    fn the_storm_section_compares_resubscription_and_counts_missing_clients() {
        let run = json!({"conns": 15000, "namespaces": 1000, "paths": [path("standalone", 1000.0, 200, 1.0)]});
        let storms = [
            storm("node-ws", 4.0, None, 37),
            storm("herald", 6.0, Some(6.1), 0),
            storm("nats-ws", 3.0, Some(5.2), 0),
        ];
        let md = render(&run, &storms, &args(), &machine()).unwrap();
        let section = &md[md.find("### Reconnect storm").expect("a storm section")..];
        let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| ")).collect();
        // Header, then Herald first, whatever order the reports came in; the ratio is to the
        // quickest peer (nats-ws, 3 s).
        assert_eq!(
            rows[1],
            "| **Herald standalone** | 15,000 | restart | 6.00 s | 2.00 | 6.10 s | 5,000 | 0 | \
             4,321 | 10.0 → 11.0 MiB |"
        );
        assert!(
            rows[2].starts_with(
                "| nats-server WebSocket | 15,000 | restart | 3.00 s | 1.00 | 5.20 s |"
            )
        );
        assert!(
            rows[3].contains(
                "| 4.00 s | 1.33 | never: 37 clients missed the last change | 5,000 | 37 |"
            ),
            "{section}"
        );
        assert!(section.contains("no replay"), "{section}");
        assert!(
            section.contains("5,000 changes published at 1000/s"),
            "{section}"
        );
        // Without storm reports, no section.
        let md = render(&run, &[], &args(), &machine()).unwrap();
        assert!(!md.contains("Reconnect storm"));
    }
}
