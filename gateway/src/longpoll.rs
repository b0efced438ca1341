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
use crate::upgrade::{Admission, Decision};
use crate::worker::{CLOSE_GRACE_TICKS, Worker, duration_ticks};
use herald_upstream::LookupError;
use rand::Rng;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// Largest request body accepted (a body announcing more gets 400 before it is read).
pub const MAX_BODY: usize = 64 * 1024;
/// Shortest `timeout_s` accepted, and the default.
pub const MIN_TIMEOUT_S: u64 = 30;
/// Longest `timeout_s` accepted.
pub const MAX_TIMEOUT_S: u64 = 480;
/// Numbers above this travel as decimal strings, both ways.
const MAX_JSON_INT: u64 = 1 << 53;
/// Retry-After (seconds) of a 503 for the connection cap, draining or a failed look-up.
const RETRY_AFTER_FULL: &str = "5";
/// Retry-After (seconds) of a 429 for the handshake rate.
const RETRY_AFTER_RATE: &str = "1";

/// The state of a waiting poll, boxed in `ConnState::poll` (absent on every other connection).
#[derive(Debug, Default)]
pub struct Poll {
    /// Changes the fan-out delivered while the poll waited: `(ns, sjid)`.
    changes: Vec<(u64, u64)>,
    /// Keep the connection for another poll after the reply.
    keep_alive: bool,
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

/// A parsed long-poll request body.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// The JWT.
    pub token: String,
    /// `(ns, cursor)`, in the body's order.
    pub cursors: Vec<(u64, u64)>,
    /// How long to wait for a change, seconds.
    pub timeout_s: u64,
}

/// Decides on a complete `POST /v1/longpoll` head: read its body, or refuse.
#[must_use]
pub fn decide_head(
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    admission: Admission,
) -> Decision {
    let header = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    if header("transfer-encoding").next().is_some() {
        return refuse(
            400,
            "bad_request",
            "chunked bodies are not accepted: send Content-Length",
            &[],
        );
    }
    let mut lengths = header("content-length");
    let body_len = match (lengths.next(), lengths.next()) {
        (Some(h), None) => std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| herald_proto::claims::parse_decimal(v.trim()))
            .and_then(|n| usize::try_from(n).ok()),
        _ => None,
    };
    let Some(body_len) = body_len else {
        return refuse(
            400,
            "bad_request",
            "one valid Content-Length is required",
            &[],
        );
    };
    if body_len > MAX_BODY {
        return refuse(
            400,
            "bad_request",
            &format!("body over {MAX_BODY} bytes"),
            &[],
        );
    }
    if admission.draining || admission.full {
        let why = if admission.draining {
            "draining: poll again later"
        } else {
            "over the connection cap: poll again later"
        };
        return refuse(503, "overloaded", why, &[("Retry-After", RETRY_AFTER_FULL)]);
    }
    if admission.rate_limited {
        return refuse(
            429,
            "overloaded",
            "too many new connections: poll again later",
            &[("Retry-After", RETRY_AFTER_RATE)],
        );
    }
    let connection_close = header("connection").any(|h| {
        std::str::from_utf8(h.value)
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    });
    Decision::LongPoll {
        head_len,
        body_len,
        keep_alive: req.version == Some(1) && !connection_close,
    }
}

/// Parses a request body (PROTOCOL.md "Transports"; unknown fields are ignored).
pub fn parse_request(body: &[u8]) -> Result<Request, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("body must be a JSON object")?;
    let token = obj
        .get("token")
        .and_then(Value::as_str)
        .ok_or("\"token\" must be a string")?
        .to_owned();
    let cursors = obj
        .get("cursors")
        .and_then(Value::as_object)
        .ok_or("\"cursors\" must be an object of namespace → SJID")?;
    if cursors.is_empty() {
        return Err("\"cursors\" must not be empty".into());
    }
    let cursors = cursors
        .iter()
        .map(|(k, v)| {
            let ns = herald_proto::claims::parse_decimal(k)
                .ok_or_else(|| format!("cursor key {k:?} is not a decimal namespace id"))?;
            let sjid = json_u64(v).ok_or_else(|| {
                format!("cursor of {k} must be an integer up to 2^53 or a decimal string")
            })?;
            Ok((ns, sjid))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let timeout_s = match obj.get("timeout_s") {
        None => MIN_TIMEOUT_S,
        Some(t) => t
            .as_u64()
            .filter(|t| (MIN_TIMEOUT_S..=MAX_TIMEOUT_S).contains(t))
            .ok_or_else(|| {
                format!("\"timeout_s\" must be an integer from {MIN_TIMEOUT_S} to {MAX_TIMEOUT_S}")
            })?,
    };
    Ok(Request {
        token,
        cursors,
        timeout_s,
    })
}

fn json_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().filter(|&n| n <= MAX_JSON_INT),
        Value::String(s) => herald_proto::claims::parse_decimal(s),
        _ => None,
    }
}

