//! `million`: hold a very large number of idle, subscribed connections on this box over the
//! distributed path, broadcast to all of them, and (with `--storm`) watch them all reconnect.
//!
//! ```text
//!  nats-server -js (-m: /varz, /subsz) ◄── herald-relay ──core NATS──► N × herald-gateway --nats
//!       ▲  JetStream HERALD_JOURNAL                                    one port, SO_REUSEPORT,
//!       │                                                              ≤ --per-gateway conns each
//!  loadgen (herald_relay::Publisher, as a metaserver)                        ▲ WebSocket
//!                                        M × `lean-hold` (≤ 19k conns each, own 127.77.x.y, explicit ports)
//! ```
//!
//! Steps (`--steps`, default the quarters of `--conns`): holders are started until the step's
//! count is assigned, and once every connection is subscribed the step is measured: connect
//! rate, gateway RSS (and jemalloc heap, from `/metrics`) in total and per connection, kernel
//! slab per socket (`Slab` of /proc/meminfo over the run's baseline ÷ both ends of every
//! connection), nats-server RSS and subscriptions (`/varz`, `/subsz`), relay RSS, holders' RSS.
//! Then the last step is held `--hold-secs`, and measured again.
//!
//! Broadcast: one change (SJID = the wall clock in µs) to each of the `--namespaces` namespaces,
//! published to JetStream as a metaserver would. Each holder records the wall-clock time at which
//! its last connection reached that SJID, so the time from the publish to the last delivery is
//! exact to the holders' loops. Reported: that time, deliveries/s, server CPU-seconds
//! (gateways + relay + nats-server, `/proc/<pid>/stat`) per 1M deliveries, missed = connections
//! that never got it (must be 0).
//!
//! Storm (`--storm`): every gateway is SIGKILLed at once, one change per namespace is published
//! while they are down, and they are started again on the same port. The holders reconnect with
//! jittered exponential backoff and resubscribe with their cursors; reported: the time until all
//! are back and all caught up, 503s from admission control, gateway RSS after, missed (must be 0).
//!
//! Rolling restart (`--rolling`): each gateway in turn gets SIGTERM, drains (GOAWAY spread over
//! `--drain-s`; its clients reconnect to the others) and is replaced; one change per namespace is
//! published during the first drain. Reported: the time, GOAWAYs, 503s, missed (must be 0).
//!
//! Every process is stopped by pid at the end (or on a signal, [`crate::reaper`]); every wait is
//! bounded.

mod disrupt;
mod fleet;
mod holders;
mod report;

