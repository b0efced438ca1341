//! The fan-out benchmark: publish→CHANGED latency, deliveries per second and server CPU per
//! million deliveries, for the standalone path and the distributed (NATS) path, in one run.
//!
//! ```text
//!  standalone:  loadgen ──POST /v1/publish (kept-alive HTTP/1.1)──► herald-gateway (embedded journal)
//!  nats:        loadgen ──herald_relay::Publisher──► nats-server -js ──► herald-relay ──► herald-gateway --nats
//!                                                                                            │ WebSocket
//!                                       `receive` child processes (≤ per-process connections each) ◄┘
//!  nats-ws:     loadgen ──PUB ns.<n> (async-nats)──► nats-server ──NATS over WebSocket──► `peer-receive` children
//!  nats-ws-js:  loadgen ──JetStream publish, acks awaited──► nats-server -js (stream on ns.>) ──► as nats-ws
//!  node-ws:     loadgen ──POST /v1/publish──► node ops/bench/node-ws-server.js ──JSON over WebSocket──► `peer-receive`
//! ```
//!
//! The peer paths (`crate::peer`) run the same workload against the systems a user would pick
//! instead of Herald; every path also reports the user-space memory per idle connection of the
//! process that holds the connections (its RSS before and after they are opened).
//!
//! The SJID of every publish is the publisher's wall clock in µs since the Unix epoch (strictly
//! increasing), so each receiver measures publish→CHANGED latency as `now_us - sjid` on its own.
//! Receivers keep per-connection last SJIDs; after a phase the parent tells them the last SJID and
//! the number of publishes of every namespace, and they count what was coalesced (fewer CHANGED
//! than publishes, but the last SJID arrived: allowed) apart from what is missing (the last SJID
//! never arrived: a bug). CPU is `utime + stime` of each server process over the measured window.
//!
//! # Layout
//! - `path`: one path's servers and receivers, started and stopped around its phases.
//! - `bench`: the paced and burst phases, and the merge of the receivers' figures.
//! - `publish`: publishing changes, by HTTP (standalone) or to JetStream (nats).
//! - `receiver`: the `receive` child processes and the line protocol to them.
//! - `report`: the JSON report and the nats ÷ standalone comparison.
//! - `print`: the tables printed after each path.
//! - `peer_path`: one peer path (nats-ws, nats-ws-js, node-ws): its server, receivers and phases.

mod bench;
mod path;
mod peer_path;
mod print;
pub(crate) mod publish;
mod receiver;
mod report;

use crate::receive::now_us;
use path::run_path;
use print::print_path;
use report::{RunReport, compare};
use serde::Serialize;
use std::path::PathBuf;

/// A fan-out path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PathKind {
    /// `herald-gateway` with its embedded journal; publishes by `POST /v1/publish`.
    Standalone,
    /// nats-server + herald-relay + `herald-gateway --nats`; publishes to JetStream.
    Nats,
    /// Peer: core nats-server's WebSocket listener; publishes to `ns.<n>` subjects.
    NatsWs,
    /// Peer: nats-ws whose publisher writes to a JetStream stream (Herald's journal settings)
    /// and waits for the acks: what nats-ws costs with the durable journal Herald keeps.
    NatsWsJs,
    /// Peer: the Node `ws` server `ops/bench/node-ws-server.js`; publishes by HTTP POST.
    NodeWs,
}

impl PathKind {
    fn name(self) -> &'static str {
        match self {
            PathKind::Standalone => "standalone",
            PathKind::Nats => "nats",
            PathKind::NatsWs => "nats-ws",
            PathKind::NatsWsJs => "nats-ws-js",
            PathKind::NodeWs => "node-ws",
        }
    }

    /// A peer (not Herald).
    fn is_peer(self) -> bool {
        matches!(
            self,
            PathKind::NatsWs | PathKind::NatsWsJs | PathKind::NodeWs
        )
    }
}

/// Arguments of `fanout`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FanoutArgs {
    /// Paths to measure, one after another (nats-ws and node-ws are Herald's peers).
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
    /// Where the peers' programs (and nats-server for the nats path) are.
    #[command(flatten)]
    peers: crate::peer::server::PeerArgs,
    /// The nats-ws-js peer's journal: Herald's settings (`herald`), or those minus one part, to
    /// measure what each part costs nats-server.
    #[arg(long, value_enum, default_value_t)]
    peer_journal: crate::peer::publish::PeerJournal,
    /// Extra arguments for the gateway (both Herald paths).
    #[arg(long, allow_hyphen_values = true)]
    gateway_arg: Vec<String>,
    /// Extra arguments for the relay on the nats path (e.g. `--relay-arg=--vouch-ms=0`).
    #[arg(long, allow_hyphen_values = true)]
    relay_arg: Vec<String>,
    /// Write the whole report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
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
        for chart in crate::chart::write_charts(path)? {
            println!("chart written to {}", chart.display());
        }
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

/// The 1, 5 and 15 minute load averages.
pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
