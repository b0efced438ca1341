//! One client connection: its socket, its protocol phase, and the few bytes it keeps between
//! events. No read buffer while idle (reads go to the worker's scratch buffer; only a partial
//! frame is carried), no writer task or channel (the fan-out writes straight to the socket and
//! queues only what the socket refuses), no timer (the worker's sweep checks deadlines).
//!
//! The session core (phase, subscriptions, outbox, deadlines) is the same for every transport;
//! [`Io`] is the byte stream under it and [`Transport`] says how frames are put on it.

use bytes::Bytes;
use herald_proto::{Code, NsGrant, ServerFrame, ws};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::task::{Context, Poll, Waker};
use tokio::net::TcpStream;

use crate::tls_stream::{Flush, TlsStream};

/// How a connection's frames are put on the wire (PROTOCOL.md "Transports").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One binary WebSocket message per frame (plain or TLS).
    WebSocket,
    /// Each frame preceded by its length as a varint, on one QUIC stream.
    Quic,
    /// HTTP long-poll: no frames; one JSON reply when a change arrives.
    LongPoll,
}

impl Transport {
    /// Appends `payload` (one encoded Herald frame) to `out` as this transport carries it.
    pub fn wrap(self, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            Transport::WebSocket => ws::encode_frame(ws::opcode::BINARY, payload, out),
            Transport::Quic => {
                herald_proto::varint::encode(payload.len() as u64, out);
                out.extend_from_slice(payload);
            }
            // Long-poll replies are JSON built by the long-poll module, never frames.
            Transport::LongPoll => {}
        }
    }
}

/// One change for the fan-out, encoded at most once per transport and shared by every recipient
/// on that transport.
#[derive(Debug)]
pub struct SharedChange {
    /// Namespace.
    pub ns: u64,
    /// Its new SJID.
    pub sjid: u64,
    websocket: Option<Bytes>,
    quic: Option<Bytes>,
}

impl SharedChange {
    /// A change not encoded yet.
    #[must_use]
    pub fn new(ns: u64, sjid: u64) -> Self {
        SharedChange {
            ns,
            sjid,
            websocket: None,
            quic: None,
        }
    }

    /// The CHANGED frame as `transport` carries it (encoded on first use).
    pub fn wire(&mut self, transport: Transport) -> &Bytes {
        let slot = match transport {
            Transport::Quic => &mut self.quic,
            Transport::WebSocket | Transport::LongPoll => &mut self.websocket,
        };
        let (ns, sjid) = (self.ns, self.sjid);
        slot.get_or_insert_with(|| {
            let mut payload = Vec::with_capacity(24);
            ServerFrame::Changed(vec![(ns, sjid)]).encode(&mut payload);
            let mut wire = Vec::with_capacity(payload.len() + 2 + ws::MAX_SERVER_HEADER);
            transport.wrap(&payload, &mut wire);
            Bytes::from(wire)
        })
    }
}

/// The byte stream under a connection.
pub enum Io {
    /// A TCP socket: the HTTP request, then WebSocket frames (or a long-poll reply).
    Tcp(TcpStream),
    /// The same over TLS (`wss`, HTTPS). Boxed: the TLS session is large next to a socket, and
    /// plain connections should not pay for it.
    Tls(Box<TlsStream>),
    /// A QUIC session stream (boxed: QUIC connections are rare next to WebSocket ones, and the
    /// plain path stays lean). Its task polls the streams itself (`quic::run`), so readiness
    /// below is only for TCP.
    Quic(Box<crate::quic::QuicIo>),
}

impl Io {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Io::Tcp(s) => s.poll_read_ready(cx).map(|_| ()),
            Io::Tls(t) => t.tcp().poll_read_ready(cx).map(|_| ()),
            Io::Quic(_) => Poll::Pending,
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Io::Tcp(s) => s.poll_write_ready(cx).map(|_| ()),
            Io::Tls(t) => t.tcp().poll_write_ready(cx).map(|_| ()),
            Io::Quic(_) => Poll::Pending,
        }
    }

    /// Reads what is there without waiting (`WouldBlock` when nothing is). Over TLS: the
    /// decrypted application data (`WouldBlock` also when only handshake records came).
    pub fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Tcp(s) => s.try_read(buf),
            Io::Tls(t) => t.read_plain(buf),
            Io::Quic(_) => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Writes without waiting. `waker` (the connection task's) is woken when a QUIC stream that
    /// refused bytes has room again; TCP readiness is polled by the task instead.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>], waker: &Waker) -> std::io::Result<usize> {
        match self {
            Io::Tcp(s) => s.try_write_vectored(bufs),
            Io::Tls(_) => Err(std::io::Error::other("TLS is written by TlsStream::flush")),
            Io::Quic(q) => q.try_write(bufs, waker),
        }
    }

    /// Bytes below the outbox wait for the socket (TLS records already encrypted).
    #[must_use]
    pub fn has_pending_out(&self) -> bool {
        match self {
            Io::Tcp(_) | Io::Quic(_) => false,
            Io::Tls(t) => t.has_pending_out(),
        }
    }

    /// The connection is over: TLS sends close_notify if it can (best effort, no waiting).
    pub fn shutdown(&self) {
        match self {
            Io::Tcp(_) | Io::Quic(_) => {}
            Io::Tls(t) => t.shutdown(),
        }
    }
}

