//! The herd: a gateway must not make one. Two tests, each checked by the no-missed-change
//! [`Checker`] and printing its figures (`-- --nocapture`):
//!
//! - a **drain** (SIGTERM) moves every client to a second gateway, spread over the drain period
//!   rather than all at once, and nothing is missed;
//! - a **reconnect storm** (the gateway is killed and restarted under a thousand clients) is paced
//!   by admission control: memory stays bounded, every client gets back and catches up, nothing
//!   is missed.

use herald_e2e::fleet::{
    Feed, Fleet, FleetKey, WAIT, gateway_options, phase, relay_options, run, seed, ws_url,
};
use herald_e2e::nats::{NatsServer, RelayProcess};
use herald_e2e::{Checker, GatewayOptions, GatewayProcess};
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Drain period of the drained gateway.
const DRAIN: Duration = Duration::from_secs(3);

/// Gateway A is drained with SIGTERM; its clients (B as fallback) move to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_clients_to_another_gateway_without_a_spike() {
    let name = "drain_moves_clients_to_another_gateway_without_a_spike";
    run(name, async {
        let mut rng = seed(name);
        let nats = NatsServer::start();
        let _relay = RelayProcess::start(&nats.url(), relay_options()).await;
        let key = FleetKey::new();
        let options = gateway_options(&nats.url()).arg("--auth-key", key.flag());
        let mut a = GatewayProcess::start(options.clone().arg("--drain-s", DRAIN.as_secs()));
        let b = GatewayProcess::start(options);
        phase(name, async {
            let checker = Checker::new();
            let urls = [ws_url(&a), ws_url(&b)];
            let fleet = Fleet::start_n(40, &checker, &urls, &key.token(), &mut rng).await?;
            let feed = Feed::start(&nats.url(), &checker, &mut rng).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;

            let drained_at = Instant::now();
            a.sigterm();
            fleet.sessions_at_least(2, WAIT).await?;
            let exited = a.wait_exit(DRAIN + Duration::from_secs(10)).await;
            if exited.is_none() {
                return Err("the drained gateway did not exit".into());
            }
            // When each client came back (on B): spread over the drain, not a spike.
            let mut back: Vec<Duration> = fleet
                .members
                .iter()
                .filter_map(|m| {
                    let at = m.connected_at.lock().unwrap_or_else(|e| e.into_inner());
                    at.iter()
                        .find(|t| **t > drained_at)
                        .map(|t| *t - drained_at)
                })
                .collect();
            back.sort_unstable();
            let spread = back[back.len() - 1] - back[0];
            let busiest = back
                .iter()
                .map(|t| {
                    back.iter()
                        .filter(|u| **u >= *t && **u < *t + Duration::from_millis(500))
                        .count()
                })
                .max()
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let extra = format!(
                "; {} clients moved; first back after {:.1?}, last after {:.1?}; busiest 500 ms \
                 saw {busiest} reconnects",
                back.len(),
                back[0],
                back[back.len() - 1]
            );
            herald_e2e::fleet::finish(name, &checker, feed, &fleet, &extra).await?;
            if back.len() != fleet.members.len() {
                return Err(format!(
                    "only {} of {} clients came back",
                    back.len(),
                    fleet.members.len()
                ));
            }
            if spread < Duration::from_secs(1) || busiest > fleet.members.len() / 2 {
                return Err(format!(
                    "reconnects were not spread out: {spread:?} from first to last, {busiest} in \
                     the busiest 500 ms"
                ));
            }
            Ok(())
        })
        .await;
    })
    .await;
}

/// Clients in the storm.
const STORM: usize = 1000;
/// Handshakes a second the stormed gateway admits.
const STORM_RATE: u64 = 400;

/// A standalone gateway under [`STORM`] clients is killed and restarted on the same port: every
/// client reconnects at once, admission control paces them, and all catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_is_paced_and_nobody_misses_a_change() {
    let name = "reconnect_storm_is_paced_and_nobody_misses_a_change";
    run(name, async {
        let mut rng = seed(name);
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port")
        };
        // Fixed ports, so that clients and the publisher find the restarted gateway.
        let (port, admin_port) = (free_port(), free_port());
        let mut gw = GatewayProcess::start(
            GatewayOptions::new()
                .arg("--listen", format!("127.0.0.1:{port}"))
                .arg("--admin-listen", format!("127.0.0.1:{admin_port}"))
                .arg("--handshake-rate", STORM_RATE),
        );
        phase(name, async {
            let checker = Checker::new();
            let url = ws_url(&gw);
            let fleet = Fleet::start_n(STORM, &checker, &[url], &gw.token_all(), &mut rng).await?;
            let baseline_kib = gw.rss_kib();
            // A publisher through the admin API, recording each change at its 202.
            let stop = Arc::new(AtomicBool::new(false));
            let publishing = {
                let (stop, checker, admin) = (stop.clone(), checker.clone(), gw.admin_addr());
                let mut rng = rand::rngs::StdRng::seed_from_u64(rng.random());
                tokio::spawn(async move {
                    let mut latest = std::collections::HashMap::<u64, u64>::new();
                    while !stop.load(Ordering::SeqCst) {
                        let ns = rng.random_range(0..herald_e2e::fleet::NAMESPACES);
                        let sjid = latest.get(&ns).copied().unwrap_or(0) + 1;
                        let body = format!(r#"{{"changes":[{{"ns":{ns},"sjid":{sjid}}}]}}"#);
                        let answer =
                            herald_e2e::http::request(admin, "POST", "/v1/publish", Some(body.as_bytes()))
                                .await;
                        if answer.is_ok_and(|r| r.status == 202) {
                            checker.published(&[(ns, sjid)]);
                            latest.insert(ns, sjid);
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            };
            tokio::time::sleep(Duration::from_secs(1)).await;

            // Everyone drops at once; the gateway comes back on the same port and data dir.
            gw.restart();
            let restarted_at = Instant::now();
            let mut peak_kib = 0;
            let deadline = restarted_at + Duration::from_secs(30);
            while fleet.members.iter().any(|m| m.sessions.load(Ordering::SeqCst) < 2) {
                peak_kib = peak_kib.max(gw.rss_kib());
                if Instant::now() > deadline {
                    return Err("not every client reconnected within 30 s".into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let storm = restarted_at.elapsed();
            let caught_up = fleet.catch_up(&checker, WAIT).await?;
            stop.store(true, Ordering::SeqCst);
            let _ = publishing.await;
            let report = checker.verify(Duration::from_secs(15)).await?;
            let refused = herald_e2e::fleet::gateway_metric(&gw, "herald_handshakes_rate_limited_total").await;
            fleet.close().await;
            println!(
                "{name}: {report}; {STORM} clients back in {storm:.1?} at {STORM_RATE} handshakes/s \
                 ({refused} refused with 503 while pacing), caught up {caught_up:.1?} later; \
                 gateway RSS {baseline_kib} KiB before, peak {peak_kib} KiB during the storm"
            );
            // Paced: the storm cannot be faster than the rate allows (give or take the burst).
            if storm < Duration::from_secs_f64(STORM as f64 / STORM_RATE as f64 * 0.7) {
                return Err(format!("{STORM} reconnects in {storm:?}: not paced at {STORM_RATE}/s"));
            }
            if refused < 1.0 {
                return Err("no handshake was refused: admission control did not act".into());
            }
            if peak_kib > baseline_kib + 64 * 1024 {
                return Err(format!("memory grew by {} KiB in the storm", peak_kib - baseline_kib));
            }
            Ok(())
        })
        .await;
    })
    .await;
}
