//! The chaos soak (issue #16 item 5): the whole loopback fleet under a steady publish load and
//! thousands of managed clients, with random faults injected from a seeded schedule, and every
//! client checked continuously. Driven by the `herald-chaos` binary (`ops/chaos.sh`) and, in a
//! short version, by `tests/tests/chaos.rs`.
//!
//! ```text
//!  Feed (metaserver: Publisher, retries until acked) ──► HERALD_JOURNAL (R3) on n0 n1 n2
//!                                                          │           (nats-server cluster)
//!                                       relay r0, relay r1 ┘ fan-out, latest
//!                                                          │
//!           proxies (one per gateway and node, cuttable) ──┤
//!                                                          ▼
//!  clients: ws / wss / QUIC (both gateways as URLs) ──► gateway g0, g1 ◄── long-poll (one each)
//! ```
//!
//! Faults ([`Fault`]), one at a time, each kind once per shuffled round: kill -9 and restart of
//! a NATS node, a relay or a gateway; SIGTERM and restart of a NATS node; SIGSTOP … SIGCONT of
//! each kind of process; a gateway's NATS links cut and restored.
//!
//! The [`Soak`] checker records each acknowledged change and each client's CHANGED events as they
//! come: a delay sample per (client, change) from the publish ack to the client learning it
//! (coalescing allowed: being told `s` covers every SJID up to `s`), in a histogram per fault
//! kind whose window (fault start to [`AFTER_FAULT`] after recovery) the ack fell in. At the end
//! every client must know the latest SJID of each namespace it holds: what it does not is missed.

mod servers;
mod soak;
mod summary;

use servers::{Fleet, Gateway, Handle, blocking, feed, free_tcp_port, free_udp_port, keep_logs};
pub use soak::{Histogram, Soak};
pub use summary::{DelayRow, Drift, Summary};

use crate::fleet::{FleetKey, NAMESPACES, PARTITIONS, gateway_options, relay_options};
use crate::nats::{NatsCluster, RelayProcess};
use crate::proxy::Proxy;
use crate::{GatewayOptions, GatewayProcess};
use async_nats::jetstream;
use herald_client::{Client, ClientConfig, Event, LongPollConfig, LongPoller, TlsRoots};
use herald_relay::Publisher;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Changes acknowledged from a fault's start until this long after its recovery count as
/// published "after" that fault (the delay table's rows).
pub const AFTER_FAULT: Duration = Duration::from_secs(5);
/// A change still undelivered this long after its ack counts as late in the continuous check.
pub const LATE: Duration = Duration::from_secs(10);
/// How long the end check waits for every client to catch up once publishing stopped.
pub const VERIFY: Duration = Duration::from_secs(30);
/// Bound on waiting for the gateways to be ready after a fault.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);
/// Heartbeat the socket clients use (PING interval; a silent gateway is left after a few).
const CLIENT_HEARTBEAT: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// How long the publish load and the fault schedule run (set-up and end check come on top).
    pub duration: Duration,
    /// Seeds the fault schedule, the publisher and the clients' subscriptions.
    pub seed: u64,
    /// Managed clients, spread round-robin over ws, wss, QUIC and long-poll.
    pub clients: usize,
    /// Journal publishes a second.
    pub rate: u32,
    /// Fault kinds to inject (empty: every kind), to bisect a failure.
    pub only: Vec<Fault>,
    /// Include long-poll clients (a quarter of them); false: ws / wss / QUIC only (see
    /// RELIABILITY.md, "Found": long-pollers get a RESET when a relay that lags the journal
    /// answers their look-up).
    pub long_poll: bool,
}

/// The kinds of fault, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A NATS node killed with SIGKILL, restarted with its store after 1–3 s.
    NatsKill,
    /// A NATS node stopped with SIGTERM (graceful), restarted with its store after 1–3 s.
    NatsRestart,
    /// A NATS node hung (SIGSTOP) for 1–3 s, then continued (SIGCONT).
    NatsHang,
    /// A relay killed with SIGKILL, restarted after 1–3 s.
    RelayKill,
    /// A relay hung for 1–3 s.
    RelayHang,
    /// A gateway killed with SIGKILL, restarted on the same ports after 1–3 s.
    GatewayKill,
    /// A gateway hung for 1–3 s.
    GatewayHang,
    /// Every NATS link of a gateway cut (connections dropped, new ones refused) for 1–3 s.
    LinkCut,
}

impl Fault {
    /// Every kind.
    pub const ALL: [Fault; 8] = [
        Fault::NatsKill,
        Fault::NatsRestart,
        Fault::NatsHang,
        Fault::RelayKill,
        Fault::RelayHang,
        Fault::GatewayKill,
        Fault::GatewayHang,
        Fault::LinkCut,
    ];