use crate::session::{Registered, Subscriptions};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP upgrade request.
    Http,
    /// Upgraded; waiting for HELLO.
    AwaitHello,
    /// WELCOME sent; subscriptions allowed.
    Open,
    /// A close is under way: nothing more is processed; the socket is dropped once the client
    /// answers the close, or the outbox is flushed (`exit_when_flushed`), or the deadline passes.
    Closing,
}

/// What woke the connection task.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ready {
    /// Bytes (or EOF) to read.
    pub readable: bool,
    /// Room to flush the outbox.
    pub writable: bool,
    /// The task should end.
    pub exit: bool,
}

/// A connection, shared (single-threaded `Rc`) by its task, the fan-out and the sweep.
pub struct Conn {
    /// The byte stream. Readiness is polled by the task; writes may come from the fan-out.
    pub io: Io,
    /// Slot in the worker's connection table (also the id in the interest table).
    pub key: u32,
    /// Everything mutable. Borrowed only in synchronous sections, never across an await.
    pub state: RefCell<ConnState>,
    /// The task's waker, so the fan-out and the sweep can wake it.
    waker: RefCell<Option<Waker>>,
}

/// The mutable part of a connection.
pub struct ConnState {
    /// Protocol phase.
    pub phase: Phase,
    /// How frames are written (a TCP connection is WebSocket until its request says long-poll).
    pub transport: Transport,
    /// Bytes of an incomplete frame (or HTTP head) carried to the next read. Empty (no
    /// allocation) whenever the client is between frames.
    pub partial: Vec<u8>,
    /// Reassembly of fragmented WebSocket messages (empty unless one is in progress).
    pub assembler: ws::Assembler,
    /// Frames the socket did not take yet. Empty (no allocation) while the socket keeps up. On a
    /// TLS connection these are still plaintext: they are encrypted when written (`tls_stream`).
    pub outbox: VecDeque<Bytes>,
    /// Bytes in `outbox`.
    pub outbox_bytes: usize,
    /// The front of `outbox` is partly written, so it must be finished before anything else.
    pub front_started: bool,
    /// Tick of the last bytes received (heartbeat).
    pub last_rx: u32,
    /// Tick by which the handshake must finish, or (Closing) by which the socket is dropped.
    pub deadline: u32,
    /// Tick at which the token's `exp` plus leeway passes (Open only; `u32::MAX`: never).
    pub token_expires: u32,
    /// Leave as soon as the outbox is empty.
    pub exit_when_flushed: bool,
    /// Leave now.
    pub exit: bool,
    /// Counted in the process's connection total (set at the upgrade).
    pub counted: bool,
    /// Over the handshake rate at accept: its upgrade is answered with 503.
    pub rate_limited: bool,
    /// Client class (from the token), which sets its heartbeat; 0 = default.
    pub class: u8,
    /// The code a close started by the server carries (0: none yet): QUIC puts it in the
    /// connection's application close (PROTOCOL.md "Transports").
    pub close_code: u16,
    /// Random id, sent in WELCOME and written in logs.
    pub session_id: u64,
    /// What the token grants (Open only).
    pub grant: Option<Box<NsGrant>>,
    /// Live subscriptions.
    pub subs: Subscriptions,
    /// A SUBSCRIBE waiting for its look-up (distributed mode). While set, no further frame is
    /// processed, which keeps the per-connection ordering rule.
    pub pending: Option<Box<Registered>>,
    /// A waiting long-poll (its collected changes); `None` on every other connection.
    pub poll: Option<Box<crate::longpoll::Poll>>,
}

