//! Fault tests of the distributed path, against real processes: nats-server(s), `herald-relay`s
//! and `herald-gateway`s, with managed clients (`herald-client`) and a steady journal publisher.
//!
//! ```text
//!  Feed (a metaserver: Publisher, retries until acked) ──► HERALD_JOURNAL ──► relay(s)
//!                                                                               │ fan-out, latest
//!  Fleet: 20 managed clients ◄── WebSocket ── gateway(s) ◄── NATS ──────────────┘
//!    each holds a random subset of 30 namespaces (cursor 0); CHANGED → Checker::told
//! ```
//!
//! Every scenario publishes steadily, injects one fault mid-run (kill -9 a relay, restart
//! nats-server, kill a cluster node, kill a gateway, cut a gateway's NATS link), keeps publishing
//! after recovery, stops, and then the [`Checker`] must prove that no client missed a change
//! (PROTOCOL.md, "Promise"). Each prints its delay report; see them with
//! `cargo test -p herald-e2e --test faults -- --nocapture`.
//!
//! The scenarios run one at a time (a shared lock): each is a handful of processes and 20
//! clients, and on 2 cores the delay figures mean more when they do not compete.
//!
//! Build the binaries first: `cargo build -p herald-gateway -p herald-relay`.
//!
//! Scenario 7 is a two-tier chain: tier-0 relay on one NATS → tier-N relay → another NATS →
//! gateway, with the tier-N relay killed and restarted.

use async_nats::jetstream;
use herald_client::{Client, ClientConfig, Event};
use herald_e2e::nats::{NatsCluster, NatsServer, RelayOptions, RelayProcess};
use herald_e2e::proxy::Proxy;
use herald_e2e::{Checker, GatewayOptions, GatewayProcess, NsGrant, Report};
use herald_gateway::keys::{SigningKey, claims_for};
use herald_relay::Publisher;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Partitions of every deployment here (publisher, relays, gateways).
const PARTITIONS: u64 = 8;
/// Namespaces the publisher writes and the clients hold.
const NAMESPACES: u64 = 30;
/// Managed clients per scenario.
const CLIENTS: usize = 20;
/// Bound on a whole scenario (after it got its turn), processes' start included.
const SCENARIO_LIMIT: Duration = Duration::from_secs(60);
/// Bound on the part of a scenario that runs clients and the publisher.
const PHASE_LIMIT: Duration = Duration::from_secs(45);
/// Publishing before the fault.
const STEADY: Duration = Duration::from_secs(2);
/// Publishing after recovery.
const AFTER: Duration = Duration::from_secs(3);
/// How long the Checker waits, once publishing stopped, for every client to catch up.
const VERIFY: Duration = Duration::from_secs(15);
/// PROTOCOL.md: a change reaches every subscribed client within 1 s of the failed part being
/// replaced.
const DELIVERY_BOUND: Duration = Duration::from_secs(1);
/// How long scenario 6 cuts the gateway's NATS link.
const CUT: Duration = Duration::from_millis(4500);
/// Bound on one client's subscriptions becoming live, or on a recovery step.
const WAIT: Duration = Duration::from_secs(15);

/// One scenario at a time (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes the turn, then runs `scenario` (set-up, then a [`phase`]) within [`SCENARIO_LIMIT`].
async fn run<F: Future<Output = ()>>(name: &str, scenario: F) {
    let _turn = SERIAL.lock().await;
    let started = Instant::now();
    if tokio::time::timeout(SCENARIO_LIMIT, scenario)
        .await
        .is_err()
    {
        panic!("{name}: did not finish within {SCENARIO_LIMIT:?}");
    }
    println!("{name}: passed in {:.1?}", started.elapsed());
}

/// Runs the fault phase of a scenario within [`PHASE_LIMIT`] and panics with its error while
/// the caller's processes are still alive, so that their drop prints the end of their logs.
async fn phase<F: Future<Output = Result<(), String>>>(name: &str, fault_phase: F) {
    match tokio::time::timeout(PHASE_LIMIT, fault_phase).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{name}: {e}"),
        Err(_) => panic!("{name}: the fault phase did not finish within {PHASE_LIMIT:?}"),
    }
}

