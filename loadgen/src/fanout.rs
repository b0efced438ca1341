//! The fan-out benchmark: publish→CHANGED latency, deliveries per second and server CPU per
//! million deliveries, for the standalone path and the distributed (NATS) path, in one run.
//!
//! ```text
//!  standalone:  loadgen ──POST /v1/publish (kept-alive HTTP/1.1)──► herald-gateway (embedded journal)
//!  nats:        loadgen ──herald_relay::Publisher──► nats-server -js ──► herald-relay ──► herald-gateway --nats
//!                                                                                            │ WebSocket
//!                                       `receive` child processes (≤ per-process connections each) ◄┘
//! ```
//!
//! The SJID of every publish is the publisher's wall clock in µs since the Unix epoch (strictly
//! increasing), so each receiver measures publish→CHANGED latency as `now_us - sjid` on its own.
//! Receivers keep per-connection last SJIDs; after a phase the parent tells them the last SJID and
//! the number of publishes of every namespace, and they count what was coalesced (fewer CHANGED
//! than publishes, but the last SJID arrived: allowed) apart from what is missing (the last SJID
//! never arrived: a bug). CPU is `utime + stime` of each server process over the measured window.

use crate::gateway::Gateway;
use crate::natsproc::{self, NatsServer, Relay};
use crate::procfs;
use crate::receive::{self, Progress, Report as ReceiverReport, Target, now_us};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// How long one publish (an HTTP request, or a batch's JetStream acks) may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a receiver may take to answer a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a distributed gateway may take to report ready (its upstream subscribed).
const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Gateway heartbeat announced to the receivers: they stay silent, so the longest allowed.
const HEARTBEAT_MS: &str = "900000";

/// A fan-out path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PathKind {
    /// `herald-gateway` with its embedded journal; publishes by `POST /v1/publish`.
    Standalone,
    /// nats-server + herald-relay + `herald-gateway --nats`; publishes to JetStream.
    Nats,
}

impl PathKind {
    fn name(self) -> &'static str {
        match self {
            PathKind::Standalone => "standalone",
            PathKind::Nats => "nats",
        }
    }
}

/// Arguments of `fanout`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FanoutArgs {
    /// Paths to measure, one after another.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "standalone,nats"
    )]
    paths: Vec<PathKind>,
    /// WebSocket connections (each subscribes to one namespace).
    #[arg(long, default_value_t = 15_000)]
    conns: usize,
    /// Namespaces; connection i subscribes to namespace i % namespaces.
    #[arg(long, default_value_t = 1000)]
    namespaces: u64,
    /// Paced publishes per second (one namespace each, round-robin); 0 skips the paced phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Measured seconds of the paced phase (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up of the paced phase, seconds (published, checked, not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// After the paced phase, publish this many changes as fast as possible and measure
    /// deliveries/s until all are received (0: no burst phase).
    #[arg(long, default_value_t = 0)]
    burst: u64,
    /// Changes per publish in the burst (at most --namespaces, so no namespace repeats in one).
    #[arg(long, default_value_t = 1000)]
    burst_batch: u64,
    /// `--coalesce-us` of the relay on the nats path.
    #[arg(long, default_value_t = 0)]
    coalesce_us: u64,
    /// Journal partitions (relay, gateway and publisher).
    #[arg(long, default_value_t = 64)]
    partitions: u64,
    /// fdatasync each publish in the standalone journal. Off by default (`--journal-no-sync`):
    /// this compares fan-out paths, not disks.
    #[arg(long)]
    journal_sync: bool,
    /// Most connections per receiver process (each binds its own source address).
    #[arg(long, default_value_t = 15_000)]
    per_process: usize,
    /// tungstenite read buffer per receiver connection, bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Time allowed to open and subscribe every connection, seconds.
    #[arg(long, default_value_t = 300)]
    connect_timeout_s: u64,
    /// Time allowed, after a phase's last publish, for every connection to get its last SJID.
    #[arg(long, default_value_t = 60)]
    settle_timeout_s: u64,
    /// Gateway binary (default: `herald-gateway` next to this binary).
    #[arg(long)]
    gateway_bin: Option<String>,
    /// Relay binary (default: `herald-relay` next to this binary).
    #[arg(long)]
    relay_bin: Option<String>,
    /// nats-server 2.10+ (default: $HERALD_NATS_SERVER, then the pyenv one, then PATH).
    #[arg(long)]
    nats_server: Option<String>,
    /// Extra arguments for the gateway (both paths).
    #[arg(long, allow_hyphen_values = true)]
    gateway_arg: Vec<String>,
    /// Write the whole report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Latency (or call time) quantiles, µs.
#[derive(Debug, Clone, Default, Serialize)]
struct Quantiles {
    count: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
    mean: f64,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Quantiles::default();
        }
        Quantiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// CPU of one process over a phase's measured window.
#[derive(Debug, Clone, Serialize)]
struct CpuFigure {
    process: String,
    pid: u32,
    cpu_seconds: f64,
    per_1m_deliveries: f64,
}

