//! HTTP long-poll (PROTOCOL.md "Transports", C16): `POST /v1/longpoll` on the WebSocket
//! listener. A poll is a session in `Mode::Poll` (`herald_core::session`): its cursors are
//! registered in the worker's interest table like a SUBSCRIBE (so the fan-out, the distributed
//! look-up, the sweep and drain treat it like any connection), and the reply is one JSON
//! document instead of frames.
//!
//! Life of a poll on a connection: the session is `Connecting` (head and body read) → [`start`]
//! parses the request and hands it to `Session::poll`, which refuses it, answers at once (a
//! cursor behind or ahead) or leaves it waiting (`Open`) with its deadline; the fan-out collects
//! changes in the boxed [`PollState`] and wakes the task, which answers; the sweep marks it due
//! at the deadline or when draining. After the reply the interest is released and the session
//! goes back to `Connecting` (keep-alive) or closes.

use crate::conn::{Conn, ConnState, PollDue, PollState, Transport, queue_bytes};
use crate::worker::Worker;
use herald_core::session::{PollRefused, PollStarted};
use herald_core::subscribe::SubscribeOutcome;
use herald_core::time::duration_ticks;
use herald_proto::cors::Grant;
use herald_proto::http::{RETRY_AFTER_FULL, error_response, ok_response};
use herald_proto::longpoll::{ErrorName, Reply, Request};
use rand::Rng;
use std::sync::atomic::Ordering;

/// Handles a complete request (`body` after the head): refuses it, answers it, or leaves it
/// waiting.
pub fn start(
    worker: &Worker,
    key: u32,
    st: &mut ConnState,
    body: &[u8],
    keep_alive: bool,
    cors: Grant,
) {
    metrics::counter!("herald_longpoll_requests_total").increment(1);
    st.wire.transport = Transport::LongPoll;
    // Created first: a refusal below reads its CORS grant from it (and clears it).
    st.wire.poll = Some(Box::new(PollState {
        keep_alive,
        cors,
        ..PollState::default()
    }));
    let req = match Request::parse(body) {
        Ok(r) => r,
        Err(message) => {
            let refused = PollRefused {
                status: 400,
                error: ErrorName::BadRequest,
                message,
                namespaces: Vec::new(),
            };
            return fail(worker, st, &refused, &[]);
        }
    };
    let wait = duration_ticks(std::time::Duration::from_secs(req.timeout_s));
    // Jitter up to 10% of the timeout, less the sweep's own lateness (a 500 ms period plus the
    // tick floored away), so the reply lands within timeout + 10% and never before the timeout.
    let jitter = rand::rng().random_range(0..=(wait / 10).saturating_sub(7));
    let started = worker.drive(key, st, |session, env, _| {
        session.poll(env, &req.token, &req.cursors, wait, jitter)
    });
    match started {
        Err(refused) => fail(worker, st, &refused, &[]),
        Ok(started) => {
            if !st.wire.counted {
                st.wire.counted = true;
                worker.shared.connections.fetch_add(1, Ordering::Relaxed);
            }
            if let PollStarted::Answer { changed, reset } = started {
                answer_now(worker, key, st, changed, &reset);
            }
        }
    }
}

/// Completes a poll whose look-up had to wait (distributed mode): `looked_up` false if it
/// failed (503), else the outcome of its cursors.
pub fn looked_up(
    worker: &Worker,
    key: u32,
    st: &mut ConnState,
    looked_up: bool,
    outcome: Option<SubscribeOutcome>,
) {
    if !looked_up {
        tracing::warn!("look-up failed; long-poll answered 503");
        let refused = PollRefused {
            status: 503,
            error: ErrorName::Overloaded,
            message: "namespace look-up failed: poll again later".to_owned(),
            namespaces: Vec::new(),
        };
        return fail(worker, st, &refused, &[("Retry-After", RETRY_AFTER_FULL)]);
    }
    let Some(outcome) = outcome else { return };
    if !st.session.is_open() || st.wire.poll.is_none() {
        return;
    }
    if let PollStarted::Answer { changed, reset } =
        herald_core::session::Session::poll_outcome(outcome)
    {
        answer_now(worker, key, st, changed, &reset);
    }
}

fn answer_now(
    worker: &Worker,
    key: u32,
    st: &mut ConnState,
    changed: Vec<(u64, u64)>,
    reset: &[u64],
) {
    if let Some(poll) = st.wire.poll.as_deref_mut() {
        poll.changes.extend(changed);
    }
    answer(worker, key, st, reset, None, "immediate");
}

/// Called when the task wakes: answers a waiting poll the fan-out delivered changes to, or the
/// sweep marked due (deadline, draining).
pub fn on_wake(worker: &Worker, conn: &Conn) {
    let mut st = conn.state.borrow_mut();
    if !st.session.is_open() || st.session.awaiting_lookup() {
        return;
    }
    let Some(poll) = st.wire.poll.as_deref() else {
        return;
    };
    match (poll.changes.is_empty(), poll.due) {
        (false, _) => answer(worker, conn.key, &mut st, &[], None, "changes"),
        (true, Some(PollDue::Timeout)) => answer(worker, conn.key, &mut st, &[], None, "timeout"),
        (true, Some(PollDue::Draining)) => {
            let backoff = rand::rng().random_range(1..=5);
            answer(worker, conn.key, &mut st, &[], Some(backoff), "draining");
        }
        (true, None) => {}
    }
}

/// `backoff_s` under load: near the connection cap (90% or more), ask clients to wait 5–10 s.
fn load_backoff(worker: &Worker) -> Option<u64> {
    let connections = worker.shared.connections.load(Ordering::Relaxed);
    (connections.saturating_mul(10) >= worker.limits.max_connections.saturating_mul(9))
        .then(|| rand::rng().random_range(5..=10))
}

/// Sends the reply (changes collected so far, `reset`, `backoff_s`), then the session releases
/// the interest and goes back to waiting for a request (keep-alive) or closes.
fn answer(
    worker: &Worker,
    key: u32,
    st: &mut ConnState,
    reset: &[u64],
    backoff: Option<u64>,
    why: &'static str,
) {
    let poll = st.wire.poll.take().unwrap_or_default();
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
    queue_bytes(&mut st.wire, ok_response(&body, keep_alive, &cors));
    worker.drive(key, st, |session, env, out| {
        session.poll_answered(env, out, keep_alive);
    });
}

/// Answers an error (with the poll's CORS headers) and closes once it is flushed.
fn fail(worker: &Worker, st: &mut ConnState, refused: &PollRefused, extra: &[(&str, &str)]) {
    metrics::counter!("herald_http_refusals_total", "status" => refused.status.to_string())
        .increment(1);
    let grant = st.wire.poll.take().map_or(Grant::NONE, |p| p.cors);
    let mut headers = extra.to_vec();
    headers.extend(worker.limits.allowed_origins.headers(grant));
    let response = error_response(
        refused.status,
        refused.error,
        &refused.message,
        &headers,
        &refused.namespaces,
    );
    queue_bytes(&mut st.wire, response);
    st.wire.end_when_flushed(&mut st.session, worker.now());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory per waiting poll: the boxed state every waiting poll carries.
    #[test]
    fn poll_state_stays_small() {
        let size = std::mem::size_of::<PollState>();
        println!("PollState {size} B");
        assert!(size <= 32, "PollState grew to {size} B");
    }
}