/// A seed per scenario, printed; `HERALD_FAULTS_SEED` replays one.
fn seed(name: &str) -> StdRng {
    let seed: u64 = std::env::var("HERALD_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{name}: seed {seed} (replay with HERALD_FAULTS_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

fn relay_options() -> RelayOptions {
    RelayOptions::new()
        .arg("--partitions", PARTITIONS)
        .arg("--coalesce-us", 1000)
}

fn gateway_options(nats_url: &str) -> GatewayOptions {
    GatewayOptions::new()
        .arg("--nats", nats_url)
        .arg("--partitions", PARTITIONS)
}

fn ws_url(gw: &GatewayProcess) -> String {
    format!("ws://{}/v1/connect", gw.ws_addr())
}

/// One sample of a gateway's `/metrics` (0 when absent).
async fn gateway_metric(gw: &GatewayProcess, name: &str) -> f64 {
    gw.get("/metrics")
        .await
        .text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Polls `f` every 50 ms until it is true; `Err(what)` after `limit`.
async fn until<F, Fut>(limit: Duration, what: &str, mut f: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        if Instant::now() >= deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A signing key several gateways trust (under kid `fleet`, besides their own `test`), so that
/// one token is good on each of them.
struct FleetKey {
    /// Holds the public key file.
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl FleetKey {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herald-faults-key-")
            .tempdir()
            .expect("tempdir");
        let key = SigningKey::generate(Some("fleet".into())).expect("generate key");
        std::fs::write(dir.path().join("fleet.pub.pem"), key.public_pem()).expect("write key");
        FleetKey { dir, key }
    }

    /// The gateway's `--auth-key` value.
    fn flag(&self) -> String {
        format!("fleet={}", self.dir.path().join("fleet.pub.pem").display())
    }

    /// A token for every namespace, valid an hour.
    fn token(&self) -> String {
        self.key
            .mint(&claims_for("e2e-fleet", NsGrant::All, 3600), None)
            .expect("mint")
    }
}

/// A client of the fleet.
struct Member {
    client: Client,
    /// The namespaces it holds.
    holds: Vec<u64>,
    /// Sessions started (WELCOME received).
    sessions: Arc<AtomicUsize>,
}

/// Managed clients holding random subsets of the namespaces, reporting to a [`Checker`].
struct Fleet {
    members: Vec<Member>,
    /// GOAWAYs received (e.g. `overloaded` when a look-up failed): allowed, counted.
    goaways: Arc<AtomicUsize>,
}

impl Fleet {
    /// Starts [`CLIENTS`] clients on `urls[0]` (the rest are fallbacks), subscribes each to a
    /// random subset of the namespaces with cursor 0, and registers the holds once every
    /// client's subscriptions are live.
    async fn start(
        checker: &Checker,
        urls: &[String],
        token: &str,
        rng: &mut StdRng,
    ) -> Result<Fleet, String> {
        let goaways = Arc::new(AtomicUsize::new(0));
        let mut members = Vec::with_capacity(CLIENTS);
        let mut holds = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            let mut config = ClientConfig::new(urls[0].clone(), token);
            config.fallback_urls = urls[1..].to_vec();
            config.backoff_initial = Duration::from_millis(20);
            config.backoff_max = Duration::from_millis(500);
            config.rng_seed = Some(rng.random());
            let (client, mut events) = Client::spawn(config);
            let id = checker.add_client();
            let sessions = Arc::new(AtomicUsize::new(0));
            let (ck, s, g) = (checker.clone(), sessions.clone(), goaways.clone());
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    match event {
                        Event::Changed { ns, sjid } => ck.told(id, ns, sjid),
                        Event::Connected { .. } => {
                            s.fetch_add(1, Ordering::SeqCst);
                        }
                        Event::Goaway { .. } => {
                            g.fetch_add(1, Ordering::SeqCst);
                        }
                        Event::Reset { ns } => ck.problem(id, format!("unexpected RESET of {ns}")),
                        Event::Denied { code, ns } => {
                            ck.problem(id, format!("unexpected DENIED {code} of {ns}"));
                        }
                        Event::Fatal { code, message } => {
                            ck.problem(id, format!("fatal {code}: {message}"));
                        }
                        _ => {}
                    }
                }
            });
            let ns: BTreeSet<u64> = (0..rng.random_range(4..=10))
                .map(|_| rng.random_range(0..NAMESPACES))
                .collect();
            let ns: Vec<u64> = ns.into_iter().collect();
            client.subscribe(&ns.iter().map(|&n| (n, 0)).collect::<Vec<_>>());
            holds.push((id, ns.clone()));
            members.push(Member {
                client,
                holds: ns,
                sessions,
            });
        }
        let barriers = members
            .iter()
            .map(|m| tokio::time::timeout(WAIT, m.client.barrier()));
        for (i, r) in futures_util::future::join_all(barriers)
            .await
            .into_iter()
            .enumerate()
        {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("client {i}: barrier failed: {e}")),
                Err(_) => return Err(format!("client {i}: subscriptions not live in {WAIT:?}")),
            }
        }
        for (id, ns) in holds {
            checker.holds(id, &ns);
        }
        Ok(Fleet { members, goaways })
    }

    /// Waits until every client has started at least `n` sessions.
    async fn sessions_at_least(&self, n: usize, limit: Duration) -> Result<(), String> {
        until(
            limit,
            &format!("every client to start session {n}"),
            || async {
                self.members
                    .iter()
                    .all(|m| m.sessions.load(Ordering::SeqCst) >= n)
            },
        )
        .await
    }

    /// How long until every client knows, for each namespace it holds, at least the SJID that
    /// was the latest acknowledged one when this was called: the catch-up time after a recovery
    /// (PROTOCOL.md's bound: within 1 s of the failed part being replaced).
    async fn catch_up(&self, checker: &Checker, limit: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let target: HashMap<u64, u64> = (0..NAMESPACES).map(|n| (n, checker.latest(n))).collect();
        loop {
            let behind = self.members.iter().enumerate().find_map(|(i, m)| {
                let cursors = m.client.cursors();
                m.holds.iter().find_map(|n| {
                    let knows = cursors.get(n).copied().unwrap_or(0);
                    (knows < target[n])
                        .then(|| format!("client {i} knows ns {n} at {knows}, not {}", target[n]))
                })
            });
            let Some(behind) = behind else {
                return Ok(started.elapsed());
            };
            if started.elapsed() > limit {
                return Err(format!("not caught up within {limit:?}: {behind}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn goaways(&self) -> usize {
        self.goaways.load(Ordering::SeqCst)
    }

    async fn close(&self) {
        for m in &self.members {
            m.client.close().await;
        }
    }
}

/// What the publisher did.
#[derive(Debug)]
struct FeedStats {
    /// Changes acknowledged (each recorded in the Checker).
    acked: usize,
    /// Publish attempts that failed or timed out and were retried.
    retries: usize,
    /// Longest time from a change's first attempt to its ack.
    slowest_ack: Duration,
}

/// A metaserver: publishes one `(ns, latest + 1)` every 5–10 ms to a random namespace, retries a
/// change until it is acknowledged, and records it in the Checker at its ack.
struct Feed {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    task: JoinHandle<Result<FeedStats, String>>,
}

/// Longest a single change may stay unacknowledged before the feed gives up (and the test fails).
const ACK_LIMIT: Duration = Duration::from_secs(30);

impl Feed {
    /// Connects to `nats_url` (the client library reconnects by itself, here quickly) and
    /// starts publishing.
    async fn start(nats_url: &str, checker: &Checker, rng: &mut StdRng) -> Result<Feed, String> {
        let client = tokio::time::timeout(
            Duration::from_secs(5),
            async_nats::ConnectOptions::new()
                .name("herald-e2e feed")
                .max_reconnects(None)
                .reconnect_delay_callback(|n| Duration::from_millis((n as u64 * 50).min(250)))
                .connect(nats_url),
        )
        .await
        .map_err(|_| "feed: NATS connect timed out".to_owned())?
        .map_err(|e| format!("feed: NATS connect: {e}"))?;
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_secs(2));
        let publisher = Publisher::new(js, PARTITIONS);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(feed(
            publisher,
            checker.clone(),
            StdRng::seed_from_u64(rng.random()),
            stop.clone(),
            acked.clone(),
        ));
        Ok(Feed { stop, acked, task })
    }

    /// Changes acknowledged so far.
    fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until `more` changes beyond `from` are acknowledged.
    async fn acked_beyond(&self, from: usize, more: usize, limit: Duration) -> Result<(), String> {
        let what = format!("{more} more journal publishes to be acknowledged");
        until(limit, &what, || async { self.acked() >= from + more }).await
    }

    /// Stops after the change in flight is acknowledged.
    async fn stop(self) -> Result<FeedStats, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task
            .await
            .map_err(|e| format!("feed task failed: {e}"))?
    }
}

async fn feed(
    publisher: Publisher,
    checker: Checker,
    mut rng: StdRng,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Result<FeedStats, String> {
    let mut latest: HashMap<u64, u64> = HashMap::new();
    let mut stats = FeedStats {
        acked: 0,
        retries: 0,
        slowest_ack: Duration::ZERO,
    };
    while !stop.load(Ordering::SeqCst) {
        let ns = rng.random_range(0..NAMESPACES);
        let sjid = latest.get(&ns).copied().unwrap_or(0) + 1;
        let first = Instant::now();
        // Until acked, even when asked to stop: a change that timed out may have been stored,
        // and a client told of it needs it recorded.
        loop {
            match tokio::time::timeout(Duration::from_secs(3), publisher.publish(&[(ns, sjid)]))
                .await
            {
                Ok(Ok(_)) => break,
                Ok(Err(_)) | Err(_) => {
                    stats.retries += 1;
                    if first.elapsed() > ACK_LIMIT {
                        return Err(format!(
                            "feed: ({ns}, {sjid}) not acknowledged within {ACK_LIMIT:?}"
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        checker.published(&[(ns, sjid)]);
        latest.insert(ns, sjid);
        stats.acked += 1;
        stats.slowest_ack = stats.slowest_ack.max(first.elapsed());
        acked.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..=10))).await;
    }
    Ok(stats)
}

/// Stops the feed, verifies, prints the figures and closes the clients.
async fn finish(
    name: &str,
    checker: &Checker,
    feed: Feed,
    fleet: &Fleet,
    extra: &str,
) -> Result<Report, String> {
    let stats = feed.stop().await?;
    let verified = checker.verify(VERIFY).await;
    fleet.close().await;
    let report = verified.map_err(|e| format!("{e} (publisher: {stats:?})"))?;
    println!(
        "{name}: {report}; publisher {} changes, {} retries, slowest ack {:?}; \
         client GOAWAYs {}{extra}",
        stats.acked,
        stats.retries,
        stats.slowest_ack,
        fleet.goaways()
    );
    Ok(report)
}

/// 1. Two relays, active-active; one is killed with SIGKILL; the other keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_while_another_serves() {
    let name = "relay_killed_while_another_serves";
    run(name, async {
        let mut rng = seed(name);
        let nats = NatsServer::start();
        let url = nats.url();
        let (mut doomed, _survivor) = tokio::join!(
            RelayProcess::start(&url, relay_options()),
            RelayProcess::start(&url, relay_options())
        );
        let gw = GatewayProcess::start(gateway_options(&url));
        phase(name, async {
            let checker = Checker::new();
            let fleet = Fleet::start(&checker, &[ws_url(&gw)], &gw.token_all(), &mut rng).await?;
            let feed = Feed::start(&url, &checker, &mut rng).await?;
            tokio::time::sleep(STEADY).await;

            doomed.kill9();
            let at_kill = feed.acked();
            feed.acked_beyond(at_kill, 100, WAIT).await?;
            // How far behind the journal the clients are, 100 changes after the kill.
            let lag = fleet.catch_up(&checker, WAIT).await?;
            tokio::time::sleep(AFTER).await;

            let extra = format!("; 100 changes after the kill, clients caught up in {lag:.1?}");
            finish(name, &checker, feed, &fleet, &extra).await?;
            Ok(())
        })
        .await;
    })
    .await;
}

/// 2. The only relay is killed; publishing goes on (the journal is JetStream) while it is down;
/// it restarts, loads the journal and announces its new epoch; the gateway resyncs, and every
/// change published during the outage reaches the clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_relay_killed_and_restarted() {
    let name = "only_relay_killed_and_restarted";
    run(name, async {
        let mut rng = seed(name);
        let nats = NatsServer::start();
        let mut relay = RelayProcess::start(&nats.url(), relay_options()).await;
        let old_epoch = relay.epoch();
        let gw = GatewayProcess::start(gateway_options(&nats.url()));
        phase(name, async {
            let checker = Checker::new();
            let fleet = Fleet::start(&checker, &[ws_url(&gw)], &gw.token_all(), &mut rng).await?;
            let feed = Feed::start(&nats.url(), &checker, &mut rng).await?;
            tokio::time::sleep(STEADY).await;

            relay.kill9();
            let at_kill = feed.acked();
            // Publishes still ack while no relay runs.
            feed.acked_beyond(at_kill, 150, WAIT).await?;
            let resyncs_before = gateway_metric(&gw, "herald_upstream_resyncs_total").await;
            relay.restart().await;
            let during = feed.acked() - at_kill;
            if relay.epoch() == old_epoch {
                return Err("the restarted relay kept its epoch".into());
            }
            let caught_up = fleet.catch_up(&checker, WAIT).await?;
            tokio::time::sleep(AFTER).await;
            let resyncs =
                gateway_metric(&gw, "herald_upstream_resyncs_total").await - resyncs_before;

            let extra = format!(
                "; {during} changes published while no relay was ready; caught up \
                 {caught_up:.1?} after the restarted relay was ready; {resyncs} resyncs"
            );
            finish(name, &checker, feed, &fleet, &extra).await?;
            if resyncs < 1.0 {
                return Err("the gateway did not resync after the relay's new epoch".into());
            }
            if caught_up > DELIVERY_BOUND {
                return Err(format!(
                    "clients caught up {caught_up:?} after the relay was back, over the \
                     {DELIVERY_BOUND:?} delivery bound"
                ));
            }
            Ok(())
        })
        .await;
    })
    .await;
}

/// 3. nats-server restarts with its store (SIGKILL, ~1 s down, same port and store): the relay
/// and the gateway reconnect, the gateway resyncs, nothing is missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_with_its_store() {
    let name = "nats_server_restarted_with_its_store";
    run(name, async {
        let mut rng = seed(name);
        let mut nats = NatsServer::start();
        let url = nats.url();
        let _relay = RelayProcess::start(&url, relay_options()).await;
        let gw = GatewayProcess::start(gateway_options(&url));
        phase(name, async {
            let checker = Checker::new();
            let fleet = Fleet::start(&checker, &[ws_url(&gw)], &gw.token_all(), &mut rng).await?;
            let feed = Feed::start(&url, &checker, &mut rng).await?;
            tokio::time::sleep(STEADY).await;

            let resyncs_before = gateway_metric(&gw, "herald_upstream_resyncs_total").await;
            nats.stop();
            tokio::time::sleep(Duration::from_secs(1)).await;
            // Returns once the server accepts connections again.
            nats.resume();
            let back = Instant::now();
            let at_resume = feed.acked();
            feed.acked_beyond(at_resume, 1, WAIT).await?;
            let first_ack = back.elapsed();
            until(WAIT, "the gateway to be ready again", || async {
                gw.get("/readyz").await.status == 200
            })
            .await?;
            let gateway_ready = back.elapsed();
            // Everything acknowledged by now: before the stop, and the first ones after it.
            let caught_up = back.elapsed() + fleet.catch_up(&checker, WAIT).await?;
            tokio::time::sleep(AFTER).await;
            let resyncs =
                gateway_metric(&gw, "herald_upstream_resyncs_total").await - resyncs_before;

            let extra = format!(
                "; after the server was back: first ack {first_ack:.1?}, gateway ready \
                 {gateway_ready:.1?}, clients caught up {caught_up:.1?}; {resyncs} resyncs"
            );
            finish(name, &checker, feed, &fleet, &extra).await?;
            if resyncs < 1.0 {
                return Err("the gateway did not resync after its NATS reconnect".into());
            }
            Ok(())
        })
        .await;
    })
    .await;
}

/// 4. A 3-node cluster with the journal at 3 replicas. The relay talks to node 0, the gateway is
/// given every node's URL (comma-separated), the publisher talks to node 1. Node 0, which holds
/// the relay's connection, is killed; everything fails over and nothing is missed.
///
/// No delivery bound is asserted here. How long the clients lag depends on what node 0 led: when
/// it was the JetStream meta leader, the relay's journal stalls ~10 s (its ordered consumer,
/// recreated after every reconnect, first deletes the old consumer, and that request, unanswered
/// until a new meta leader is elected, waits out async-nats' 10 s recovery timeout); otherwise the
/// clients keep up within milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_killed() {
    let name = "cluster_node_killed";
    run(name, async {
        let mut rng = seed(name);
        let mut cluster = NatsCluster::start(3).await;
        let _relay =
            RelayProcess::start(&cluster.url(0), relay_options().arg("--replicas", 3)).await;
        let gw = GatewayProcess::start(gateway_options(&cluster.urls()));
        let feed_url = cluster.url(1);
        phase(name, async {
            let checker = Checker::new();
            let fleet = Fleet::start(&checker, &[ws_url(&gw)], &gw.token_all(), &mut rng).await?;
            let feed = Feed::start(&feed_url, &checker, &mut rng).await?;
            tokio::time::sleep(STEADY).await;

            let killed_at = Instant::now();
            cluster.node(0).stop();
            let at_kill = feed.acked();
            feed.acked_beyond(at_kill, 100, WAIT).await?;
            let hundred_acks = killed_at.elapsed();
            // How far behind the journal the clients are once it takes publishes again.
            let lag = fleet.catch_up(&checker, WAIT).await?;
            tokio::time::sleep(AFTER).await;

            let extra = format!(
                "; 100 changes acknowledged {hundred_acks:.1?} after the kill, clients caught \
                 up with them {lag:.1?} later"
            );
            finish(name, &checker, feed, &fleet, &extra).await?;
            Ok(())
        })
        .await;
    })
    .await;
}

/// 5. Two gateways on one NATS; clients use gateway A with B as fallback. A is killed with
/// SIGKILL; clients reconnect to B with their cursors and miss nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_clients_fail_over() {
    let name = "gateway_killed_clients_fail_over";
    run(name, async {
        let mut rng = seed(name);
        let nats = NatsServer::start();
        let url = nats.url();
        let _relay = RelayProcess::start(&url, relay_options()).await;
        // Each harness gateway trusts its own key; both also trust this one, so one token
        // works on either.
        let fleet_key = FleetKey::new();
        let options = gateway_options(&url).arg("--auth-key", fleet_key.flag());
        let mut a = GatewayProcess::start(options.clone());
        let b = GatewayProcess::start(options);
        phase(name, async {
            let checker = Checker::new();
            let urls = [ws_url(&a), ws_url(&b)];
            let fleet = Fleet::start(&checker, &urls, &fleet_key.token(), &mut rng).await?;
            let feed = Feed::start(&url, &checker, &mut rng).await?;
            tokio::time::sleep(STEADY).await;

            let killed_at = Instant::now();
            a.kill9();
            fleet.sessions_at_least(2, WAIT).await?;
            let failed_over = killed_at.elapsed();
            let caught_up = killed_at.elapsed() + fleet.catch_up(&checker, WAIT).await?;
            let on_b = gateway_metric(&b, "herald_connections{transport=\"websocket\"}").await;
            tokio::time::sleep(AFTER).await;

            let extra = format!(
                "; every client reconnected {failed_over:.1?} after the kill ({on_b} on B), \
                 caught up {caught_up:.1?} after it"
            );
            finish(name, &checker, feed, &fleet, &extra).await?;
            if on_b < CLIENTS as f64 {
                return Err(format!(
                    "{on_b} connections on gateway B, expected {CLIENTS}"
                ));
            }
            if caught_up > DELIVERY_BOUND {
                return Err(format!(
                    "clients caught up {caught_up:?} after gateway A died, over the \
                     {DELIVERY_BOUND:?} delivery bound"
                ));
            }
            Ok(())
        })
        .await;
    })
    .await;
}

