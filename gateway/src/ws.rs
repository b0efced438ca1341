//! The task of a TCP connection (plain or TLS): wait for readiness, read into the worker's
//! scratch buffer, decide the HTTP request (`herald_proto::http`: upgrade, long-poll, preflight
//! or refusal), then deframe WebSocket messages into the session, and flush.

use crate::conn::{Conn, ConnState, Transport, queue_bytes};
use crate::drive;
use crate::worker::Worker;
use herald_core::session::Phase;
use herald_proto::MAX_CLIENT_FRAME;
use herald_proto::frame::decode_client;
use herald_proto::http::{self as upgrade, Admission, Decision};
use herald_proto::ws::{self, Event, Step};
use std::rc::Rc;
use std::sync::atomic::Ordering;

/// Runs a connection until it closes, then releases everything it held.
pub async fn run(worker: Rc<Worker>, conn: Rc<Conn>) {
    loop {
        if conn.state.borrow().session.awaiting_lookup() {
            // Boxed: the look-up future is large and rare, and an unboxed await would make every
            // connection's task that much bigger for its whole life (+~650 B measured).
            Box::pin(finish_lookup(&worker, &conn)).await;
            continue;
        }
        let ready = std::future::poll_fn(|cx| conn.poll_ready(cx)).await;
        if ready.exit {
            break;
        }
        if conn.state.borrow().wire.transport == Transport::LongPoll {
            crate::longpoll::on_wake(&worker, &conn);
        }
        if ready.readable {
            on_readable(&worker, &conn);
        }
        let mut st = conn.state.borrow_mut();
        conn.flush_or_finish(&mut st.wire);
    }
    conn.io.shutdown();
    worker.release(&conn);
}

/// Completes a SUBSCRIBE (or poll) whose look-up had to wait, then goes on with the bytes that
/// arrived behind it.
async fn finish_lookup(worker: &Worker, conn: &Conn) {
    let Some((reg, latest)) = drive::look_up(worker, conn).await else {
        return;
    };
    let mut st = conn.state.borrow_mut();
    let outcome = drive::finish_lookup(worker, conn.key, &mut st, *reg, latest.as_ref());
    if st.wire.transport == Transport::LongPoll {
        crate::longpoll::looked_up(worker, conn.key, &mut st, latest.is_some(), outcome);
    } else {
        drive::resume(worker, conn.key, &mut st, consume);
    }
    conn.flush_or_finish(&mut st.wire);
}

fn on_readable(worker: &Worker, conn: &Conn) {
    let mut scratch = worker.scratch.borrow_mut();
    let mut st = conn.state.borrow_mut();
    let carry = st.wire.partial.len();
    scratch[..carry].copy_from_slice(&st.wire.partial);
    let n = match conn.io.try_read(&mut scratch[carry..]) {
        Ok(0) => {
            st.wire.exit = true;
            return;
        }
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
        Err(_) => {
            st.wire.exit = true;
            return;
        }
    };
    st.wire.partial = Vec::new();
    st.session.received(worker.now());
    consume(worker, conn.key, &mut st, &mut scratch[..carry + n]);
}

/// Processes `buf` and keeps what was not consumed (an incomplete frame, or frames after a
/// SUBSCRIBE that is waiting for its look-up) for later.
fn consume(worker: &Worker, key: u32, st: &mut ConnState, buf: &mut [u8]) {
    let used = process(worker, key, st, buf);
    if used < buf.len() && !st.wire.exit {
        st.wire.partial = buf[used..].to_vec();
    }
}

/// Handles the bytes in `buf`; returns how many were consumed (the rest is an incomplete frame).
fn process(worker: &Worker, key: u32, st: &mut ConnState, buf: &mut [u8]) -> usize {
    let mut at = 0;
    if st.session.phase() == Phase::Connecting {
        match http(worker, key, st, buf) {
            Some(used) => at = used,
            None => return 0,
        }
    }
    if st.wire.transport == Transport::LongPoll {
        // No pipelining: bytes sent before the reply to a poll end the connection (C16).
        if at < buf.len() && st.session.phase() != Phase::Closing {
            st.wire.exit = true;
        }
        return buf.len();
    }
    while at < buf.len() && !st.wire.exit && !st.session.awaiting_lookup() {
        let phase = st.session.phase();
        if phase == Phase::Connecting || (phase == Phase::Closing && st.wire.exit_when_flushed) {
            // Refused upgrade, or a close we are only flushing: ignore further input.
            return buf.len();
        }
        match st.wire.assembler.next(&mut buf[at..], MAX_CLIENT_FRAME) {
            Ok(Step::NeedMore) => break,
            Ok(Step::Consumed(n)) => at += n,
            Ok(Step::Event(event, n)) => {
                at += n;
                on_event(worker, key, st, event);
            }
            Err(e) => {
                if phase == Phase::Closing {
                    st.wire.exit = true;
                } else {
                    drive::protocol_error(worker, key, st, &e.to_string());
                }
                return buf.len();
            }
        }
    }
    at
}

