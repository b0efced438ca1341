//! The QUIC transport of a [`Connection`](crate::Connection) (`quic://host:port`, PROTOCOL.md
//! "Transports"): ALPN `herald/1`, one bidirectional stream carrying the session, each frame
//! preceded by its varint length. The server's application close code `c` is reported like a
//! WebSocket close, as `4000 + c` (0, a plain close, as 1000), so the managed client classifies
//! both transports alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::quic::{Deframed, next_frame};
use herald_proto::{MAX_SERVER_FRAME, QUIC_ALPN, frame::decode_server};
use quinn::{ConnectionError, ReadError, VarInt};

use crate::config::ConnectOptions;
use crate::error::ClientError;
use crate::incoming::Incoming;
use crate::tls::TlsRoots;

/// URL scheme of the QUIC transport.
pub(crate) const SCHEME: &str = "quic://";
/// How often the client sends a QUIC PING when it has nothing else to send: below common NAT
/// UDP mapping timeouts (30 s), so the path stays open between Herald heartbeats.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The client's QUIC idle timeout (the smaller of both sides' applies).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait, after the stream ends, for the server's application close (its code).
const CLOSE_WAIT: Duration = Duration::from_secs(6);

/// One QUIC session: its own endpoint (UDP socket), connection and session stream.
#[derive(Debug)]
pub(crate) struct QuicSession {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Stream bytes not yet made into frames.
    buf: Vec<u8>,
}

/// `quic://host:port[/...]` → (host, port).
fn host_port(url: &str) -> Result<(String, u16), ClientError> {
    let bad = |why: &str| ClientError::InvalidUrl(format!("{url}: {why}"));
    let rest = url.strip_prefix(SCHEME).ok_or_else(|| bad("not quic://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad("a port is required"))?;
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host.to_owned(), port))
}

fn client_config(opts: &ConnectOptions) -> Result<quinn::ClientConfig, ClientError> {
    let roots = match &opts.tls {
        Some(roots) => roots.clone(),
        None => TlsRoots::native()?,
    };
    // Herald's QUIC needs TLS 1.3 (quinn refuses a configuration without it) and ALPN herald/1.
    let mut tls = (*roots.config()).clone();
    tls.alpn_protocols = vec![QUIC_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Transport(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    // The server opens no streams.
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // Room for a few maximal server frames (64 KiB each).
    t.stream_receive_window(VarInt::from_u32(4 * MAX_SERVER_FRAME as u32));
    t.receive_window(VarInt::from_u32(4 * MAX_SERVER_FRAME as u32));
    t.send_window(64 * 1024);
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .map_err(|_| ClientError::Transport("idle timeout".into()))?,
    ));
    t.mtu_discovery_config(None);
    t.datagram_receive_buffer_size(None);
    config.transport_config(Arc::new(t));
    Ok(config)
}

/// The WebSocket-style close code for a connection error (see the module doc).
fn closed(e: &ConnectionError) -> Incoming {
    match e {
        ConnectionError::ApplicationClosed(c) => Incoming::Closed {
            code: Some(ws_style(c.error_code)),
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        },
        _ => Incoming::Closed {
            code: None,
            reason: e.to_string(),
        },
    }
}

fn ws_style(code: VarInt) -> u16 {
    match code.into_inner() {
        0 => 1000,
        c => u16::try_from(4000 + c).unwrap_or(u16::MAX),
    }
}

impl QuicSession {
    /// Connects and opens the session stream (no HELLO).
    pub(crate) async fn open(url: &str, opts: &ConnectOptions) -> Result<Self, ClientError> {
        let (host, port) = host_port(url)?;
        let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| ClientError::Transport(format!("{host}: {e}")))?
            .next()
            .ok_or_else(|| ClientError::InvalidUrl(format!("{url}: no address")))?;
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Transport(e.to_string()))?;
        endpoint.set_default_client_config(client_config(opts)?);
        let connection = endpoint
            .connect(addr, &host)
            .map_err(|e| ClientError::Transport(e.to_string()))?
            .await
            .map_err(|e| match closed(&e) {
                Incoming::Closed {
                    code: Some(code),
                    reason,
                } => ClientError::Closed {
                    code: Some(code),
                    reason,
                },
                _ => ClientError::Transport(e.to_string()),
            })?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(QuicSession {
            endpoint,
            connection,
            send,
            recv,
            buf: Vec::new(),
        })
    }

    /// Writes bytes on the session stream as they are (a frame with its prefix, or anything).
    pub(crate) async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// Reads the next server frame, or how the session ended. Cancel safe: bytes are kept in
    /// `buf` as soon as they are read.
    pub(crate) async fn recv(&mut self) -> Result<Incoming, ClientError> {
        loop {
            match next_frame(&self.buf, MAX_SERVER_FRAME, false) {
                Ok(Deframed::Frame { start, end }) => {
                    let frame = decode_server(&self.buf[start..end]).map_err(ClientError::Decode);
                    self.buf.drain(..end);
                    return frame.map(Incoming::Frame);
                }
                Ok(Deframed::NeedMore) => {}
                Err(e) => return Err(ClientError::Unexpected(e.to_string())),
            }
            match self.recv.read_chunk(MAX_SERVER_FRAME, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                // The server finished the stream: its application close (with the code) follows.
                Ok(None) => {
                    return Ok(
                        match tokio::time::timeout(CLOSE_WAIT, self.connection.closed()).await {
                            Ok(e) => closed(&e),
                            Err(_) => Incoming::Closed {
                                code: None,
                                reason: String::new(),
                            },
                        },
                    );
                }
                Err(ReadError::ConnectionLost(e)) => return Ok(closed(&e)),
                Err(e) => return Err(ClientError::Transport(e.to_string())),
            }
        }
    }

    /// Ends the session: finishes the stream and closes the connection with code 0.
    pub(crate) async fn close(&mut self) {
        let _ = self.send.finish();
        self.connection.close(VarInt::from_u32(0), b"");
        self.endpoint.wait_idle().await;
    }

    /// The QUIC connection, for tests that open more streams or read statistics.
    pub(crate) fn connection(&self) -> &quinn::Connection {
        &self.connection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(host_port("quic://gw:4433").unwrap(), ("gw".into(), 4433));
        assert_eq!(
            host_port("quic://[::1]:4433/v1").unwrap(),
            ("::1".into(), 4433)
        );
        assert!(host_port("quic://gw").is_err());
        assert!(host_port("ws://gw:1").is_err());
        assert_eq!(ws_style(VarInt::from_u32(104)), 4104);
        assert_eq!(ws_style(VarInt::from_u32(0)), 1000);
    }
}
