//! The QUIC transport (PROTOCOL.md "Transports", C15): one quinn endpoint per worker on its own
//! `SO_REUSEPORT` UDP socket, its driver on the worker's runtime. A QUIC connection becomes a
//! [`Conn`] in the worker's table with [`Transport::Quic`], so fan-out, sweep (handshake and
//! heartbeat timeouts, token expiry), drain, slow consumer and the connection cap apply as for
//! WebSocket. The first bidirectional stream the client opens carries the session; each frame on
//! it is preceded by its varint length (`herald_proto::quic`).
//!
//! Writes never wait: the fan-out polls the send stream with the connection task's waker and
//! queues what it refuses (`Conn::flush_state`); the task reads the receive stream into the
//! worker's scratch buffer, like the TCP task.
//!
//! Known limit: connection migration. The kernel spreads datagrams over the workers' sockets by
//! their 4-tuple, so a client whose address changes (NAT rebinding, Wi-Fi to cellular) lands on
//! a worker whose endpoint does not know its connection. Migration is off, the workers share one
//! stateless-reset key and connection-ID key ([`endpoint_config`]) so that worker answers with a valid stateless reset, and
//! the client reconnects (and resubscribes with its cursors) at once instead of waiting for an
//! idle timeout.

use crate::conn::{Conn, ConnState, Io, Transport};
use crate::drive;
use crate::quic_stream::QuicIo;
use crate::worker::Worker;
use herald_core::session::Phase;
use herald_proto::frame::decode_client;
use herald_proto::quic::{Deframed, next_frame};
use herald_proto::{Code, MAX_CLIENT_FRAME};
use quinn::VarInt;
use std::net::SocketAddr;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Application error code of a stream other than the session stream (reset and stopped).
pub const OTHER_STREAM_CODE: u32 = 1;
/// Receive window of the session stream: one client frame at most 4096 bytes plus its prefix,
/// with room for a second behind it.
const STREAM_RECEIVE_WINDOW: u32 = 2 * 4096 + 64;
/// Receive window of the connection (all streams).
const RECEIVE_WINDOW: u32 = 2 * STREAM_RECEIVE_WINDOW;
/// Bytes quinn may hold unacknowledged for one connection. Frames are tiny; the outbox (C11)
/// queues the rest and decides when a client is a slow consumer.
const SEND_WINDOW: u64 = 16 * 1024;
/// Socket buffer asked for on each worker's UDP socket.
const UDP_BUFFER: usize = 4 << 20;
/// How long a closing connection waits for the client to acknowledge its last frame before the
/// application close (which discards unsent stream data).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What a worker needs to start its QUIC endpoint.
pub struct QuicSetup {
    /// Its UDP socket (bound with `SO_REUSEPORT`, non-blocking).
    pub socket: std::net::UdpSocket,
    /// Shared by every worker (one stateless-reset key).
    pub endpoint: quinn::EndpointConfig,
    /// TLS and transport settings.
    pub server: quinn::ServerConfig,
}

impl QuicSetup {
    /// Starts the endpoint on the current (worker's) runtime, which then runs its driver.
    pub fn endpoint(self) -> std::io::Result<quinn::Endpoint> {
        quinn::Endpoint::new(
            self.endpoint,
            Some(self.server),
            self.socket,
            Arc::new(quinn::TokioRuntime),
        )
    }
}

/// The endpoint settings every worker shares, derived from the TLS private key so that they are
/// also the same across restarts with the same key:
///
/// - the stateless-reset key, so the token a restarted (or another worker's) endpoint sends for
///   a connection ID is the one the client was given;
/// - the key of quinn's [`quinn::ConnectionIdGenerator`] (`HashedConnectionIdGenerator`), which
///   signs the connection IDs it issues. quinn answers a short-header packet for an unknown
///   connection with a stateless reset only if its generator *validates* the packet's connection
///   ID; with the default generator's random key per endpoint a restarted gateway dropped the
///   client's keep-alives as "invalid CID" instead, and the client noticed only at its idle
///   timeout (issue 16). With a derived key it recognizes its predecessor's IDs and resets them.
pub fn endpoint_config(tls_key: &std::path::Path) -> anyhow::Result<quinn::EndpointConfig> {
    use anyhow::Context as _;
    let secret = std::fs::read(tls_key)
        .with_context(|| format!("--tls-key {}: cannot read", tls_key.display()))?;
    let derive = |label: &[u8]| {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(label);
        ctx.update(&secret);
        ctx.finish()
    };
    let reset = derive(b"herald quic stateless reset v1\0");
    let reset_key: Arc<dyn quinn::crypto::HmacKey> = Arc::new(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        reset.as_ref(),
    ));
    let cid = derive(b"herald quic connection id v1\0");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(reset_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(config)
}

