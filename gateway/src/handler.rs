//! The task of one connection: wait for readiness, read into the worker's scratch buffer, run
//! the bytes through the HTTP upgrade, the WebSocket framing and the session rules, and flush.

use crate::conn::{Conn, ConnState, Phase, close_with, queue_bytes, queue_frame};
use crate::session;
use crate::upgrade::{self, Admission, Decision};
use crate::worker::{CLOSE_GRACE_TICKS, Worker};
use herald_proto::frame::decode_client;
use herald_proto::ws::{self, Event, Step};
use herald_proto::{ClientFrame, Code, MAX_CLIENT_FRAME, PROTOCOL_VERSION, ServerFrame};
use std::rc::Rc;
use std::sync::atomic::Ordering;

/// Runs a connection until it closes, then releases everything it held.
pub async fn run(worker: Rc<Worker>, conn: Rc<Conn>) {
    loop {
        let pending = conn.state.borrow_mut().pending.take();
        if let Some(reg) = pending {
            // Boxed: the look-up future is large and rare, and an unboxed await would make every
            // connection's task that much bigger for its whole life (+~650 B measured).
            Box::pin(finish_subscribe(&worker, &conn, *reg)).await;
            continue;
        }
        let ready = std::future::poll_fn(|cx| conn.poll_ready(cx)).await;
        if ready.exit {
            break;
        }
        if ready.readable {
            on_readable(&worker, &conn);
        }
        let mut st = conn.state.borrow_mut();
        if !st.outbox.is_empty() {
            conn.flush_state(&mut st);
        } else if st.exit_when_flushed {
            st.exit = true;
        }
    }
    worker.release(&conn);
}

fn on_readable(worker: &Worker, conn: &Conn) {
    let mut scratch = worker.scratch.borrow_mut();
    let mut st = conn.state.borrow_mut();
    let carry = st.partial.len();
    scratch[..carry].copy_from_slice(&st.partial);
    let n = match conn.stream.try_read(&mut scratch[carry..]) {
        Ok(0) => {
            st.exit = true;
            return;
        }
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
        Err(_) => {
            st.exit = true;
            return;
        }
    };
    st.partial = Vec::new();
    st.last_rx = worker.now();
    consume(worker, conn, &mut st, &mut scratch[..carry + n]);
}

/// Processes `buf` and keeps what was not consumed (an incomplete frame, or frames after a
/// SUBSCRIBE that is waiting for its look-up) for later.
fn consume(worker: &Worker, conn: &Conn, st: &mut ConnState, buf: &mut [u8]) {
    let used = process(worker, conn, st, buf);
    if used < buf.len() && !st.exit {
        st.partial = buf[used..].to_vec();
    }
}

/// Completes a SUBSCRIBE whose look-up had to wait (distributed mode), then goes on with the
/// frames that arrived behind it.
async fn finish_subscribe(worker: &Worker, conn: &Conn, reg: session::Registered) {
    let ns: Vec<u64> = reg.namespaces().collect();
    let looked_up = worker.source.resolve(&reg.added, &ns).await;
    let mut st = conn.state.borrow_mut();
    let latest = match looked_up {
        Ok(latest) => latest,
        Err(e) => {
            tracing::warn!(session = %format_args!("{:016x}", st.session_id), error = %e, "look-up failed; sending the client elsewhere");
            metrics::counter!("herald_lookup_failures_total").increment(1);
            let goaway =
                crate::conn::goaway(Code::OVERLOADED, crate::worker::jitter_ms(1000, 5000));
            close_with(&mut st, Some(goaway), Code::OVERLOADED, worker.now());
            return;
        }
    };
    let outcome = session::complete(
        &mut st.subs,
        conn.key,
        reg,
        &mut worker.interest.borrow_mut(),
        |n| latest.get(&n).copied().unwrap_or(0),
    );
    worker.source.drop_interest(&outcome.reset);
    if st.phase == Phase::Open {
        for frame in outcome.frames() {
            queue_frame(&mut st, &frame);
        }
        let carried = std::mem::take(&mut st.partial);
        if !carried.is_empty() {
            let mut scratch = worker.scratch.borrow_mut();
            scratch[..carried.len()].copy_from_slice(&carried);
            consume(worker, conn, &mut st, &mut scratch[..carried.len()]);
        }
    }
    if !st.outbox.is_empty() {
        conn.flush_state(&mut st);
    }
}