/// The HTTP phase. `None`: the head is incomplete; `Some(n)`: `n` bytes were the request.
fn http(worker: &Worker, key: u32, st: &mut ConnState, buf: &[u8]) -> Option<usize> {
    let shared = &worker.shared;
    let admission = Admission {
        // A long-poll connection kept alive is already counted.
        full: !st.wire.counted
            && shared.connections.load(Ordering::Relaxed) >= worker.limits.max_connections,
        draining: shared.draining.load(Ordering::Relaxed),
        rate_limited: st.wire.rate_limited,
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
            queue_bytes(&mut st.wire, response);
            st.session.upgraded();
            st.wire.transport = Transport::WebSocket;
            if !st.wire.counted {
                st.wire.counted = true;
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
            crate::longpoll::start(worker, key, st, &buf[head_len..end], keep_alive, cors);
            Some(end)
        }
        Decision::Preflight { response } => {
            metrics::counter!("herald_longpoll_preflights_total").increment(1);
            queue_bytes(&mut st.wire, response);
            st.wire.end_when_flushed(&mut st.session, worker.now());
            Some(buf.len())
        }
        Decision::Refuse { status, response } => {
            metrics::counter!("herald_http_refusals_total", "status" => status.to_string())
                .increment(1);
            queue_bytes(&mut st.wire, response);
            st.wire.end_when_flushed(&mut st.session, worker.now());
            Some(buf.len())
        }
    }
}

fn on_event(worker: &Worker, key: u32, st: &mut ConnState, event: Event<'_>) {
    match event {
        Event::Close(code) => {
            if st.session.phase() == Phase::Closing {
                // The client answered our close.
                st.wire.exit = true;
            } else {
                let mut close = Vec::with_capacity(8);
                ws::encode_close(code.unwrap_or(ws::CLOSE_NORMAL), "", &mut close);
                queue_bytes(&mut st.wire, close);
                st.wire.end_when_flushed(&mut st.session, worker.now());
            }
        }
        _ if st.session.phase() == Phase::Closing => {}
        Event::Ping(payload) => {
            let mut pong = Vec::with_capacity(payload.len() + 2);
            ws::encode_frame(ws::opcode::PONG, payload, &mut pong);
            queue_bytes(&mut st.wire, pong);
        }
        Event::Pong => {}
        Event::Message(bytes) => {
            worker.stats.frames_in.add(1);
            match decode_client(&bytes) {
                Ok(frame) => drive::on_frame(worker, key, st, frame),
                Err(e) => drive::protocol_error(worker, key, st, &e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Verifier;
    use crate::conn::Io;
    use crate::lookup::Lookup;
    use crate::worker::Shared;
    use clap::Parser;
    use herald_core::latest::LatestTable;
    use std::sync::Arc;

    /// Every idle connection is one task whose future lives as long as the connection: its size
    /// is per-connection memory. A large await point added to `ws::run` (the distributed
    /// look-up once added ~650 B to every connection) fails this.
    #[tokio::test]
    async fn connection_task_stays_small() {
        let verifier = Arc::new(Verifier::new(std::collections::HashMap::new(), None, None));
        let lookup = Lookup::Embedded(Arc::new(LatestTable::new()));
        let worker = Rc::new(Worker::new(
            0,
            lookup,
            verifier,
            crate::config::Cli::try_parse_from(["herald-gateway"])
                .expect("defaults")
                .serve
                .conn_limits(1024),
            Arc::new(Shared::default()),
            1,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"));
        let (accepted, _client) = tokio::join!(listener.accept(), client);
        let stream = accepted.expect("accept").0;
        let conn = worker.insert(Io::Tcp(stream), Transport::WebSocket);
        let task = run(worker, conn);
        let size = std::mem::size_of_val(&task);
        println!("connection task future: {size} B");
        assert!(size <= 256, "the connection task's future grew to {size} B");
    }
}
