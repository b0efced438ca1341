//! A worker: one thread, one current-thread runtime, its own `SO_REUSEPORT` listener, its own
//! connections and interest table. Nothing per connection is shared across threads, so the hot
//! paths take no locks. Each worker has three long-lived tasks: accept, fan-out and sweep.

use crate::admission::Admission;
use crate::auth::{LEEWAY_S, Verifier};
use crate::config::ConnLimits;
use crate::conn::{Conn, Io, Phase, Queued, SharedChange, Transport, close_with, goaway};
use crate::handler;
use crate::interest::Interest;
use crate::source::Source;
use crate::stats::WorkerStats;
use crate::tls::ReloadableConfig;
use crate::tls_stream::TlsStream;
use herald_proto::Code;
use rand::Rng;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Changes handed to every worker for fan-out: `(ns, sjid)`, each one a raise of the latest
/// table, and when the gateway got them (for `herald_fanout_lag_seconds`).
#[derive(Debug, Clone)]
pub struct Batch {
    /// The raised changes, shared by every worker.
    pub changes: Arc<[(u64, u64)]>,
    /// When they were accepted (journal commit) or arrived (from the relays).
    pub at: Instant,
}

impl From<Vec<(u64, u64)>> for Batch {
    fn from(changes: Vec<(u64, u64)>) -> Self {
        Batch {
            changes: changes.into(),
            at: Instant::now(),
        }
    }
}

/// Coarse time unit of deadlines: 100 ms.
pub const TICK: Duration = Duration::from_millis(100);
/// How long a closing connection may take to answer the close.
pub const CLOSE_GRACE_TICKS: u32 = 50;
/// Sweep period.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// Per-worker read buffer: one socket read at a time, plus room for a carried partial frame.
const SCRATCH: usize = 64 * 1024 + 16 * 1024;
/// Changes one fan-out round may take: batches already waiting behind the first one join its
/// round, so a connection gets one write for all of them (under a burst, several CHANGED per
/// write instead of one each; a paced batch finds nothing waiting and goes alone).
const ROUND_CHANGES: usize = 16 * 1024;

/// State shared by all workers and the admin listener.
#[derive(Debug, Default)]
pub struct Shared {
    /// Upgraded connections in the process (the cap's count).
    pub connections: AtomicUsize,
    /// Set on SIGTERM: refuse upgrades, send GOAWAY(draining).
    pub draining: AtomicBool,
    /// `/readyz`.
    pub ready: AtomicBool,
}

/// Everything a worker thread is started with.
pub struct WorkerSetup {
    /// Index, for names and metrics labels.
    pub id: usize,
    /// Its listener socket (bound, listening, non-blocking).
    pub listener: std::net::TcpListener,
    /// Batches from the journal.
    pub fanout: mpsc::Receiver<Batch>,
    /// For SUBSCRIBE look-ups.
    pub source: Source,
    /// For HELLO.
    pub verifier: Arc<Verifier>,
    /// Connection settings.
    pub limits: ConnLimits,
    /// Process-wide flags and counts.
    pub shared: Arc<Shared>,
    /// Cancelled when the process starts draining.
    pub shutdown: CancellationToken,
    /// How long draining may take.
    pub drain: Duration,
    /// Worker threads in the process (rates are split between them).
    pub workers: usize,
    /// Its `wss` listener socket and the certificate holder, when `--tls-listen` is set.
    pub tls: Option<(std::net::TcpListener, Arc<ReloadableConfig>)>,
    /// Its QUIC socket and settings, when `--quic-listen` is on.
    pub quic: Option<crate::quic::QuicSetup>,
}