/// One phase (paced or burst) of one path.
#[derive(Debug, Clone, Serialize)]
struct PhaseReport {
    phase: &'static str,
    /// Changes published (one `(ns, sjid)` each).
    publishes: u64,
    /// Publish calls (HTTP requests / `Publisher::publish` calls).
    publish_calls: u64,
    publish_seconds: f64,
    publishes_per_s: f64,
    /// Time of one publish call (request → 202, or every JetStream ack of the batch), µs.
    publish_call_us: Quantiles,
    /// Publishes × subscribers of their namespace.
    expected_deliveries: u64,
    /// `(ns, sjid)` pairs received in CHANGED frames.
    delivered: u64,
    /// Publishes a connection got folded into a later SJID's CHANGED (allowed).
    coalesced: u64,
    /// Publishes of connections that never got their namespace's last SJID (must be 0).
    missing: u64,
    stale_connections: u64,
    /// Deliveries beyond the publishes, non-increasing SJIDs, foreign namespaces (all must be 0).
    extra: u64,
    non_increasing: u64,
    foreign: u64,
    resets: u64,
    goaways: u64,
    closed_connections: u64,
    /// Every connection got its namespace's last SJID within the settle timeout.
    complete: bool,
    /// From the last publish until every connection had its last SJID (or the timeout).
    settle_seconds: f64,
    /// Publishes and deliveries in the measured window (paced: after the warm-up).
    measured_publishes: u64,
    measured_expected: u64,
    measured_deliveries: u64,
    /// Measured window: start of measuring → last delivery.
    window_seconds: f64,
    deliveries_per_s: f64,
    /// publish→CHANGED of the measured deliveries, µs.
    latency_us: Quantiles,
    /// Per server process, over the measured window.
    cpu: Vec<CpuFigure>,
    /// Sum over the server processes, CPU-seconds per 1M measured deliveries.
    server_cpu_per_1m: f64,
    /// The load generator's own CPU in the window (receivers, and this process).
    receivers_cpu_seconds: f64,
    loadgen_cpu_seconds: f64,
    errors: Vec<String>,
}

/// One path.
#[derive(Debug, Clone, Serialize)]
struct PathReport {
    path: PathKind,
    description: String,
    connections: usize,
    namespaces: u64,
    subscribers_per_namespace: f64,
    receiver_processes: usize,
    connect_seconds: f64,
    /// Gateway RSS once every connection is subscribed, and at the end.
    gateway_rss_bytes: u64,
    gateway_rss_end_bytes: u64,
    /// Gateway counters at the end (`/metrics`).
    gateway_notifications_sent: Option<f64>,
    gateway_slow_consumers: Option<f64>,
    /// Partition resyncs of a distributed gateway: once every connection was subscribed, and
    /// at the end (resyncs in between mean a numbered stream had a gap during measuring).
    gateway_upstream_resyncs_at_start: Option<f64>,
    gateway_upstream_resyncs: Option<f64>,
    phases: Vec<PhaseReport>,
}

/// nats path ÷ standalone path.
#[derive(Debug, Clone, Serialize)]
struct Comparison {
    phase: &'static str,
    p50: f64,
    p99: f64,
    p999: f64,
    deliveries_per_s: f64,
    server_cpu_per_1m: f64,
    gateway_cpu_per_1m: f64,
}

#[derive(Debug, Clone, Serialize)]
struct RunReport {
    started_unix_s: u64,
    build: &'static str,
    cpus: usize,
    loadavg_start: String,
    loadavg_end: String,
    conns: usize,
    namespaces: u64,
    rate: u64,
    seconds: u64,
    warmup_s: f64,
    burst: u64,
    burst_batch: u64,
    coalesce_us: u64,
    partitions: u64,
    journal_sync: bool,
    paths: Vec<PathReport>,
    comparison: Vec<Comparison>,
}