    /// The table's name of the kind.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Fault::NatsKill => "nats kill -9",
            Fault::NatsRestart => "nats SIGTERM+restart",
            Fault::NatsHang => "nats SIGSTOP",
            Fault::RelayKill => "relay kill -9",
            Fault::RelayHang => "relay SIGSTOP",
            Fault::GatewayKill => "gateway kill -9",
            Fault::GatewayHang => "gateway SIGSTOP",
            Fault::LinkCut => "gateway-NATS cut",
        }
    }

    /// The command-line name (`--only`): `nats-kill`, `nats-restart`, `nats-hang`, `relay-kill`,
    /// `relay-hang`, `gateway-kill`, `gateway-hang`, `link-cut`.
    #[must_use]
    pub fn flag(self) -> &'static str {
        match self {
            Fault::NatsKill => "nats-kill",
            Fault::NatsRestart => "nats-restart",
            Fault::NatsHang => "nats-hang",
            Fault::RelayKill => "relay-kill",
            Fault::RelayHang => "relay-hang",
            Fault::GatewayKill => "gateway-kill",
            Fault::GatewayHang => "gateway-hang",
            Fault::LinkCut => "link-cut",
        }
    }

    /// The kind named `flag` ([`Fault::flag`]).
    #[must_use]
    pub fn from_flag(flag: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.flag() == flag)
    }

    /// The delay histogram of changes published in this kind's window (0 is "no fault").
    fn category(self) -> usize {
        1 + Fault::ALL.iter().position(|&f| f == self).unwrap_or(0)
    }
}

/// Delay categories: "no fault", then one per [`Fault`].
const CATEGORIES: usize = 1 + Fault::ALL.len();

fn category_name(c: usize) -> &'static str {
    if c == 0 {
        "no fault"
    } else {
        Fault::ALL[c - 1].name()
    }
}

