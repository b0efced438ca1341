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

mod holders;

use crate::authkey::{SharedKey, free_port};
use crate::gateway::{Gateway, heap, mib};
use crate::lean_hold::{MAX_PER_HOLDER, now_us};
use crate::natsproc::{self, NatsServer, Relay};
use crate::procfs;
use holders::Holders;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
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

/// One measured step.
#[derive(Debug, Clone, Serialize)]
struct Step {
    /// Connections assigned to holders, and subscribed (the holders' count).
    target: u64,
    subscribed: u64,
    /// The gateways' own count (`herald_connections`, summed).
    gateway_connections: f64,
    /// Seconds from the start of this step to every connection subscribed; its rate.
    step_seconds: f64,
    connects_per_second: f64,
    gateway_rss_bytes: u64,
    gateway_rss_per_conn: f64,
    /// RSS growth since the previous step ÷ connections added.
    gateway_rss_per_added_conn: Option<f64>,
    gateway_heap_bytes: Option<u64>,
    /// Heap growth over the baseline ÷ connections, and since the previous step ÷ added.
    gateway_heap_per_conn: Option<f64>,
    gateway_heap_per_added_conn: Option<f64>,
    /// Connections per gateway process: fewest and most.
    gateway_min_conns: f64,
    gateway_max_conns: f64,
    /// Machine-wide `Slab` growth since the baseline ÷ sockets (two per connection).
    kernel_slab_bytes: u64,
    kernel_slab_per_socket: f64,
    tcp_sockets_in_use: Option<u64>,
    nats_rss_bytes: u64,
    nats_varz_mem_bytes: Option<u64>,
    nats_subscriptions: Option<u64>,
    relay_rss_bytes: u64,
    /// Holders' RSS (counts their shared binary pages once per process) and anonymous memory
    /// (their own allocations), the latter per connection and per added connection.
    holder_rss_bytes: u64,
    holder_anon_bytes: u64,
    holder_anon_per_conn: f64,
    holder_anon_per_added_conn: Option<f64>,
    /// Failed attempts and 503s so far (the holders retry them).
    failed_attempts: u64,
    http_503: u64,
    dropped: u64,
    /// Machine-wide kernel counters: open files (`fs/file-nr`), and from /proc/net/netstat
    /// ListenOverflows, ListenDrops, TCPAbortOnTimeout, TCPKeepAlive (cumulative since boot).
    kernel: KernelCounters,
    loadavg: String,
    unix_time: u64,
}

/// Kernel counters that name the limit a run hits.
#[derive(Debug, Clone, Default, Serialize)]
struct KernelCounters {
    open_files: Option<u64>,
    file_max: Option<u64>,
    listen_overflows: Option<u64>,
    listen_drops: Option<u64>,
    tcp_abort_on_timeout: Option<u64>,
    tcp_keepalive_probes: Option<u64>,
}

impl KernelCounters {
    fn read() -> Self {
        let file_nr = std::fs::read_to_string("/proc/sys/fs/file-nr").unwrap_or_default();
        let nr: Vec<u64> = file_nr
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
        let lines: Vec<&str> = netstat.lines().collect();
        let mut tcp_ext = std::collections::HashMap::new();
        for pair in lines.chunks(2) {
            if let [names, values] = pair
                && names.starts_with("TcpExt:")
            {
                for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                    if let Ok(v) = v.parse::<u64>() {
                        tcp_ext.insert(n.to_owned(), v);
                    }
                }
            }
        }
        KernelCounters {
            open_files: nr.first().copied(),
            file_max: nr.get(2).copied(),
            listen_overflows: tcp_ext.get("ListenOverflows").copied(),
            listen_drops: tcp_ext.get("ListenDrops").copied(),
            tcp_abort_on_timeout: tcp_ext.get("TCPAbortOnTimeout").copied(),
            tcp_keepalive_probes: tcp_ext.get("TCPKeepAlive").copied(),
        }
    }
}

/// The broadcast.
#[derive(Debug, Clone, Serialize)]
struct Broadcast {
    namespaces: u64,
    /// Connections subscribed when it started: every one must get the change.
    expected: u64,
    delivered: u64,
    missed: u64,
    changed_frames: u64,
    /// Publish call → JetStream acked every change.
    publish_ack_seconds: f64,
    /// Publish call → the last connection got its CHANGED.
    last_delivery_seconds: Option<f64>,
    deliveries_per_second: Option<f64>,
    server_cpu_seconds: f64,
    cpu_seconds_per_million_deliveries: Option<f64>,
    cpu_by_process: CpuSplit,
}

/// Server CPU-seconds over a window, by kind of process.
#[derive(Debug, Clone, Default, Serialize)]
struct CpuSplit {
    gateways: f64,
    relay: f64,
    nats_server: f64,
}

