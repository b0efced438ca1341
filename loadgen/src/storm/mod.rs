//! The reconnect storm: every connection drops at once, the clients come back with the client
//! library's backoff and resubscribe with their cursors, and changes published meanwhile must all
//! arrive. `--target nats-ws|node-ws` runs the same storm against one of Herald's peers (see
//! [`crate::peer`]), with clients that do what a careful client of that peer would do.
//!
//! ```text
//!  storm-clients children (managed herald_client::Client each, 127.0.0.2, .3, … as source;
//!        │                  or peer clients, `peer_client`)
//!        │ WebSocket, one subscription per client (namespace i % namespaces)
//!        ▼
//!  herald-gateway ──(restart: SIGKILL, then started again on the same port, data dir and key)
//!  (or nats-server / node ops/bench/node-ws-server.js: SIGKILL, then started again on the same
//!   ports, with nothing kept)
//!        ▲
//!  loadgen ── POST /v1/publish (nats-ws: PUB ns.<n> over core NATS), paced, from the moment of
//!             the drop (restart: once the new server is up)
//! ```
//!
//! Measured from the drop: when every client has a new session whose resubscription is live
//! (Herald: `Client::barrier`; peers: the server confirmed the new subscription), when every
//! client's cursor reached the last SJID published to its namespace, the reconnect rate, the
//! connection attempts refused with HTTP 503 by the gateway's admission control, clients that
//! never caught up (*missing*), and the server's RSS (and Herald's heap) before and after.
//!
//! *Missing* must be 0 for Herald: its clients resubscribe with their cursors and get what they
//! missed. The peers have no replay: a client that was away when its namespace's last change was
//! published never gets it. So for a peer the storm does not wait for every client to catch up:
//! once publishing finished and every client resubscribed, it waits [`PEER_SETTLE`] more and
//! counts as missing the clients still below their namespace's last SJID. That count is the
//! figure the comparison is about; it is printed, and does not fail the run.
//!
//! # Layout
//! - `clients`: the `storm-clients` child process and its line protocol.
//! - `peer_client`: a peer's client in that child (connect, subscribe, read, back off).
//! - `children`: the parent's side of that protocol (spawning, commands, progress).
//! - `server`: the system under test (a gateway or a peer server), its restart and its memory.
//! - this module: the arguments, the drop, the publishing and the report.

mod children;
pub(crate) mod clients;
mod peer_client;
mod server;
mod state;

use children::{Children, wait_until};
use server::{Server, ServerMemory, start_server};

use crate::fanout::publish::{Endpoint, Publish};
use crate::gateway::Gateway;
use crate::peer::Protocol;
use crate::peer::server::PeerArgs;
use crate::progress::Bars;
use crate::receive::{decode_histogram, new_histogram, now_us};
use hdrhistogram::Histogram;
use serde::Serialize;
use state::StormReport;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Changes per `POST /v1/publish` when publishing the starting SJIDs.
const SEED_BATCH: usize = 200;
/// Peers only: how long the storm goes on after the later of "publishing finished" and "every
/// client resubscribed" before the clients still behind are counted as missing. By then every
/// change has long reached every subscribed client (deliveries take milliseconds), so a client
/// still behind missed its namespace's last change for good: a peer never sends it again.
pub(crate) const PEER_SETTLE: Duration = Duration::from_secs(2);

/// The system the storm runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Target {
    /// `herald-gateway` (standalone, its embedded journal), managed `herald_client::Client`s.
    Herald,
    /// nats-server's WebSocket listener (core NATS), NATS-text-over-WebSocket clients.
    NatsWs,
    /// `ops/bench/node-ws-server.js` (Node `ws`), its JSON clients.
    NodeWs,
}

impl Target {
    /// The peer protocol, or `None` for Herald.
    fn protocol(self) -> Option<Protocol> {
        match self {
            Target::Herald => None,
            Target::NatsWs => Some(Protocol::NatsWs),
            Target::NodeWs => Some(Protocol::NodeWs),
        }
    }
}

/// How every connection is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DropKind {
    /// SIGKILL the gateway and start it again on the same port, data dir and key.
    Restart,
    /// Every client cuts its socket at once (`Client::disconnect_now`); the gateway stays up.
    Cut,
}

