//! The scaffolding of the fault tests (`tests/tests/faults.rs`) and the herd tests
//! (`tests/tests/herd.rs`): scenario turns and bounds, a [`Fleet`] of managed clients reporting to a
//! [`Checker`], a [`Feed`] that publishes to the journal as a metaserver would, and a [`FleetKey`]
//! several gateways trust.

use crate::nats::RelayOptions;
use crate::{Checker, GatewayOptions, GatewayProcess, NsGrant, Report};
use async_nats::jetstream;
use herald_client::{Client, ClientConfig, Event};
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
pub const PARTITIONS: u64 = 8;
/// Namespaces the publisher writes and the clients hold.
pub const NAMESPACES: u64 = 30;
/// Managed clients per scenario.
pub const CLIENTS: usize = 20;
/// Bound on a whole scenario (after it got its turn), processes' start included.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(100);
/// Bound on the part of a scenario that runs clients and the publisher.
pub const PHASE_LIMIT: Duration = Duration::from_secs(85);
/// Publishing before the fault.
pub const STEADY: Duration = Duration::from_secs(2);
/// Publishing after recovery.
pub const AFTER: Duration = Duration::from_secs(3);
/// How long the Checker waits, once publishing stopped, for every client to catch up.
pub const VERIFY: Duration = Duration::from_secs(15);
/// PROTOCOL.md: a change reaches every subscribed client within 1 s of the failed part being
/// replaced.
pub const DELIVERY_BOUND: Duration = Duration::from_secs(1);
/// How long scenario 6 cuts the gateway's NATS link.
pub const CUT: Duration = Duration::from_millis(4500);
/// Bound on one client's subscriptions becoming live, or on a recovery step.
pub const WAIT: Duration = Duration::from_secs(15);

/// One scenario at a time (see the module docs).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes the turn, then runs `scenario` (set-up, then a [`phase`]) within [`SCENARIO_LIMIT`].
pub async fn run<F: Future<Output = ()>>(name: &str, scenario: F) {
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
pub async fn phase<F: Future<Output = Result<(), String>>>(name: &str, fault_phase: F) {
    match tokio::time::timeout(PHASE_LIMIT, fault_phase).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{name}: {e}"),
        Err(_) => panic!("{name}: the fault phase did not finish within {PHASE_LIMIT:?}"),
    }
}