/// Handles the bytes in `buf`; returns how many were consumed (the rest is an incomplete frame).
fn process(worker: &Worker, conn: &Conn, st: &mut ConnState, buf: &mut [u8]) -> usize {
    let mut at = 0;
    if st.phase == Phase::Http {
        match http(worker, st, buf) {
            Some(used) => at = used,
            None => return 0,
        }
    }
    while at < buf.len() && !st.exit && st.pending.is_none() {
        if matches!(st.phase, Phase::Http) || (st.phase == Phase::Closing && st.exit_when_flushed) {
            // Refused upgrade, or a close we are only flushing: ignore further input.
            return buf.len();
        }
        match st.assembler.next(&mut buf[at..], MAX_CLIENT_FRAME) {
            Ok(Step::NeedMore) => break,
            Ok(Step::Consumed(n)) => at += n,
            Ok(Step::Event(event, n)) => {
                at += n;
                on_event(worker, conn, st, event);
            }
            Err(e) => {
                if st.phase == Phase::Closing {
                    st.exit = true;
                } else {
                    bad_frame(worker, st, &e.to_string());
                }
                return buf.len();
            }
        }
    }
    at
}

/// The HTTP phase. `None`: the head is incomplete; `Some(n)`: `n` bytes were the request.
fn http(worker: &Worker, st: &mut ConnState, buf: &[u8]) -> Option<usize> {
    let shared = &worker.shared;
    let admission = Admission {
        full: shared.connections.load(Ordering::Relaxed) >= worker.limits.max_connections,
        draining: shared.draining.load(Ordering::Relaxed),
        rate_limited: st.rate_limited,
    };
    let decision = match upgrade::decide(buf, admission) {
        Some(d) => d,
        None if buf.len() > upgrade::MAX_HEAD => {
            upgrade::refuse(431, "request head too large", &[])
        }
        None => return None,
    };
    match decision {
        Decision::Upgrade { response, head_len } => {
            queue_bytes(st, response);
            st.phase = Phase::AwaitHello;
            st.counted = true;
            shared.connections.fetch_add(1, Ordering::Relaxed);
            Some(head_len)
        }
        Decision::Refuse { status, response } => {
            metrics::counter!("herald_http_refusals_total", "status" => status.to_string())
                .increment(1);
            queue_bytes(st, response);
            st.phase = Phase::Closing;
            st.exit_when_flushed = true;
            st.deadline = worker.now().saturating_add(CLOSE_GRACE_TICKS);
            Some(buf.len())
        }
    }
}

fn on_event(worker: &Worker, conn: &Conn, st: &mut ConnState, event: Event<'_>) {
    match event {
        Event::Close(code) => {
            if st.phase == Phase::Closing {
                // The client answered our close.
                st.exit = true;
            } else {
                let mut close = Vec::with_capacity(8);
                ws::encode_close(code.unwrap_or(ws::CLOSE_NORMAL), "", &mut close);
                queue_bytes(st, close);
                st.phase = Phase::Closing;
                st.exit_when_flushed = true;
                st.deadline = worker.now().saturating_add(CLOSE_GRACE_TICKS);
            }
        }
        _ if st.phase == Phase::Closing => {}
        Event::Ping(payload) => {
            let mut pong = Vec::with_capacity(payload.len() + 2);
            ws::encode_frame(ws::opcode::PONG, payload, &mut pong);
            queue_bytes(st, pong);
        }
        Event::Pong => {}
        Event::Message(bytes) => {
            worker.stats.frames_in.add(1);
            match decode_client(&bytes) {
                Ok(frame) => on_frame(worker, conn, st, frame),
                Err(e) => bad_frame(worker, st, &e.to_string()),
            }
        }
    }
}

