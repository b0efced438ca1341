//! A worker's coarse timer: every half second, each connection's session gets a tick (handshake
//! and heartbeat timeouts, token expiry, poll and close deadlines), and while draining a share of
//! them is told to go, so GOAWAY(draining) is spread over the drain period. After a revocation
//! (`POST /v1/disconnect`) the next sweep closes the sessions whose token it covers.

use super::Worker;
use crate::conn::PollDue;
use herald_core::session::{Mode, Tick};
use herald_core::time::duration_ticks;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Sweep period.
pub const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// The sweep task: forever, every [`SWEEP_EVERY`]; `drain` is how long draining may take.
pub async fn run(worker: Rc<Worker>, drain: Duration) {
    let drain_ticks = duration_ticks(drain).max(1);
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        worker.sweep(drain_ticks);
    }
}

impl Worker {
    /// One sweep of every connection on this worker.
    pub fn sweep(&self, drain_ticks: u32) {
        let now = self.now();
        let silence = self.limits.session.silence_ticks();
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
        let revocations = self.verifier.revocations();
        let generation = revocations.generation();
        let revoked = (generation != self.revocations_seen.get()).then(|| revocations.snapshot());
        self.revocations_seen.set(generation);
        let conns = self.conns.borrow();
        for (_, conn) in conns.iter() {
            let mut st = conn.state.borrow_mut();
            let tick = self.drive(conn.key, &mut st, |session, env, out| {
                if revoked.as_ref().is_some_and(|r| session.is_revoked_in(r)) {
                    session.revoke(now, out);
                    return Tick::Acted;
                }
                match session.on_tick(now, &silence, out) {
                    Tick::Idle if draining => {
                        let framed = session.mode() == Mode::Framed;
                        if framed && goaway_left == 0 {
                            return Tick::Idle;
                        }
                        let tick = session.drain(env.now, out);
                        // Polls are answered at once; only framed sessions are spread.
                        if framed && tick != Tick::Idle {
                            goaway_left -= 1;
                        }
                        tick
                    }
                    tick => tick,
                }
            });
            match tick {
                Tick::Idle => continue,
                Tick::Acted => {}
                Tick::AnswerPoll => {
                    if let Some(poll) = st.wire.poll.as_deref_mut() {
                        poll.due = Some(if draining {
                            PollDue::Draining
                        } else {
                            PollDue::Timeout
                        });
                    }
                }
            }
            drop(st);
            conn.wake();
        }
        let interest = self.interest.borrow();
        let worker = self.id.to_string();
        metrics::gauge!("herald_subscriptions", "worker" => worker.clone())
            .set(interest.subscriptions() as f64);
        metrics::gauge!("herald_worker_connections", "worker" => worker).set(conns.len() as f64);
        self.stats.flush();
    }
}