/// A worker's state, shared by its tasks (single-threaded).
pub struct Worker {
    /// Index.
    pub id: usize,
    /// Connections by key.
    pub conns: RefCell<Slab<Rc<Conn>>>,
    /// Namespace → subscribers on this worker.
    pub interest: RefCell<Interest>,
    /// Latest SJIDs and upstream interest.
    pub source: Source,
    /// Token checks.
    pub verifier: Arc<Verifier>,
    /// Connection settings.
    pub limits: ConnLimits,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// Where every socket read lands.
    pub scratch: RefCell<Vec<u8>>,
    /// Hot-path counters.
    pub stats: WorkerStats,
    /// Connections the current fan-out round queued for, to be written at its end.
    touched: RefCell<Vec<u32>>,
    /// Handshake rate limits (this worker's share).
    admission: RefCell<Admission>,
    /// Origin of ticks.
    epoch: Instant,
    /// Connections still to be sent GOAWAY(draining), per sweep, once draining.
    drain_quota: Cell<Option<usize>>,
}

/// Ticks between `epoch` and `at`.
#[must_use]
pub fn ticks(epoch: Instant, at: Instant) -> u32 {
    (at.saturating_duration_since(epoch).as_millis() / TICK.as_millis())
        .min(u128::from(u32::MAX - 1)) as u32
}

/// Ticks in `d`, rounded up.
#[must_use]
pub fn duration_ticks(d: Duration) -> u32 {
    d.as_millis()
        .div_ceil(TICK.as_millis())
        .min(u128::from(u32::MAX / 2)) as u32
}

/// Starts a worker thread.
pub fn spawn(setup: WorkerSetup) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("herald-worker-{}", setup.id))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "worker runtime failed to start");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(setup));
        })
}

async fn run(setup: WorkerSetup) {
    let WorkerSetup {
        id,
        listener,
        mut fanout,
        source,
        verifier,
        limits,
        shared,
        shutdown,
        drain,
        workers,
        tls,
        quic,
    } = setup;
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "listener could not join the runtime");
            return;
        }
    };
    let tls = match tls.map(|(l, config)| TcpListener::from_std(l).map(|l| (l, config))) {
        None => None,
        Some(Ok(pair)) => Some(pair),
        Some(Err(e)) => {
            tracing::error!(worker = id, error = %e, "TLS listener could not join the runtime");
            return;
        }
    };
    let worker = Rc::new(Worker::new(id, source, verifier, limits, shared, workers));
    let quic = match quic.map(crate::quic::QuicSetup::endpoint).transpose() {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "QUIC endpoint could not start");
            None
        }
    };
    if let Some(endpoint) = &quic {
        tokio::task::spawn_local(crate::quic::accept_loop(
            worker.clone(),
            endpoint.clone(),
            shutdown.clone(),
        ));
    }
    let w = worker.clone();
    tokio::task::spawn_local(async move {
        // Resolved once: the macro looks the key up in the registry on every call.
        let lag = metrics::histogram!("herald_fanout_lag_seconds");
        let mut round: Vec<Instant> = Vec::new();
        while let Some(batch) = fanout.recv().await {
            let mut changes = batch.changes.len();
            w.fanout(&batch.changes);
            round.push(batch.at);
            while changes < ROUND_CHANGES {
                let Ok(next) = fanout.try_recv() else { break };
                changes += next.changes.len();
                w.fanout(&next.changes);
                round.push(next.at);
            }
            w.flush_round();
            // From the gateway getting the change to the last write (or queueing) of it here.
            for at in round.drain(..) {
                lag.record(at.elapsed().as_secs_f64());
            }
        }
    });
    let w = worker.clone();
    let drain_ticks = duration_ticks(drain).max(1);
    tokio::task::spawn_local(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            w.sweep(drain_ticks);
        }
    });
    match &tls {
        None => accept_loop(&worker, &listener, None, &shutdown).await,
        Some((tls_listener, config)) => {
            tokio::join!(
                accept_loop(&worker, &listener, None, &shutdown),
                accept_loop(&worker, tls_listener, Some(config), &shutdown)
            );
        }
    }
    drop(listener);
    drop(tls);
    // Draining: the sweep sends GOAWAY spread over the drain period; wait for the clients to go.
    let deadline = Instant::now() + drain + TICK * CLOSE_GRACE_TICKS + SWEEP_EVERY;
    while !worker.conns.borrow().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stats.flush();
    tracing::info!(
        worker = id,
        left = worker.conns.borrow().len(),
        "worker stopped"
    );
}

