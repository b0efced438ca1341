//! The task of one connection: wait for readiness, read into the worker's scratch buffer, run
//! the bytes through the HTTP upgrade, the WebSocket framing and the session rules, and flush.

use crate::conn::{Conn, ConnState, Phase, Transport, queue_bytes};
use crate::dispatch::{bad_frame, finish_subscribe, on_frame};
use crate::worker::{CLOSE_GRACE_TICKS, Worker};
use herald_proto::MAX_CLIENT_FRAME;
use herald_proto::frame::decode_client;
use herald_proto::http::{self as upgrade, Admission, Decision};
use herald_proto::ws::{self, Event, Step};
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
        if conn.state.borrow().transport == Transport::LongPoll {
            crate::longpoll::on_wake(&worker, &conn);
        }
        if ready.readable {
            on_readable(&worker, &conn);
        }
        let mut st = conn.state.borrow_mut();
        if conn.has_output(&st) {
            conn.flush_state(&mut st);
        } else if st.exit_when_flushed {
            st.exit = true;
        }
    }
    conn.io.shutdown();
    worker.release(&conn);
}

fn on_readable(worker: &Worker, conn: &Conn) {
    let mut scratch = worker.scratch.borrow_mut();
    let mut st = conn.state.borrow_mut();
    let carry = st.partial.len();
    scratch[..carry].copy_from_slice(&st.partial);
    let n = match conn.io.try_read(&mut scratch[carry..]) {
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
pub fn consume(worker: &Worker, conn: &Conn, st: &mut ConnState, buf: &mut [u8]) {
    let used = process(worker, conn, st, buf);
    if used < buf.len() && !st.exit {
        st.partial = buf[used..].to_vec();
    }
}

/// Handles the bytes in `buf`; returns how many were consumed (the rest is an incomplete frame).
fn process(worker: &Worker, conn: &Conn, st: &mut ConnState, buf: &mut [u8]) -> usize {
    let mut at = 0;
    if st.phase == Phase::Http {
        match http(worker, conn, st, buf) {
            Some(used) => at = used,
            None => return 0,
        }
    }
    if st.transport == Transport::LongPoll {
        // No pipelining: bytes sent before the reply to a poll end the connection (C16).
        if at < buf.len() && st.phase != Phase::Closing {
            st.exit = true;
        }
        return buf.len();
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
fn http(worker: &Worker, conn: &Conn, st: &mut ConnState, buf: &[u8]) -> Option<usize> {
    let shared = &worker.shared;
    let admission = Admission {
        // A long-poll connection kept alive is already counted.
        full: !st.counted
            && shared.connections.load(Ordering::Relaxed) >= worker.limits.max_connections,
        draining: shared.draining.load(Ordering::Relaxed),
        rate_limited: st.rate_limited,
    };
    let decision = match upgrade::decide(buf, admission, &worker.limits.allowed_origins) {
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
            st.transport = Transport::WebSocket;
            if !st.counted {
                st.counted = true;
                shared.connections.fetch_add(1, Ordering::Relaxed);
            }
            Some(head_len)
        }
        Decision::LongPoll {
            head_len,
            body_len,
            keep_alive,
            cors,
        } => {
            let end = head_len + body_len;
            if buf.len() < end {
                return None;
            }
            crate::longpoll::start(worker, conn, st, &buf[head_len..end], keep_alive, cors);
            Some(end)
        }
        Decision::Preflight { response } => {
            metrics::counter!("herald_longpoll_preflights_total").increment(1);
            queue_bytes(st, response);
            st.phase = Phase::Closing;
            st.exit_when_flushed = true;
            st.deadline = worker.now().saturating_add(CLOSE_GRACE_TICKS);
            Some(buf.len())
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