/// The server's QUIC settings, tuned for many idle connections that exchange tiny frames.
/// `idle_timeout` must be longer than the longest heartbeat timeout, so that a silent client is
/// closed by the sweep with code 104 rather than by QUIC.
pub fn server_config(
    tls: Arc<rustls::ServerConfig>,
    idle_timeout: Duration,
) -> anyhow::Result<quinn::ServerConfig> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(idle_timeout)?));
    // See the module doc: a migrated client reaches another worker's endpoint.
    server.migration(false);
    let mut tokens = quinn::ValidationTokenConfig::default();
    // No NEW_TOKEN frames: clients reconnect rarely, and address validation is not needed on
    // loopback-free paths for a doorbell (saves a frame and its state per connection).
    tokens.sent(0);
    server.validation_token_config(tokens);
    Ok(server)
}

fn transport_config(idle_timeout: Duration) -> anyhow::Result<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Two, not one: so a second stream can be opened and is then reset with code 1 (PROTOCOL);
    // with one, a client's second `open_bi` would wait forever instead of failing.
    t.max_concurrent_bidi_streams(VarInt::from_u32(2));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    t.send_window(SEND_WINDOW);
    t.datagram_receive_buffer_size(None);
    t.datagram_send_buffer_size(0);
    // MTU discovery keeps probing state and sends probes on idle paths; 1200 bytes is plenty.
    t.mtu_discovery_config(None);
    t.enable_segmentation_offload(false);
    t.max_idle_timeout(Some(idle_timeout.try_into()?));
    t.keep_alive_interval(None);
    t.crypto_buffer_size(4096);
    Ok(t)
}

/// Binds `n` UDP sockets to `addr` with `SO_REUSEPORT` (the first one picks the port when
/// `addr` has port 0).
pub fn bind_reuseport_udp(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        // One socket carries every connection of its worker: room for a burst of handshakes
        // (a reconnect storm). The kernel caps these at net.core.{r,w}mem_max (ops/README.md).
        let _ = socket.set_recv_buffer_size(UDP_BUFFER);
        let _ = socket.set_send_buffer_size(UDP_BUFFER);
        socket.bind(&addr.into())?;
        let socket: std::net::UdpSocket = socket.into();
        addr = socket.local_addr()?;
        out.push(socket);
    }
    Ok(out)
}

/// Accepts QUIC connections until shutdown. Over the connection cap, while draining or over
/// the handshake rate, a connection attempt is refused before its handshake (CONNECTION_REFUSED).
pub async fn accept_loop(
    worker: Rc<Worker>,
    endpoint: quinn::Endpoint,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            () = shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let shared = &worker.shared;
        let full = shared.connections.load(Ordering::Relaxed) >= worker.limits.max_connections;
        if full || shared.draining.load(Ordering::Relaxed) {
            metrics::counter!("herald_quic_refusals_total").increment(1);
            incoming.refuse();
            continue;
        }
        if !worker.within_rate(incoming.remote_address().ip()) {
            metrics::counter!("herald_handshakes_rate_limited_total").increment(1);
            incoming.refuse();
            continue;
        }
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(worker = worker.id, error = %e, "QUIC accept failed");
                continue;
            }
        };
        let conn = worker.insert(Io::Quic(Box::default()), Transport::Quic);
        {
            let mut st = conn.state.borrow_mut();
            // No HTTP phase: the handshake deadline runs from here to HELLO.
            st.session.upgraded();
            st.wire.counted = true;
        }
        shared.connections.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_local(run(worker.clone(), conn, connecting));
    }
    // New connections are refused from now on; live ones are drained by the sweep.
    endpoint.set_server_config(None);
}

fn quic_io(conn: &Conn) -> &QuicIo {
    match &conn.io {
        Io::Quic(q) => q,
        Io::Tcp(_) | Io::Tls(_) => unreachable!("a QUIC task runs only on a QUIC connection"),
    }
}