/// Handles a complete request (`body` after the head): refuses it, answers it, or leaves it
/// waiting in `Phase::Open`.
pub fn start(worker: &Worker, conn: &Conn, st: &mut ConnState, body: &[u8], keep_alive: bool) {
    metrics::counter!("herald_longpoll_requests_total").increment(1);
    let req = match parse_request(body) {
        Ok(r) => r,
        Err(msg) => return fail(worker, st, 400, "bad_request", &msg, &[], &[]),
    };
    let claims = match worker.verifier.verify(&req.token) {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("herald_handshake_failures_total", "reason" => e.label())
                .increment(1);
            let name = if matches!(e, AuthError::Expired) {
                "token_expired"
            } else {
                "unauthorized"
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
        return fail(worker, st, 403, "forbidden_namespace", msg, &[], &forbidden);
    }
    let max = worker.limits.max_subscriptions;
    if req.cursors.len() as u64 > max {
        let msg = format!("at most {max} cursors per poll");
        return fail(worker, st, 400, "bad_request", &msg, &[], &[]);
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
    st.poll = Some(Box::new(Poll {
        changes: Vec::new(),
        keep_alive,
    }));
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
            return fail(worker, st, 503, "overloaded", msg, &extra, &[]);
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
    let body = reply_body(poll.changes, reset, backoff);
    metrics::counter!("herald_longpoll_replies_total", "reason" => why).increment(1);
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut response = head.into_bytes();
    response.extend_from_slice(body.as_bytes());
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

/// The JSON reply: changes merged per namespace (highest SJID), sorted by namespace.
#[must_use]
pub fn reply_body(mut changes: Vec<(u64, u64)>, reset: &[u64], backoff: Option<u64>) -> String {
    changes.sort_unstable();
    changes.reverse();
    changes.dedup_by_key(|c| c.0);
    changes.reverse();
    let mut out = String::with_capacity(48 + changes.len() * 32 + reset.len() * 12);
    out.push_str("{\"changes\":[");
    for (i, &(ns, sjid)) in changes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"ns\":{},\"sjid\":{}}}", num(ns), num(sjid));
    }
    out.push_str("],\"reset\":[");
    for (i, &ns) in reset.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&num(ns));
    }
    out.push_str("],\"backoff_s\":");
    match backoff {
        Some(s) => {
            let _ = write!(out, "{s}");
        }
        None => out.push_str("null"),
    }
    out.push('}');
    out
}

/// A JSON number, or a decimal string above 2^53.
fn num(n: u64) -> String {
    if n > MAX_JSON_INT {
        format!("\"{n}\"")
    } else {
        n.to_string()
    }
}

/// A refusal of a whole request, decided from its head.
fn refuse(status: u16, error: &str, message: &str, extra: &[(&str, &str)]) -> Decision {
    Decision::Refuse {
        status,
        response: error_response(status, error, message, extra, &[]),
    }
}

/// Answers an error and closes (`st` is in `Phase::Http` with nothing registered).
fn fail(
    worker: &Worker,
    st: &mut ConnState,
    status: u16,
    error: &str,
    message: &str,
    extra: &[(&str, &str)],
    namespaces: &[u64],
) {
    metrics::counter!("herald_http_refusals_total", "status" => status.to_string()).increment(1);
    st.poll = None;
    queue_bytes(
        st,
        error_response(status, error, message, extra, namespaces),
    );
    st.phase = Phase::Closing;
    st.exit_when_flushed = true;
    st.deadline = worker.now().saturating_add(CLOSE_GRACE_TICKS);
}

/// `{"error": …, "message": …}` (plus `"namespaces"` when given) with `Connection: close`.
#[must_use]
pub fn error_response(
    status: u16,
    error: &str,
    message: &str,
    extra: &[(&str, &str)],
    namespaces: &[u64],
) -> Vec<u8> {
    let mut body = serde_json::json!({ "error": error, "message": message });
    if !namespaces.is_empty() {
        let list: Vec<Value> = namespaces
            .iter()
            .map(|&n| {
                if n > MAX_JSON_INT {
                    Value::String(n.to_string())
                } else {
                    Value::from(n)
                }
            })
            .collect();
        body["namespaces"] = Value::Array(list);
    }
    let body = body.to_string();
    let reason = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n");
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let _ = write!(
        head,
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    head.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_and_refuses_bad_ones() {
        let r = parse_request(
            br#"{"token":"t","cursors":{"7":42,"9007199254740993":"18446744073709551615"}}"#,
        )
        .expect("valid");
        assert_eq!(r.timeout_s, 30);
        let mut c = r.cursors.clone();
        c.sort_unstable();
        assert_eq!(c, vec![(7, 42), (9_007_199_254_740_993, u64::MAX)]);
        for bad in [
            &br#"{"token":"t","cursors":{}}"#[..],
            br#"{"token":"t"}"#,
            br#"{"cursors":{"1":1}}"#,
            br#"{"token":"t","cursors":{"1":1},"timeout_s":29}"#,
            br#"{"token":"t","cursors":{"1":1},"timeout_s":481}"#,
            br#"{"token":"t","cursors":{"1":1},"timeout_s":30.5}"#,
            br#"{"token":"t","cursors":{"1":1},"timeout_s":"30"}"#,
            br#"{"token":"t","cursors":{"1":9007199254740993}}"#,
            br#"{"token":"t","cursors":{"x":1}}"#,
            br#"{"token":"t","cursors":{"1":-1}}"#,
            b"not json",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn reply_merges_changes_and_quotes_big_numbers() {
        let body = reply_body(
            vec![(7, 3), (2, 1), (7, 5), (u64::MAX, 1 << 60)],
            &[9],
            Some(4),
        );
        assert_eq!(
            body,
            r#"{"changes":[{"ns":2,"sjid":1},{"ns":7,"sjid":5},{"ns":"18446744073709551615","sjid":"1152921504606846976"}],"reset":[9],"backoff_s":4}"#
        );
        assert_eq!(
            reply_body(Vec::new(), &[], None),
            r#"{"changes":[],"reset":[],"backoff_s":null}"#
        );
    }

    /// Memory per waiting poll: the boxed state every waiting poll carries.
    #[test]
    fn poll_state_stays_small() {
        let size = std::mem::size_of::<Poll>();
        println!("Poll {size} B");
        assert!(size <= 32, "Poll grew to {size} B");
    }
}
