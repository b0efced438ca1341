//! One peer path (nats-ws, nats-ws-js, node-ws): the peer server, `peer-receive` children with
//! the same connections and namespaces as Herald's paths, and the same paced and burst phases.

use super::bench::Bench;
use super::path::{
    BEFORE_SETTLE, IDLE_SETTLE, TempDir, open_receivers, per_connection, settled_rss,
};
use super::print::mib;
use super::publish::Publish;
use super::receiver::Receiver;
use super::report::PathReport;
use super::{FanoutArgs, PathKind};
use crate::peer::Protocol;
use crate::peer::server::{PeerServer, node_ws_script};
use crate::procfs;
use std::time::Duration;

pub(super) fn run_peer_path(
    rt: &tokio::runtime::Runtime,
    args: &FanoutArgs,
    kind: PathKind,
    index: usize,
) -> anyhow::Result<PathReport> {
    let loadavg_start = super::loadavg();
    let dir = TempDir::new(kind.name())?;
    let (server, process, protocol, description) = match kind {
        PathKind::NatsWs => {
            let server = PeerServer::start(Protocol::NatsWs, &args.peers, &dir.0)?;
            let description = format!(
                "{} (core NATS, no JetStream) with `websocket {{ no_tls: true }}`; clients speak \
                 the NATS text protocol over WebSocket, one subject per namespace; the publisher \
                 PUBs over one NATS TCP connection (async-nats), flushing after each call",
                server.version
            );
            (server, "nats-server", "nats-ws", description)
        }
        PathKind::NatsWsJs => {
            let server = PeerServer::nats_ws_journal(&args.peers, &dir.0, args.peer_journal)?;
            let description = format!(
                "{} with `websocket {{ no_tls: true }}` and JetStream: as nats-ws, but the \
                 publisher writes to a stream on `ns.>` with Herald's journal settings ({})",
                server.version,
                args.peer_journal.describe()
            );
            (server, "nats-server", "nats-ws", description)
        }
        PathKind::NodeWs => {
            let script = node_ws_script(&args.peers)?;
            let server = PeerServer::node_ws(&args.peers.node, &script, &dir.0)?;
            let description = format!(
                "{} ({}): one process, a Map of namespace → Set of sockets, JSON text frames; \
                 POST /v1/publish over one kept-alive HTTP/1.1 connection",
                shown_path(&script),
                server.version
            );
            (server, "node", "node-ws", description)
        }
        PathKind::Standalone | PathKind::Nats => {
            anyhow::bail!("{} is not a peer path", kind.name())
        }
    };
    println!("\n== {}: {description}", kind.name());
    let publisher = rt.block_on(Publish::open(&server.endpoint()?))?;

    let rss_before = settled_rss(server.pid, BEFORE_SETTLE)?;
    let (receivers, connect_seconds) = open_receivers(args, index, |source, count, first| {
        Receiver::spawn_peer(args, protocol, server.ws, source, count, first)
    })?;
    let rss_idle = settled_rss(server.pid, IDLE_SETTLE)?;
    let rss_per_connection = per_connection(rss_before, rss_idle, args.conns);
    println!(
        "  {} connections in {} receiver processes subscribed in {:.1} s; {process} RSS {:.1} MiB \
         → {:.1} MiB idle: {:.0} B per connection",
        args.conns,
        receivers.0.len(),
        connect_seconds,
        mib(rss_before),
        mib(rss_idle),
        rss_per_connection
    );

    let mut bench = Bench::new(
        args,
        vec![(process.to_owned(), server.pid)],
        receivers,
        publisher,
    );
    let mut phases = Vec::new();
    if args.rate > 0 && args.seconds > 0 {
        phases.push(rt.block_on(bench.paced())?);
    }
    if args.burst > 0 {
        phases.push(rt.block_on(bench.burst())?);
    }
    std::thread::sleep(Duration::from_millis(600));
    let report = PathReport {
        path: kind,
        description,
        connections: args.conns,
        namespaces: args.namespaces,
        subscribers_per_namespace: args.conns as f64 / args.namespaces as f64,
        receiver_processes: bench.receivers.0.len(),
        connect_seconds,
        loadavg_start,
        server: process.to_owned(),
        server_version: Some(server.version.clone()),
        server_rss_before_bytes: rss_before,
        rss_per_connection,
        gateway_rss_bytes: rss_idle,
        gateway_rss_end_bytes: procfs::rss_bytes(server.pid)?,
        gateway_notifications_sent: None,
        gateway_slow_consumers: None,
        gateway_upstream_resyncs_at_start: None,
        gateway_upstream_resyncs: None,
        phases,
    };
    // The server first, so the server side of each connection closes first (no TIME_WAIT on
    // the receivers' ports), then the receivers.
    drop(server);
    drop(bench);
    drop(dir);
    Ok(report)
}

/// `path` relative to the current directory when it is under it (reports name the script as
/// `ops/bench/node-ws-server.js`, not by where one checkout happens to be).
fn shown_path(path: &std::path::Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok())
        .unwrap_or(path)
        .display()
        .to_string()
}