/// A seed per scenario, printed; `HERALD_FAULTS_SEED` replays one.
pub fn seed(name: &str) -> StdRng {
    let seed: u64 = std::env::var("HERALD_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{name}: seed {seed} (replay with HERALD_FAULTS_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

pub fn relay_options() -> RelayOptions {
    RelayOptions::new()
        .arg("--partitions", PARTITIONS)
        .arg("--coalesce-us", 1000)
}

pub fn gateway_options(nats_url: &str) -> GatewayOptions {
    GatewayOptions::new()
        .arg("--nats", nats_url)
        .arg("--partitions", PARTITIONS)
}

pub fn ws_url(gw: &GatewayProcess) -> String {
    format!("ws://{}/v1/connect", gw.ws_addr())
}

/// One sample of a gateway's `/metrics` (0 when absent).
pub async fn gateway_metric(gw: &GatewayProcess, name: &str) -> f64 {
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
pub async fn until<F, Fut>(limit: Duration, what: &str, mut f: F) -> Result<(), String>
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
pub struct FleetKey {
    /// Holds the public key file.
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
}

impl Default for FleetKey {
    fn default() -> Self {
        Self::new()
    }
}

impl FleetKey {
    /// A fresh key in a temp dir.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herald-faults-key-")
            .tempdir()
            .expect("tempdir");
        let key = SigningKey::generate(Some("fleet".into())).expect("generate key");
        std::fs::write(dir.path().join("fleet.pub.pem"), key.public_pem()).expect("write key");
        FleetKey { dir, key }
    }

    /// The gateway's `--auth-key` value.
    pub fn flag(&self) -> String {
        format!("fleet={}", self.dir.path().join("fleet.pub.pem").display())
    }

    /// A token for every namespace, valid an hour.
    pub fn token(&self) -> String {
        self.key
            .mint(&claims_for("e2e-fleet", NsGrant::All, 3600), None)
            .expect("mint")
    }
}

/// A client of the fleet.
pub struct Member {
    pub client: Client,
    /// The namespaces it holds.
    pub holds: Vec<u64>,
    /// Sessions started (WELCOME received).
    pub sessions: Arc<AtomicUsize>,
    /// When each session started.
    pub connected_at: Arc<std::sync::Mutex<Vec<Instant>>>,
}

/// Managed clients holding random subsets of the namespaces, reporting to a [`Checker`].
pub struct Fleet {
    pub members: Vec<Member>,
    /// GOAWAYs received (e.g. `overloaded` when a look-up failed): allowed, counted.
    pub goaways: Arc<AtomicUsize>,
}

impl Fleet {
    /// Starts [`CLIENTS`] clients on `urls[0]` (the rest are fallbacks), subscribes each to a
    /// random subset of the namespaces with cursor 0, and registers the holds once every
    /// client's subscriptions are live.
    pub async fn start(
        checker: &Checker,
        urls: &[String],
        token: &str,
        rng: &mut StdRng,
    ) -> Result<Fleet, String> {
        Self::start_n(CLIENTS, checker, urls, token, rng).await
    }

    /// Like [`Fleet::start`] with `n` clients.
    pub async fn start_n(
        n: usize,
        checker: &Checker,
        urls: &[String],
        token: &str,
        rng: &mut StdRng,
    ) -> Result<Fleet, String> {
        let goaways = Arc::new(AtomicUsize::new(0));
        let mut members = Vec::with_capacity(n);
        let mut holds = Vec::with_capacity(n);
        for _ in 0..n {
            let mut config = ClientConfig::new(urls[0].clone(), token);
            config.fallback_urls = urls[1..].to_vec();
            config.backoff_initial = Duration::from_millis(20);
            config.backoff_max = Duration::from_millis(500);
            config.rng_seed = Some(rng.random());
            let (client, mut events) = Client::spawn(config);
            let id = checker.add_client();
            let sessions = Arc::new(AtomicUsize::new(0));
            let connected_at = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (ck, s, g) = (checker.clone(), sessions.clone(), goaways.clone());
            let at = connected_at.clone();
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    match event {
                        Event::Changed { ns, sjid } => ck.told(id, ns, sjid),
                        Event::Connected { .. } => {
                            at.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(Instant::now());
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
                connected_at,
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
    pub async fn sessions_at_least(&self, n: usize, limit: Duration) -> Result<(), String> {
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
    pub async fn catch_up(&self, checker: &Checker, limit: Duration) -> Result<Duration, String> {
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

    pub fn goaways(&self) -> usize {
        self.goaways.load(Ordering::SeqCst)
    }

    pub async fn close(&self) {
        for m in &self.members {
            m.client.close().await;
        }
    }
}

/// What the publisher did.
#[derive(Debug)]
pub struct FeedStats {
    /// Changes acknowledged (each recorded in the Checker).
    pub acked: usize,
    /// Publish attempts that failed or timed out and were retried.
    pub retries: usize,
    /// Longest time from a change's first attempt to its ack.
    pub slowest_ack: Duration,
}

/// A metaserver: publishes one `(ns, latest + 1)` every 5–10 ms to a random namespace, retries a
/// change until it is acknowledged, and records it in the Checker at its ack.
pub struct Feed {
    pub stop: Arc<AtomicBool>,
    pub acked: Arc<AtomicUsize>,
    pub task: JoinHandle<Result<FeedStats, String>>,
}

/// Longest a single change may stay unacknowledged before the feed gives up (and the test fails).
pub const ACK_LIMIT: Duration = Duration::from_secs(30);

impl Feed {
    /// Connects to `nats_url` (the client library reconnects by itself, here quickly) and
    /// starts publishing.
    pub async fn start(
        nats_url: &str,
        checker: &Checker,
        rng: &mut StdRng,
    ) -> Result<Feed, String> {
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
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until `more` changes beyond `from` are acknowledged.
    pub async fn acked_beyond(
        &self,
        from: usize,
        more: usize,
        limit: Duration,
    ) -> Result<(), String> {
        let what = format!("{more} more journal publishes to be acknowledged");
        until(limit, &what, || async { self.acked() >= from + more }).await
    }

    /// Stops after the change in flight is acknowledged.
    pub async fn stop(self) -> Result<FeedStats, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task
            .await
            .map_err(|e| format!("feed task failed: {e}"))?
    }
}

pub async fn feed(
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
pub async fn finish(
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
