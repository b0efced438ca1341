//! TLS under a connection (`wss`, and HTTPS for the same HTTP requests as the plain listener),
//! with rustls' unbuffered API so that an idle TLS connection keeps only its keys and state.
//!
//! The buffered `rustls::ServerConnection` keeps a deframer buffer (≥ 4 KiB) and plaintext and
//! ciphertext queues per connection. Here, instead:
//! - reads land in a per-worker ciphertext buffer ([`Buffers`], one per worker thread), records
//!   are decrypted there and the plaintext is handed to the connection's handler in the worker's
//!   scratch buffer; only an incomplete record is carried (`partial_in`, empty while idle);
//! - the connection's outbox holds **plaintext** (the same wire bytes as a plain WebSocket
//!   connection, so the fan-out's shared CHANGED frame is shared by TLS connections too). Frames
//!   are encrypted at write time, coalesced into records in the per-worker buffer, and written;
//!   only ciphertext the socket refused is kept per connection (`pending_out`, empty while idle).
//!   Once encrypted, a record must be sent whole and in order, so what is in `pending_out` always
//!   goes first.
//!
//! Written by hand around rustls (no crate puts the unbuffered API under a readiness-based,
//! borrowed-buffer socket like the worker's), in the way rustls' own unbuffered examples drive it.

use bytes::Bytes;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use tokio::net::TcpStream;

/// Plaintext of one TLS record (RFC 8446 5.1).
const RECORD_PLAINTEXT: usize = 16 * 1024;
/// Upper bound of one record's overhead: header, TLS 1.3 content type, AEAD tag, TLS 1.2
/// explicit nonce.
const RECORD_OVERHEAD: usize = 64;
/// Ciphertext read from the socket at once.
const READ_CHUNK: usize = 64 * 1024;
/// Most ciphertext carried between reads: one incomplete record (a little more during the
/// handshake, where a message may span records).
const MAX_CARRY: usize = 4 * (RECORD_PLAINTEXT + 256);
/// Ciphertext encrypted for one socket write.
const WRITE_BATCH: usize = 64 * 1024;

/// The per-worker buffers (one set per worker thread, allocated on its first TLS connection).
struct Buffers {
    /// Carried partial record + what one read returned.
    input: Vec<u8>,
    /// Frames coalesced into one record.
    plain: Vec<u8>,
    /// Records encrypted for one write.
    output: Vec<u8>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers {
        input: vec![0; MAX_CARRY + READ_CHUNK],
        plain: vec![0; RECORD_PLAINTEXT],
        output: vec![0; WRITE_BATCH + RECORD_PLAINTEXT + 4 * RECORD_OVERHEAD],
    });
}

/// What a flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued is on the socket.
    Done,
    /// The socket is full; wait for write readiness.
    Blocked,
    /// The connection is broken (socket error, TLS failure).
    Failed,
}

/// A TCP socket with a server-side TLS session on it.
pub struct TlsStream {
    tcp: TcpStream,
    state: RefCell<TlsState>,
}

