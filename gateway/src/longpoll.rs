//! HTTP long-poll (PROTOCOL.md "Transports", C16): `POST /v1/longpoll` on the WebSocket
//! listener. A poll reuses the session core: its cursors are registered in the worker's interest
//! table like a SUBSCRIBE (so the fan-out, the distributed look-up, the sweep and drain treat it
//! like any connection), and the reply is one JSON document instead of frames.
//!
//! Life of a poll on a connection: `Phase::Http` (head and body read) → [`start`] checks the
//! request, registers interest and either answers at once (a cursor behind or ahead) or waits in
//! `Phase::Open` with its deadline in `ConnState::deadline`; the fan-out collects changes in the
//! boxed [`Poll`] and wakes the task, which answers; the sweep answers at the deadline or when
//! draining. After the reply the interest is released and the connection goes back to
//! `Phase::Http` (keep-alive) or closes.

use crate::auth::AuthError;
use crate::conn::{Conn, ConnState, Phase, Transport, queue_bytes};
use crate::session::{self, Registered, SubscribeOutcome};
use crate::worker::{CLOSE_GRACE_TICKS, Worker, duration_ticks};
use herald_proto::cors::Grant;
use herald_proto::http::{RETRY_AFTER_FULL, error_response, ok_response};
use herald_proto::longpoll::{ErrorName, Reply, Request};
use herald_upstream::LookupError;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// The state of a waiting poll, boxed in `ConnState::poll` (absent on every other connection).
#[derive(Debug, Default)]
pub struct Poll {
    /// Changes the fan-out delivered while the poll waited: `(ns, sjid)`.
    changes: Vec<(u64, u64)>,
    /// Keep the connection for another poll after the reply.
    keep_alive: bool,
    /// The CORS headers the answer carries (what the request's `Origin` was granted).
    cors: Grant,
}

impl Poll {
    /// True once the fan-out delivered something: the task must answer.
    #[must_use]
    pub fn due(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Records a change from the fan-out (the interest table already dropped duplicates).
    pub fn collect(&mut self, ns: u64, sjid: u64) {
        self.changes.push((ns, sjid));
    }
}

/// Handles a complete request (`body` after the head): refuses it, answers it, or leaves it
/// waiting in `Phase::Open`.
pub fn start(
    worker: &Worker,
    conn: &Conn,
    st: &mut ConnState,
    body: &[u8],
    keep_alive: bool,
    cors: Grant,
) {
    metrics::counter!("herald_longpoll_requests_total").increment(1);
    // Created first: a refusal below reads its CORS grant from it (and clears it).
    st.poll = Some(Box::new(Poll {
        changes: Vec::new(),
        keep_alive,
        cors,
    }));
    let req = match Request::parse(body) {
        Ok(r) => r,
        Err(msg) => return fail(worker, st, 400, ErrorName::BadRequest, &msg, &[], &[]),
    };
    let claims = match worker.verifier.verify(&req.token) {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("herald_handshake_failures_total", "reason" => e.label())
                .increment(1);
            let name = if matches!(e, AuthError::Expired) {
                ErrorName::TokenExpired
            } else {
                ErrorName::Unauthorized
            };
            return fail(worker, st, 401, name, &e.to_string(), &[], &[]);
        }
    };
    let mut forbidden: Vec<u64> = req
        .cursors
        .iter()
        .map(|&(ns, _)| ns)
        .filter(|&ns| !claims.ns.allows(ns))
        .collect();
    if !forbidden.is_empty() {
        forbidden.sort_unstable();
        forbidden.dedup();
        let msg = "the token does not grant these namespaces";
        return fail(
            worker,
            st,
            403,
            ErrorName::ForbiddenNamespace,
            msg,
            &[],
            &forbidden,
        );
    }
    let max = worker.limits.max_subscriptions;
    if req.cursors.len() as u64 > max {
        let msg = format!("at most {max} cursors per poll");
        return fail(worker, st, 400, ErrorName::BadRequest, &msg, &[], &[]);
    }
    if !st.counted {
        st.counted = true;
        worker.shared.connections.fetch_add(1, Ordering::Relaxed);
    }
    let now = worker.now();
    let wait = duration_ticks(std::time::Duration::from_secs(req.timeout_s));
    // Jitter up to 10% of the timeout, less the sweep's own lateness (a 500 ms period plus the
    // tick floored away), so the reply lands within timeout + 10% and never before the timeout.
    let jitter = rand::rng().random_range(0..=(wait / 10).saturating_sub(7));
    st.transport = Transport::LongPoll;
    st.phase = Phase::Open;
    st.deadline = now.saturating_add(wait + jitter + 1);
    st.token_expires = u32::MAX;
    let mut interest = worker.interest.borrow_mut();
    let reg = session::register(
        &mut st.subs,
        conn.key,
        &req.cursors,
        &claims.ns,
        max,
        &mut interest,
    );
    match worker.source.local() {
        Some(latest) => {
            let outcome = session::complete(&mut st.subs, conn.key, reg, &mut interest, |ns| {
                latest.get(ns)
            });
            drop(interest);
            completed(worker, conn.key, st, &outcome);
        }
        // The look-up needs the network: the task finishes it (dispatch::finish_subscribe).
        None => st.pending = Some(Box::new(reg)),
    }
}