/// The task of one QUIC connection: handshake, session stream, frames, then the close.
pub async fn run(worker: Rc<Worker>, conn: Rc<Conn>, connecting: quinn::Connecting) {
    // Boxed: the handshake future is large and lives only for the handshake.
    if let Some(connection) = Box::pin(open(&conn, connecting)).await {
        session(&worker, &conn, &connection).await;
        Box::pin(close(&conn, connection)).await;
    }
    worker.release(&conn);
}

/// Resolves once the sweep, the fan-out or the session has ended or started closing the
/// connection.
fn closing(conn: &Conn) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| {
        conn.register_waker(cx);
        let st = conn.state.borrow();
        if st.wire.exit || st.session.phase() == Phase::Closing {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// The handshake and the session stream, within the handshake deadline (the sweep).
async fn open(conn: &Conn, connecting: quinn::Connecting) -> Option<quinn::Connection> {
    let connection = tokio::select! {
        c = connecting => c.ok()?,
        () = closing(conn) => return None,
    };
    if !alpn_is_herald(&connection) {
        // rustls refuses a mismatched ALPN; this catches a client that offered none.
        connection.close(
            VarInt::from_u32(u32::from(Code::BAD_FRAME.0 as u16)),
            b"ALPN herald/1 required",
        );
        return None;
    }
    let accepted = tokio::select! {
        s = connection.accept_bi() => s.ok(),
        () = closing(conn) => None,
    };
    let Some((send, recv)) = accepted else {
        app_close(&connection, conn.state.borrow().session.close_code());
        return None;
    };
    let q = quic_io(conn);
    *q.send.borrow_mut() = Some(send);
    *q.recv.borrow_mut() = Some(recv);
    Some(connection)
}

fn alpn_is_herald(connection: &quinn::Connection) -> bool {
    connection
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == herald_proto::QUIC_ALPN)
}

/// Frames in and out until the session ends. Other bidirectional streams are reset with code 1.
async fn session(worker: &Worker, conn: &Conn, connection: &quinn::Connection) {
    let mut other = std::pin::pin!(connection.accept_bi());
    loop {
        if conn.state.borrow().session.awaiting_lookup() {
            // Boxed for the same reason as in `ws::run`.
            Box::pin(finish_lookup(worker, conn)).await;
            continue;
        }
        tokio::select! {
            biased;
            () = std::future::poll_fn(|cx| step(worker, conn, cx)) => {}
            s = &mut other => match s {
                Ok((mut send, mut recv)) => {
                    let _ = send.reset(VarInt::from_u32(OTHER_STREAM_CODE));
                    let _ = recv.stop(VarInt::from_u32(OTHER_STREAM_CODE));
                    other.set(connection.accept_bi());
                }
                // The connection is gone.
                Err(_) => conn.state.borrow_mut().wire.exit = true,
            },
        }
        if conn.state.borrow().wire.exit {
            return;
        }
    }
}

/// Reads and handles what the session stream has, flushes the outbox. Ready when the task must
/// leave, or finish a SUBSCRIBE's look-up.
fn step(worker: &Worker, conn: &Conn, cx: &mut Context<'_>) -> Poll<()> {
    conn.register_waker(cx);
    let q = quic_io(conn);
    let mut st = conn.state.borrow_mut();
    while !st.wire.exit && !st.session.awaiting_lookup() {
        let mut recv = q.recv.borrow_mut();
        let Some(stream) = recv.as_mut() else { break };
        let mut scratch = worker.scratch.borrow_mut();
        let carry = st.wire.partial.len();
        scratch[..carry].copy_from_slice(&st.wire.partial);
        match stream.poll_read(cx, &mut scratch[carry..]) {
            Poll::Pending => break,
            Poll::Ready(Ok(n)) if n > 0 => {
                st.wire.partial = Vec::new();
                st.session.received(worker.now());
                drop(recv);
                consume(worker, conn.key, &mut st, &mut scratch[..carry + n]);
            }
            // The client finished or reset the stream: the session ends (PROTOCOL), unless a
            // close of ours is under way, which still goes out.
            Poll::Ready(_) => {
                *recv = None;
                if st.session.phase() != Phase::Closing {
                    st.wire.exit = true;
                }
            }
        }
    }
    conn.flush_or_finish(&mut st.wire);
    if st.wire.exit || st.session.awaiting_lookup() {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

/// Completes a SUBSCRIBE whose look-up had to wait, then goes on with the frames behind it.
async fn finish_lookup(worker: &Worker, conn: &Conn) {
    let Some((reg, latest)) = drive::look_up(worker, conn).await else {
        return;
    };
    let mut st = conn.state.borrow_mut();
    drive::finish_lookup(worker, conn.key, &mut st, *reg, latest.as_ref());
    drive::resume(worker, conn.key, &mut st, consume);
    conn.flush_or_finish(&mut st.wire);
}

/// Handles the frames in `buf` (session stream bytes, carried partial frame first) and keeps
/// what was not consumed: an incomplete frame, or frames behind a SUBSCRIBE waiting for its
/// look-up.
fn consume(worker: &Worker, key: u32, st: &mut ConnState, buf: &mut [u8]) {
    let mut at = 0;
    while at < buf.len() && !st.wire.exit && !st.session.awaiting_lookup() {
        if st.session.phase() == Phase::Closing {
            // Input after our close is ignored.
            return;
        }
        match next_frame(&buf[at..], MAX_CLIENT_FRAME, false) {
            Ok(Deframed::Frame { start, end }) => {
                let frame = &buf[at + start..at + end];
                at += end;
                worker.stats.frames_in.add(1);
                match decode_client(frame) {
                    Ok(frame) => drive::on_frame(worker, key, st, frame),
                    Err(e) => {
                        drive::protocol_error(worker, key, st, &e.to_string());
                        return;
                    }
                }
            }
            Ok(Deframed::NeedMore) => break,
            Err(e) => {
                drive::protocol_error(worker, key, st, &e.to_string());
                return;
            }
        }
    }
    if at < buf.len() && !st.wire.exit && st.session.phase() != Phase::Closing {
        st.wire.partial = buf[at..].to_vec();
    }
}

/// Ends the connection. After a close of ours with a frame (ERROR, GOAWAY) that went out, the
/// stream is finished and the client given up to five seconds to acknowledge it, since the
/// application close discards unsent stream data; then the application close carries the code
/// (PROTOCOL.md: the frame's code, or 104 for a timeout). A session the client ended is closed
/// with code 0.
async fn close(conn: &Conn, connection: quinn::Connection) {
    let (code, flushed) = {
        let st = conn.state.borrow();
        (st.session.close_code(), st.wire.outbox.is_empty())
    };
    let q = quic_io(conn);
    let send = q.send.borrow_mut().take();
    q.recv.borrow_mut().take();
    if let Some(mut send) = send
        && code != 0
        && flushed
        && u64::from(code) != Code::TIMEOUT.0
        && send.finish().is_ok()
    {
        let _ = tokio::time::timeout(CLOSE_GRACE, send.stopped()).await;
    }
    app_close(&connection, code);
}

fn app_close(connection: &quinn::Connection, code: u16) {
    let reason = if code == 0 {
        ""
    } else {
        Code(u64::from(code)).name()
    };
    connection.close(VarInt::from_u32(u32::from(code)), reason.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a QUIC connection's memory goes, in the parts whose size is fixed: printed for the
    /// report (`cargo test -p herald-gateway quic_state_sizes -- --nocapture`); the bound keeps
    /// our own part small.
    #[test]
    fn quic_state_sizes() {
        let ours = std::mem::size_of::<QuicIo>();
        println!("QuicIo (boxed, per connection): {ours} B");
        println!(
            "quinn_proto::Connection: {} B",
            std::mem::size_of::<quinn_proto::Connection>()
        );
        println!(
            "quinn_proto::ConnectionEvent: {} B (tokio unbounded channel blocks hold 32 of these)",
            std::mem::size_of::<quinn_proto::ConnectionEvent>()
        );
        println!(
            "quinn_proto::EndpointEvent: {} B",
            std::mem::size_of::<quinn_proto::EndpointEvent>()
        );
        println!(
            "quinn::Connection (handle): {} B",
            std::mem::size_of::<quinn::Connection>()
        );
        println!(
            "quinn::SendStream: {} B",
            std::mem::size_of::<quinn::SendStream>()
        );
        assert!(ours <= 128, "QuicIo grew to {ours} B");
    }
}