fn on_frame(worker: &Worker, conn: &Conn, st: &mut ConnState, frame: ClientFrame) {
    match (st.phase, frame) {
        (Phase::AwaitHello, ClientFrame::Hello { version, token }) => {
            match session::hello(version, &token, &worker.verifier) {
                Ok(claims) => {
                    let now = worker.now();
                    st.phase = Phase::Open;
                    st.token_expires = worker.token_deadline(claims.exp, now);
                    st.class = worker.limits.class_of(claims.cls.as_deref());
                    st.grant = Some(Box::new(claims.ns));
                    queue_frame(
                        st,
                        &ServerFrame::Welcome {
                            version: PROTOCOL_VERSION,
                            heartbeat_ms: worker.limits.heartbeat_of(st.class).as_millis() as u64,
                            max_subscriptions: worker.limits.max_subscriptions,
                            session_id: st.session_id.to_be_bytes().to_vec(),
                        },
                    );
                    metrics::counter!("herald_sessions_opened_total").increment(1);
                    tracing::debug!(session = %format_args!("{:016x}", st.session_id), sub = %claims.sub, "session open");
                }
                Err((error, auth)) => {
                    let reason = auth.as_ref().map_or("unsupported_version", |e| e.label());
                    metrics::counter!("herald_handshake_failures_total", "reason" => reason)
                        .increment(1);
                    tracing::debug!(session = %format_args!("{:016x}", st.session_id), reason, "HELLO refused");
                    let code = match &error {
                        ServerFrame::Error { code, .. } => *code,
                        _ => Code::UNAUTHORIZED,
                    };
                    close_with(st, Some(error), code, worker.now());
                }
            }
        }
        (Phase::AwaitHello, _) => bad_frame(worker, st, "the first frame must be HELLO"),
        (Phase::Open, ClientFrame::Hello { .. }) => {
            bad_frame(worker, st, "HELLO was already received")
        }
        (Phase::Open, ClientFrame::Subscribe(pairs)) => {
            let ConnState { subs, grant, .. } = &mut *st;
            let Some(grant) = grant.as_deref() else {
                return;
            };
            let mut interest = worker.interest.borrow_mut();
            let max = worker.limits.max_subscriptions;
            let reg = session::register(subs, conn.key, &pairs, grant, max, &mut interest);
            match worker.source.local() {
                Some(latest) => {
                    let outcome =
                        session::complete(subs, conn.key, reg, &mut interest, |ns| latest.get(ns));
                    for frame in outcome.frames() {
                        queue_frame(st, &frame);
                    }
                }
                // The look-up needs the network: the task finishes it before the next frame.
                None => st.pending = Some(Box::new(reg)),
            }
        }
        (Phase::Open, ClientFrame::Unsubscribe(ns)) => {
            let mut interest = worker.interest.borrow_mut();
            let dropped = session::unsubscribe(&mut st.subs, conn.key, &ns, &mut interest);
            worker.source.drop_interest(&dropped);
        }
        (Phase::Open, ClientFrame::Ping(nonce)) => queue_frame(st, &ServerFrame::Pong(nonce)),
        (Phase::Open, ClientFrame::Pong(_)) => {}
        (Phase::Http | Phase::Closing, _) => {}
    }
}

fn bad_frame(worker: &Worker, st: &mut ConnState, message: &str) {
    metrics::counter!("herald_protocol_errors_total").increment(1);
    tracing::debug!(session = %format_args!("{:016x}", st.session_id), message, "bad frame");
    let error = ServerFrame::Error {
        code: Code::BAD_FRAME,
        message: message.to_owned(),
    };
    close_with(st, Some(error), Code::BAD_FRAME, worker.now());
}