use crate::gateway::{heap, mib};
use crate::lean_hold::{MAX_PER_HOLDER, now_us};
use crate::procfs;
use disrupt::{rolling, storm};
use fleet::{Fleet, gateway_sum, http_json, kill_all, nats_version, server_cpu, start_fleet};
use holders::Holders;
use report::{Broadcast, ChartPoint, CpuSplit, KernelCounters, Report, Step, line};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Arguments of `million`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct MillionArgs {
    /// Connections to reach.
    #[arg(long, default_value_t = 1_000_000)]
    conns: usize,
    /// Counts at which to measure, ascending (default: the quarters of --conns).
    #[arg(long, value_delimiter = ',')]
    steps: Vec<usize>,
    /// Namespaces; connection i subscribes to namespace i % namespaces.
    #[arg(long, default_value_t = 1000)]
    namespaces: u64,
    /// Gateway processes on the one port (0: enough for --per-gateway each).
    #[arg(long, default_value_t = 0)]
    gateways: usize,
    /// Connections planned per gateway process when --gateways is 0 (20,000 open files each).
    #[arg(long, default_value_t = 18_000)]
    per_gateway: usize,
    /// Worker threads per gateway process.
    #[arg(long, default_value_t = 1)]
    gateway_workers: usize,
    /// Connections per `lean-hold` process (at most 19,000).
    #[arg(long, default_value_t = 18_000)]
    per_holder: usize,
    /// Connections each holder opens per second (0: as fast as --parallel allows).
    #[arg(long, default_value_t = 0)]
    pub(super) holder_rate: u64,
    /// Connections each holder sets up at once.
    #[arg(long, default_value_t = 128)]
    pub(super) parallel: usize,
    /// Holders PING each connection this often, seconds (0: never; the gateways then rely on
    /// TCP keepalive).
    #[arg(long, default_value_t = 0)]
    pub(super) ping_s: u64,
    /// Holders' reconnect backoff: first cap and largest cap, ms (full jitter).
    #[arg(long, default_value_t = 500)]
    pub(super) backoff_initial_ms: u64,
    #[arg(long, default_value_t = 15_000)]
    pub(super) backoff_max_ms: u64,
    /// Seconds to hold the last step before the broadcast.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// Longest wait for one step's connections to subscribe, seconds.
    #[arg(long, default_value_t = 900)]
    step_timeout_s: u64,
    /// Longest wait for a broadcast (or the storm) to reach every connection, seconds.
    #[arg(long, default_value_t = 300)]
    deliver_timeout_s: u64,
    /// After the broadcast: SIGKILL every gateway, publish while they are down, restart them,
    /// and measure the reconnect storm.
    #[arg(long)]
    storm: bool,
    /// After the broadcast (and the storm): a rolling restart with drain. Each gateway in turn
    /// gets SIGTERM (its clients get GOAWAY over --drain-s and reconnect to the others) and is
    /// replaced once it exited; one change per namespace is published during the first drain.
    #[arg(long)]
    rolling: bool,
    /// Gateways' drain period on SIGTERM, seconds (`--drain-s`; their stop grace is 0).
    #[arg(long, default_value_t = 5)]
    drain_s: u64,
    /// Journal partitions (publisher, relay, gateways).
    #[arg(long, default_value_t = 64)]
    partitions: u64,
    /// Every child exits on its own after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub(super) max_seconds: u64,
    /// Gateway binary (default: `herald-gateway` next to this binary).
    #[arg(long)]
    gateway_bin: Option<String>,
    /// Relay binary (default: `herald-relay` next to this binary).
    #[arg(long)]
    relay_bin: Option<String>,
    /// nats-server binary (default: $HERALD_NATS_SERVER, the pyenv one, or PATH; 2.10+).
    #[arg(long)]
    nats_server: Option<String>,
    /// Extra arguments for every gateway.
    #[arg(long, allow_hyphen_values = true)]
    gateway_arg: Vec<String>,
    /// Keep the servers' and holders' logs in this directory (default: a temp dir, removed).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub(crate) fn run(args: &MillionArgs) -> anyhow::Result<()> {
    crate::reaper::install()?;
    let temp = std::env::temp_dir().join(format!("herald-million-{}", std::process::id()));
    crate::reaper::register_dir(&temp);
    std::fs::create_dir_all(&temp)?;
    let result = million(args, &temp);
    let _ = std::fs::remove_dir_all(&temp);
    result
}

fn steps(args: &MillionArgs) -> Vec<usize> {
    let mut steps: Vec<usize> = if args.steps.is_empty() {
        (1..=4).map(|q| args.conns * q / 4).collect()
    } else {
        args.steps.clone()
    };
    steps.retain(|&s| s > 0 && s <= args.conns);
    steps.sort_unstable();
    steps.dedup();
    if steps.last() != Some(&args.conns) {
        steps.push(args.conns);
    }
    steps
}