/// Arguments of `storm`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StormArgs {
    /// The system to storm: Herald, or one of its peers.
    #[arg(long, value_enum, default_value = "herald")]
    target: Target,
    /// Clients (managed `herald_client::Client`s, or peer clients; one connection and one
    /// subscription each).
    #[arg(long, default_value_t = 15_000)]
    conns: usize,
    /// Namespaces; client i subscribes to namespace i % namespaces.
    #[arg(long, default_value_t = 1000)]
    namespaces: u64,
    /// Clients per child process (each child binds its own source address, 127.0.0.2, …).
    #[arg(long, default_value_t = 5000)]
    per_process: usize,
    /// How the connections are dropped.
    #[arg(long, value_enum, default_value = "restart")]
    drop: DropKind,
    /// Changes published from the drop on (one namespace each, round-robin).
    #[arg(long, default_value_t = 5000)]
    publishes: u64,
    /// Their rate, per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How the clients start and come back (handed on to the children).
    #[command(flatten)]
    policy: clients::ClientPolicy,
    /// Longest wait, from the drop, for every client to be caught up (peers: resubscribed).
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Where the peers' programs are (`--target nats-ws|node-ws`).
    #[command(flatten)]
    peers: PeerArgs,
    /// Gateway binary (default: `herald-gateway` next to this binary; `--target herald`).
    #[arg(long)]
    gateway_bin: Option<String>,
    /// Extra arguments for the gateway (both starts).
    #[arg(long, allow_hyphen_values = true)]
    gateway_arg: Vec<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Time quantiles of the storm, seconds from the drop.