/// Accepts until shutdown. Errors (EMFILE, ENOBUFS) are logged and backed off, never fatal.
/// With `tls`, each connection starts a TLS session with the certificate current at accept; the
/// handshake counts against the handshake timeout like the HTTP upgrade.
async fn accept_loop(
    worker: &Rc<Worker>,
    listener: &TcpListener,
    tls: Option<&ReloadableConfig>,
    shutdown: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                // Idle time jittered per socket (60–120 s): connections accepted in one burst
                // (a reconnect storm) would otherwise probe in one burst forever after, and a
                // burst of probes beyond the receiver's backlog is dropped (seen on loopback at
                // 150k connections: half of them aborted after 180 s idle).
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(Duration::from_millis(
                        rand::rng().random_range(60_000..=120_000),
                    ))
                    .with_interval(Duration::from_secs(10));
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                let io = match tls {
                    None => Io::Tcp(stream),
                    Some(config) => match TlsStream::new(stream, config.current()) {
                        Ok(t) => Io::Tls(Box::new(t)),
                        Err(e) => {
                            tracing::warn!(error = %e, "TLS session could not start");
                            continue;
                        }
                    },
                };
                worker.admit(io, peer.ip());
            }
            Err(e) => {
                tracing::warn!(worker = worker.id, error = %e, "accept failed; backing off");
                metrics::counter!("herald_accept_errors_total").increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

impl Worker {
    /// A worker's state; `workers` is how many share the process (rates are split).
    #[must_use]
    pub fn new(
        id: usize,
        source: Source,
        verifier: Arc<Verifier>,
        limits: ConnLimits,
        shared: Arc<Shared>,
        workers: usize,
    ) -> Self {
        let admission = RefCell::new(Admission::new(
            limits.handshake_rate as f64 / workers.max(1) as f64,
            limits.handshake_rate_per_source as f64 / workers.max(1) as f64,
            Instant::now(),
        ));
        Worker {
            id,
            conns: RefCell::new(Slab::new()),
            interest: RefCell::new(Interest::default()),
            source,
            verifier,
            limits,
            shared,
            scratch: RefCell::new(vec![0; SCRATCH]),
            stats: WorkerStats::default(),
            touched: RefCell::new(Vec::new()),
            admission,
            epoch: Instant::now(),
            drain_quota: Cell::new(None),
        }
    }

    /// Current tick.
    #[must_use]
    pub fn now(&self) -> u32 {
        ticks(self.epoch, Instant::now())
    }

    /// The tick at which a token with `exp` (unix seconds) stops being honoured.
    #[must_use]
    pub fn token_deadline(&self, exp: u64, now: u32) -> u32 {
        let left_s = (exp + LEEWAY_S).saturating_sub(crate::keys::unix_now());
        // `unix_now` and `now` are both floored: one tick more so it never fires before the time.
        now.saturating_add(duration_ticks(Duration::from_secs(left_s)) + 1)
    }

    fn admit(self: &Rc<Self>, io: Io, source: std::net::IpAddr) {
        let admitted = self.within_rate(source);
        let conn = self.insert(io, Transport::WebSocket);
        if !admitted {
            // Answered with 503 once its request head is read (C-rate: before any upgrade work).
            conn.state.borrow_mut().rate_limited = true;
            metrics::counter!("herald_handshakes_rate_limited_total").increment(1);
        }
        tokio::task::spawn_local(handler::run(self.clone(), conn));
    }

    /// Whether a new connection from `source` is within the handshake rates (and counts it).
    pub fn within_rate(&self, source: std::net::IpAddr) -> bool {
        self.admission.borrow_mut().admit(source, Instant::now())
    }

    /// Puts a new connection in the table, with its handshake deadline from now.
    pub fn insert(&self, io: Io, transport: Transport) -> Rc<Conn> {
        let now = self.now();
        // Ticks are floored, so `now` may be up to one tick behind the accept: one tick more
        // keeps the timeout from firing early (C8: late by up to 1 s, never early).
        let deadline = now.saturating_add(duration_ticks(self.limits.handshake_timeout) + 1);
        let mut conns = self.conns.borrow_mut();
        let entry = conns.vacant_entry();
        let conn = Rc::new(Conn::new(
            io,
            transport,
            entry.key() as u32,
            now,
            deadline,
            rand::rng().random(),
        ));
        entry.insert(conn.clone());
        conn
    }

    /// Forgets a closed connection.
    pub fn release(&self, conn: &Conn) {
        let mut st = conn.state.borrow_mut();
        let dropped = st.subs.release(conn.key, &mut self.interest.borrow_mut());
        self.source.drop_interest(&dropped);
        if st.counted {
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        }
        self.conns.borrow_mut().try_remove(conn.key as usize);
    }

    /// Queues a batch for delivery: each change is encoded once and the same bytes go to every
    /// subscriber that does not know it yet. Nothing is written until [`Worker::flush_round`].
    pub fn fanout(&self, batch: &[(u64, u64)]) {
        let now = self.now();
        let limit = self.limits.outbox_limit_bytes;
        let mut interest = self.interest.borrow_mut();
        let conns = self.conns.borrow();
        let mut touched = self.touched.borrow_mut();
        let mut sent = 0;
        let mut already = 0;
        for &(ns, sjid) in batch {
            let Some(subs) = interest.subscribers_mut(ns) else {
                continue;
            };
            already += subs.len() as u64;
            let mut change = SharedChange::new(ns, sjid);
            for sub in subs.iter_mut().filter(|s| s.known < sjid) {
                sub.known = sjid;
                let Some(conn) = conns.get(sub.conn as usize) else {
                    continue;
                };
                match conn.queue_shared(&mut change, limit, || jitter_ms(1000, 5000), now) {
                    Queued::First => touched.push(sub.conn),
                    Queued::SlowConsumer => {
                        self.stats.slow_consumers.add(1);
                        tracing::debug!(session = %format_args!("{:016x}", conn.state.borrow().session_id), "slow consumer");
                    }
                    Queued::No | Queued::Collected | Queued::Behind => {}
                }
                sent += 1;
            }
        }
        self.stats.changes_in.add(batch.len() as u64);
        self.stats.notifications_sent.add(sent);
        self.stats.already_known.add(already - sent);
    }

    /// Ends a fan-out round: one write to every connection the round queued changes for.
    pub fn flush_round(&self) {
        let conns = self.conns.borrow();
        let mut touched = self.touched.borrow_mut();
        self.stats.fanout_writes.add(touched.len() as u64);
        for key in touched.drain(..) {
            if let Some(conn) = conns.get(key as usize) {
                conn.flush_queued();
            }
        }
    }

    /// The coarse timer of every connection on this worker: handshake and heartbeat timeouts,
    /// token expiry, close deadlines, and (while draining) GOAWAY spread over the drain period.
    fn sweep(&self, drain_ticks: u32) {
        let now = self.now();
        // Silence allowed per client class (index = class id).
        let silence: Vec<u32> = (0..=self.limits.heartbeat_classes.len())
            .map(|c| duration_ticks(self.limits.heartbeat_of(c as u8).mul_f64(2.5)))
            .collect();
        let draining = self.shared.draining.load(Ordering::Relaxed);
        let mut goaway_left = if draining {
            let sweeps = (drain_ticks / duration_ticks(SWEEP_EVERY)).max(1) as usize;
            let quota = self
                .drain_quota
                .get()
                .unwrap_or_else(|| self.conns.borrow().len().div_ceil(sweeps).max(1));
            self.drain_quota.set(Some(quota));
            quota
        } else {
            0
        };
        let conns = self.conns.borrow();
        for (_, conn) in conns.iter() {
            let mut st = conn.state.borrow_mut();
            let acted = match st.phase {
                Phase::Open if st.transport == Transport::LongPoll => {
                    crate::longpoll::sweep(self, conn.key, &mut st, now, draining)
                }
                // A long-poll connection idle between polls: nothing to wait for while draining.
                Phase::Http if draining && st.transport == Transport::LongPoll => {
                    st.exit = true;
                    true
                }
                Phase::Http | Phase::AwaitHello if now >= st.deadline => {
                    close_with(&mut st, None, Code::TIMEOUT, now);
                    st.exit_when_flushed = true;
                    true
                }
                // Strictly more: `last_rx` is floored like `now` (C8: never early).
                Phase::Open if now.saturating_sub(st.last_rx) > silence[usize::from(st.class)] => {
                    close_with(&mut st, None, Code::TIMEOUT, now);
                    st.exit_when_flushed = true;
                    true
                }
                Phase::Open if now >= st.token_expires => {
                    close_with(
                        &mut st,
                        Some(goaway(Code::TOKEN_EXPIRED, jitter_ms(0, 1000))),
                        Code::TOKEN_EXPIRED,
                        now,
                    );
                    true
                }
                Phase::Closing if now >= st.deadline => {
                    st.exit = true;
                    true
                }
                Phase::AwaitHello | Phase::Open if goaway_left > 0 => {
                    goaway_left -= 1;
                    // The drain schedule already spreads clients over the drain period; the delay only
                    // needs to be above 0 and jittered, and short, since a client waiting it out is
                    // told nothing.
                    let after = jitter_ms(100, 1000);
                    close_with(
                        &mut st,
                        Some(goaway(Code::DRAINING, after)),
                        Code::DRAINING,
                        now,
                    );
                    true
                }
                _ => false,
            };
            if acted {
                drop(st);
                conn.wake();
            }
        }
        let interest = self.interest.borrow();
        let worker = self.id.to_string();
        metrics::gauge!("herald_subscriptions", "worker" => worker.clone())
            .set(interest.subscriptions() as f64);
        metrics::gauge!("herald_worker_connections", "worker" => worker).set(conns.len() as f64);
        self.stats.flush();
    }
}

/// A uniformly random delay in `[lo, hi]` milliseconds, for `reconnect_after_ms`.
pub fn jitter_ms(lo: u64, hi: u64) -> u64 {
    rand::rng().random_range(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, ServeArgs};
    use crate::latest::LatestTable;
    use clap::Parser;

    fn args() -> ServeArgs {
        Cli::try_parse_from(["herald-gateway"])
            .expect("defaults")
            .serve
    }

    fn worker(outbox_limit_bytes: usize) -> Worker {
        let mut limits = args().conn_limits(1024);
        limits.outbox_limit_bytes = outbox_limit_bytes;
        Worker::new(
            0,
            Source::Embedded(Arc::new(LatestTable::new())),
            Arc::new(Verifier::new(std::collections::HashMap::new(), None, None)),
            limits,
            Arc::new(Shared::default()),
            1,
        )
    }

    /// An open WebSocket connection of `worker`, subscribed to `ns`, and its client socket.
    async fn open_subscriber(worker: &Worker, ns: u64) -> (Rc<Conn>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"));
        let (accepted, client) = tokio::join!(listener.accept(), client);
        let conn = worker.insert(Io::Tcp(accepted.expect("accept").0), Transport::WebSocket);
        conn.state.borrow_mut().phase = Phase::Open;
        worker.interest.borrow_mut().set(ns, conn.key, 0);
        (conn, client.expect("connect"))
    }

    /// Reads `count` CHANGED frames (unmasked server WebSocket frames) from `client`.
    async fn read_changes(client: &mut tokio::net::TcpStream, count: usize) -> Vec<(u64, u64)> {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut changes = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while changes.len() < count {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, client.read(&mut chunk))
                .await
                .expect("the changes arrive")
                .expect("read");
            assert!(n > 0, "the gateway closed after {} changes", changes.len());
            buf.extend_from_slice(&chunk[..n]);
            // Server frames are unmasked: FIN + binary, then a 7-bit length (CHANGED of one
            // pair is short).
            while buf.len() >= 2 && buf.len() >= 2 + usize::from(buf[1]) {
                assert_eq!(buf[0], 0x82, "a final binary frame");
                assert!(buf[1] < 126, "a short frame");
                let end = 2 + usize::from(buf[1]);
                match herald_proto::frame::decode_server(&buf[2..end]).expect("frame") {
                    herald_proto::ServerFrame::Changed(pairs) => changes.extend(pairs),
                    other => panic!("unexpected {other:?}"),
                }
                buf.drain(..end);
            }
        }
        changes
    }

    /// Batches waiting for the fan-out share one round: each connection gets one write with
    /// all of their changes for it, in order.
    #[tokio::test]
    async fn a_round_writes_each_connection_once() {
        let worker = worker(64 * 1024);
        let (_a, mut client_a) = open_subscriber(&worker, 1).await;
        let (_b, mut client_b) = open_subscriber(&worker, 2).await;
        worker.fanout(&[(1, 10), (2, 20)]);
        worker.fanout(&[(1, 11)]);
        worker.fanout(&[(1, 12), (2, 21)]);
        worker.flush_round();
        assert_eq!(worker.stats.notifications_sent.take(), 5);
        assert_eq!(
            worker.stats.fanout_writes.take(),
            2,
            "one write per connection"
        );
        assert_eq!(
            read_changes(&mut client_a, 3).await,
            [(1, 10), (1, 11), (1, 12)]
        );
        assert_eq!(read_changes(&mut client_b, 2).await, [(2, 20), (2, 21)]);
        // A paced batch alone is a round of its own.
        worker.fanout(&[(2, 22)]);
        worker.flush_round();
        assert_eq!(worker.stats.fanout_writes.take(), 1);
        assert_eq!(read_changes(&mut client_b, 1).await, [(2, 22)]);
    }

    /// A round that queues more than the outbox limit for a client whose socket keeps up does
    /// not make it a slow consumer: past half the limit the queue is written at once.
    #[tokio::test]
    async fn a_long_round_is_not_a_slow_consumer() {
        let worker = worker(4096);
        let (conn, mut client) = open_subscriber(&worker, 7).await;
        let sent: Vec<(u64, u64)> = (1..=1000).map(|sjid| (7, sjid)).collect();
        for change in &sent {
            worker.fanout(std::slice::from_ref(change));
        }
        worker.flush_round();
        assert_eq!(worker.stats.slow_consumers.take(), 0);
        assert_eq!(conn.state.borrow().phase, Phase::Open);
        assert_eq!(read_changes(&mut client, sent.len()).await, sent);
    }

    /// Every idle connection is one task whose future lives as long as the connection: its size
    /// is per-connection memory. A large await point added to `handler::run` (the distributed
    /// look-up once added ~650 B to every connection) fails this.
    #[tokio::test]
    async fn connection_task_stays_small() {
        let verifier = Arc::new(Verifier::new(std::collections::HashMap::new(), None, None));
        let source = Source::Embedded(Arc::new(LatestTable::new()));
        let worker = Rc::new(Worker::new(
            0,
            source,
            verifier,
            args().conn_limits(1024),
            Arc::new(Shared::default()),
            1,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"));
        let (accepted, _client) = tokio::join!(listener.accept(), client);
        let stream = accepted.expect("accept").0;
        let conn = Rc::new(Conn::new(Io::Tcp(stream), Transport::WebSocket, 0, 0, 0, 0));
        let task = handler::run(worker, conn);
        let size = std::mem::size_of_val(&task);
        println!("connection task future: {size} B");
        assert!(size <= 256, "the connection task's future grew to {size} B");
    }
}
