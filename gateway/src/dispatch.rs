//! What a decoded client frame does to a connection, whatever the transport under it: the
//! session rules of PROTOCOL.md applied to the connection's state, answers queued in its
//! outbox in the transport's framing. Each transport's task reads and deframes, then calls
//! [`on_frame`] (and [`finish_subscribe`] when a SUBSCRIBE waits for its look-up).

use crate::conn::{Conn, ConnState, Phase, Transport, close_with, queue_frame};
use crate::session;
use crate::worker::Worker;
use herald_proto::{ClientFrame, Code, PROTOCOL_VERSION, ServerFrame};

/// Completes a SUBSCRIBE whose look-up had to wait (distributed mode), then goes on with the
/// frames that arrived behind it.
pub async fn finish_subscribe(worker: &Worker, conn: &Conn, reg: session::Registered) {
    let looked_up = worker
        .source
        .resolve_confirmed(&reg.added, &reg.accepted)
        .await;
    let mut st = conn.state.borrow_mut();
    if st.transport == Transport::LongPoll {
        crate::longpoll::looked_up(worker, conn, &mut st, reg, looked_up);
        if !st.outbox.is_empty() {
            conn.flush_state(&mut st);
        }
        return;
    }
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
            resume(worker, conn, &mut st, &mut scratch[..carried.len()]);
        }
    }
    if conn.has_output(&st) {
        conn.flush_state(&mut st);
    }
}

/// Goes on with the bytes that arrived behind a SUBSCRIBE that waited, in the transport's framing.
fn resume(worker: &Worker, conn: &Conn, st: &mut ConnState, buf: &mut [u8]) {
    match st.transport {
        Transport::WebSocket => crate::handler::consume(worker, conn, st, buf),
        Transport::Quic => crate::quic::consume(worker, conn, st, buf),
        Transport::LongPoll => {}
    }
}

/// Applies one client frame.
pub fn on_frame(worker: &Worker, conn: &Conn, st: &mut ConnState, frame: ClientFrame) {
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

/// Answers a protocol error: ERROR(`bad_frame`), then close.
pub fn bad_frame(worker: &Worker, st: &mut ConnState, message: &str) {
    metrics::counter!("herald_protocol_errors_total").increment(1);
    tracing::debug!(session = %format_args!("{:016x}", st.session_id), message, "bad frame");
    let error = ServerFrame::Error {
        code: Code::BAD_FRAME,
        message: message.to_owned(),
    };
    close_with(st, Some(error), Code::BAD_FRAME, worker.now());
}
