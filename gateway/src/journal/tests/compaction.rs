//! Online compaction: the directory stays small however much is published, and a crash at any
//! file-system step (of a write, a roll or a compaction) loses nothing acknowledged.

use super::super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes of every file in `dir`.
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

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("segment-"))
        })
        .count()
}

/// 2,000,000 changes to 8 namespaces (32 MB of records) through the durable writer with 64 KiB
/// segments: the directory never holds more than a few segments, and the longest append (which
/// includes group commit's fdatasync and any roll) is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_million_changes_keep_the_directory_small() {
    const CHANGES: u64 = 2_000_000;
    const NAMESPACES: u64 = 8;
    const PER_APPEND: u64 = 500;
    const TASKS: u64 = 8;
    const COMPACT_BYTES: u64 = 64 * 1024;
    // The active segment plus the segments written while one compaction runs (its fsyncs take
    // milliseconds, and the writer fills a 64 KiB segment in about as long): 16 segments' worth
    // is 3 % of the 32 MB written, and several times what this machine reaches.
    const BOUND: u64 = 16 * COMPACT_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let latest = Arc::new(LatestTable::new());
    let (tx, mut rx) = mpsc::channel(1024);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let cfg = JournalConfig {
        compact_bytes: COMPACT_BYTES,
        ..JournalConfig::new(dir.path(), true)
    };
    let journal = Journal::open(&cfg, latest.clone(), vec![tx]).unwrap();
    let started = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (done, path) = (done.clone(), dir.path().to_owned());
        tokio::spawn(async move {
            let mut max = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(dir_bytes(&path));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            max
        })
    };
    let appends = CHANGES / PER_APPEND;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in (t..appends).step_by(TASKS as usize) {
                let changes = (0..PER_APPEND)
                    .map(|k| (k % NAMESPACES, i * PER_APPEND + k + 1))
                    .collect();
                let at = Instant::now();
                journal.append(changes).await.unwrap();
                latencies.push(at.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let max_sampled = sampler.await.unwrap();
    // The compactor catches up with the last roll.
    let deadline = Instant::now() + Duration::from_secs(5);
    while segments(dir.path()) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let end = dir_bytes(dir.path());
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{CHANGES} changes in {appends} appends of {PER_APPEND} from {TASKS} tasks: {took:?}; \
         data dir max {max_sampled} B (bound {BOUND}), at the end {end} B; append latency \
         p50 {:?} p99 {:?} max {:?}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    assert!(
        max_sampled <= BOUND,
        "data dir reached {max_sampled} B (bound {BOUND})"
    );
    assert!(
        end <= COMPACT_BYTES + TASKS * PER_APPEND * 16 + 1024,
        "after compaction caught up the directory still holds {end} B"
    );
    assert_eq!(segments(dir.path()), 1, "covered segments were not deleted");
    let last = appends - 1;
    for ns in 0..NAMESPACES {
        let expect = (0..PER_APPEND)
            .filter(|k| k % NAMESPACES == ns)
            .map(|k| last * PER_APPEND + k + 1)
            .max();
        assert_eq!(Some(latest.get(ns)), expect);
    }
    drop(journal);
    drain.await.unwrap();
    // A restart reads the snapshot and the short tail only.
    let reopened = Arc::new(LatestTable::new());
    let (tx, _rx) = mpsc::channel(1);
    let _j = Journal::open(&cfg, reopened.clone(), vec![tx]).unwrap();
    for ns in 0..NAMESPACES {
        assert_eq!(reopened.get(ns), latest.get(ns));
    }
}

/// What one crash run did.
struct CrashRun {
    /// Thread whose step crashed (`None`: the run ended before the crash point).
    crashed_in: Option<String>,
}

/// One seeded run: small segments so that rolls and compactions are frequent, appends until the
/// simulated crash at step `crash_step`, then a restart that must find every acknowledged change.
async fn crash_run(seed: u64) -> CrashRun {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let sync = seed.is_multiple_of(4);
    let cfg = JournalConfig {
        compact_bytes: rng.random_range(64..512),
        ..JournalConfig::new(dir.path(), sync)
    };
    // A first life that leaves a snapshot and segments behind, so the crashed life starts from
    // a recovery too.
    let mut acked = [0u64; 6];
    let mut next = [1u64; 6];
    {
        // Its end is a crash too (at no particular step), so that its compactor cannot run on
        // beside the next life's.
        let end = CrashPoint::after(u64::MAX);
        let latest = Arc::new(LatestTable::new());
        let (tx, mut rx) = mpsc::channel(1024);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let j = Journal::open_with_io(&cfg, latest, vec![tx], Io::with_crash(end.clone())).unwrap();
        for _ in 0..rng.random_range(0..20) {
            let ns = rng.random_range(0..6);
            j.append(vec![(ns as u64, next[ns])]).await.unwrap();
            acked[ns] = next[ns];
            next[ns] += 1;
        }
        end.crash_now();
    }
    let crash = CrashPoint::after(rng.random_range(0..300));
    let latest = Arc::new(LatestTable::new());
    let (tx, mut rx) = mpsc::channel(1024);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    if let Ok(j) = Journal::open_with_io(&cfg, latest, vec![tx], Io::with_crash(crash.clone())) {
        for _ in 0..120 {
            let changes: Vec<(u64, u64)> = (0..rng.random_range(1..5))
                .map(|_| {
                    let ns = rng.random_range(0..6);
                    let sjid = next[ns];
                    next[ns] += rng.random_range(1..3);
                    (ns as u64, sjid)
                })
                .collect();
            if j.append(changes.clone()).await.is_err() {
                break;
            }
            for (ns, sjid) in changes {
                acked[ns as usize] = acked[ns as usize].max(sjid);
            }
        }
    }
    // The process dies here (if it has not yet): no step runs after this.
    let crashed_in = crash.crashed_in();
    crash.crash_now();
    let latest = Arc::new(LatestTable::new());
    let (tx, _rx) = mpsc::channel(1);
    let _j = Journal::open(&cfg, latest.clone(), vec![tx])
        .unwrap_or_else(|e| panic!("seed {seed}: restart after the crash failed: {e:#}"));
    for ns in 0..6 {
        let got = latest.get(ns);
        assert!(
            got >= acked[ns as usize] && got < next[ns as usize],
            "seed {seed} (crash at step {} in {crashed_in:?}): ns {ns} recovered {got}, \
             acknowledged {}, highest attempted {}",
            crash.steps(),
            acked[ns as usize],
            next[ns as usize] - 1
        );
    }
    assert_eq!(segments(dir.path()), 1, "seed {seed}");
    CrashRun { crashed_in }
}

/// 300 seeded crash points over appends, rolls and compactions (and the compaction at start);
/// each restart must find every acknowledged change, and nothing never published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_loses_nothing_acknowledged() {
    let base: u64 = std::env::var("HERALD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut by_thread = std::collections::BTreeMap::<String, usize>::new();
    for seed in base..base + 300 {
        let run = crash_run(seed).await;
        let place = run.crashed_in.unwrap_or_else(|| "(no crash)".into());
        *by_thread.entry(place).or_default() += 1;
    }
    println!("crash points by thread (seeds {base}..+300): {by_thread:?}");
    let in_compactor = by_thread.get("herald-compactor").copied().unwrap_or(0);
    assert!(
        in_compactor >= 30,
        "only {in_compactor} crash points fell inside a background compaction: {by_thread:?}"
    );
}