#[derive(Debug, Clone, Default, Serialize)]
struct Times {
    clients: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Times {
    fn of(h: &Histogram<u64>) -> Self {
        let s = |us: u64| us as f64 / 1e6;
        if h.is_empty() {
            return Times::default();
        }
        Times {
            clients: h.len(),
            p50: s(h.value_at_quantile(0.5)),
            p90: s(h.value_at_quantile(0.9)),
            p99: s(h.value_at_quantile(0.99)),
            max: s(h.max()),
        }
    }
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
struct Report {
    target: Target,
    /// The server process measured (`herald-gateway`, `nats-server`, `node`).
    server: String,
    /// What ran, with versions.
    version: String,
    drop: DropKind,
    clients: usize,
    namespaces: u64,
    processes: usize,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    connect_seconds: f64,
    /// Restart: SIGKILL → the new server is ready (gateway: printed its ready line).
    restart_seconds: Option<f64>,
    publishes: u64,
    /// Their pace, per second.
    rate: u64,
    /// Drop → last publish answered.
    publish_seconds: f64,
    /// Drop → every client resubscribed / caught up (None: not within the timeout; peers: not
    /// before the storm ended).
    all_resubscribed_seconds: Option<f64>,
    all_caught_up_seconds: Option<f64>,
    /// Drop → the storm ended and *missing* was counted.
    ended_seconds: f64,
    resubscribed: Times,
    caught_up: Times,
    /// Sessions started after the drop, and their rate from the first to the last.
    reconnects: u64,
    reconnects_per_second: f64,
    sessions_dropped: u64,
    failed_attempts: u64,
    http_503: u64,
    /// The gateway's own count of handshakes refused by its rate limit (the serving one).
    gateway_rate_limited: Option<f64>,
    /// Clients below their namespace's last published SJID when the storm ended.
    missing: u64,
    non_increasing: u64,
    foreign: u64,
    resets: u64,
    denied: u64,
    goaways: u64,
    fatal: u64,
    server_before: ServerMemory,
    server_after: ServerMemory,
    /// RSS of the `storm-clients` processes once every client was subscribed (what managed
    /// clients cost on the client side, runtime included).
    client_processes_rss_bytes: u64,
    errors: Vec<String>,
}

/// What the publisher thread did.
struct Published {
    /// Last SJID per namespace (index = ns; the seed SJID for namespaces not published).
    last: Vec<u64>,
    count: u64,
    /// Drop → last publish answered.
    seconds: f64,
}

pub(crate) fn run(args: &StormArgs) -> anyhow::Result<()> {
    crate::reaper::install()?;
    let dir = std::env::temp_dir().join(format!("herald-storm-{}", std::process::id()));
    crate::reaper::register_dir(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = storm(args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn storm(args: &StormArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let bars = Bars::new();
    let (mut server, connect) = start_server(args, dir)?;
    println!(
        "{} pid {} ({}); {} clients in {} processes, drop = {:?}",
        server.process(),
        server.pid(),
        server.version(),
        args.conns,
        args.conns.div_ceil(args.per_process.max(1)),
        args.drop
    );

    // Every namespace starts at one SJID, so that every cursor is non-zero before the storm.
    // Herald keeps it, and the clients get it when they subscribe; a peer keeps nothing, so it is
    // published once every client is subscribed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seed = now_us();
    let last = vec![seed; args.namespaces as usize];
    let publish_seed = || {
        rt.block_on(async {
            let mut publisher = Publish::open(&server.endpoint()?).await?;
            let all: Vec<(u64, u64)> = (0..args.namespaces).map(|ns| (ns, seed)).collect();
            for batch in all.chunks(SEED_BATCH) {
                publisher.publish(batch).await?;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let peer = args.target.protocol().is_some();
    if !peer {
        publish_seed()?;
    }

    let started = Instant::now();
    let mut children = Children::spawn(args, &connect)?;
    let connecting = bars.bar(args.conns as u64, "connecting");
    let watch = match &server {
        Server::Herald { gw, .. } => Some(watch_metric(gw, connecting.clone())),
        Server::Peer(_) => None,
    };
    let ready = children.wait_ready(Duration::from_secs(600));
    drop(watch);
    connecting.finish_and_clear();
    ready?;
    if peer {
        publish_seed()?;
    }
    children.all(&format!("target {}", serde_json::to_string(&last)?))?;
    wait_until(&mut children, Duration::from_secs(60), |p| {
        p.caught_up == p.clients
    })?;
    let connect_seconds = started.elapsed().as_secs_f64();
    bars.println(&format!(
        "{} clients connected, subscribed and at their seed SJID in {connect_seconds:.1} s",
        args.conns
    ));
    std::thread::sleep(Duration::from_secs(2));
    let before = server.memory()?;
    let client_processes_rss_bytes = children.rss_bytes()?;
    bars.println(&format!(
        "client processes: RSS {:.1} MiB = {:.1} KiB per client",
        client_processes_rss_bytes as f64 / 1048576.0,
        client_processes_rss_bytes as f64 / 1024.0 / args.conns as f64
    ));

    // The drop.
    let mark = now_us();
    let dropped = Instant::now();
    children.all(&format!("mark {mark}"))?;
    let mut restart_seconds = None;
    match args.drop {
        DropKind::Cut => {
            children.all("cut")?;
        }
        DropKind::Restart => {
            server.restart()?;
            restart_seconds = Some(dropped.elapsed().as_secs_f64());
        }
    }
    let publishing = bars.bar(args.publishes, "publishing");
    let publisher = spawn_publisher(args, server.endpoint()?, last, dropped, publishing.clone());

    let resubscribing = bars.bar(args.conns as u64, "resubscribed");
    let catching_up = bars.bar(args.conns as u64, "caught up");
    let deadline = dropped + Duration::from_secs(args.timeout_s);
    let mut publisher = Some(publisher);
    let mut published = None;
    let mut all_resubscribed = None;
    let mut all_caught_up = None;
    while Instant::now() < deadline {
        if publisher.as_ref().is_some_and(|p| p.is_finished())
            && let Some(p) = publisher.take()
        {
            let p = p
                .join()
                .map_err(|_| anyhow::anyhow!("the publisher thread panicked"))??;
            publishing.finish_and_clear();
            children.all(&format!("target {}", serde_json::to_string(&p.last)?))?;
            published = Some(p);
        }
        let p = children.progress()?;
        resubscribing.set_position(p.resubscribed);
        resubscribing.set_message(format!(
            "{} refused with 503, {} failed attempts",
            p.http_503, p.failed_attempts
        ));
        catching_up.set_position(p.caught_up);
        if all_resubscribed.is_none() && p.resubscribed == p.clients {
            all_resubscribed = Some(dropped.elapsed().as_secs_f64());
        }
        if published.is_some() && p.caught_up == p.clients {
            all_caught_up = Some(dropped.elapsed().as_secs_f64());
        }
        if all_resubscribed.is_some() && all_caught_up.is_some() {
            break;
        }
        // A peer's clients that missed their namespace's last change never catch up.
        if peer
            && let (Some(pub_done), Some(resub)) = (&published, all_resubscribed)
            && dropped.elapsed().as_secs_f64()
                >= pub_done.seconds.max(resub) + PEER_SETTLE.as_secs_f64()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended_seconds = dropped.elapsed().as_secs_f64();
    resubscribing.finish_and_clear();
    catching_up.finish_and_clear();
    publishing.finish_and_clear();
    let Some(published) = published else {
        anyhow::bail!("publishing did not finish within {} s", args.timeout_s);
    };
    std::thread::sleep(Duration::from_secs(2));
    let after = server.memory()?;

    let mut report = Report {
        target: args.target,
        server: server.process().to_owned(),
        version: server.version(),
        drop: args.drop,
        clients: args.conns,
        namespaces: args.namespaces,
        processes: children.count(),
        backoff_initial_ms: args.policy.backoff_initial_ms,
        backoff_max_ms: args.policy.backoff_max_ms,
        connect_seconds,
        restart_seconds,
        publishes: published.count,
        rate: args.rate,
        publish_seconds: published.seconds,
        all_resubscribed_seconds: all_resubscribed,
        all_caught_up_seconds: all_caught_up,
        ended_seconds,
        resubscribed: Times::default(),
        caught_up: Times::default(),
        reconnects: 0,
        reconnects_per_second: 0.0,
        sessions_dropped: 0,
        failed_attempts: 0,
        http_503: 0,
        gateway_rate_limited: server.rate_limited(),
        missing: 0,
        non_increasing: 0,
        foreign: 0,
        resets: 0,
        denied: 0,
        goaways: 0,
        fatal: 0,
        server_before: before,
        server_after: after,
        client_processes_rss_bytes,
        errors: Vec::new(),
    };
    let (mut resub, mut caught) = (new_histogram(), new_histogram());
    let (mut first_connect, mut last_connect) = (u64::MAX, 0);
    for line in children.all("report")? {
        let r: StormReport = serde_json::from_str(&line)?;
        resub.add(decode_histogram(&r.hist_resubscribed)?)?;
        caught.add(decode_histogram(&r.hist_caught_up)?)?;
        if r.first_connect_us != 0 {
            first_connect = first_connect.min(r.first_connect_us);
        }
        last_connect = last_connect.max(r.last_connect_us);
        report.reconnects += r.reconnects;
        report.sessions_dropped += r.progress.disconnects;
        report.failed_attempts += r.progress.failed_attempts;
        report.http_503 += r.progress.http_503;
        report.fatal += r.progress.fatal;
        report.missing += r.missing;
        report.non_increasing += r.non_increasing;
        report.foreign += r.foreign;
        report.resets += r.resets;
        report.denied += r.denied;
        report.goaways += r.goaways;
        report.errors.extend(r.errors);
    }
    report.resubscribed = Times::of(&resub);
    report.caught_up = Times::of(&caught);
    if last_connect > first_connect {
        report.reconnects_per_second =
            report.reconnects as f64 / ((last_connect - first_connect) as f64 / 1e6);
    }
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("report written to {}", path.display());
    }
    drop(children);
    drop(server);
    if peer {
        // Missing clients are what a peer without replay does; a broken run is not.
        anyhow::ensure!(
            report.all_resubscribed_seconds.is_some() && report.fatal == 0 && report.foreign == 0,
            "some clients never resubscribed or got changes of other namespaces (see above)"
        );
    } else {
        anyhow::ensure!(
            report.missing == 0 && report.fatal == 0 && report.foreign == 0,
            "some clients never caught up or were refused for good (see above)"
        );
    }
    Ok(())
}

/// A thread that publishes `--publishes` changes at `--rate` to `endpoint` (one namespace each,
/// round-robin, SJIDs from the wall clock), from `dropped` on.
fn spawn_publisher(
    args: &StormArgs,
    endpoint: Endpoint,
    mut last: Vec<u64>,
    dropped: Instant,
    bar: indicatif::ProgressBar,
) -> std::thread::JoinHandle<anyhow::Result<Published>> {
    let (publishes, rate, namespaces) = (args.publishes, args.rate, args.namespaces);
    std::thread::spawn(move || -> anyhow::Result<Published> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut publisher = Publish::open(&endpoint).await?;
            let per_tick = (rate / 100).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut prev = 0;
            let mut count = 0;
            while count < publishes {
                tick.tick().await;
                let n = per_tick.min(publishes - count);
                let batch: Vec<(u64, u64)> = (0..n)
                    .map(|k| {
                        prev = now_us().max(prev + 1);
                        ((count + k) % namespaces, prev)
                    })
                    .collect();
                publisher.publish(&batch).await?;
                for &(ns, sjid) in &batch {
                    last[ns as usize] = sjid;
                }
                count += n;
                bar.set_position(count);
            }
            Ok(Published {
                last,
                count,
                seconds: dropped.elapsed().as_secs_f64(),
            })
        })
    })
}

/// A thread that shows the gateway's `herald_connections` on `bar` until the guard is dropped.
fn watch_metric(gw: &Gateway, bar: indicatif::ProgressBar) -> crate::idle::MetricWatch {
    let gw = Gateway::attach(gw.ws, gw.admin, gw.pid, String::new());
    crate::idle::MetricWatch::start(vec![gw], bar)
}

fn print_report(r: &Report) {
    let opt =
        |v: Option<f64>| v.map_or("not within the timeout".to_owned(), |s| format!("{s:.2} s"));
    let caught_up = match (r.all_caught_up_seconds, r.target) {
        (None, Target::NatsWs | Target::NodeWs) => format!(
            "never all caught up ({} clients missed their namespace's last change; the storm \
             ended after {:.2} s)",
            r.missing, r.ended_seconds
        ),
        (v, _) => format!("caught up after {}", opt(v)),
    };
    println!(
        "{} ({}), drop ({:?}){}: every client resubscribed after {}, {} (publishing {} changes took {:.2} s)",
        r.server,
        r.version,
        r.drop,
        r.restart_seconds
            .map_or(String::new(), |s| format!(", back in {s:.2} s")),
        opt(r.all_resubscribed_seconds),
        caught_up,
        r.publishes,
        r.publish_seconds
    );
    println!(
        "  resubscribed: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s; caught up: p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        r.resubscribed.p50,
        r.resubscribed.p90,
        r.resubscribed.p99,
        r.resubscribed.max,
        r.caught_up.p50,
        r.caught_up.p99,
        r.caught_up.max
    );
    println!(
        "  {} reconnects at {:.0}/s; {} sessions dropped, {} failed attempts, {} refused with HTTP 503{}",
        r.reconnects,
        r.reconnects_per_second,
        r.sessions_dropped,
        r.failed_attempts,
        r.http_503,
        match (r.target, r.gateway_rate_limited) {
            (Target::Herald, v) => format!(
                " (gateway counted {})",
                v.map_or("none".to_owned(), |v| format!("{v:.0}"))
            ),
            _ => String::new(),
        }
    );
    println!(
        "  missing {} (clients below their namespace's last SJID), non-increasing {}, foreign {}, resets {}, denied {}, goaways {}, fatal {}",
        r.missing, r.non_increasing, r.foreign, r.resets, r.denied, r.goaways, r.fatal
    );
    let mem = |m: &ServerMemory| {
        format!(
            "pid {}{}: RSS {:.1} MiB, heap {}",
            m.pid,
            m.connections
                .map_or(String::new(), |c| format!(" with {c:.0} connections")),
            m.rss_bytes as f64 / 1048576.0,
            m.heap_bytes
                .map_or("n/a".into(), |h| format!("{:.1} MiB", h as f64 / 1048576.0))
        )
    };
    println!("  {} before: {}", r.server, mem(&r.server_before));
    println!("  {} after:  {}", r.server, mem(&r.server_after));
    for e in r.errors.iter().take(5) {
        println!("  error: {e}");
    }
}