struct TlsState {
    conn: UnbufferedServerConnection,
    /// Ciphertext not processed yet (an incomplete record). Empty (no allocation) when idle.
    partial_in: Vec<u8>,
    /// Ciphertext the socket has not taken yet. Empty (no allocation) when idle.
    pending_out: Vec<u8>,
    /// The client sent close_notify: no more data will come.
    peer_closed: bool,
    /// A TLS error: the connection can only be dropped.
    failed: bool,
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    metrics::counter!("herald_tls_errors_total").increment(1);
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl TlsStream {
    /// A server TLS session on an accepted socket, with the configuration current at accept.
    pub fn new(tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(TlsStream {
            tcp,
            state: RefCell::new(TlsState {
                conn: UnbufferedServerConnection::new(config)?,
                partial_in: Vec::new(),
                pending_out: Vec::new(),
                peer_closed: false,
                failed: false,
            }),
        })
    }

    /// The socket (for readiness).
    #[must_use]
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Ciphertext waits for the socket.
    #[must_use]
    pub fn has_pending_out(&self) -> bool {
        !self.state.borrow().pending_out.is_empty()
    }

    /// Reads what the socket has, runs it through TLS, and puts the application data into `out`.
    /// `Ok(0)` is the end of the stream (EOF or close_notify); `WouldBlock` means no application
    /// data yet (nothing to read, or only handshake records, whose answer is now waiting in
    /// `pending_out` for a flush).
    pub fn read_plain(&self, out: &mut [u8]) -> io::Result<usize> {
        let mut guard = self.state.borrow_mut();
        let t = &mut *guard;
        if t.peer_closed {
            return Ok(0);
        }
        if t.failed {
            return Err(io::Error::other("TLS session failed"));
        }
        BUFFERS.with_borrow_mut(|b| {
            let carry = t.partial_in.len();
            // Plaintext is never longer than its ciphertext, so reading at most `out.len()`
            // bytes (with the carry) always leaves room for what they decrypt to.
            let room = READ_CHUNK.min(out.len().saturating_sub(carry));
            if carry > MAX_CARRY || room == 0 {
                t.failed = true;
                return Err(tls_error("TLS record or handshake message too large"));
            }
            b.input[..carry].copy_from_slice(&t.partial_in);
            let n = self.tcp.try_read(&mut b.input[carry..carry + room])?;
            if n == 0 {
                return Ok(0);
            }
            let end = carry + n;
            let mut at = 0;
            let mut produced = 0;
            let result = loop {
                let UnbufferedStatus { discard, state } =
                    t.conn.process_tls_records(&mut b.input[at..end]);
                let step = match state {
                    Err(e) => Err(e),
                    Ok(ConnectionState::ReadTraffic(mut records)) => {
                        let mut r = Ok(true);
                        while let Some(record) = records.next_record() {
                            match record {
                                Ok(record) => {
                                    let len = record.payload.len();
                                    if produced + len > out.len() {
                                        r = Err(rustls::Error::General(
                                            "plaintext larger than its ciphertext".into(),
                                        ));
                                        break;
                                    }
                                    out[produced..produced + len].copy_from_slice(record.payload);
                                    produced += len;
                                }
                                Err(e) => {
                                    r = Err(e);
                                    break;
                                }
                            }
                        }
                        r
                    }
                    Ok(ConnectionState::EncodeTlsData(mut data)) => {
                        encode_into_vec(&mut data, &mut t.pending_out).map(|()| true)
                    }
                    // The flight is in `pending_out`, which the handler flushes next.
                    Ok(ConnectionState::TransmitTlsData(sent)) => {
                        sent.done();
                        Ok(true)
                    }
                    Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                        t.peer_closed = true;
                        Ok(false)
                    }
                    // Early data is off (the default); every complete record has been processed.
                    Ok(_) => Ok(false),
                };
                at += discard;
                match step {
                    Ok(true) => {}
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = result {
                t.failed = true;
                queue_alert(&mut t.conn, &mut t.pending_out);
                return Err(tls_error(e));
            }
            t.partial_in = if at < end {
                b.input[at..end].to_vec()
            } else {
                Vec::new()
            };
            match produced {
                0 if t.peer_closed => Ok(0),
                0 => Err(io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            }
        })
    }

    /// Writes `pending_out`, then encrypts frames from `outbox` (taking each frame whole) and
    /// writes them, until both are empty or the socket is full.
    pub fn flush(&self, outbox: &mut VecDeque<Bytes>, outbox_bytes: &mut usize) -> Flush {
        let mut guard = self.state.borrow_mut();
        let t = &mut *guard;
        if t.failed {
            return Flush::Failed;
        }
        loop {
            if !t.pending_out.is_empty() {
                match self.tcp.try_write(&t.pending_out) {
                    Ok(0) => return Flush::Failed,
                    Ok(n) if n == t.pending_out.len() => t.pending_out = Vec::new(),
                    Ok(n) => {
                        t.pending_out.drain(..n);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
                    Err(_) => return Flush::Failed,
                }
            }
            if outbox.is_empty() {
                return Flush::Done;
            }
            let step = BUFFERS.with_borrow_mut(|b| {
                let len = match encrypt_batch(t, outbox, outbox_bytes, b) {
                    // Frames are queued only after the HTTP request, so after the handshake.
                    Ok(0) => {
                        tracing::debug!("frames queued before the TLS handshake finished");
                        t.failed = true;
                        return Flush::Failed;
                    }
                    Ok(len) => len,
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS encryption failed");
                        t.failed = true;
                        return Flush::Failed;
                    }
                };
                match self.tcp.try_write(&b.output[..len]) {
                    Ok(0) => Flush::Failed,
                    Ok(n) => {
                        t.pending_out.extend_from_slice(&b.output[n..len]);
                        Flush::Done
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        t.pending_out.extend_from_slice(&b.output[..len]);
                        Flush::Blocked
                    }
                    Err(_) => Flush::Failed,
                }
            });
            match step {
                // Written (or the rest kept in `pending_out`): go round again.
                Flush::Done => {}
                other => return other,
            }
        }
    }

    /// The end of the connection: sends close_notify (after anything still pending) if the
    /// session is established, in one non-blocking write, as a courtesy. Best effort: the socket
    /// is dropped next whatever happens.
    pub fn shutdown(&self) {
        let mut guard = self.state.borrow_mut();
        let t = &mut *guard;
        if !t.failed && !t.conn.is_handshaking() {
            let UnbufferedStatus { state, .. } = t.conn.process_tls_records(&mut []);
            if let Ok(ConnectionState::WriteTraffic(mut w)) = state {
                let at = t.pending_out.len();
                t.pending_out.resize(at + RECORD_OVERHEAD, 0);
                match w.queue_close_notify(&mut t.pending_out[at..]) {
                    Ok(n) => t.pending_out.truncate(at + n),
                    Err(_) => t.pending_out.truncate(at),
                }
            }
        }
        if !t.pending_out.is_empty() {
            let _ = self.tcp.try_write(&t.pending_out);
        }
        t.pending_out = Vec::new();
    }
}

/// Encodes one handshake or alert record at the end of `out`.
fn encode_into_vec(
    data: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let at = out.len();
    out.resize(at + 4096, 0);
    loop {
        match data.encode(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(s)) => out.resize(at + s.required_size, 0),
            Err(EncodeError::AlreadyEncoded) => {
                out.truncate(at);
                return Ok(());
            }
        }
    }
}

/// After a TLS error rustls has an alert ready: put it in `pending_out` so that `shutdown` sends
/// it (the client then learns why, instead of seeing a bare EOF).
fn queue_alert(conn: &mut UnbufferedServerConnection, out: &mut Vec<u8>) {
    let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
    if let Ok(ConnectionState::EncodeTlsData(mut data)) = state {
        let _ = encode_into_vec(&mut data, out);
    }
}

/// Encrypts whole frames from the front of `outbox` into `b.output`, small ones coalesced into
/// records of up to 16 KiB, until about [`WRITE_BATCH`] bytes. Returns the ciphertext length (0:
/// the session cannot send application data yet). Also encodes any record rustls itself has to
/// send (e.g. an answer to a key update).
fn encrypt_batch(
    t: &mut TlsState,
    outbox: &mut VecDeque<Bytes>,
    outbox_bytes: &mut usize,
    b: &mut Buffers,
) -> Result<usize, rustls::Error> {
    let mut len = 0;
    // Bounded: each round either encodes one of rustls' own records or ends.
    for _ in 0..16 {
        let UnbufferedStatus { discard, state } = t.conn.process_tls_records(&mut t.partial_in);
        let done = match state? {
            ConnectionState::WriteTraffic(mut w) => {
                let mut staged = 0;
                let mut encrypt = |plain: &[u8], len: &mut usize, output: &mut Vec<u8>| {
                    let need = plain.len() + RECORD_OVERHEAD * (plain.len() / RECORD_PLAINTEXT + 1);
                    if output.len() < *len + need {
                        output.resize(*len + need, 0);
                    }
                    w.encrypt(plain, &mut output[*len..])
                        .map(|n| *len += n)
                        .map_err(|e| rustls::Error::General(e.to_string()))
                };
                while let Some(front) = outbox.front() {
                    if len + staged + front.len() > WRITE_BATCH && len + staged > 0 {
                        break;
                    }
                    if staged + front.len() > RECORD_PLAINTEXT && staged > 0 {
                        encrypt(&b.plain[..staged], &mut len, &mut b.output)?;
                        staged = 0;
                    }
                    if front.len() > RECORD_PLAINTEXT {
                        encrypt(front, &mut len, &mut b.output)?;
                    } else {
                        b.plain[staged..staged + front.len()].copy_from_slice(front);
                        staged += front.len();
                    }
                    *outbox_bytes -= front.len();
                    outbox.pop_front();
                }
                if staged > 0 {
                    encrypt(&b.plain[..staged], &mut len, &mut b.output)?;
                }
                true
            }
            ConnectionState::EncodeTlsData(mut data) => {
                let mut record = Vec::new();
                encode_into_vec(&mut data, &mut record)?;
                if b.output.len() < len + record.len() {
                    b.output.resize(len + record.len(), 0);
                }
                b.output[len..len + record.len()].copy_from_slice(&record);
                len += record.len();
                false
            }
            ConnectionState::TransmitTlsData(sent) => {
                sent.done();
                false
            }
            ConnectionState::PeerClosed => false,
            // Still handshaking: application data cannot be sent yet.
            ConnectionState::BlockedHandshake => true,
            ConnectionState::ReadTraffic(_) => {
                return Err(rustls::Error::General(
                    "application data left unread at write time".into(),
                ));
            }
            _ => return Err(rustls::Error::General("TLS session closed".into())),
        };
        if discard > 0 {
            t.partial_in.drain(..discard);
        }
        if done {
            break;
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection part of a TLS connection (the `Box` behind `Io::Tls`), mostly rustls'
    /// `UnbufferedServerConnection` (1192 B measured with rustls 0.23.46); the session's own heap
    /// (keys, state machine) comes on top and is measured by `herald-loadgen idle --tls`.
    #[test]
    fn tls_stream_stays_small() {
        let size = std::mem::size_of::<TlsStream>();
        println!("TlsStream {size} B");
        assert!(size <= 1280, "TlsStream grew to {size} B");
    }
}