fn million(args: &MillionArgs, temp: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.per_holder > 0 && args.per_holder <= MAX_PER_HOLDER,
        "--per-holder must be 1..={MAX_PER_HOLDER}"
    );
    anyhow::ensure!(args.namespaces > 0, "--namespaces must be above 0");
    let log_dir = args.log_dir.clone().unwrap_or_else(|| temp.join("logs"));
    std::fs::create_dir_all(&log_dir)?;
    // A worker thread, so the publisher's NATS connection answers the server's PINGs while this
    // thread waits (a current-thread runtime is idle then, and nats-server drops the connection
    // as stale after a few minutes: the broadcast after a 300 s hold found it gone).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let gateways = match args.gateways {
        0 => args.conns.div_ceil(args.per_gateway.max(1)).max(1),
        n => n,
    };
    let mut fleet = start_fleet(args, temp, &log_dir, gateways, &rt)?;
    println!(
        "nats-server pid {} ({}), relay pid {}, {} gateways (pids {}..{}) on {}, {} worker(s) each",
        fleet.nats.pid,
        fleet.nats.url(),
        fleet.relay.pid,
        fleet.gateways.len(),
        fleet.gateways.first().map_or(0, |g| g.pid),
        fleet.gateways.last().map_or(0, |g| g.pid),
        fleet.ws,
        args.gateway_workers
    );
    std::thread::sleep(Duration::from_secs(1));
    let baseline_rss: u64 = fleet
        .gateways
        .iter()
        .filter_map(|g| procfs::rss_bytes(g.pid).ok())
        .sum();
    let baseline_slab = procfs::slab_bytes()?;
    let mut report = Report {
        conns: args.conns,
        namespaces: args.namespaces,
        gateways,
        gateway_workers: args.gateway_workers,
        holders: 0,
        per_holder: args.per_holder,
        partitions: args.partitions,
        nats_server: nats_version(&fleet.nats),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        baseline_gateway_rss_bytes: baseline_rss,
        baseline_gateway_heap_bytes: fleet.gateways.iter().map(heap).sum(),
        baseline_slab_bytes: baseline_slab,
        kernel_before: KernelCounters::read(),
        steps: Vec::new(),
        after_hold: None,
        hold_secs: args.hold_secs,
        hold_min_subscribed: None,
        broadcast: None,
        storm: None,
        rolling: None,
        memory_chart: Vec::new(),
        stopped: None,
        holder_errors: Vec::new(),
    };
    println!(
        "baseline: gateways RSS {:.1} MiB, kernel Slab {:.1} MiB",
        mib(baseline_rss),
        mib(baseline_slab)
    );
    let mut holders = Holders::default();
    let result = (|| -> anyhow::Result<()> {
        ramp(args, &fleet, &mut holders, &mut report, &log_dir)?;
        report.holders = holders.0.len();
        if args.hold_secs > 0 {
            hold(args, &fleet, &mut holders, &mut report)?;
        }
        report.broadcast = Some(broadcast(args, &fleet, &mut holders, &rt)?);
        if args.storm {
            report.storm = Some(storm(args, &mut fleet, &mut holders, &rt)?);
        }
        if args.rolling {
            report.rolling = Some(rolling(args, &mut fleet, &mut holders, &rt)?);
        }
        Ok(())
    })();
    report.holders = holders.0.len();
    holders.refresh(Duration::from_secs(5)).ok();
    report.holder_errors = holders.errors();
    // Gateways first (all at once), so the server ends close first; then the holders, relay
    // and nats-server.
    let stopping = Instant::now();
    holders.all("no-reconnect").ok();
    std::thread::sleep(Duration::from_millis(200));
    kill_all(&mut fleet.gateways);
    holders.stop();
    drop(fleet);
    println!(
        "every process stopped in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    report.memory_chart = report
        .steps
        .iter()
        .map(|s| ChartPoint {
            connections: s.subscribed,
            rss_per_conn: s.gateway_rss_per_conn,
            heap_per_conn: s.gateway_heap_per_conn,
        })
        .collect();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("report written to {}", path.display());
        match crate::chart::write_charts(path) {
            Ok(charts) => {
                for chart in charts {
                    println!("chart written to {}", chart.display());
                }
            }
            Err(e) => println!("no chart: {e}"),
        }
    }
    result?;
    if let Some(why) = &report.stopped {
        anyhow::bail!("the ramp stopped short: {why}");
    }
    Ok(())
}