/// 6. The gateway's NATS link goes through a proxy that is cut while publishing goes on; once
/// restored, the gateway reconnects, resyncs, and nothing is missed. The clients must catch up
/// within the delivery bound of the restore (PROTOCOL.md: within 1 s of the failed part being
/// replaced). The cut lasts 4.5 s: long enough that a reconnect backoff growing past the bound
/// (as async-nats' default does, doubling to 4 s) would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_nats_link_cut() {
    let name = "gateway_nats_link_cut";
    run(name, async {
        let mut rng = seed(name);
        let nats = NatsServer::start();
        let url = nats.url();
        let _relay = RelayProcess::start(&url, relay_options()).await;
        let nats_addr = url
            .trim_start_matches("nats://")
            .parse()
            .expect("nats-server address");
        let proxy = Proxy::start(nats_addr).await;
        let gw = GatewayProcess::start(gateway_options(&proxy.nats_url()));
        phase(name, async {
            let checker = Checker::new();
            let fleet = Fleet::start(&checker, &[ws_url(&gw)], &gw.token_all(), &mut rng).await?;
            let feed = Feed::start(&url, &checker, &mut rng).await?;
            tokio::time::sleep(STEADY).await;

            let resyncs_before = gateway_metric(&gw, "herald_upstream_resyncs_total").await;
            proxy.cut();
            let at_cut = feed.acked();
            until(
                WAIT,
                "the gateway to notice the cut (not ready)",
                || async { gw.get("/readyz").await.status == 503 },
            )
            .await?;
            tokio::time::sleep(CUT).await;
            let restored_at = Instant::now();
            proxy.restore();
            let during = feed.acked() - at_cut;
            let caught_up = fleet.catch_up(&checker, WAIT).await?;
            until(WAIT, "the gateway to be ready", || async {
                gw.get("/readyz").await.status == 200
            })
            .await?;
            let ready = restored_at.elapsed();
            tokio::time::sleep(AFTER).await;
            let resyncs =
                gateway_metric(&gw, "herald_upstream_resyncs_total").await - resyncs_before;

            let extra = format!(
                "; {during} changes published during the cut; caught up {caught_up:.1?} after \
                 the restore (ready by {ready:.1?}); {resyncs} resyncs"
            );
            finish(name, &checker, feed, &fleet, &extra).await?;
            if resyncs < 1.0 {
                return Err("the gateway did not resync after its NATS reconnect".into());
            }
            if caught_up > DELIVERY_BOUND {
                return Err(format!(
                    "clients caught up {caught_up:?} after the link was restored, over the \
                     {DELIVERY_BOUND:?} delivery bound"
                ));
            }
            Ok(())
        })
        .await;
    })
    .await;
}