/// The storm.
#[derive(Debug, Clone, Serialize)]
struct Storm {
    connections: u64,
    /// SIGKILL of every gateway → every gateway ready again.
    restart_seconds: f64,
    /// SIGKILL → every connection subscribed again (the last resubscription).
    all_back_seconds: Option<f64>,
    /// SIGKILL → every connection got the change published while the gateways were down.
    all_caught_up_seconds: Option<f64>,
    sessions_after_kill: u64,
    http_503: u64,
    failed_attempts: u64,
    missed: u64,
    gateway_rss_after_bytes: u64,
    gateway_heap_after_bytes: Option<u64>,
}

/// The rolling restart with drain.
#[derive(Debug, Clone, Serialize)]
struct Rolling {
    connections: u64,
    gateways: usize,
    drain_s: u64,
    /// First SIGTERM → the last replacement ready.
    restart_seconds: f64,
    /// Per gateway: SIGTERM → exited (the drain), longest.
    max_drain_seconds: f64,
    /// First SIGTERM → every connection subscribed again and caught up (after the last
    /// replacement was ready).
    all_back_seconds: Option<f64>,
    all_caught_up_seconds: Option<f64>,
    sessions: u64,
    goaways: u64,
    http_503: u64,
    missed: u64,
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
struct Report {
    conns: usize,
    namespaces: u64,
    gateways: usize,
    gateway_workers: usize,
    holders: usize,
    per_holder: usize,
    partitions: u64,
    nats_server: String,
    kernel: String,
    baseline_gateway_rss_bytes: u64,
    baseline_gateway_heap_bytes: Option<u64>,
    baseline_slab_bytes: u64,
    /// Kernel counters before the first connection.
    kernel_before: KernelCounters,
    steps: Vec<Step>,
    /// The last step measured again after --hold-secs.
    after_hold: Option<Step>,
    hold_secs: u64,
    /// Lowest subscribed count seen while holding.
    hold_min_subscribed: Option<u64>,
    broadcast: Option<Broadcast>,
    storm: Option<Storm>,
    rolling: Option<Rolling>,
    /// Gateway memory per connection at each step, in the shape `herald-loadgen chart` draws
    /// (`<report>.memory.svg`).
    memory_chart: Vec<ChartPoint>,
    /// Why the ramp stopped short of --conns, with the evidence.
    stopped: Option<String>,
    holder_errors: Vec<String>,
}

/// One point of the memory chart.
#[derive(Debug, Clone, Serialize)]
struct ChartPoint {
    connections: u64,
    rss_per_conn: f64,
    heap_per_conn: Option<f64>,
}

/// The servers of the run.
struct Fleet {
    nats: NatsServer,
    relay: Relay,
    gateways: Vec<Gateway>,
    gateway_bin: String,
    gateway_args: Vec<String>,
    ws: SocketAddr,
    token: String,
    log_dir: PathBuf,
    publisher: herald_relay::Publisher,
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

fn start_fleet(
    args: &MillionArgs,
    temp: &Path,
    log_dir: &Path,
    gateways: usize,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Fleet> {
    let gateway_bin = crate::gateway::sibling_binary(args.gateway_bin.as_ref(), "herald-gateway")?;
    let relay_bin = crate::gateway::sibling_binary(args.relay_bin.as_ref(), "herald-relay")?;
    let nats_bin = natsproc::nats_server_binary(args.nats_server.as_deref())?;
    let nats = NatsServer::start_monitored(&nats_bin, temp, true)?;
    let relay = Relay::start(
        &relay_bin,
        &nats.url(),
        &["--partitions".into(), args.partitions.to_string()],
        &log_dir.join("relay.log"),
    )?;
    let key = SharedKey::generate(&gateway_bin, &temp.join("key"))?;
    let port = free_port()?;
    let mut gateway_args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--nats".to_owned(),
        nats.url(),
        "--partitions".to_owned(),
        args.partitions.to_string(),
        "--heartbeat-ms".to_owned(),
        "900000".to_owned(),
        "--workers".to_owned(),
        args.gateway_workers.to_string(),
        "--drain-s".to_owned(),
        args.drain_s.to_string(),
        "--stop-grace-ms".to_owned(),
        "0".to_owned(),
    ];
    gateway_args.extend(key.gateway_args());
    gateway_args.extend(args.gateway_arg.iter().cloned());
    let started = start_gateways(&gateway_bin, &gateway_args, log_dir, 0..gateways)?;
    let publisher = rt.block_on(async {
        let client = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(nats.url()))
            .await??;
        Ok::<_, anyhow::Error>(herald_relay::Publisher::new(
            async_nats::jetstream::new(client),
            args.partitions,
        ))
    })?;
    Ok(Fleet {
        nats,
        relay,
        gateways: started,
        gateway_bin,
        gateway_args,
        ws: SocketAddr::from(([127, 0, 0, 1], port)),
        token: key.token,
        log_dir: log_dir.to_owned(),
        publisher,
    })
}

/// Starts gateways `range` in parallel (a few threads), each until ready (its upstream too).
fn start_gateways(
    bin: &str,
    args: &[String],
    log_dir: &Path,
    range: std::ops::Range<usize>,
) -> anyhow::Result<Vec<Gateway>> {
    let ids: Vec<usize> = range.collect();
    let results: Vec<anyhow::Result<Vec<Gateway>>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(ids.len().div_ceil(8).max(1))
            .map(|part| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for &k in part {
                        let log = std::fs::File::create(log_dir.join(format!("gateway-{k}.log")))?;
                        let gw = Gateway::start_with(bin, args, Stdio::from(log))?;
                        gw.wait_ready(Duration::from_secs(60))?;
                        out.push(gw);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a gateway start thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::new();
    let mut first_err = None;
    for r in results {
        match r {
            Ok(g) => all.extend(g),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        kill_all(&mut all);
        return Err(e);
    }
    Ok(all)
}

/// SIGKILLs every gateway at once (one `kill`), then reaps them (their guards).
fn kill_all(gateways: &mut Vec<Gateway>) {
    if gateways.is_empty() {
        return;
    }
    let pids: Vec<String> = gateways.iter().map(|g| g.pid.to_string()).collect();
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .args(&pids)
        .stderr(Stdio::null())
        .status();
    gateways.clear();
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

fn gateway_sum(gateways: &[Gateway], metric: &str) -> f64 {
    gateways
        .iter()
        .filter_map(|g| g.metric(metric).ok().flatten())
        .sum()
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

fn line(s: &Step) -> String {
    format!(
        "{:>8} subscribed (gateways count {:.0}, {:.0}–{:.0} per process) in {:.1} s = {:.0}/s | \
         gateways RSS {:.1} MiB = {:.0} B/conn{}{}{} | slab {:.0} B/socket | nats RSS {:.1} MiB, {} subs | \
         relay RSS {:.1} MiB | holders RSS {:.1} MiB, own {:.1} MiB = {:.0} B/conn{} | {} failed attempts, {} 503, {} dropped | load {}",
        s.subscribed,
        s.gateway_connections,
        s.gateway_min_conns,
        s.gateway_max_conns,
        s.step_seconds,
        s.connects_per_second,
        mib(s.gateway_rss_bytes),
        s.gateway_rss_per_conn,
        s.gateway_rss_per_added_conn
            .map_or(String::new(), |a| format!(" ({a:.0} B per added conn)")),
        s.gateway_heap_per_conn
            .map_or(String::new(), |h| format!(", heap {h:.0} B/conn")),
        s.gateway_heap_per_added_conn
            .map_or(String::new(), |h| format!(" ({h:.0} B per added conn)")),
        s.kernel_slab_per_socket,
        mib(s.nats_rss_bytes),
        s.nats_subscriptions.map_or("?".into(), |n| n.to_string()),
        mib(s.relay_rss_bytes),
        mib(s.holder_rss_bytes),
        mib(s.holder_anon_bytes),
        s.holder_anon_per_conn,
        s.holder_anon_per_added_conn
            .map_or(String::new(), |a| format!(" ({a:.0} B per added conn)")),
        s.failed_attempts,
        s.http_503,
        s.dropped,
        s.loadavg
    )
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

fn server_cpu(fleet: &Fleet) -> CpuSplit {
    CpuSplit {
        gateways: fleet
            .gateways
            .iter()
            .filter_map(|g| procfs::cpu_seconds(g.pid).ok())
            .sum(),
        relay: procfs::cpu_seconds(fleet.relay.pid).unwrap_or(0.0),
        nats_server: procfs::cpu_seconds(fleet.nats.pid).unwrap_or(0.0),
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

fn storm(
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

fn rolling(
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

/// `nats-server --version` of the running server (from its log's first lines, else unknown).
fn nats_version(nats: &NatsServer) -> String {
    http_json(nats.monitor, "/varz")
        .and_then(|v| v["version"].as_str().map(|s| format!("nats-server {s}")))
        .unwrap_or_else(|| "nats-server (version unknown)".into())
}

/// GET `path` on the nats-server monitoring port, as JSON (HTTP/1.0: no chunked body).
fn http_json(port: Option<u16>, path: &str) -> Option<serde_json::Value> {
    let port = port?;
    let mut s = std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: nats\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let body = out.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}