pub(crate) fn run(args: &FanoutArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.conns > 0, "--conns must be at least 1");
    anyhow::ensure!(args.namespaces > 0, "--namespaces must be at least 1");
    anyhow::ensure!(
        (1..=19_000).contains(&args.per_process),
        "--per-process must be within 1..=19000 (20000 open files per process)"
    );
    anyhow::ensure!(
        args.conns.div_ceil(args.per_process) <= 250,
        "at most 250 receiver processes (one source address each)"
    );
    anyhow::ensure!(args.warmup_s >= 0.0, "--warmup-s must not be negative");
    if (args.conns as u64) < args.namespaces {
        eprintln!("warning: fewer connections than namespaces; some namespaces have no subscriber");
    }
    let build = if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; the figures are meant for release builds \
             (cargo build --release -p herald-gateway -p herald-relay -p herald-loadgen)"
        );
        "debug"
    } else {
        "release"
    };
    crate::reaper::install()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = RunReport {
        started_unix_s: now_us() / 1_000_000,
        build,
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        conns: args.conns,
        namespaces: args.namespaces,
        rate: args.rate,
        seconds: args.seconds,
        warmup_s: args.warmup_s,
        burst: args.burst,
        burst_batch: args.burst_batch.clamp(1, args.namespaces),
        coalesce_us: args.coalesce_us,
        partitions: args.partitions,
        journal_sync: args.journal_sync,
        paths: Vec::new(),
        comparison: Vec::new(),
    };
    let mut phases = Vec::new();
    if args.rate > 0 && args.seconds > 0 {
        phases.push(format!(
            "paced {}/s for {} s after {} s warm-up",
            args.rate, args.seconds, args.warmup_s
        ));
    }
    if args.burst > 0 {
        phases.push(format!(
            "burst of {} in batches of {}",
            args.burst, report.burst_batch
        ));
    }
    anyhow::ensure!(
        !phases.is_empty(),
        "nothing to measure: give --rate and --seconds above 0, or --burst"
    );
    println!(
        "fanout: {} connections, {} namespaces; {}; load average {}",
        args.conns,
        args.namespaces,
        phases.join("; "),
        report.loadavg_start
    );
    for (index, &kind) in args.paths.iter().enumerate() {
        let path = run_path(&rt, args, kind, index)?;
        print_path(&path);
        report.paths.push(path);
    }
    report.comparison = compare(&report.paths);
    for c in &report.comparison {
        println!(
            "nats / standalone ({}): p50 ×{:.2}, p99 ×{:.2}, p99.9 ×{:.2}, deliveries/s ×{:.2}, \
             server CPU per 1M deliveries ×{:.2} (gateway alone ×{:.2})",
            c.phase,
            c.p50,
            c.p99,
            c.p999,
            c.deliveries_per_s,
            c.server_cpu_per_1m,
            c.gateway_cpu_per_1m
        );
    }
    report.loadavg_end = loadavg();
    println!(
        "load average at the end: {} ({} CPUs; other work on the machine skews absolute figures, \
         ratios within one run are the comparison)",
        report.loadavg_end, report.cpus
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("report written to {}", path.display());
    }
    let bad: u64 = report
        .paths
        .iter()
        .flat_map(|p| &p.phases)
        .map(|ph| ph.missing + ph.extra + ph.non_increasing + ph.foreign + ph.closed_connections)
        .sum();
    anyhow::ensure!(
        bad == 0,
        "some notifications were missing or wrong (see the tables above)"
    );
    Ok(())
}

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "herald-fanout-{}-{name}-{}",
            std::process::id(),
            now_us()
        ));
        std::fs::create_dir_all(&dir)?;
        crate::reaper::register_dir(&dir);
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A binary next to this one, unless given.
fn sibling(explicit: Option<&String>, name: &str) -> anyhow::Result<String> {
    if let Some(bin) = explicit {
        return Ok(bin.clone());
    }
    let path = std::env::current_exe()?
        .parent()
        .map(|d| d.join(name))
        .ok_or_else(|| anyhow::anyhow!("no directory of the current executable"))?;
    anyhow::ensure!(
        path.exists(),
        "{} does not exist: build it (cargo build --release -p herald-gateway -p herald-relay \
         -p herald-loadgen) or pass its path",
        path.display()
    );
    Ok(path.display().to_string())
}

