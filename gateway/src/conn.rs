//! One client connection: its socket, its protocol session (`herald_core::session`), and the
//! few bytes it keeps between events. No read buffer while idle (reads go to the worker's scratch buffer; only a partial
//! frame is carried), no writer task or channel (the fan-out writes straight to the socket and
//! queues only what the socket refuses), no timer (the worker's sweep checks deadlines).
//!
//! The session is the same for every transport; [`Wire`] is the transport's part (framing,
//! outbox, exit flags), [`Io`] the byte stream under it, [`Transport`] how frames are put on it,
//! and [`Out`] how the session's decisions become bytes.

use crate::lookup::Lookup;
use bytes::Bytes;
use herald_core::session::{Output, Session};
use herald_proto::{Code, ServerFrame, ws};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::task::{Context, Poll, Waker};
use tokio::net::TcpStream;

use crate::quic_stream::QuicIo;
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
    Quic(Box<QuicIo>),
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

/// The mutable part of a connection: the protocol session and the wire under it.
pub struct ConnState {
    /// The protocol state machine.
    pub session: Session,
    /// Bytes in and out, in the transport's framing.
    pub wire: Wire,
}

/// The transport's part of a connection: framing, carried input, queued output, exit flags.
pub struct Wire {
    /// How frames are written (a TCP connection is WebSocket until its request says long-poll).
    pub transport: Transport,
    /// Leave as soon as the outbox is empty.
    pub exit_when_flushed: bool,
    /// Leave now.
    pub exit: bool,
    /// Counted in the process's connection total (set at the upgrade).
    pub counted: bool,
    /// Over the handshake rate at accept: its upgrade is answered with 503.
    pub rate_limited: bool,
    /// The front of `outbox` is partly written, so it must be finished before anything else.
    pub front_started: bool,
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
    /// A waiting long-poll (its collected changes); `None` on every other connection.
    pub poll: Option<Box<PollState>>,
}

/// The state of a waiting poll, boxed in [`Wire::poll`] (absent on every other connection).
#[derive(Debug, Default)]
pub struct PollState {
    /// Changes the fan-out delivered while the poll waited: `(ns, sjid)`.
    pub changes: Vec<(u64, u64)>,
    /// Keep the connection for another poll after the reply.
    pub keep_alive: bool,
    /// The CORS headers the answer carries (what the request's `Origin` was granted).
    pub cors: herald_proto::cors::Grant,
    /// Set by the sweep: answer now, for this reason, even with no changes.
    pub due: Option<PollDue>,
}

/// Why the sweep wants a waiting poll answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollDue {
    /// Its deadline passed.
    Timeout,
    /// The gateway is draining.
    Draining,
}

impl PollState {
    /// True once the fan-out delivered something or the sweep asked: the task must answer.
    #[must_use]
    pub fn due(&self) -> bool {
        !self.changes.is_empty() || self.due.is_some()
    }
}

/// The session's [`Output`] on a connection: frames go to the outbox in the transport's
/// framing, closes become the transport's close, released interest goes to the source.
pub struct Out<'a> {
    /// The connection's wire.
    pub wire: &'a mut Wire,
    /// Where upstream interest is dropped.
    pub lookup: &'a Lookup,
}

impl Output for Out<'_> {
    fn send(&mut self, frame: &ServerFrame) {
        queue_frame(self.wire, frame);
    }

    /// WebSocket: a close with 4000 + `code`; with `linger` the socket is dropped when the
    /// client answers it (or at the grace deadline), else once flushed. Other transports: the
    /// connection ends once the outbox is flushed.
    fn close(&mut self, code: Code, linger: bool) {
        let wire = &mut *self.wire;
        wire.partial = Vec::new();
        match wire.transport {
            Transport::WebSocket => {
                let mut close = Vec::with_capacity(16);
                ws::encode_close(
                    code.ws_close_code().unwrap_or(ws::CLOSE_NORMAL),
                    code.name(),
                    &mut close,
                );
                queue_bytes(wire, close);
                wire.exit_when_flushed = !linger;
            }
            Transport::Quic | Transport::LongPoll => {
                wire.exit_when_flushed = true;
                if wire.outbox.is_empty() {
                    wire.exit = true;
                }
            }
        }
    }

    fn abort(&mut self) {
        self.wire.exit = true;
    }

    fn released(&mut self, ns: &[u64]) {
        self.lookup.drop_interest(ns);
    }
}

impl Wire {
    /// The wire of a new connection.
    #[must_use]
    pub fn new(transport: Transport) -> Self {
        Wire {
            transport,
            exit_when_flushed: false,
            exit: false,
            counted: false,
            rate_limited: false,
            front_started: false,
            partial: Vec::new(),
            assembler: ws::Assembler::default(),
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            poll: None,
        }
    }

    /// The transport ends the connection itself once flushed (an HTTP refusal, the answer to a
    /// client's close): the session stops processing input and the grace deadline runs.
    pub fn end_when_flushed(&mut self, session: &mut Session, now: u32) {
        self.exit_when_flushed = true;
        session.closing(now);
    }
}

impl Conn {
    /// A new connection with its session.
    #[must_use]
    pub fn new(io: Io, transport: Transport, key: u32, session: Session) -> Self {
        Conn {
            io,
            key,
            state: RefCell::new(ConnState {
                session,
                wire: Wire::new(transport),
            }),
            waker: RefCell::new(None),
        }
    }