/// Starts the fleet, runs the load and the fault schedule for `config.duration`, checks, stops
/// every process (dropping them kills each by pid) and returns the figures.
pub async fn run(config: ChaosConfig) -> Result<Summary, String> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(config.seed);
    println!(
        "chaos: seed {} (replay with --seed {}), {} clients, {} publishes/s, {:?} of load",
        config.seed, config.seed, config.clients, config.rate, config.duration
    );

    // NATS: 3 nodes, R3 journal. `--no_advertise`: a gateway reaches NATS only through its
    // proxies, so that cutting them partitions it.
    let cluster = NatsCluster::start_with_args(3, &["--no_advertise"]).await;
    let urls = cluster.urls();
    let relay_opts = relay_options().arg("--replicas", 3);
    let (r0, r1) = tokio::join!(
        RelayProcess::start(&urls, relay_opts.clone()),
        RelayProcess::start(&urls, relay_opts)
    );
    println!(
        "chaos: NATS cluster and 2 relays ready ({:.1?})",
        started.elapsed()
    );

    let key = FleetKey::new();
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let (cert, cert_key) =
        herald_gateway::tls::self_signed(&names, false).map_err(|e| format!("cert: {e}"))?;
    let cert_dir = tempfile::Builder::new()
        .prefix("herald-chaos-tls-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let (cert_path, key_path) = (
        cert_dir.path().join("cert.pem"),
        cert_dir.path().join("key.pem"),
    );
    std::fs::write(&cert_path, &cert).map_err(|e| e.to_string())?;
    std::fs::write(&key_path, &cert_key).map_err(|e| e.to_string())?;
    let roots = TlsRoots::from_pem(cert.as_bytes()).map_err(|e| format!("roots: {e}"))?;

    let mut gateways = Vec::new();
    for _ in 0..2 {
        let mut proxies = Vec::new();
        for i in 0..3 {
            let addr = cluster
                .url(i)
                .trim_start_matches("nats://")
                .parse()
                .map_err(|e| format!("node address: {e}"))?;
            proxies.push(Proxy::start(addr).await);
        }
        let nats: Vec<String> = proxies.iter().map(Proxy::nats_url).collect();
        let (ws_port, wss_port, quic_port) = (free_tcp_port(), free_tcp_port(), free_udp_port());
        let options: GatewayOptions = gateway_options(&nats.join(","))
            .arg("--auth-key", key.flag())
            .arg("--listen", format!("127.0.0.1:{ws_port}"))
            .arg("--tls-listen", format!("127.0.0.1:{wss_port}"))
            .arg("--quic-listen", format!("127.0.0.1:{quic_port}"))
            .arg("--tls-cert", cert_path.display())
            .arg("--tls-key", key_path.display());
        let process = blocking(|| GatewayProcess::start(options));
        gateways.push(Gateway {
            process,
            ws_port,
            wss_port,
            quic_port,
            proxies,
        });
    }
    let mut fleet = Fleet {
        cluster,
        relays: vec![r0, r1],
        gateways,
        restarts: BTreeMap::new(),
    };
    fleet.ready().await?;
    println!("chaos: 2 gateways ready ({:.1?})", started.elapsed());

    // Clients: transport i % 4 (i % 3 without long-poll), home gateway (i / 4) % 2, the other
    // as fallback.
    let kinds = if config.long_poll { 4 } else { 3 };
    let soak = Soak::new();
    let token = key.token();
    let sessions = Arc::new(AtomicUsize::new(0));
    let goaways = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(config.clients);
    for i in 0..config.clients {
        let home = (i / 4) % 2;
        let order = [home, 1 - home];
        let ns: BTreeSet<u64> = (0..rng.random_range(4..=10))
            .map(|_| rng.random_range(0..NAMESPACES))
            .collect();
        let ns: Vec<u64> = ns.into_iter().collect();
        let (handle, mut events) = match i % kinds {
            3 => {
                let g = &fleet.gateways[home];
                let mut c = LongPollConfig::new(
                    format!("http://127.0.0.1:{}/v1/longpoll", g.ws_port),
                    &*token,
                );
                c.backoff_initial = Duration::from_millis(20);
                c.backoff_max = Duration::from_millis(500);
                c.rng_seed = Some(rng.random());
                let (p, e) = LongPoller::spawn(c);
                (Handle::Poll(p), e)
            }
            t => {
                let urls: Vec<String> = order
                    .iter()
                    .map(|&k| {
                        let g = &fleet.gateways[k];
                        match t {
                            0 => format!("ws://127.0.0.1:{}/v1/connect", g.ws_port),
                            1 => format!("wss://localhost:{}/v1/connect", g.wss_port),
                            _ => format!("quic://localhost:{}", g.quic_port),
                        }
                    })
                    .collect();
                let mut c = ClientConfig::new(urls[0].clone(), &*token);
                c.fallback_urls = urls[1..].to_vec();
                c.tls = Some(roots.clone());
                c.heartbeat = Some(CLIENT_HEARTBEAT);
                c.backoff_initial = Duration::from_millis(20);
                c.backoff_max = Duration::from_millis(500);
                c.rng_seed = Some(rng.random());
                let (client, e) = Client::spawn(c);
                (Handle::Session(client), e)
            }
        };
        let label = match (i % kinds, home) {
            (0, 0) => "ws, gateway0 first",
            (0, _) => "ws, gateway1 first",
            (1, 0) => "wss, gateway0 first",
            (1, _) => "wss, gateway1 first",
            (2, 0) => "quic, gateway0 first",
            (2, _) => "quic, gateway1 first",
            (_, 0) => "long-poll, gateway0",
            _ => "long-poll, gateway1",
        };
        let id = soak.add_client(label, &ns);
        let (ck, s, g) = (soak.clone(), sessions.clone(), goaways.clone());
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Changed { ns, sjid } => ck.told(id, ns, sjid),
                    Event::Connected { .. } => {
                        s.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Goaway { .. } => {
                        g.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Reset { ns } => ck.problem(id, format!("unexpected RESET of {ns:?}")),
                    Event::Denied { code, ns } => {
                        ck.problem(id, format!("unexpected DENIED {code} of {ns:?}"));
                    }
                    Event::Fatal { code, message } => {
                        ck.problem(id, format!("fatal {code}: {message}"));
                    }
                    _ => {}
                }
            }
        });
        let pairs: Vec<(u64, u64)> = ns.iter().map(|&n| (n, 0)).collect();
        match &handle {
            Handle::Session(c) => c.subscribe(&pairs),
            Handle::Poll(p) => p.subscribe(&pairs),
        }
        clients.push(handle);
        if i % 100 == 99 {
            // Let the handshakes through in batches.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Socket clients announce each session; pollers only their first.
    let socket_clients = if config.long_poll {
        config.clients - config.clients / 4
    } else {
        config.clients
    };
    let connect_deadline = Instant::now() + Duration::from_secs(60);
    while sessions.load(Ordering::Relaxed) < socket_clients && Instant::now() < connect_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "chaos: {} client sessions up ({:.1?})",
        sessions.load(Ordering::Relaxed),
        started.elapsed()
    );

    // The publisher, on every node.
    let servers: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|u| u.parse().map_err(|e| format!("NATS URL {u}: {e}")))
        .collect::<Result<_, String>>()?;
    let nc = tokio::time::timeout(
        Duration::from_secs(5),
        async_nats::ConnectOptions::new()
            .name("herald-chaos feed")
            .max_reconnects(None)
            .reconnect_delay_callback(|n| Duration::from_millis((n as u64 * 50).min(250)))
            .connect(servers),
    )
    .await
    .map_err(|_| "feed: NATS connect timed out".to_owned())?
    .map_err(|e| format!("feed: NATS connect: {e}"))?;
    let mut js = jetstream::new(nc);
    js.set_timeout(Duration::from_secs(2));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let feed_task = tokio::spawn(feed(
        Publisher::new(js, PARTITIONS),
        soak.clone(),
        StdRng::seed_from_u64(rng.random()),
        config.rate,
        stop.clone(),
        acked.clone(),
    ));

    // The continuous check, every 2 s, with a progress line every 10 s.
    let load_start = Instant::now();
    let monitor = {
        let (soak, acked, sessions) = (soak.clone(), acked.clone(), sessions.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = 0u64;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let late = soak.late_now();
                tick += 1;
                if tick.is_multiple_of(5) || late > 0 {
                    let rss = crate::process::rss_and_fds(std::process::id()).map_or(0, |s| s.0);
                    println!(
                        "chaos: t={:>4.0}s acked {} sessions {} late(>{}s) {} harness RSS {} MiB",
                        load_start.elapsed().as_secs_f64(),
                        acked.load(Ordering::SeqCst),
                        sessions.load(Ordering::Relaxed),
                        LATE.as_secs(),
                        late,
                        rss / 1024
                    );
                }
            }
        })
    };

    // Warm-up, then the start sample, then the schedule.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start_sample = fleet.sample();
    let mut faults: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut log = Vec::new();
    let end = load_start + config.duration;
    let mut round: Vec<Fault> = Vec::new();
    loop {
        let gap = Duration::from_millis(rng.random_range(1000..=4000));
        tokio::time::sleep(gap).await;
        let down = Duration::from_millis(rng.random_range(1000..=3000));
        // A fault plus its recovery takes roughly this; leave the last seconds fault-free.
        if Instant::now() + down + Duration::from_secs(4) >= end {
            break;
        }
        if round.is_empty() {
            round = if config.only.is_empty() {
                Fault::ALL.to_vec()
            } else {
                config.only.clone()
            };
            round.shuffle(&mut rng);
        }
        let kind = round.pop().expect("non-empty round");
        let at = load_start.elapsed();
        soak.fault_started(kind);
        let target = fleet.inject(kind, &mut rng, down).await;
        let recovery = fleet.ready().await;
        soak.fault_recovered();
        let line = format!(
            "t={:.1}s {} {} for {:.1}s; gateways ready {:.1}s after the start{}",
            at.as_secs_f64(),
            kind.name(),
            target,
            down.as_secs_f64(),
            (load_start.elapsed() - at).as_secs_f64(),
            recovery
                .err()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        println!("chaos: fault {line}");
        log.push(line);
        *faults.entry(kind).or_default() += 1;
    }
    let now = Instant::now();
    if end > now {
        tokio::time::sleep(end - now).await;
    }

    stop.store(true, Ordering::SeqCst);
    let publish_retries = tokio::time::timeout(Duration::from_secs(60), feed_task)
        .await
        .map_err(|_| "the feed did not stop within 60 s".to_owned())?
        .map_err(|e| format!("feed task: {e}"))?;
    let _ = monitor.await;
    let (missed, missed_examples) = soak.verify(VERIFY).await;
    let end_sample = fleet.sample();
    let problem_count = soak.state().problem_count;
    let logs_kept = if missed > 0 || problem_count > 0 {
        keep_logs(&fleet, config.seed)
    } else {
        None
    };
    for c in &clients {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
    }

    let drift = fleet
        .pids()
        .into_iter()
        .filter_map(|(name, _)| {
            Some(Drift {
                restarts: fleet.restarts.get(&name).copied().unwrap_or(0),
                start: *start_sample.get(&name)?,
                end: *end_sample.get(&name)?,
                name,
            })
        })
        .collect();
    let st = soak.state();
    let deliveries = st.delays.iter().map(Histogram::count).sum();
    let delays = st
        .delays
        .iter()
        .enumerate()
        .map(|(c, h)| DelayRow {
            category: category_name(c),
            samples: h.count(),
            p50: h.quantile(0.5),
            p99: h.quantile(0.99),
            max: h.quantile(1.0),
        })
        .collect();
    let summary = Summary {
        config,
        faults,
        log,
        changes: acked.load(Ordering::SeqCst),
        publish_retries,
        deliveries,
        missed,
        missed_examples,
        problems: st.problems.clone(),
        problem_count: st.problem_count,
        late_peak: st.late_peak,
        delays,
        drift,
        sessions: sessions.load(Ordering::Relaxed),
        goaways: goaways.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        logs_kept,
    };
    drop(st);
    // Every process is stopped by pid as `fleet` drops (SIGKILL and reap, each harness type).
    drop(fleet);
    Ok(summary)
}