fn run_path(
    rt: &tokio::runtime::Runtime,
    args: &FanoutArgs,
    kind: PathKind,
    index: usize,
) -> anyhow::Result<PathReport> {
    let dir = TempDir::new(kind.name())?;
    let gateway_bin = sibling(args.gateway_bin.as_ref(), "herald-gateway")?;
    let gateway_log = dir.0.join("gateway.log");
    let mut gateway_args = vec![
        "--heartbeat-ms".to_owned(),
        HEARTBEAT_MS.to_owned(),
        "--partitions".to_owned(),
        args.partitions.to_string(),
    ];
    let mut servers: Vec<(String, u32)> = Vec::new();
    let (nats, relay, description) = match kind {
        PathKind::Standalone => {
            gateway_args.push("--data-dir".into());
            gateway_args.push(dir.0.join("data").display().to_string());
            if !args.journal_sync {
                gateway_args.push("--journal-no-sync".into());
            }
            let sync = if args.journal_sync {
                "fdatasync per publish"
            } else {
                "--journal-no-sync: compares fan-out paths, not fsync"
            };
            (
                None,
                None,
                format!(
                    "herald-gateway with its embedded journal ({sync}); POST /v1/publish over one kept-alive HTTP/1.1 connection"
                ),
            )
        }
        PathKind::Nats => {
            let nats_bin = natsproc::nats_server_binary(args.nats_server.as_deref())?;
            let relay_bin = sibling(args.relay_bin.as_ref(), "herald-relay")?;
            let nats = NatsServer::start(&nats_bin, &dir.0)?;
            let relay_log = dir.0.join("relay.log");
            let relay = Relay::start(
                &relay_bin,
                &nats.url(),
                &[
                    "--coalesce-us".into(),
                    args.coalesce_us.to_string(),
                    "--partitions".into(),
                    args.partitions.to_string(),
                ],
                &relay_log,
            )?;
            gateway_args.push("--nats".into());
            gateway_args.push(nats.url());
            (
                Some(nats),
                Some(relay),
                format!(
                    "nats-server -js + herald-relay --coalesce-us {} + herald-gateway --nats; herald_relay::Publisher to JetStream",
                    args.coalesce_us
                ),
            )
        }
    };
    gateway_args.extend(args.gateway_arg.iter().cloned());
    println!("\n== {}: {description}", kind.name());
    let gateway = Gateway::start_with(
        &gateway_bin,
        &gateway_args,
        Stdio::from(std::fs::File::create(&gateway_log)?),
    )
    .and_then(|g| g.wait_ready(GATEWAY_READY_TIMEOUT).map(|()| g))
    .map_err(|e| anyhow::anyhow!("{e}; gateway log:\n{}", natsproc::tail(&gateway_log, 20)))?;
    servers.push(("gateway".into(), gateway.pid));
    if let Some(relay) = &relay {
        servers.push(("relay".into(), relay.pid));
    }
    if let Some(nats) = &nats {
        servers.push(("nats-server".into(), nats.pid));
    }
    let publisher = rt.block_on(Publish::connect(
        kind,
        gateway.admin,
        nats.as_ref().map(NatsServer::url),
        args.partitions,
    ))?;

    // Receivers: each path uses its own 127.0.<index + 1>.x source addresses, so sockets a
    // previous path left in TIME_WAIT never take the ports this one needs.
    let started = Instant::now();
    let mut receivers = Receivers(Vec::new());
    let mut first = 0;
    while first < args.conns {
        let count = (args.conns - first).min(args.per_process);
        let k = receivers.0.len();
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, (index + 1) as u8, (2 + k) as u8));
        receivers
            .0
            .push(Receiver::spawn(args, &gateway, source, count, first)?);
        first += count;
    }
    let deadline = started + Duration::from_secs(args.connect_timeout_s);
    for r in &receivers.0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = r
            .recv(left)
            .map_err(|e| anyhow::anyhow!("opening connections: {e}"))?;
        anyhow::ensure!(
            line.starts_with("ready"),
            "receiver said {line:?} instead of ready"
        );
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let gateway_rss_bytes = procfs::rss_bytes(gateway.pid)?;
    println!(
        "  {} connections in {} receiver processes subscribed in {:.1} s; gateway RSS {:.1} MiB",
        args.conns,
        receivers.0.len(),
        connect_seconds,
        mib(gateway_rss_bytes)
    );

    let resyncs = |g: &Gateway| match kind {
        PathKind::Nats => g.metric("herald_upstream_resyncs_total").ok().flatten(),
        PathKind::Standalone => None,
    };
    let gateway_upstream_resyncs_at_start = resyncs(&gateway);
    let mut bench = Bench {
        args,
        servers,
        receivers,
        publisher,
        subscribers: subscribers_per_namespace(args.conns, args.namespaces),
        last_sjid: 0,
        next_ns: 0,
    };
    let mut phases = Vec::new();
    if args.rate > 0 && args.seconds > 0 {
        phases.push(rt.block_on(bench.paced())?);
    }
    if args.burst > 0 {
        phases.push(rt.block_on(bench.burst())?);
    }
    // The gateway flushes its counters to /metrics every sweep (500 ms).
    std::thread::sleep(Duration::from_millis(600));
    let gateway_rss_end_bytes = procfs::rss_bytes(gateway.pid)?;
    let report = PathReport {
        path: kind,
        description,
        connections: args.conns,
        namespaces: args.namespaces,
        subscribers_per_namespace: args.conns as f64 / args.namespaces as f64,
        receiver_processes: bench.receivers.0.len(),
        connect_seconds,
        gateway_rss_bytes,
        gateway_rss_end_bytes,
        gateway_notifications_sent: gateway
            .metric("herald_notifications_sent_total")
            .ok()
            .flatten(),
        gateway_slow_consumers: gateway.metric("herald_slow_consumers_total").ok().flatten(),
        gateway_upstream_resyncs_at_start,
        gateway_upstream_resyncs: resyncs(&gateway),
        phases,
    };
    // Servers first, so the server side of each connection closes first and the receivers'
    // ports are not left in TIME_WAIT; then the receivers (their guards kill them).
    drop(gateway);
    drop(relay);
    drop(nats);
    drop(bench);
    drop(dir);
    Ok(report)
}

/// Subscribers of each namespace: connection i subscribes to i % namespaces.
fn subscribers_per_namespace(conns: usize, namespaces: u64) -> Vec<u64> {
    let conns = conns as u64;
    (0..namespaces)
        .map(|ns| conns / namespaces + u64::from(ns < conns % namespaces))
        .collect()
}

/// CPU seconds of the server processes, the receivers and this process, at one instant.
struct CpuSnapshot {
    servers: Vec<f64>,
    receivers: f64,
    loadgen: f64,
}