/// 7. A two-tier chain, as a fleet spread over PoPs runs it: NATS "core" (journal, tier-0 relay)
/// → tier-1 relay (`--upstream-nats core`) → NATS "pop" → gateway. The tier-1 relay is killed
/// with SIGKILL while publishing goes on, then restarts with a new epoch and an empty table
/// (it learns what it is asked from upstream): the gateway resyncs through it, nothing is missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_n_relay_killed_and_restarted() {
    let name = "tier_n_relay_killed_and_restarted";
    run(name, async {
        let mut rng = seed(name);
        let core = NatsServer::start();
        let pop = NatsServer::start();
        let _tier0 = RelayProcess::start(&core.url(), relay_options()).await;
        let tier1_options = relay_options().arg("--upstream-nats", core.url());
        let mut tier1 = RelayProcess::start(&pop.url(), tier1_options).await;
        let old_epoch = tier1.epoch();
        let gw = GatewayProcess::start(gateway_options(&pop.url()));
        phase(name, async {
            let checker = Checker::new();
            let fleet = Fleet::start(&checker, &[ws_url(&gw)], &gw.token_all(), &mut rng).await?;
            let feed = Feed::start(&core.url(), &checker, &mut rng).await?;
            tokio::time::sleep(STEADY).await;

            tier1.kill9();
            let at_kill = feed.acked();
            feed.acked_beyond(at_kill, 100, WAIT).await?;
            let resyncs_before = gateway_metric(&gw, "herald_upstream_resyncs_total").await;
            tier1.restart().await;
            let during = feed.acked() - at_kill;
            if tier1.epoch() == old_epoch {
                return Err("the restarted tier-1 relay kept its epoch".into());
            }
            let caught_up = fleet.catch_up(&checker, WAIT).await?;
            tokio::time::sleep(AFTER).await;
            let resyncs =
                gateway_metric(&gw, "herald_upstream_resyncs_total").await - resyncs_before;

            let extra = format!(
                "; {during} changes published while the tier-1 relay was down; caught up \
                 {caught_up:.1?} after it was ready again; {resyncs} resyncs"
            );
            finish(name, &checker, feed, &fleet, &extra).await?;
            if resyncs < 1.0 {
                return Err("the gateway did not resync after the tier-1 relay's new epoch".into());
            }
            if caught_up > DELIVERY_BOUND {
                return Err(format!(
                    "clients caught up {caught_up:?} after the tier-1 relay was back, over the \
                     {DELIVERY_BOUND:?} delivery bound"
                ));
            }
            Ok(())
        })
        .await;
    })
    .await;
}
