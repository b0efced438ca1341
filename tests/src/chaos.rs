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

use crate::fleet::{FleetKey, NAMESPACES, PARTITIONS, gateway_options, relay_options};
use crate::nats::{NatsCluster, RelayProcess};
use crate::proxy::Proxy;
use crate::{GatewayOptions, GatewayProcess};
use async_nats::jetstream;
use herald_client::{Client, ClientConfig, Event, LongPollConfig, LongPoller, TlsRoots};
use herald_relay::Publisher;
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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

/// A log-linear histogram of microseconds (exact below 128 µs, then 64 buckets per power of
/// two: at most 1.6 % low), with the exact maximum.
#[derive(Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; 128 + 64 * 40],
            count: 0,
            max_us: 0,
        }
    }
}

impl Histogram {
    fn index(us: u64) -> usize {
        if us < 128 {
            return us as usize;
        }
        let e = 63 - u64::from(us.leading_zeros());
        let mantissa = us >> (e - 6);
        (128 + (e - 7) * 64 + (mantissa - 64)) as usize
    }

    fn lower_bound(i: usize) -> u64 {
        if i < 128 {
            return i as u64;
        }
        let e = (i as u64 - 128) / 64 + 7;
        let mantissa = (i as u64 - 128) % 64 + 64;
        mantissa << (e - 6)
    }

    /// Adds one sample.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = Self::index(us).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Samples recorded.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (bucket lower bound; the maximum for `q = 1`).
    #[must_use]
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        if q >= 1.0 {
            return Duration::from_micros(self.max_us);
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_micros(Self::lower_bound(i).min(self.max_us));
            }
        }
        Duration::from_micros(self.max_us)
    }
}

/// One client's view, as the checker sees it.
#[derive(Default)]
struct ClientView {
    /// Transport and home gateway, for the report.
    label: &'static str,
    /// ns → highest SJID the client was told.
    holds: HashMap<u64, u64>,
}

#[derive(Default)]
struct SoakState {
    /// ns → ack time and delay category of SJID `i + 1`.
    published: Vec<Vec<(Instant, u8)>>,
    clients: Vec<ClientView>,
    delays: Vec<Histogram>,
    /// Deliveries of a change the client learned before its ack was recorded (delay 0).
    before_ack: u64,
    problems: Vec<String>,
    problem_count: usize,
    /// Most (client, ns) pairs seen at once owing a change acknowledged over [`LATE`] before.
    late_peak: usize,
}

/// The continuous checker of the soak. Cheap to clone (shared).
#[derive(Clone)]
pub struct Soak {
    inner: Arc<Mutex<SoakState>>,
    /// The fault whose window is open: (category, window end once recovered).
    window: Arc<Mutex<(usize, Option<Instant>)>>,
}

impl Default for Soak {
    fn default() -> Self {
        Self::new()
    }
}

impl Soak {
    /// An empty checker for [`NAMESPACES`] namespaces.
    #[must_use]
    pub fn new() -> Self {
        let state = SoakState {
            published: vec![Vec::new(); NAMESPACES as usize],
            delays: vec![Histogram::default(); CATEGORIES],
            ..SoakState::default()
        };
        Soak {
            inner: Arc::new(Mutex::new(state)),
            window: Arc::new(Mutex::new((0, None))),
        }
    }

