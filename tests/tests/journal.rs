//! The embedded journal under load and kill -9: online compaction keeps the data directory
//! small whatever the number of publishes, and a kill at any moment (of a write, a roll or a
//! background compaction) loses nothing the admin API acknowledged.

use herald_e2e::fleet::seed;
use herald_e2e::{GatewayOptions, GatewayProcess, ServerFrame, http};
use rand::Rng;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of the files in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The body of `POST /v1/publish` for `changes`.
fn body(changes: &[(u64, u64)]) -> Vec<u8> {
    let list: Vec<_> = changes
        .iter()
        .map(|&(ns, sjid)| serde_json::json!({"ns": ns, "sjid": sjid}))
        .collect();
    serde_json::json!({ "changes": list })
        .to_string()
        .into_bytes()
}

/// True when the admin API answered 202.
async fn publish(admin: SocketAddr, changes: &[(u64, u64)]) -> bool {
    http::request(admin, "POST", "/v1/publish", Some(&body(changes)))
        .await
        .is_ok_and(|r| r.status == 202)
}

/// The latest SJIDs of `ns` as a fresh client learns them (SUBSCRIBE from 0).
async fn latest_of(gw: &GatewayProcess, ns: &[u64]) -> Vec<u64> {
    let mut c = gw.client().await;
    let pairs: Vec<(u64, u64)> = ns.iter().map(|&n| (n, 0)).collect();
    let mut got = vec![0; ns.len()];
    for frame in c.subscribe(&pairs).await {
        let ServerFrame::Changed(entries) = frame else {
            panic!("unexpected {frame:?}");
        };
        for (n, sjid) in entries {
            let i = ns
                .iter()
                .position(|&x| x == n)
                .expect("a namespace asked for");
            got[i] = got[i].max(sjid);
        }
    }
    got
}

/// 2,000,000 changes to 8 namespaces through `POST /v1/publish` (200 requests of 10,000, four
/// at a time) with 64 KiB segments: 32 MB of records, while the data directory stays within
/// 1 MiB (the active segment, the few written during one compaction, a tiny snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn millions_of_publishes_keep_the_data_dir_small() {
    const NAMESPACES: u64 = 8;
    const PER_REQUEST: u64 = 10_000;
    const REQUESTS: u64 = 200;
    const BOUND: u64 = 1024 * 1024;
    let gw = GatewayProcess::start(GatewayOptions::new().arg("--journal-compact-bytes", 65_536));
    let admin = gw.admin_addr();
    let data = gw.data_dir();
    let started = Instant::now();
    let mut max = 0;
    let mut next = 0u64;
    let mut in_flight = tokio::task::JoinSet::new();
    while next < REQUESTS || !in_flight.is_empty() {
        while next < REQUESTS && in_flight.len() < 4 {
            let i = next;
            next += 1;
            in_flight.spawn(async move {
                let changes: Vec<(u64, u64)> = (0..PER_REQUEST)
                    .map(|k| (k % NAMESPACES, i * PER_REQUEST + k + 1))
                    .collect();
                publish(admin, &changes).await
            });
        }
        let ok = in_flight
            .join_next()
            .await
            .expect("a request")
            .expect("joined");
        assert!(ok, "a publish was refused");
        max = max.max(dir_bytes(&data));
    }
    let took = started.elapsed();
    let end = dir_bytes(&data);
    println!(
        "{} changes via the admin API in {took:?}: data dir max {max} B, at the end {end} B (bound {BOUND})",
        PER_REQUEST * REQUESTS
    );
    assert!(max <= BOUND, "the data dir reached {max} B (bound {BOUND})");
    let ns: Vec<u64> = (0..NAMESPACES).collect();
    let expect: Vec<u64> = ns
        .iter()
        .map(|&n| (REQUESTS - 1) * PER_REQUEST + PER_REQUEST - NAMESPACES + n + 1)
        .collect();
    assert_eq!(latest_of(&gw, &ns).await, expect);
}

/// 25 rounds of: four publishers posting small batches to 16 namespaces with 4 KiB segments (a
/// roll and a background compaction every request or two), SIGKILL at a random moment, restart.
/// Every change acknowledged with 202 before the kill is there after it. The seed is printed;
/// `HERALD_FAULTS_SEED` replays one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_compactions_loses_nothing_acknowledged() {
    const NAMESPACES: u64 = 16;
    const ROUNDS: usize = 25;
    let mut rng = seed("kill_9_during_compactions_loses_nothing_acknowledged");
    let mut gw = GatewayProcess::start(GatewayOptions::new().arg("--journal-compact-bytes", 4096));
    let ns: Vec<u64> = (0..NAMESPACES).collect();
    // Per namespace: highest SJID acknowledged, and the next one to publish.
    let acked = Arc::new(Mutex::new(vec![0u64; NAMESPACES as usize]));
    let next = Arc::new(Mutex::new(vec![1u64; NAMESPACES as usize]));
    let mut total_acked = 0;
    for round in 0..ROUNDS {
        let admin = gw.admin_addr();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut publishers = Vec::new();
        for p in 0..4u64 {
            let (acked, next, stop) = (acked.clone(), next.clone(), stop.clone());
            publishers.push(tokio::spawn(async move {
                let mut count = 0;
                let mut i = p;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let changes: Vec<(u64, u64)> = {
                        let mut next = next.lock().unwrap();
                        (0..200)
                            .map(|k| {
                                let n = (i + k) % NAMESPACES;
                                let sjid = next[n as usize];
                                next[n as usize] += 1;
                                (n, sjid)
                            })
                            .collect()
                    };
                    i += 1;
                    if !publish(admin, &changes).await {
                        break;
                    }
                    count += 1;
                    let mut acked = acked.lock().unwrap();
                    for (n, sjid) in changes {
                        acked[n as usize] = acked[n as usize].max(sjid);
                    }
                }
                count
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
        gw.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for p in publishers {
            total_acked += p.await.expect("publisher");
        }
        gw.restart();
        let got = latest_of(&gw, &ns).await;
        let (acked, next) = (acked.lock().unwrap().clone(), next.lock().unwrap().clone());
        for n in 0..NAMESPACES as usize {
            assert!(
                got[n] >= acked[n] && got[n] < next[n],
                "round {round}: ns {n} recovered {}, acknowledged {}, highest published {}",
                got[n],
                acked[n],
                next[n] - 1
            );
        }
        let files = std::fs::read_dir(gw.data_dir()).expect("data dir").count();
        assert!(
            files <= 3,
            "round {round}: {files} files in the data dir after the restart"
        );
    }
    println!("{ROUNDS} kills, {total_acked} acknowledged publishes of 200 changes, none lost");
    assert!(
        total_acked >= ROUNDS,
        "too few publishes acknowledged to mean anything"
    );
}