/// Completes a poll whose look-up had to wait (distributed mode).
pub fn looked_up(
    worker: &Worker,
    conn: &Conn,
    st: &mut ConnState,
    reg: Registered,
    latest: Result<HashMap<u64, u64>, LookupError>,
) {
    let latest = match latest {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "look-up failed; long-poll answered 503");
            metrics::counter!("herald_lookup_failures_total").increment(1);
            release(worker, conn.key, st);
            let msg = "namespace look-up failed: poll again later";
            let extra = [("Retry-After", RETRY_AFTER_FULL)];
            return fail(worker, st, 503, ErrorName::Overloaded, msg, &extra, &[]);
        }
    };
    let outcome = session::complete(
        &mut st.subs,
        conn.key,
        reg,
        &mut worker.interest.borrow_mut(),
        |n| latest.get(&n).copied().unwrap_or(0),
    );
    if st.phase == Phase::Open && st.poll.is_some() {
        completed(worker, conn.key, st, &outcome);
    } else {
        worker.source.drop_interest(&outcome.reset);
    }
}

/// After the cursor check: answers at once if any cursor is behind or ahead, else waits.
fn completed(worker: &Worker, key: u32, st: &mut ConnState, outcome: &SubscribeOutcome) {
    worker.source.drop_interest(&outcome.reset);
    if outcome.reset.is_empty() && outcome.changed.is_empty() {
        return;
    }
    if let Some(poll) = st.poll.as_deref_mut() {
        poll.changes.extend_from_slice(&outcome.changed);
    }
    answer(worker, key, st, &outcome.reset, None, "immediate");
}

/// Called when the task wakes: answers a waiting poll the fan-out delivered changes to.
pub fn on_wake(worker: &Worker, conn: &Conn) {
    let mut st = conn.state.borrow_mut();
    if st.phase == Phase::Open && st.pending.is_none() && st.poll.as_ref().is_some_and(|p| p.due())
    {
        answer(worker, conn.key, &mut st, &[], None, "changes");
    }
}

/// The sweep's part: answers a waiting poll at its deadline, or at once (with `backoff_s`) while
/// draining. True if it answered.
pub fn sweep(worker: &Worker, key: u32, st: &mut ConnState, now: u32, draining: bool) -> bool {
    if st.pending.is_some() {
        return false;
    }
    if draining {
        let backoff = rand::rng().random_range(1..=5);
        answer(worker, key, st, &[], Some(backoff), "draining");
        true
    } else if now >= st.deadline {
        answer(worker, key, st, &[], None, "timeout");
        true
    } else {
        false
    }
}

/// `backoff_s` under load: near the connection cap (90% or more), ask clients to wait 5–10 s.
fn load_backoff(worker: &Worker) -> Option<u64> {
    let connections = worker.shared.connections.load(Ordering::Relaxed);
    (connections.saturating_mul(10) >= worker.limits.max_connections.saturating_mul(9))
        .then(|| rand::rng().random_range(5..=10))
}

/// Drops the poll's interest (its namespaces on this worker and upstream).
fn release(worker: &Worker, key: u32, st: &mut ConnState) {
    let dropped = st.subs.release(key, &mut worker.interest.borrow_mut());
    worker.source.drop_interest(&dropped);
}

/// Sends the reply (changes collected so far, `reset`, `backoff_s`), releases the interest, and
/// goes back to reading a request (keep-alive) or closes.
fn answer(
    worker: &Worker,
    key: u32,
    st: &mut ConnState,
    reset: &[u64],
    backoff: Option<u64>,
    why: &'static str,
) {
    let poll = st.poll.take().unwrap_or_default();
    release(worker, key, st);
    let backoff = backoff.or_else(|| load_backoff(worker));
    let draining = worker.shared.draining.load(Ordering::Relaxed);
    let keep_alive = poll.keep_alive && !draining;
    let body = Reply {
        changes: poll.changes,
        reset: reset.to_vec(),
        backoff_s: backoff,
    }
    .encode();
    metrics::counter!("herald_longpoll_replies_total", "reason" => why).increment(1);
    let cors = worker.limits.allowed_origins.headers(poll.cors);
    let response = ok_response(&body, keep_alive, &cors);
    queue_bytes(st, response);
    let now = worker.now();
    if keep_alive {
        // Idle between polls: the handshake timeout bounds it like a new connection's request.
        st.phase = Phase::Http;
        st.deadline = now.saturating_add(duration_ticks(worker.limits.handshake_timeout) + 1);
    } else {
        st.phase = Phase::Closing;
        st.exit_when_flushed = true;
        st.deadline = now.saturating_add(CLOSE_GRACE_TICKS);
    }
}

/// Answers an error (with the poll's CORS headers) and closes (`st` is in `Phase::Http` with
/// nothing registered).
fn fail(
    worker: &Worker,
    st: &mut ConnState,
    status: u16,
    error: ErrorName,
    message: &str,
    extra: &[(&str, &str)],
    namespaces: &[u64],
) {
    metrics::counter!("herald_http_refusals_total", "status" => status.to_string()).increment(1);
    let grant = st.poll.take().map_or(Grant::NONE, |p| p.cors);
    let mut headers = extra.to_vec();
    headers.extend(worker.limits.allowed_origins.headers(grant));
    queue_bytes(
        st,
        error_response(status, error, message, &headers, namespaces),
    );
    st.phase = Phase::Closing;
    st.exit_when_flushed = true;
    st.deadline = worker.now().saturating_add(CLOSE_GRACE_TICKS);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory per waiting poll: the boxed state every waiting poll carries.
    #[test]
    fn poll_state_stays_small() {
        let size = std::mem::size_of::<Poll>();
        println!("Poll {size} B");
        assert!(size <= 32, "Poll grew to {size} B");
    }
}