/// What a phase needs.
struct Bench<'a> {
    args: &'a FanoutArgs,
    servers: Vec<(String, u32)>,
    receivers: Receivers,
    publisher: Publish,
    subscribers: Vec<u64>,
    /// Highest SJID published so far (SJIDs are strictly increasing over the whole path).
    last_sjid: u64,
    /// Next namespace of the round robin.
    next_ns: u64,
}

/// What a phase's publishing loop produced.
struct Published {
    target: Target,
    publishes: u64,
    calls: u64,
    call_us: Histogram<u64>,
    expected: u64,
    measured_publishes: u64,
    measured_expected: u64,
    seconds: f64,
}

impl Published {
    fn new(namespaces: u64) -> Self {
        Published {
            target: Target {
                last: vec![0; namespaces as usize],
                count: vec![0; namespaces as usize],
            },
            publishes: 0,
            calls: 0,
            call_us: receive::new_histogram(),
            expected: 0,
            measured_publishes: 0,
            measured_expected: 0,
            seconds: 0.0,
        }
    }
}

impl Bench<'_> {
    fn cpu(&self) -> anyhow::Result<CpuSnapshot> {
        Ok(CpuSnapshot {
            servers: self
                .servers
                .iter()
                .map(|(_, pid)| procfs::cpu_seconds(*pid))
                .collect::<anyhow::Result<_>>()?,
            receivers: self
                .receivers
                .0
                .iter()
                .map(|r| procfs::cpu_seconds(r.pid).unwrap_or(0.0))
                .sum(),
            loadgen: procfs::cpu_seconds(std::process::id())?,
        })
    }

    /// The next SJID: the wall clock in µs, strictly above the last one.
    fn sjid(&mut self) -> u64 {
        self.last_sjid = now_us().max(self.last_sjid + 1);
        self.last_sjid
    }

    fn next_ns(&mut self) -> u64 {
        let ns = self.next_ns % self.args.namespaces;
        self.next_ns += 1;
        ns
    }

    /// Publishes `changes` and books them; `measured` says whether they count in the window.
    async fn publish(
        &mut self,
        changes: &[(u64, u64)],
        measured: bool,
        out: &mut Published,
    ) -> anyhow::Result<()> {
        let t = Instant::now();
        self.publisher.publish(changes).await?;
        out.call_us
            .saturating_record(t.elapsed().as_micros() as u64);
        out.calls += 1;
        for &(ns, sjid) in changes {
            let subs = self.subscribers[ns as usize];
            out.target.last[ns as usize] = sjid;
            out.target.count[ns as usize] += 1;
            out.publishes += 1;
            out.expected += subs;
            if measured {
                out.measured_publishes += 1;
                out.measured_expected += subs;
            }
        }
        Ok(())
    }

    /// `--rate` publishes a second, one namespace each, for the warm-up and `--seconds`.
    async fn paced(&mut self) -> anyhow::Result<PhaseReport> {
        let args = self.args;
        let period = Duration::from_secs_f64(1.0 / args.rate as f64);
        let warm = (args.warmup_s * args.rate as f64).round() as u64;
        let total = warm + args.seconds * args.rate;
        let lead = Duration::from_millis(200);
        let start = Instant::now() + lead;
        // Deliveries of SJIDs from here on are measured: the scheduled time of the first
        // publish after the warm-up, on the wall clock.
        let from_us = now_us() + (lead + period * warm as u32).as_micros() as u64;
        self.receivers.all(&format!("phase {from_us}"))?;
        let mut out = Published::new(args.namespaces);
        let mut cpu0 = None;
        println!(
            "  paced: {total} publishes at {}/s ({} s warm-up)…",
            args.rate, args.warmup_s
        );
        for i in 0..total {
            tokio::time::sleep_until((start + period * i as u32).into()).await;
            let sjid = self.sjid();
            let measured = sjid >= from_us;
            if measured && cpu0.is_none() {
                cpu0 = Some(self.cpu()?);
            }
            let ns = self.next_ns();
            self.publish(&[(ns, sjid)], measured, &mut out).await?;
        }
        out.seconds = start.elapsed().as_secs_f64();
        let cpu0 = match cpu0 {
            Some(c) => c,
            None => self.cpu()?,
        };
        self.finish("paced", from_us, cpu0, out).await
    }

    /// `--burst` changes, in batches of distinct namespaces, as fast as the path takes them.
    async fn burst(&mut self) -> anyhow::Result<PhaseReport> {
        let args = self.args;
        let batch = args.burst_batch.clamp(1, args.namespaces);
        let from_us = now_us();
        self.receivers.all(&format!("phase {from_us}"))?;
        println!("  burst: {} changes in batches of {batch}…", args.burst);
        let mut out = Published::new(args.namespaces);
        let cpu0 = self.cpu()?;
        let start = Instant::now();
        let mut sent = 0;
        while sent < args.burst {
            let n = batch.min(args.burst - sent);
            let sjid = self.sjid();
            let changes: Vec<(u64, u64)> = (0..n).map(|_| (self.next_ns(), sjid)).collect();
            self.publish(&changes, true, &mut out).await?;
            sent += n;
        }
        out.seconds = start.elapsed().as_secs_f64();
        self.finish("burst", from_us, cpu0, out).await
    }

    /// Waits for every connection to reach its namespace's last SJID (or the settle timeout),
    /// collects the receivers' reports and turns them into figures.
    async fn finish(
        &mut self,
        phase: &'static str,
        from_us: u64,
        cpu0: CpuSnapshot,
        out: Published,
    ) -> anyhow::Result<PhaseReport> {
        let published_at = Instant::now();
        self.receivers
            .all(&format!("target {}", serde_json::to_string(&out.target)?))?;
        let settle = Duration::from_secs(self.args.settle_timeout_s);
        let mut complete = false;
        let mut last_progress = Progress::default();
        while published_at.elapsed() < settle {
            last_progress = self.receivers.progress()?;
            if last_progress.pending == 0 {
                complete = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let settle_seconds = published_at.elapsed().as_secs_f64();
        let cpu1 = self.cpu()?;
        if !complete {
            eprintln!(
                "  warning: {} connections still lack their last SJID after {settle:?} ({} deliveries of {})",
                last_progress.pending, last_progress.delivered, out.expected
            );
        }
        let reports = self.receivers.reports()?;

        let mut latency = receive::new_histogram();
        let mut first_recv_us = u64::MAX;
        let mut last_recv_us = 0;
        let mut sum = ReceiverReport::default();
        let mut errors = Vec::new();
        for r in &reports {
            latency.add(receive::decode_histogram(&r.hist_measured)?)?;
            if r.first_recv_us > 0 {
                first_recv_us = first_recv_us.min(r.first_recv_us);
            }
            last_recv_us = last_recv_us.max(r.last_recv_us);
            sum.delivered += r.delivered;
            sum.measured += r.measured;
            sum.coalesced += r.coalesced;
            sum.missing += r.missing;
            sum.stale_connections += r.stale_connections;
            sum.extra += r.extra;
            sum.non_increasing += r.non_increasing;
            sum.foreign += r.foreign;
            sum.resets += r.resets;
            sum.goaways += r.goaways;
            sum.closed += r.closed;
            errors.extend(r.errors.iter().cloned());
        }
        let window_seconds = (last_recv_us.saturating_sub(from_us)) as f64 / 1e6;
        let measured = sum.measured;
        let per_1m = |cpu: f64| {
            if measured == 0 {
                0.0
            } else {
                cpu / measured as f64 * 1e6
            }
        };
        let cpu: Vec<CpuFigure> = self
            .servers
            .iter()
            .zip(cpu0.servers.iter().zip(&cpu1.servers))
            .map(|((name, pid), (a, b))| CpuFigure {
                process: name.clone(),
                pid: *pid,
                cpu_seconds: b - a,
                per_1m_deliveries: per_1m(b - a),
            })
            .collect();
        let server_cpu_per_1m = cpu.iter().map(|c| c.per_1m_deliveries).sum();
        Ok(PhaseReport {
            phase,
            publishes: out.publishes,
            publish_calls: out.calls,
            publish_seconds: out.seconds,
            publishes_per_s: out.publishes as f64 / out.seconds.max(1e-9),
            publish_call_us: Quantiles::of(&out.call_us),
            expected_deliveries: out.expected,
            delivered: sum.delivered,
            coalesced: sum.coalesced,
            missing: sum.missing,
            stale_connections: sum.stale_connections,
            extra: sum.extra,
            non_increasing: sum.non_increasing,
            foreign: sum.foreign,
            resets: sum.resets,
            goaways: sum.goaways,
            closed_connections: sum.closed,
            complete,
            settle_seconds,
            measured_publishes: out.measured_publishes,
            measured_expected: out.measured_expected,
            measured_deliveries: measured,
            window_seconds,
            deliveries_per_s: measured as f64 / window_seconds.max(1e-9),
            latency_us: Quantiles::of(&latency),
            cpu,
            server_cpu_per_1m,
            receivers_cpu_seconds: cpu1.receivers - cpu0.receivers,
            loadgen_cpu_seconds: cpu1.loadgen - cpu0.loadgen,
            errors,
        })
    }
}

/// How the load generator publishes on one path.
enum Publish {
    Http(HttpPublisher),
    /// Boxed: it is much larger than the HTTP one. Its JetStream context keeps the client.
    Nats(Box<herald_relay::Publisher>),
}

impl Publish {
    async fn connect(
        kind: PathKind,
        admin: SocketAddr,
        nats_url: Option<String>,
        partitions: u64,
    ) -> anyhow::Result<Self> {
        match (kind, nats_url) {
            (PathKind::Nats, Some(url)) => {
                let client = tokio::time::timeout(
                    Duration::from_secs(10),
                    async_nats::connect(url.as_str()),
                )
                .await??;
                let js = async_nats::jetstream::new(client);
                Ok(Publish::Nats(Box::new(herald_relay::Publisher::new(
                    js, partitions,
                ))))
            }
            _ => Ok(Publish::Http(HttpPublisher::connect(admin).await?)),
        }
    }

    async fn publish(&mut self, changes: &[(u64, u64)]) -> anyhow::Result<()> {
        match self {
            Publish::Http(http) => tokio::time::timeout(PUBLISH_TIMEOUT, http.publish(changes))
                .await
                .map_err(|_| anyhow::anyhow!("POST /v1/publish took over {PUBLISH_TIMEOUT:?}"))?,
            Publish::Nats(publisher) => {
                let done = tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(changes))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("JetStream acks took over {PUBLISH_TIMEOUT:?}")
                    })??;
                anyhow::ensure!(
                    done.stored == changes.len(),
                    "JetStream stored {} of {} changes ({} duplicates)",
                    done.stored,
                    changes.len(),
                    done.duplicates
                );
                Ok(())
            }
        }
    }
}

