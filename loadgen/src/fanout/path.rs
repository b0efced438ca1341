//! One path: its temp dir, its servers (gateway, and relay + nats-server on the nats path),
//! its receivers, and its phases.

use super::bench::Bench;
use super::print::mib;
use super::publish::Publish;
use super::receiver::{Receiver, Receivers};
use super::report::PathReport;
use super::{FanoutArgs, PathKind};
use crate::gateway::Gateway;
use crate::natsproc::{self, NatsServer, Relay};
use crate::procfs;
use crate::receive::now_us;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long a distributed gateway may take to report ready (its upstream subscribed).
const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Gateway heartbeat announced to the receivers: they stay silent, so the longest allowed.
const HEARTBEAT_MS: &str = "900000";

/// A temp dir removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> anyhow::Result<Self> {
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

pub(super) fn run_path(
    rt: &tokio::runtime::Runtime,
    args: &FanoutArgs,
    kind: PathKind,
    index: usize,
) -> anyhow::Result<PathReport> {
    if kind.is_peer() {
        return super::peer_path::run_peer_path(rt, args, kind, index);
    }
    let loadavg_start = super::loadavg();
    let dir = TempDir::new(kind.name())?;
    let gateway_bin = crate::gateway::sibling_binary(args.gateway_bin.as_ref(), "herald-gateway")?;
    let gateway_log = dir.0.join("gateway.log");
    let mut gateway_args = vec![
        "--heartbeat-ms".to_owned(),
        HEARTBEAT_MS.to_owned(),
        "--partitions".to_owned(),
        args.partitions.to_string(),
    ];
    let mut servers: Vec<(String, u32)> = Vec::new();
    let (nats, relay, description) = match kind {
        PathKind::NatsWs | PathKind::NatsWsJs | PathKind::NodeWs => {
            anyhow::bail!("{} is a peer path", kind.name())
        }
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
            let nats_bin = natsproc::nats_server_binary(args.peers.nats_server.as_deref())?;
            let relay_bin =
                crate::gateway::sibling_binary(args.relay_bin.as_ref(), "herald-relay")?;
            let nats = NatsServer::start(&nats_bin, &dir.0)?;
            let relay_log = dir.0.join("relay.log");
            let mut relay_args = vec![
                "--coalesce-us".to_owned(),
                args.coalesce_us.to_string(),
                "--partitions".to_owned(),
                args.partitions.to_string(),
            ];
            relay_args.extend(args.relay_arg.iter().cloned());
            let relay = Relay::start(&relay_bin, &nats.url(), &relay_args, &relay_log)?;
            gateway_args.push("--nats".into());
            gateway_args.push(nats.url());
            (
                Some(nats),
                Some(relay),
                format!(
                    "nats-server -js + herald-relay{} + herald-gateway --nats{}; \
                     herald_relay::Publisher to JetStream (unless told otherwise: gateways read \
                     the journal's subjects, the relay vouches with a journal pull every 500 ms)",
                    relay_args[..2]
                        .iter()
                        .filter(|_| args.coalesce_us > 0)
                        .chain(&args.relay_arg)
                        .map(|a| format!(" {a}"))
                        .collect::<String>(),
                    args.gateway_arg
                        .iter()
                        .map(|a| format!(" {a}"))
                        .collect::<String>()
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

    let rss_before = settled_rss(gateway.pid, BEFORE_SETTLE)?;
    let (receivers, connect_seconds) = open_receivers(args, index, |source, count, first| {
        Receiver::spawn(args, &gateway, source, count, first)
    })?;
    let gateway_rss_bytes = settled_rss(gateway.pid, IDLE_SETTLE)?;
    let rss_per_connection = per_connection(rss_before, gateway_rss_bytes, args.conns);
    println!(
        "  {} connections in {} receiver processes subscribed in {:.1} s; gateway RSS {:.1} MiB \
         → {:.1} MiB idle: {:.0} B per connection",
        args.conns,
        receivers.0.len(),
        connect_seconds,
        mib(rss_before),
        mib(gateway_rss_bytes),
        rss_per_connection
    );

    let resyncs = |g: &Gateway| match kind {
        PathKind::Nats => g.metric("herald_upstream_resyncs_total").ok().flatten(),
        _ => None,
    };
    let gateway_upstream_resyncs_at_start = resyncs(&gateway);
    let mut bench = Bench::new(args, servers, receivers, publisher);
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
        loadavg_start,
        server: "herald-gateway".into(),
        server_version: None,
        server_rss_before_bytes: rss_before,
        rss_per_connection,
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

/// Settling time before the RSS of a server with no clients is read.
pub(super) const BEFORE_SETTLE: Duration = Duration::from_secs(1);
/// Settling time after the last connection subscribed, before the idle RSS is read (lets a
/// garbage-collected server collect what setting up connections left behind, as it would idle).
pub(super) const IDLE_SETTLE: Duration = Duration::from_secs(2);

/// RSS of `pid` after waiting `settle`.
pub(super) fn settled_rss(pid: u32, settle: Duration) -> anyhow::Result<u64> {
    std::thread::sleep(settle);
    procfs::rss_bytes(pid)
}

/// RSS growth per connection, bytes.
pub(super) fn per_connection(before: u64, after: u64, conns: usize) -> f64 {
    after.saturating_sub(before) as f64 / conns.max(1) as f64
}

/// Starts the receiver child processes of a path (`spawn(source, count, first)` starts one) and
/// waits until each said `ready`; returns them and the seconds it took.
///
/// Each path uses its own 127.0.<index + 1>.x source addresses, so sockets a previous path left
/// in TIME_WAIT never take the ports this one needs.
pub(super) fn open_receivers(
    args: &FanoutArgs,
    index: usize,
    mut spawn: impl FnMut(IpAddr, usize, usize) -> anyhow::Result<Receiver>,
) -> anyhow::Result<(Receivers, f64)> {
    let started = Instant::now();
    let mut receivers = Receivers(Vec::new());
    let mut first = 0;
    while first < args.conns {
        let count = (args.conns - first).min(args.per_process);
        let k = receivers.0.len();
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, (index + 1) as u8, (2 + k) as u8));
        receivers.0.push(spawn(source, count, first)?);
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
    Ok((receivers, started.elapsed().as_secs_f64()))
}
