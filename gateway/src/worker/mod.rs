//! A worker: one thread, one current-thread runtime, its own `SO_REUSEPORT` listener, its own
//! connections and interest table. Nothing per connection is shared across threads, so the hot
//! paths take no locks. Each worker has three long-lived tasks: accept (started by the
//! `accept` module, which sits above this one), fan-out ([`fanout`]) and sweep ([`sweep`]). This module is the state they share and the one
//! way a connection's session is driven ([`Worker::drive`]).

pub mod fanout;
pub mod sweep;

use crate::admission::Admission;
use crate::auth::Verifier;
use crate::config::ConnLimits;
use crate::conn::{Conn, ConnState, Io, Out, Transport};
use crate::lookup::Lookup;
use crate::stats::WorkerStats;
use herald_core::interest::Interest;
use herald_core::session::{Env, Mode, Session};
use herald_core::time::ticks;
use rand::Rng;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// Per-worker read buffer: one socket read at a time, plus room for a carried partial frame.
const SCRATCH: usize = 64 * 1024 + 16 * 1024;

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

/// A worker's state, shared by its tasks (single-threaded).
pub struct Worker {
    /// Index.
    pub id: usize,
    /// Connections by key.
    pub conns: RefCell<Slab<Rc<Conn>>>,
    /// Namespace → subscribers on this worker.
    pub interest: RefCell<Interest>,
    /// Latest SJIDs and upstream interest.
    pub lookup: Lookup,
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
    /// The revocations generation the last sweep acted on.
    revocations_seen: Cell<u64>,
}

impl Worker {
    /// A worker's state; `workers` is how many share the process (rates are split).
    #[must_use]
    pub fn new(
        id: usize,
        lookup: Lookup,
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
            lookup,
            verifier,
            limits,
            shared,
            scratch: RefCell::new(vec![0; SCRATCH]),
            stats: WorkerStats::default(),
            touched: RefCell::new(Vec::new()),
            admission,
            epoch: Instant::now(),
            drain_quota: Cell::new(None),
            revocations_seen: Cell::new(0),
        }
    }

    /// Current tick.
    #[must_use]
    pub fn now(&self) -> u32 {
        ticks(self.epoch, Instant::now())
    }

    /// Whether a new connection from `source` is within the handshake rates (and counts it).
    pub fn within_rate(&self, source: std::net::IpAddr) -> bool {
        self.admission.borrow_mut().admit(source, Instant::now())
    }

    /// Puts a new connection in the table, its session's handshake deadline running from now.
    pub fn insert(&self, io: Io, transport: Transport) -> Rc<Conn> {
        let mode = match transport {
            Transport::LongPoll => Mode::Poll,
            Transport::WebSocket | Transport::Quic => Mode::Framed,
        };
        let session = Session::new(mode, self.now(), &self.limits.session, rand::rng().random());
        let mut conns = self.conns.borrow_mut();
        let entry = conns.vacant_entry();
        let conn = Rc::new(Conn::new(io, transport, entry.key() as u32, session));
        entry.insert(conn.clone());
        conn
    }

    /// Runs `f` on a connection's session with its environment (tables, time) and its output:
    /// the one way the transports and the sweep drive a session.
    pub fn drive<R>(
        &self,
        key: u32,
        st: &mut ConnState,
        f: impl FnOnce(&mut Session, &mut Env<'_>, &mut Out<'_>) -> R,
    ) -> R {
        let mut interest = self.interest.borrow_mut();
        let mut env = Env {
            conn: key,
            now: self.now(),
            unix_now: crate::keys::unix_now(),
            interest: &mut interest,
            tokens: &*self.verifier,
            limits: &self.limits.session,
            latest: self.lookup.local(),
        };
        let ConnState { session, wire } = st;
        let mut out = Out {
            wire,
            lookup: &self.lookup,
        };
        f(session, &mut env, &mut out)
    }

    /// Forgets a closed connection.
    pub fn release(&self, conn: &Conn) {
        let mut st = conn.state.borrow_mut();
        let dropped = st
            .session
            .release(conn.key, &mut self.interest.borrow_mut());
        self.lookup.drop_interest(&dropped);
        if st.wire.counted {
            self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        }
        self.conns.borrow_mut().try_remove(conn.key as usize);
    }
}

#[cfg(test)]
mod tests;