impl Conn {
    /// A new connection in the HTTP phase, with its handshake deadline.
    #[must_use]
    pub fn new(
        io: Io,
        transport: Transport,
        key: u32,
        now: u32,
        handshake_deadline: u32,
        session_id: u64,
    ) -> Self {
        Conn {
            io,
            key,
            state: RefCell::new(ConnState {
                phase: Phase::Http,
                transport,
                partial: Vec::new(),
                assembler: ws::Assembler::default(),
                outbox: VecDeque::new(),
                outbox_bytes: 0,
                front_started: false,
                last_rx: now,
                deadline: handshake_deadline,
                token_expires: u32::MAX,
                exit_when_flushed: false,
                exit: false,
                counted: false,
                rate_limited: false,
                class: 0,
                close_code: 0,
                session_id,
                grant: None,
                subs: Subscriptions::default(),
                pending: None,
                poll: None,
            }),
            waker: RefCell::new(None),
        }
    }

    /// Polls for anything the task must act on, remembering the waker for [`Conn::wake`].
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Ready> {
        let st = self.state.borrow();
        if st.exit {
            return Poll::Ready(Ready {
                exit: true,
                ..Ready::default()
            });
        }
        self.register_waker(cx);
        if st.phase == Phase::Open && st.poll.as_ref().is_some_and(|p| p.due()) {
            // A waiting long-poll got changes from the fan-out: the task answers it.
            return Poll::Ready(Ready::default());
        }
        let writable = self.has_output(&st) && self.io.poll_write_ready(cx).is_ready();
        let readable = self.io.poll_read_ready(cx).is_ready();
        if writable || readable {
            Poll::Ready(Ready {
                readable,
                writable,
                exit: false,
            })
        } else {
            Poll::Pending
        }
    }

    /// Something waits to be written: frames in the outbox, or (TLS) records below it.
    #[must_use]
    pub fn has_output(&self, st: &ConnState) -> bool {
        !st.outbox.is_empty() || self.io.has_pending_out()
    }

    /// Remembers the task's waker for [`Conn::wake`] and for QUIC writes from the fan-out.
    pub fn register_waker(&self, cx: &Context<'_>) {
        let mut w = self.waker.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
    }

    /// Wakes the task (after the sweep or the fan-out changed its state).
    pub fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Queues a change shared with other recipients (fan-out) without writing it: the fan-out
    /// writes every connection it touched once, at the end of its round
    /// ([`Conn::flush_queued`]), so all the changes of a round leave in one write. A queue
    /// that grows past half of `limit` within a round is written at once, so a round alone
    /// never makes a slow consumer; past `limit` queued bytes the socket did not take, the
    /// client is one.
    pub fn queue_shared(
        &self,
        change: &mut SharedChange,
        limit: usize,
        goaway_ms: impl FnOnce() -> u64,
        now: u32,
    ) -> Queued {
        let mut st = self.state.borrow_mut();
        if st.phase != Phase::Open {
            return Queued::No;
        }
        if let Some(poll) = st.poll.as_deref_mut() {
            // Long-poll: collect; the task answers once the whole batch is in (one reply).
            let first = !poll.due();
            poll.collect(change.ns, change.sjid);
            drop(st);
            if first {
                self.wake();
            }
            return Queued::Collected;
        }
        let frame = change.wire(st.transport);
        let first = st.outbox.is_empty();
        st.outbox_bytes += frame.len();
        st.outbox.push_back(frame.clone());
        if st.outbox_bytes > limit / 2 {
            self.flush_state(&mut st);
        }
        if st.outbox_bytes > limit {
            drop_queued(&mut st);
            close_with(
                &mut st,
                Some(goaway(Code::SLOW_CONSUMER, goaway_ms())),
                Code::SLOW_CONSUMER,
                now,
            );
            drop(st);
            self.wake();
            return Queued::SlowConsumer;
        }
        if first { Queued::First } else { Queued::Behind }
    }

    /// Writes what the fan-out queued this round (one vectored write), and wakes the task if
    /// the socket left some of it, so that the task waits for write readiness (or exits).
    pub fn flush_queued(&self) {
        let mut st = self.state.borrow_mut();
        self.flush_state(&mut st);
        let wake = self.has_output(&st) || st.exit;
        drop(st);
        if wake {
            self.wake();
        }
    }

