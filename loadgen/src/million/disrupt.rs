//! The disruptions of a `million` run: every gateway SIGKILLed at once (`--storm`), and each
//! gateway in turn drained and replaced (`--rolling`); then the wait for every connection to be
//! back and caught up.

use super::fleet::{Fleet, kill_all, start_gateways};
use super::holders::Holders;
use super::report::{Rolling, Storm};
use super::{MillionArgs, publish_all, set_target};
use crate::gateway::{heap, mib};
use crate::lean_hold::now_us;
use crate::procfs;
use std::time::{Duration, Instant};

/// Before a storm or a rolling restart: a new target SJID for every holder, their counters
/// marked, and the connections open now (the number that must come back).
fn mark_for_disruption(holders: &mut Holders) -> anyhow::Result<(u64, u64)> {
    let connections = holders.sum(|s| s.open);
    let sjid = now_us();
    set_target(holders, sjid)?;
    holders.all("mark")?;
    holders.refresh(Duration::from_secs(5))?;
    Ok((connections, sjid))
}

/// Waits until `connections` are open again and caught up, or `deadline`, printing progress
/// every 5 s (seconds counted from `since`); returns (open, caught up) after a last refresh.
fn await_return(
    holders: &mut Holders,
    connections: u64,
    since: Instant,
    deadline: Instant,
) -> anyhow::Result<(u64, u64)> {
    let mut last_print = Instant::now();
    loop {
        holders.pump();
        let back = holders.sum(|s| s.open);
        let reached = holders.sum(|s| s.reached);
        if (back >= connections && reached >= connections) || Instant::now() >= deadline {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            println!(
                "  … {:.0} s: {back} back, {reached} caught up, {} HTTP 503",
                since.elapsed().as_secs_f64(),
                holders.sum(|s| s.http_503_since_mark)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    holders.refresh(Duration::from_secs(10))?;
    Ok((holders.sum(|s| s.open), holders.sum(|s| s.reached)))
}

pub(super) fn storm(
    args: &MillionArgs,
    fleet: &mut Fleet,
    holders: &mut Holders,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Storm> {
    let count = fleet.gateways.len();
    let (connections, sjid) = mark_for_disruption(holders)?;
    let failed_before = holders.sum(|s| s.failed_attempts);
    let kill_us = now_us();
    let killed = Instant::now();
    kill_all(&mut fleet.gateways);
    println!("storm: {count} gateways SIGKILLed; publishing while they are down");
    publish_all(args, fleet, rt, sjid)?;
    fleet.gateways = start_gateways(
        &fleet.gateway_bin,
        &fleet.gateway_args,
        &fleet.log_dir,
        count..2 * count,
    )?;
    let restart_seconds = killed.elapsed().as_secs_f64();
    println!("storm: {count} gateways ready again after {restart_seconds:.1} s");
    let deadline = killed + Duration::from_secs(args.deliver_timeout_s);
    let (back, reached) = await_return(holders, connections, killed, deadline)?;
    let since = |us: u64| (us >= kill_us).then(|| (us - kill_us) as f64 / 1e6);
    std::thread::sleep(Duration::from_secs(1));
    let s = Storm {
        connections,
        restart_seconds,
        all_back_seconds: (back >= connections)
            .then(|| since(holders.max(|s| s.last_session_us)))
            .flatten(),
        all_caught_up_seconds: (reached >= connections)
            .then(|| since(holders.max(|s| s.last_reach_us)))
            .flatten(),
        sessions_after_kill: holders.sum(|s| s.sessions_since_mark),
        http_503: holders.sum(|s| s.http_503_since_mark),
        failed_attempts: holders.sum(|s| s.failed_attempts) - failed_before,
        missed: connections.saturating_sub(reached),
        gateway_rss_after_bytes: fleet
            .gateways
            .iter()
            .filter_map(|g| procfs::rss_bytes(g.pid).ok())
            .sum(),
        gateway_heap_after_bytes: fleet.gateways.iter().map(heap).sum(),
    };
    println!(
        "storm: {} connections; all back after {}, all caught up after {}; {} sessions, {} HTTP 503, \
         {} failed attempts; gateways RSS after {:.1} MiB; missed {}",
        s.connections,
        s.all_back_seconds
            .map_or("-".into(), |t| format!("{t:.2} s")),
        s.all_caught_up_seconds
            .map_or("-".into(), |t| format!("{t:.2} s")),
        s.sessions_after_kill,
        s.http_503,
        s.failed_attempts,
        mib(s.gateway_rss_after_bytes),
        s.missed
    );
    Ok(s)
}

pub(super) fn rolling(
    args: &MillionArgs,
    fleet: &mut Fleet,
    holders: &mut Holders,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Rolling> {
    let count = fleet.gateways.len();
    let (connections, sjid) = mark_for_disruption(holders)?;
    let goaways_before = holders.sum(|s| s.goaways);
    let start_us = now_us();
    let started = Instant::now();
    let mut max_drain = 0f64;
    let exit_limit = Duration::from_secs(args.drain_s + 20);
    for k in 0..count {
        let pid = fleet.gateways[k].pid;
        let sigterm = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if k == 0 {
            publish_all(args, fleet, rt, sjid)?;
        }
        anyhow::ensure!(
            fleet.gateways[k].wait_exit(exit_limit),
            "gateway pid {pid} did not exit within {exit_limit:?} of SIGTERM"
        );
        max_drain = max_drain.max(sigterm.elapsed().as_secs_f64());
        let mut new = start_gateways(
            &fleet.gateway_bin,
            &fleet.gateway_args,
            &fleet.log_dir,
            (10 + k) * count..(10 + k) * count + 1,
        )?;
        fleet.gateways[k] = new.remove(0);
        holders.pump();
        println!(
            "rolling: gateway {k} drained in {:.1} s and replaced; {} subscribed, {} GOAWAY, {} HTTP 503",
            sigterm.elapsed().as_secs_f64(),
            holders.sum(|s| s.open),
            holders.sum(|s| s.goaways) - goaways_before,
            holders.sum(|s| s.http_503_since_mark)
        );
    }
    let restart_seconds = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(args.deliver_timeout_s);
    let (back, reached) = await_return(holders, connections, started, deadline)?;
    // The last resubscription or delivery may have come before the last replacement was ready.
    let end_us = start_us + (restart_seconds * 1e6) as u64;
    let at = |us: u64| us.max(end_us).saturating_sub(start_us) as f64 / 1e6;
    let r = Rolling {
        connections,
        gateways: count,
        drain_s: args.drain_s,
        restart_seconds,
        max_drain_seconds: max_drain,
        all_back_seconds: (back >= connections).then(|| at(holders.max(|s| s.last_session_us))),
        all_caught_up_seconds: (reached >= connections)
            .then(|| at(holders.max(|s| s.last_reach_us))),
        sessions: holders.sum(|s| s.sessions_since_mark),
        goaways: holders.sum(|s| s.goaways) - goaways_before,
        http_503: holders.sum(|s| s.http_503_since_mark),
        missed: connections.saturating_sub(reached),
    };
    println!(
        "rolling: {} gateways restarted one by one in {:.1} s (longest drain {:.1} s); {} of {} \
         connections back, {} caught up; {} GOAWAY, {} sessions, {} HTTP 503; missed {}",
        r.gateways,
        r.restart_seconds,
        r.max_drain_seconds,
        back,
        r.connections,
        reached,
        r.goaways,
        r.sessions,
        r.http_503,
        r.missed
    );
    Ok(r)
}