fn ramp(
    args: &MillionArgs,
    fleet: &Fleet,
    holders: &mut Holders,
    report: &mut Report,
    log_dir: &Path,
) -> anyhow::Result<()> {
    let mut prev: Option<Step> = None;
    for step in steps(args) {
        let started = Instant::now();
        let from = holders.assigned() as usize;
        while (holders.assigned() as usize) < step {
            let first = holders.assigned() as usize;
            let count = (step - first).min(args.per_holder);
            holders.spawn(args, fleet.ws, &fleet.token, first, count, log_dir)?;
        }
        let deadline = started + Duration::from_secs(args.step_timeout_s);
        let mut last_print = Instant::now();
        loop {
            holders.pump();
            let open = holders.sum(|s| s.open);
            if open >= step as u64 {
                break;
            }
            if Instant::now() >= deadline {
                holders.refresh(Duration::from_secs(5)).ok();
                let why = format!(
                    "step {step}: {} of {step} subscribed after {} s (gateways count {:.0}; {} failed \
                     attempts, {} HTTP 503, {} dropped; holder errors {:?}; TCP sockets in use {:?}; \
                     kernel {:?})",
                    holders.sum(|s| s.open),
                    args.step_timeout_s,
                    gateway_sum(&fleet.gateways, "herald_connections"),
                    holders.sum(|s| s.failed_attempts),
                    holders.sum(|s| s.http_503),
                    holders.sum(|s| s.dropped),
                    holders.errors(),
                    crate::procfs::sockstat_tcp().0,
                    KernelCounters::read(),
                );
                println!("STOPPED: {why}");
                report.stopped = Some(why);
                return Ok(());
            }
            if last_print.elapsed() >= Duration::from_secs(10) {
                last_print = Instant::now();
                println!(
                    "  … {open} of {step} subscribed ({:.0}/s; {} failed attempts, {} HTTP 503)",
                    (open as f64 - from as f64) / started.elapsed().as_secs_f64(),
                    holders.sum(|s| s.failed_attempts),
                    holders.sum(|s| s.http_503)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let seconds = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        let mut s = measure(fleet, holders, report, step as u64, seconds)?;
        s.connects_per_second = (step - from) as f64 / seconds;
        if let Some(p) = &prev {
            let added = (s.subscribed as f64 - p.subscribed as f64).max(1.0);
            let grow = |now: u64, then: u64| (now as f64 - then as f64) / added;
            s.gateway_rss_per_added_conn = Some(grow(s.gateway_rss_bytes, p.gateway_rss_bytes));
            s.gateway_heap_per_added_conn = s
                .gateway_heap_bytes
                .zip(p.gateway_heap_bytes)
                .map(|(now, then)| grow(now, then));
            s.holder_anon_per_added_conn = Some(grow(s.holder_anon_bytes, p.holder_anon_bytes));
        }
        println!("{}", line(&s));
        prev = Some(s.clone());
        report.steps.push(s);
    }
    Ok(())
}

fn measure(
    fleet: &Fleet,
    holders: &mut Holders,
    report: &Report,
    target: u64,
    step_seconds: f64,
) -> anyhow::Result<Step> {
    holders.refresh(Duration::from_secs(10))?;
    let subscribed = holders.sum(|s| s.open);
    let per_gw: Vec<f64> = fleet
        .gateways
        .iter()
        .map(|g| g.metric("herald_connections").ok().flatten().unwrap_or(0.0))
        .collect();
    let gateway_connections: f64 = per_gw.iter().sum();
    let gateway_rss_bytes: u64 = fleet
        .gateways
        .iter()
        .filter_map(|g| procfs::rss_bytes(g.pid).ok())
        .sum();
    let gateway_heap_bytes: Option<u64> = fleet.gateways.iter().map(heap).sum();
    let n = subscribed.max(1) as f64;
    let slab = procfs::slab_bytes()?.saturating_sub(report.baseline_slab_bytes);
    let varz = http_json(fleet.nats.monitor, "/varz");
    let subsz = http_json(fleet.nats.monitor, "/subsz");
    let holder_rss_bytes = holders.rss_bytes();
    let holder_anon_bytes = holders.anon_bytes();
    Ok(Step {
        target,
        subscribed,
        gateway_connections,
        step_seconds,
        connects_per_second: 0.0,
        gateway_rss_bytes,
        gateway_rss_per_conn: gateway_rss_bytes.saturating_sub(report.baseline_gateway_rss_bytes)
            as f64
            / n,
        gateway_rss_per_added_conn: None,
        gateway_heap_bytes,
        gateway_heap_per_conn: gateway_heap_bytes
            .zip(report.baseline_gateway_heap_bytes)
            .map(|(h, b)| h.saturating_sub(b) as f64 / n),
        gateway_heap_per_added_conn: None,
        gateway_min_conns: per_gw.iter().copied().fold(f64::INFINITY, f64::min),
        gateway_max_conns: per_gw.iter().copied().fold(0.0, f64::max),
        kernel_slab_bytes: slab,
        kernel_slab_per_socket: slab as f64 / (2.0 * n),
        tcp_sockets_in_use: crate::procfs::sockstat_tcp().0,
        nats_rss_bytes: procfs::rss_bytes(fleet.nats.pid).unwrap_or(0),
        nats_varz_mem_bytes: varz.as_ref().and_then(|v| v["mem"].as_u64()),
        nats_subscriptions: subsz
            .as_ref()
            .and_then(|v| v["num_subscriptions"].as_u64())
            .or_else(|| varz.as_ref().and_then(|v| v["subscriptions"].as_u64())),
        relay_rss_bytes: procfs::rss_bytes(fleet.relay.pid).unwrap_or(0),
        holder_rss_bytes,
        holder_anon_bytes,
        holder_anon_per_conn: holder_anon_bytes as f64 / n,
        holder_anon_per_added_conn: None,
        failed_attempts: holders.sum(|s| s.failed_attempts),
        http_503: holders.sum(|s| s.http_503),
        dropped: holders.sum(|s| s.dropped),
        kernel: KernelCounters::read(),
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        unix_time: now_us() / 1_000_000,
    })
}

fn hold(
    args: &MillionArgs,
    fleet: &Fleet,
    holders: &mut Holders,
    report: &mut Report,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let until = started + Duration::from_secs(args.hold_secs);
    let mut min_open = u64::MAX;
    let mut last_print = Instant::now();
    println!("holding {} s", args.hold_secs);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(500).min(until - Instant::now().min(until)));
        holders.pump();
        min_open = min_open.min(holders.sum(|s| s.open));
        if last_print.elapsed() >= Duration::from_secs(60) {
            last_print = Instant::now();
            println!(
                "  … held {:.0} s: {} subscribed (lowest {min_open}), {} dropped, gateways count {:.0}",
                started.elapsed().as_secs_f64(),
                holders.sum(|s| s.open),
                holders.sum(|s| s.dropped),
                gateway_sum(&fleet.gateways, "herald_connections")
            );
        }
    }
    report.hold_min_subscribed = Some(min_open);
    let target = report.steps.last().map_or(0, |s| s.target);
    let s = measure(fleet, holders, report, target, 0.0)?;
    println!("after holding {} s: {}", args.hold_secs, line(&s));
    report.after_hold = Some(s);
    Ok(())
}

/// One change (`sjid`) to every namespace, through JetStream; returns seconds until acked.
fn publish_all(
    args: &MillionArgs,
    fleet: &Fleet,
    rt: &tokio::runtime::Runtime,
    sjid: u64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let changes: Vec<(u64, u64)> = (0..args.namespaces).map(|ns| (ns, sjid)).collect();
    rt.block_on(async {
        for chunk in changes.chunks(1000) {
            let done =
                tokio::time::timeout(Duration::from_secs(60), fleet.publisher.publish(chunk))
                    .await
                    .map_err(|_| anyhow::anyhow!("JetStream acks took over 60 s"))??;
            anyhow::ensure!(
                done.stored == chunk.len(),
                "JetStream stored {} of {} changes",
                done.stored,
                chunk.len()
            );
        }
        Ok(())
    })?;
    Ok(started.elapsed().as_secs_f64())
}

/// Sets the holders' target and waits (at most 10 s) until every one took it.
fn set_target(holders: &mut Holders, sjid: u64) -> anyhow::Result<()> {
    holders.all(&format!("target {sjid}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        holders.refresh(Duration::from_secs(5))?;
        if holders.0.iter().all(|h| h.status.target == sjid) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "holders did not take the target");
    }
}

fn broadcast(
    args: &MillionArgs,
    fleet: &Fleet,
    holders: &mut Holders,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Broadcast> {
    let sjid = now_us();
    set_target(holders, sjid)?;
    let expected = holders.sum(|s| s.open);
    let frames_before = holders.sum(|s| s.changed_frames);
    let cpu_before = server_cpu(fleet);
    let t0 = now_us();
    let publish_ack_seconds = publish_all(args, fleet, rt, sjid)?;
    let deadline = Instant::now() + Duration::from_secs(args.deliver_timeout_s);
    loop {
        holders.pump();
        if holders.sum(|s| s.reached) >= expected || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu_after = server_cpu(fleet);
    holders.refresh(Duration::from_secs(10))?;
    let delivered = holders.sum(|s| s.reached);
    let last = holders.max(|s| s.last_reach_us);
    let last_delivery_seconds = (delivered > 0 && last >= t0).then(|| (last - t0) as f64 / 1e6);
    let cpu = CpuSplit {
        gateways: cpu_after.gateways - cpu_before.gateways,
        relay: cpu_after.relay - cpu_before.relay,
        nats_server: cpu_after.nats_server - cpu_before.nats_server,
    };
    let total_cpu = cpu.gateways + cpu.relay + cpu.nats_server;
    let b = Broadcast {
        namespaces: args.namespaces,
        expected,
        delivered,
        missed: expected.saturating_sub(delivered),
        changed_frames: holders.sum(|s| s.changed_frames) - frames_before,
        publish_ack_seconds,
        last_delivery_seconds,
        deliveries_per_second: last_delivery_seconds
            .filter(|&s| s > 0.0)
            .map(|s| delivered as f64 / s),
        server_cpu_seconds: total_cpu,
        cpu_seconds_per_million_deliveries: (delivered > 0)
            .then(|| total_cpu / delivered as f64 * 1e6),
        cpu_by_process: cpu,
    };
    println!(
        "broadcast: 1 change × {} namespaces → {} of {} connections in {} ({} deliveries/s; \
         JetStream acked in {:.3} s); server CPU {:.2} s = {} CPU-s per 1M deliveries \
         (gateways {:.2}, relay {:.2}, nats-server {:.2}); missed {}",
        b.namespaces,
        b.delivered,
        b.expected,
        b.last_delivery_seconds
            .map_or("-".into(), |s| format!("{s:.3} s")),
        b.deliveries_per_second
            .map_or("-".into(), |d| format!("{d:.0}")),
        b.publish_ack_seconds,
        b.server_cpu_seconds,
        b.cpu_seconds_per_million_deliveries
            .map_or("-".into(), |c| format!("{c:.2}")),
        b.cpu_by_process.gateways,
        b.cpu_by_process.relay,
        b.cpu_by_process.nats_server,
        b.missed
    );
    Ok(b)
}