    /// Writes as much of the outbox as the socket takes (one vectored write per call). Over
    /// TLS the outbox holds plaintext, encrypted here, frame by frame, as the socket takes it.
    pub fn flush_state(&self, st: &mut ConnState) {
        if let Io::Tls(tls) = &self.io {
            match tls.flush(&mut st.outbox, &mut st.outbox_bytes) {
                Flush::Done => {}
                Flush::Blocked => return,
                Flush::Failed => {
                    st.exit = true;
                    return;
                }
            }
        }
        let waker = self.waker.borrow();
        let waker = waker.as_ref().unwrap_or(Waker::noop());
        while !st.outbox.is_empty() {
            let mut slices = [IoSlice::new(&[]); 64];
            let n = st.outbox.len().min(slices.len());
            for (slot, buf) in slices.iter_mut().zip(st.outbox.iter()) {
                *slot = IoSlice::new(buf);
            }
            match self.io.try_write_vectored(&slices[..n], waker) {
                Ok(0) => {
                    st.exit = true;
                    return;
                }
                Ok(mut written) => {
                    st.outbox_bytes -= written;
                    while let Some(front) = st.outbox.front_mut() {
                        if written >= front.len() {
                            written -= front.len();
                            st.outbox.pop_front();
                            st.front_started = false;
                        } else {
                            if written > 0 {
                                let rest = front.slice(written..);
                                *front = rest;
                                st.front_started = true;
                            }
                            break;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    st.exit = true;
                    return;
                }
            }
        }
        // Give back the queue's memory once the socket has caught up.
        st.outbox = VecDeque::new();
        if st.exit_when_flushed {
            st.exit = true;
        }
    }
}

/// What [`Conn::queue_shared`] did with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Nothing: the connection is not open.
    No,
    /// Collected for a waiting long-poll (its task answers).
    Collected,
    /// Queued in an empty outbox: the fan-out writes it at the end of the round.
    First,
    /// Queued behind frames already waiting (written this round or when the socket takes them).
    Behind,
    /// The connection became a slow consumer and is closing.
    SlowConsumer,
}

/// Appends a Herald frame, as the connection's transport carries it, to the outbox.
pub fn queue_frame(st: &mut ConnState, frame: &ServerFrame) {
    let mut payload = Vec::with_capacity(32);
    frame.encode(&mut payload);
    let mut wire = Vec::with_capacity(payload.len() + ws::MAX_SERVER_HEADER);
    st.transport.wrap(&payload, &mut wire);
    queue_bytes(st, wire);
}

/// Appends raw bytes (an HTTP response, a control frame) to the outbox.
pub fn queue_bytes(st: &mut ConnState, bytes: Vec<u8>) {
    st.outbox_bytes += bytes.len();
    st.outbox.push_back(Bytes::from(bytes));
}

/// A GOAWAY frame.
#[must_use]
pub fn goaway(code: Code, reconnect_after_ms: u64) -> ServerFrame {
    ServerFrame::Goaway {
        code,
        reconnect_after_ms,
    }
}

/// Starts closing: sends `frame` (ERROR or GOAWAY, or nothing for a timeout), then ends the
/// session the transport's way. WebSocket: a close with 4000 + `code`, and the socket is dropped
/// when the client answers it or within five seconds. Other transports: the connection ends once
/// the frame is flushed (or at the same deadline).
pub fn close_with(st: &mut ConnState, frame: Option<ServerFrame>, code: Code, now: u32) {
    if st.phase == Phase::Closing {
        return;
    }
    st.close_code = u16::try_from(code.0).unwrap_or(u16::MAX);
    if st.phase == Phase::Http {
        st.exit = true;
        return;
    }
    if let Some(f) = frame {
        queue_frame(st, &f);
    }
    match st.transport {
        Transport::WebSocket => {
            let mut close = Vec::with_capacity(16);
            ws::encode_close(
                code.ws_close_code().unwrap_or(ws::CLOSE_NORMAL),
                code.name(),
                &mut close,
            );
            queue_bytes(st, close);
        }
        Transport::Quic | Transport::LongPoll => {
            st.exit_when_flushed = true;
            if st.outbox.is_empty() {
                st.exit = true;
            }
        }
    }
    st.phase = Phase::Closing;
    st.deadline = now.saturating_add(crate::worker::CLOSE_GRACE_TICKS);
    st.partial = Vec::new();
}

/// Drops queued frames, except the rest of one partly written (the stream must stay well-framed).
fn drop_queued(st: &mut ConnState) {
    let keep = if st.front_started {
        st.outbox.pop_front()
    } else {
        None
    };
    st.outbox = VecDeque::new();
    st.outbox_bytes = 0;
    if let Some(front) = keep {
        st.outbox_bytes = front.len();
        st.outbox.push_back(front);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection carries one `Conn` (in an `Rc`) and one task; these bounds keep a
    /// change that grows them from slipping in unnoticed (DESIGN.md: memory is the product).
    #[test]
    fn idle_footprint_stays_small() {
        let conn = std::mem::size_of::<Conn>();
        let state = std::mem::size_of::<ConnState>();
        println!("Conn {conn} B, ConnState {state} B");
        assert!(state <= 168, "ConnState grew to {state} B");
        // 240 B before `ConnState::poll` (the long-poll box pointer, +8 B); `Io::Tls` (a Box)
        // fits in the socket's niche.
        assert!(conn <= 248, "Conn grew to {conn} B");
    }
}