/// `POST /v1/publish` over one kept-alive HTTP/1.1 connection.
struct HttpPublisher {
    conn: tokio::io::BufReader<tokio::net::TcpStream>,
    request: Vec<u8>,
    body: String,
    line: String,
}

impl HttpPublisher {
    async fn connect(admin: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(admin),
        )
        .await??;
        stream.set_nodelay(true)?;
        Ok(HttpPublisher {
            conn: tokio::io::BufReader::new(stream),
            request: Vec::new(),
            body: String::new(),
            line: String::new(),
        })
    }

    async fn publish(&mut self, changes: &[(u64, u64)]) -> anyhow::Result<()> {
        use std::fmt::Write as _;
        self.body.clear();
        self.body.push_str(r#"{"changes":["#);
        for (i, (ns, sjid)) in changes.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(self.body, r#"{sep}{{"ns":{ns},"sjid":{sjid}}}"#)?;
        }
        self.body.push_str("]}");
        self.request.clear();
        write!(
            self.request,
            "POST /v1/publish HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.body.len()
        )?;
        self.request.extend_from_slice(self.body.as_bytes());
        self.conn.get_mut().write_all(&self.request).await?;

        self.line.clear();
        anyhow::ensure!(
            self.conn.read_line(&mut self.line).await? > 0,
            "the admin listener closed the connection"
        );
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad HTTP status line {:?}", self.line))?;
        let mut length = 0usize;
        loop {
            self.line.clear();
            anyhow::ensure!(
                self.conn.read_line(&mut self.line).await? > 0,
                "the admin listener closed the connection"
            );
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.conn.read_exact(&mut body).await?;
        anyhow::ensure!(
            status == 202,
            "POST /v1/publish answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}

/// One `receive` child process.
struct Receiver {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pid: u32,
}

impl Receiver {
    fn spawn(
        args: &FanoutArgs,
        gateway: &Gateway,
        source: IpAddr,
        count: usize,
        first: usize,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("receive")
            .args(["--ws", &gateway.ws.to_string(), "--token", &gateway.token])
            .args(["--source", &source.to_string()])
            .args(["--count", &count.to_string(), "--first", &first.to_string()])
            .args(["--namespaces", &args.namespaces.to_string()])
            .args(["--read-buffer", &args.read_buffer.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        crate::reaper::register(child.id());
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("receiver has no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Receiver {
            pid: child.id(),
            child: Some(child),
            stdin,
            lines,
        })
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("receiver stdin closed"))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| anyhow::anyhow!("receiver {} (exited? see its stderr): {e}", self.pid))
    }

    fn recv(&self, limit: Duration) -> anyhow::Result<String> {
        self.lines.recv_timeout(limit).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => {
                anyhow::anyhow!("receiver {} did not answer within {limit:?}", self.pid)
            }
            mpsc::RecvTimeoutError::Disconnected => {
                anyhow::anyhow!("receiver {} exited (see its stderr)", self.pid)
            }
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            crate::reaper::unregister(child.id());
        }
    }
}

/// All receivers of a path.
struct Receivers(Vec<Receiver>);

impl Receivers {
    /// Sends `line` to every receiver, then collects each one's answer.
    fn ask(&mut self, line: &str) -> anyhow::Result<Vec<String>> {
        for r in &mut self.0 {
            r.send(line)?;
        }
        self.0.iter().map(|r| r.recv(COMMAND_TIMEOUT)).collect()
    }

    /// Sends a command every receiver answers with `ok`.
    fn all(&mut self, line: &str) -> anyhow::Result<()> {
        for answer in self.ask(line)? {
            anyhow::ensure!(answer == "ok", "receiver answered {answer:?}");
        }
        Ok(())
    }

    fn progress(&mut self) -> anyhow::Result<Progress> {
        let mut sum = Progress::default();
        for answer in self.ask("progress")? {
            let p: Progress = serde_json::from_str(&answer)?;
            sum.delivered += p.delivered;
            sum.pending += p.pending;
            sum.closed += p.closed;
        }
        Ok(sum)
    }

    fn reports(&mut self) -> anyhow::Result<Vec<ReceiverReport>> {
        self.ask("report")?
            .iter()
            .map(|a| Ok(serde_json::from_str(a)?))
            .collect()
    }
}

fn compare(paths: &[PathReport]) -> Vec<Comparison> {
    let find = |kind| paths.iter().find(|p| p.path == kind);
    let (Some(s), Some(n)) = (find(PathKind::Standalone), find(PathKind::Nats)) else {
        return Vec::new();
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let gateway_cpu = |ph: &PhaseReport| {
        ph.cpu
            .iter()
            .find(|c| c.process == "gateway")
            .map_or(0.0, |c| c.per_1m_deliveries)
    };
    s.phases
        .iter()
        .filter_map(|sp| {
            let np = n.phases.iter().find(|p| p.phase == sp.phase)?;
            Some(Comparison {
                phase: sp.phase,
                p50: ratio(np.latency_us.p50 as f64, sp.latency_us.p50 as f64),
                p99: ratio(np.latency_us.p99 as f64, sp.latency_us.p99 as f64),
                p999: ratio(np.latency_us.p999 as f64, sp.latency_us.p999 as f64),
                deliveries_per_s: ratio(np.deliveries_per_s, sp.deliveries_per_s),
                server_cpu_per_1m: ratio(np.server_cpu_per_1m, sp.server_cpu_per_1m),
                gateway_cpu_per_1m: ratio(gateway_cpu(np), gateway_cpu(sp)),
            })
        })
        .collect()
}

fn print_path(p: &PathReport) {
    println!(
        "  {} connections, {} namespaces × {:.1} subscribers; gateway RSS {:.1} MiB → {:.1} MiB; \
         gateway sent {} notifications, {} slow consumers{}",
        p.connections,
        p.namespaces,
        p.subscribers_per_namespace,
        mib(p.gateway_rss_bytes),
        mib(p.gateway_rss_end_bytes),
        p.gateway_notifications_sent
            .map_or("?".into(), |v| format!("{v:.0}")),
        p.gateway_slow_consumers
            .map_or("?".into(), |v| format!("{v:.0}")),
        p.gateway_upstream_resyncs
            .zip(p.gateway_upstream_resyncs_at_start)
            .map_or(String::new(), |(end, start)| format!(
                ", {start:.0} upstream resyncs by the end of connecting, {:.0} while measuring",
                end - start
            ))
    );
    println!(
        "  {:<6} {:>9} {:>8} {:>10} {:>10} {:>7} {:>9} {:>12} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "phase",
        "publishes",
        "pub/s",
        "expected",
        "delivered",
        "missing",
        "coalesced",
        "deliveries/s",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max µs"
    );
    for ph in &p.phases {
        let l = &ph.latency_us;
        println!(
            "  {:<6} {:>9} {:>8.0} {:>10} {:>10} {:>7} {:>9} {:>12.0} {:>7} {:>7} {:>7} {:>7} {:>8}",
            ph.phase,
            ph.publishes,
            ph.publishes_per_s,
            ph.expected_deliveries,
            ph.delivered,
            ph.missing,
            ph.coalesced,
            ph.deliveries_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
    }
    for ph in &p.phases {
        let per: Vec<String> = ph
            .cpu
            .iter()
            .map(|c| format!("{} {:.2}", c.process, c.per_1m_deliveries))
            .collect();
        println!(
            "  {} CPU-s per 1M deliveries: {} = {:.2} server total ({} measured deliveries in {:.2} s; \
             receivers used {:.1} CPU-s, publisher {:.1}; publish call p50 {} µs, p99 {} µs)",
            ph.phase,
            per.join(", "),
            ph.server_cpu_per_1m,
            ph.measured_deliveries,
            ph.window_seconds,
            ph.receivers_cpu_seconds,
            ph.loadgen_cpu_seconds,
            ph.publish_call_us.p50,
            ph.publish_call_us.p99
        );
        let wrong = ph.extra + ph.non_increasing + ph.foreign + ph.resets + ph.goaways;
        if !ph.complete || ph.missing > 0 || ph.closed_connections > 0 || wrong > 0 {
            println!(
                "  {} PROBLEMS: complete={}, missing={} ({} stale connections), closed={}, extra={}, \
                 non-increasing={}, foreign={}, resets={}, goaways={}; first errors: {:?}",
                ph.phase,
                ph.complete,
                ph.missing,
                ph.stale_connections,
                ph.closed_connections,
                ph.extra,
                ph.non_increasing,
                ph.foreign,
                ph.resets,
                ph.goaways,
                ph.errors
            );
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_spread_evenly() {
        assert_eq!(subscribers_per_namespace(15, 5), vec![3; 5]);
        assert_eq!(subscribers_per_namespace(7, 3), vec![3, 2, 2]);
        assert_eq!(subscribers_per_namespace(2, 4), vec![1, 1, 0, 0]);
    }

    #[test]
    fn histograms_survive_the_pipe() {
        let mut h = receive::new_histogram();
        for v in [1, 10, 100, 1000, 123_456] {
            h.record(v).unwrap();
        }
        let back = receive::decode_histogram(&receive::encode_histogram(&h).unwrap()).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
    }
}