    fn state(&self) -> MutexGuard<'_, SoakState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn category_now(&self) -> usize {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        match *w {
            (c, None) => c,
            (c, Some(until)) if Instant::now() <= until => c,
            _ => 0,
        }
    }

    fn fault_started(&self, f: Fault) {
        *self.window.lock().unwrap_or_else(|e| e.into_inner()) = (f.category(), None);
    }

    fn fault_recovered(&self) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.1 = Some(Instant::now() + AFTER_FAULT);
    }

    /// A client holding `ns` (each with cursor 0); returns its index.
    pub fn add_client(&self, label: &'static str, ns: &[u64]) -> usize {
        let mut st = self.state();
        st.clients.push(ClientView {
            label,
            holds: ns.iter().map(|&n| (n, 0)).collect(),
        });
        st.clients.len() - 1
    }

    /// `(ns, sjid)` was acknowledged to the publisher now; SJIDs of a namespace come in order
    /// 1, 2, 3, ….
    pub fn published(&self, ns: u64, sjid: u64) {
        let cat = self.category_now() as u8;
        let mut st = self.state();
        let list = &mut st.published[ns as usize];
        debug_assert_eq!(list.len() as u64 + 1, sjid);
        list.push((Instant::now(), cat));
    }

    /// Client `c` was told `ns` changed at `sjid`: every change of `ns` up to `sjid` it had not
    /// learned yet is delivered now.
    pub fn told(&self, c: usize, ns: u64, sjid: u64) {
        let now = Instant::now();
        let cat_now = self.category_now();
        let mut guard = self.state();
        let st = &mut *guard;
        let Some(highest) = st.clients[c].holds.get_mut(&ns) else {
            return;
        };
        if sjid <= *highest {
            return;
        }
        let published = &st.published[ns as usize];
        for s in *highest + 1..=sjid {
            match published.get(s as usize - 1) {
                Some(&(at, cat)) => {
                    st.delays[cat as usize].record(now.saturating_duration_since(at));
                }
                None => {
                    st.before_ack += 1;
                    st.delays[cat_now].record(Duration::ZERO);
                }
            }
        }
        *highest = sjid;
    }

    /// Something that must not happen (unexpected RESET, DENIED, fatal error).
    pub fn problem(&self, c: usize, what: String) {
        let mut st = self.state();
        st.problem_count += 1;
        if st.problems.len() < 20 {
            st.problems.push(format!("client {c}: {what}"));
        }
    }

    /// The continuous check: (client, ns) pairs now owing a change acknowledged over [`LATE`]
    /// ago (the peak is kept for the report).
    pub fn late_now(&self) -> usize {
        let now = Instant::now();
        let mut st = self.state();
        let mut late = 0;
        for client in &st.clients {
            for (&ns, &highest) in &client.holds {
                if let Some(&(at, _)) = st.published[ns as usize].get(highest as usize)
                    && now.saturating_duration_since(at) > LATE
                {
                    late += 1;
                }
            }
        }
        st.late_peak = st.late_peak.max(late);
        late
    }

    /// (client, change) pairs not delivered, with a few examples; and SJIDs told that were
    /// never published (problems).
    fn missed(&self) -> (u64, Vec<String>) {
        let mut st = self.state();
        let mut missed = 0;
        let mut examples = Vec::new();
        let mut impossible = Vec::new();
        let mut by_label = BTreeMap::new();
        for (c, client) in st.clients.iter().enumerate() {
            for (&ns, &highest) in &client.holds {
                let latest = st.published[ns as usize].len() as u64;
                if highest < latest {
                    missed += latest - highest;
                    if examples.len() < 5 {
                        examples.push(format!(
                            "client {c} ({}) ns {ns}: knows {highest}, latest {latest}",
                            client.label
                        ));
                    }
                    *by_label.entry(client.label).or_insert(0u64) += 1;
                } else if highest > latest {
                    impossible.push(format!(
                        "client {c}: told ns {ns} at SJID {highest}, never published (latest {latest})"
                    ));
                }
            }
        }
        if !by_label.is_empty() {
            examples.push(format!(
                "(client, ns) pairs behind by transport: {by_label:?}"
            ));
        }
        for p in impossible {
            st.problem_count += 1;
            if st.problems.len() < 20 {
                st.problems.push(p);
            }
        }
        (missed, examples)
    }

    /// Waits up to `limit` for nothing to be missed; the final count.
    async fn verify(&self, limit: Duration) -> (u64, Vec<String>) {
        let deadline = Instant::now() + limit;
        loop {
            let (missed, examples) = self.missed();
            if missed == 0 || Instant::now() >= deadline {
                return (missed, examples);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// RSS and open descriptors of one process slot at the start and at the end.
#[derive(Debug, Clone)]
pub struct Drift {
    /// `n0`, `relay1`, `gateway0`, `chaos` (this process, clients included).
    pub name: String,
    /// Times the slot's process was restarted in between (then start and end are different
    /// processes).
    pub restarts: usize,
    /// `(VmRSS KiB, fds)` at the start.
    pub start: (u64, usize),
    /// `(VmRSS KiB, fds)` at the end.
    pub end: (u64, usize),
}

/// Delay figures of one category.
#[derive(Debug, Clone)]
pub struct DelayRow {
    pub category: &'static str,
    pub samples: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// What a soak found.
#[derive(Debug, Clone)]
pub struct Summary {
    pub config: ChaosConfig,
    /// Faults injected, by kind.
    pub faults: BTreeMap<Fault, usize>,
    /// The schedule as it ran: (seconds into the load, kind, target, seconds down or hung).
    pub log: Vec<String>,
    /// Changes acknowledged to the publisher.
    pub changes: usize,
    /// Publish attempts retried.
    pub publish_retries: usize,
    /// (client, change) pairs checked (delivered).
    pub deliveries: u64,
    /// (client, change) pairs never delivered.
    pub missed: u64,
    pub missed_examples: Vec<String>,
    /// Unexpected RESET / DENIED / fatal / impossible SJIDs.
    pub problems: Vec<String>,
    pub problem_count: usize,
    /// Peak of (client, ns) pairs owing a change over [`LATE`] old, in the continuous check.
    pub late_peak: usize,
    pub delays: Vec<DelayRow>,
    pub drift: Vec<Drift>,
    /// Client sessions started (WELCOMEs and first polls), GOAWAYs received.
    pub sessions: usize,
    pub goaways: usize,
    pub elapsed: Duration,
    /// Where the processes' logs were copied when the run failed.
    pub logs_kept: Option<std::path::PathBuf>,
}

impl Summary {
    /// True when nothing was missed and no problem seen.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.missed == 0 && self.problem_count == 0 && self.changes > 0
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "herald chaos soak: seed {}, {} clients, {} publishes/s, load {:.0} s, wall {:.0} s",
            c.seed,
            c.clients,
            c.rate,
            c.duration.as_secs_f64(),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f)?;
        writeln!(f, "| fault | injected |")?;
        writeln!(f, "|---|---:|")?;
        for kind in Fault::ALL {
            writeln!(
                f,
                "| {} | {} |",
                kind.name(),
                self.faults.get(&kind).copied().unwrap_or(0)
            )?;
        }
        writeln!(
            f,
            "| total | {} |",
            self.faults.values().copied().sum::<usize>()
        )?;
        writeln!(f)?;
        writeln!(f, "| check | value |")?;
        writeln!(f, "|---|---:|")?;
        writeln!(f, "| changes acknowledged | {} |", self.changes)?;
        writeln!(f, "| publish retries | {} |", self.publish_retries)?;
        writeln!(
            f,
            "| (client, change) deliveries checked | {} |",
            self.deliveries
        )?;
        writeln!(f, "| missed | {} |", self.missed)?;
        writeln!(
            f,
            "| unexpected RESET/DENIED/fatal | {} |",
            self.problem_count
        )?;
        writeln!(
            f,
            "| peak (client, ns) owing a change > {} s old | {} |",
            LATE.as_secs(),
            self.late_peak
        )?;
        writeln!(f, "| client sessions started | {} |", self.sessions)?;
        writeln!(f, "| client GOAWAYs | {} |", self.goaways)?;
        writeln!(f)?;
        writeln!(
            f,
            "| changes acked in the window of | deliveries | p50 ms | p99 ms | max ms |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|")?;
        for r in &self.delays {
            writeln!(
                f,
                "| {} | {} | {} | {} | {} |",
                r.category,
                r.samples,
                ms(r.p50),
                ms(r.p99),
                ms(r.max)
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "| process | restarts | RSS start KiB | RSS end KiB | RSS drift KiB | fds start | fds end | fd drift |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for d in &self.drift {
            writeln!(
                f,
                "| {} | {} | {} | {} | {:+} | {} | {} | {:+} |",
                d.name,
                d.restarts,
                d.start.0,
                d.end.0,
                d.end.0 as i64 - d.start.0 as i64,
                d.start.1,
                d.end.1,
                d.end.1 as i64 - d.start.1 as i64
            )?;
        }
        if !self.missed_examples.is_empty() {
            writeln!(f, "\nmissed, e.g.: {:?}", self.missed_examples)?;
        }
        if !self.problems.is_empty() {
            writeln!(f, "\nproblems, e.g.: {:?}", self.problems)?;
        }
        if let Some(dir) = &self.logs_kept {
            writeln!(
                f,
                "\nlogs of the gateways and relays kept in {}",
                dir.display()
            )?;
        }
        writeln!(
            f,
            "\nresult: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// A managed client on one transport.
enum Handle {
    Session(Client),
    Poll(LongPoller),
}

impl Handle {
    async fn close(&self) {
        match self {
            Handle::Session(c) => c.close().await,
            Handle::Poll(p) => p.close().await,
        }
    }
}

/// The fleet's gateways: fixed ports (clients find a restarted one where it was), a shared
/// certificate, and one cuttable proxy per NATS node.
struct Gateway {
    process: GatewayProcess,
    ws_port: u16,
    wss_port: u16,
    quic_port: u16,
    proxies: Vec<Proxy>,
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free UDP port")
}

/// Publishes `rate` changes a second to random namespaces, each `(ns, latest + 1)`, retrying a
/// change until it is acknowledged (even when asked to stop), and records each ack.
async fn feed(
    publisher: Publisher,
    soak: Soak,
    mut rng: StdRng,
    rate: u32,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> usize {
    let mut latest = vec![0u64; NAMESPACES as usize];
    let mut retries = 0;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let ns = rng.random_range(0..NAMESPACES);
        let sjid = latest[ns as usize] + 1;
        loop {
            match tokio::time::timeout(Duration::from_secs(3), publisher.publish(&[(ns, sjid)]))
                .await
            {
                Ok(Ok(_)) => break,
                Ok(Err(_)) | Err(_) => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        soak.published(ns, sjid);
        latest[ns as usize] = sjid;
        acked.fetch_add(1, Ordering::SeqCst);
        next += interval;
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        } else {
            next = now;
        }
    }
    retries
}

/// Runs a process-blocking harness call (a restart waiting for its ready line) without stalling
/// the other tasks of this worker thread.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn signal(pid: Option<u32>, sig: Signal) {
    if let Some(pid) = pid {
        crate::process::signal(pid, sig);
    }
}

/// The fleet's processes, by slot.
struct Fleet {
    cluster: NatsCluster,
    relays: Vec<RelayProcess>,
    gateways: Vec<Gateway>,
    restarts: BTreeMap<String, usize>,
}

impl Fleet {
    fn pids(&self) -> Vec<(String, Option<u32>)> {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push((format!("n{i}"), self.cluster.pid(i)));
        }
        for (i, r) in self.relays.iter().enumerate() {
            v.push((format!("relay{i}"), r.pid()));
        }
        for (i, g) in self.gateways.iter().enumerate() {
            v.push((format!("gateway{i}"), g.process.running_pid()));
        }
        v.push(("chaos (clients)".into(), Some(std::process::id())));
        v
    }

    fn sample(&self) -> BTreeMap<String, (u64, usize)> {
        self.pids()
            .into_iter()
            .filter_map(|(name, pid)| Some((name, crate::process::rss_and_fds(pid?)?)))
            .collect()
    }

    async fn ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + RECOVERY_LIMIT;
        for (i, g) in self.gateways.iter().enumerate() {
            loop {
                let ok = tokio::time::timeout(
                    Duration::from_secs(2),
                    crate::http::request(g.process.admin_addr(), "GET", "/readyz", None),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|r| r.status == 200);
                if ok {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!("gateway{i} not ready within {RECOVERY_LIMIT:?}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    fn restarted(&mut self, slot: String) {
        *self.restarts.entry(slot).or_default() += 1;
    }

    /// Injects one fault of `kind` with a random target, lasting `down`; returns its log line.
    async fn inject(&mut self, kind: Fault, rng: &mut StdRng, down: Duration) -> String {
        let target = match kind {
            Fault::NatsKill | Fault::NatsRestart | Fault::NatsHang => rng.random_range(0..3),
            Fault::RelayKill | Fault::RelayHang => rng.random_range(0..self.relays.len()),
            _ => rng.random_range(0..self.gateways.len()),
        };
        match kind {
            Fault::NatsKill => {
                self.cluster.node(target).stop();
                tokio::time::sleep(down).await;
                blocking(|| self.cluster.node(target).resume());
                self.restarted(format!("n{target}"));
                format!("n{target}")
            }
            Fault::NatsRestart => {
                let graceful = self
                    .cluster
                    .node(target)
                    .terminate(Duration::from_secs(10))
                    .await;
                tokio::time::sleep(down).await;
                blocking(|| self.cluster.node(target).resume());
                self.restarted(format!("n{target}"));
                format!("n{target} (exited by itself: {graceful})")
            }
            Fault::NatsHang => {
                let pid = self.cluster.pid(target);
                signal(pid, Signal::SIGSTOP);
                tokio::time::sleep(down).await;
                signal(pid, Signal::SIGCONT);
                format!("n{target}")
            }
            Fault::RelayKill => {
                self.relays[target].kill9();
                tokio::time::sleep(down).await;
                self.relays[target].restart().await;
                self.restarted(format!("relay{target}"));
                format!("relay{target}")
            }
            Fault::RelayHang => {
                let pid = self.relays[target].pid();
                signal(pid, Signal::SIGSTOP);
                tokio::time::sleep(down).await;
                signal(pid, Signal::SIGCONT);
                format!("relay{target}")
            }
            Fault::GatewayKill => {
                self.gateways[target].process.kill9();
                tokio::time::sleep(down).await;
                blocking(|| self.gateways[target].process.restart());
                self.restarted(format!("gateway{target}"));
                format!("gateway{target}")
            }
            Fault::GatewayHang => {
                let pid = self.gateways[target].process.running_pid();
                signal(pid, Signal::SIGSTOP);
                tokio::time::sleep(down).await;
                signal(pid, Signal::SIGCONT);
                format!("gateway{target}")
            }
            Fault::LinkCut => {
                for p in &self.gateways[target].proxies {
                    p.cut();
                }
                tokio::time::sleep(down).await;
                for p in &self.gateways[target].proxies {
                    p.restore();
                }
                format!("gateway{target}")
            }
        }
    }
}

/// Copies the gateways' and relays' logs (deleted with their temp dirs) to
/// `$TMPDIR/herald-chaos-<seed>/` for a failed run.
fn keep_logs(fleet: &Fleet, seed: u64) -> Option<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("herald-chaos-{seed}"));
    std::fs::create_dir_all(&dir).ok()?;
    for (i, g) in fleet.gateways.iter().enumerate() {
        let _ = std::fs::copy(g.process.log_path(), dir.join(format!("gateway{i}.log")));
    }
    for (i, r) in fleet.relays.iter().enumerate() {
        let _ = std::fs::copy(r.log_path(), dir.join(format!("relay{i}.log")));
    }
    Some(dir)
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