    /// Polls for anything the task must act on, remembering the waker for [`Conn::wake`].
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Ready> {
        let st = self.state.borrow();
        if st.wire.exit {
            return Poll::Ready(Ready {
                exit: true,
                ..Ready::default()
            });
        }
        self.register_waker(cx);
        if st.session.is_open() && st.wire.poll.as_ref().is_some_and(|p| p.due()) {
            // A waiting long-poll got changes from the fan-out (or the sweep's deadline): the
            // task answers it.
            return Poll::Ready(Ready::default());
        }
        let writable = self.has_output(&st.wire) && self.io.poll_write_ready(cx).is_ready();
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
    pub fn has_output(&self, wire: &Wire) -> bool {
        !wire.outbox.is_empty() || self.io.has_pending_out()
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
        lookup: &Lookup,
        now: u32,
    ) -> Queued {
        let mut st = self.state.borrow_mut();
        let ConnState { session, wire } = &mut *st;
        if !session.is_open() {
            return Queued::No;
        }
        if let Some(poll) = wire.poll.as_deref_mut() {
            // Long-poll: collect; the task answers once the whole batch is in (one reply).
            let first = !poll.due();
            poll.changes.push((change.ns, change.sjid));
            drop(st);
            if first {
                self.wake();
            }
            return Queued::Collected;
        }
        let frame = change.wire(wire.transport);
        let first = wire.outbox.is_empty();
        wire.outbox_bytes += frame.len();
        wire.outbox.push_back(frame.clone());
        if wire.outbox_bytes > limit / 2 {
            self.flush_wire(wire);
        }
        if wire.outbox_bytes > limit {
            drop_queued(wire);
            session.slow_consumer(now, &mut Out { wire, lookup });
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
        self.flush_wire(&mut st.wire);
        let wake = self.has_output(&st.wire) || st.wire.exit;
        drop(st);
        if wake {
            self.wake();
        }
    }

    /// Writes as much of the outbox as the socket takes (one vectored write per call). Over
    /// TLS the outbox holds plaintext, encrypted here, frame by frame, as the socket takes it.
    pub fn flush_wire(&self, wire: &mut Wire) {
        if let Io::Tls(tls) = &self.io {
            match tls.flush(&mut wire.outbox, &mut wire.outbox_bytes) {
                Flush::Done => {}
                Flush::Blocked => return,
                Flush::Failed => {
                    wire.exit = true;
                    return;
                }
            }
        }
        let waker = self.waker.borrow();
        let waker = waker.as_ref().unwrap_or(Waker::noop());
        while !wire.outbox.is_empty() {
            let mut slices = [IoSlice::new(&[]); 64];
            let n = wire.outbox.len().min(slices.len());
            for (slot, buf) in slices.iter_mut().zip(wire.outbox.iter()) {
                *slot = IoSlice::new(buf);
            }
            match self.io.try_write_vectored(&slices[..n], waker) {
                Ok(0) => {
                    wire.exit = true;
                    return;
                }
                Ok(mut written) => {
                    wire.outbox_bytes -= written;
                    while let Some(front) = wire.outbox.front_mut() {
                        if written >= front.len() {
                            written -= front.len();
                            wire.outbox.pop_front();
                            wire.front_started = false;
                        } else {
                            if written > 0 {
                                let rest = front.slice(written..);
                                *front = rest;
                                wire.front_started = true;
                            }
                            break;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    wire.exit = true;
                    return;
                }
            }
        }
        // Give back the queue's memory once the socket has caught up.
        wire.outbox = VecDeque::new();
        if wire.exit_when_flushed {
            wire.exit = true;
        }
    }

    /// Flushes if anything waits, else leaves if the transport asked to once flushed: the end
    /// of every step of a connection task.
    pub fn flush_or_finish(&self, wire: &mut Wire) {
        if self.has_output(wire) {
            self.flush_wire(wire);
        } else if wire.exit_when_flushed {
            wire.exit = true;
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

/// Appends a Herald frame, as the connection's transport carries it, to the outbox. Long-poll
/// carries no frames: nothing is queued.
pub fn queue_frame(wire: &mut Wire, frame: &ServerFrame) {
    if wire.transport == Transport::LongPoll {
        return;
    }
    let mut payload = Vec::with_capacity(32);
    frame.encode(&mut payload);
    let mut bytes = Vec::with_capacity(payload.len() + ws::MAX_SERVER_HEADER);
    wire.transport.wrap(&payload, &mut bytes);
    queue_bytes(wire, bytes);
}

/// Appends raw bytes (an HTTP response, a control frame) to the outbox.
pub fn queue_bytes(wire: &mut Wire, bytes: Vec<u8>) {
    wire.outbox_bytes += bytes.len();
    wire.outbox.push_back(Bytes::from(bytes));
}

/// Drops queued frames, except the rest of one partly written (the stream must stay well-framed).
fn drop_queued(wire: &mut Wire) {
    let keep = if wire.front_started {
        wire.outbox.pop_front()
    } else {
        None
    };
    wire.outbox = VecDeque::new();
    wire.outbox_bytes = 0;
    if let Some(front) = keep {
        wire.outbox_bytes = front.len();
        wire.outbox.push_back(front);
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
        let session = std::mem::size_of::<Session>();
        println!("Conn {conn} B, ConnState {state} B (Session {session} B)");
        assert!(state <= 168, "ConnState grew to {state} B");
        // `Io::Tls` (a Box) fits in the socket's niche.
        assert!(conn <= 248, "Conn grew to {conn} B");
    }
}
