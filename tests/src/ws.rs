//! A raw WebSocket test client: tokio-tungstenite for the framing, `herald_proto` for the Herald
//! frames, and nothing else (no reconnects, no cursor keeping), so each test sees exactly what the
//! gateway sends. Also [`raw_upgrade`] and [`masked`] for tests that need the bare TCP socket.

use futures_util::{SinkExt, StreamExt};
use herald_proto::frame::decode_server;
use herald_proto::{ClientFrame, ServerFrame, WS_SUBPROTOCOL};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The fields of a WELCOME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version the server speaks.
    pub version: u64,
    /// Announced heartbeat.
    pub heartbeat_ms: u64,
    /// Live subscriptions allowed.
    pub max_subscriptions: u64,
    /// Opaque session id.
    pub session_id: Vec<u8>,
}

/// What arrived on the socket, below the level of Herald frames.
#[derive(Debug)]
pub enum Incoming {
    /// A binary message, decoded as a server frame.
    Frame(ServerFrame),
    /// A WebSocket pong with its payload.
    Pong(Vec<u8>),
    /// A close frame with its code (`None`: no code).
    Close(Option<u16>),
    /// The stream ended (EOF or reset) without a close frame.
    Ended(String),
    /// Nothing within the wait.
    Timeout,
}

/// What a test client trusts for `wss`: the client library's trust anchors.
pub use herald_client::TlsRoots;

/// A WebSocket connection to the gateway's client listener.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// Nonces for barrier PINGs, unique per process.
static NONCE: AtomicU64 = AtomicU64::new(1_000_000);

impl WsClient {
    /// Connects to `/v1/connect` offering the `herald.v1` subprotocol; asserts the server chose it.
    pub async fn connect(addr: SocketAddr) -> Self {
        let (client, chosen) = Self::connect_offering(addr, Some(WS_SUBPROTOCOL))
            .await
            .expect("WebSocket upgrade");
        assert_eq!(chosen.as_deref(), Some(WS_SUBPROTOCOL));
        client
    }

    /// Connects offering `protocol` (or none); returns the client and the subprotocol the server
    /// chose, or the handshake error.
    pub async fn connect_offering(
        addr: SocketAddr,
        protocol: Option<&str>,
    ) -> Result<(Self, Option<String>), tokio_tungstenite::tungstenite::Error> {
        let mut req = format!("ws://{addr}/v1/connect").into_client_request()?;
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().expect("header value"));
        }
        let (ws, resp) = tokio::time::timeout(crate::WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("WebSocket handshake timed out")?;
        let chosen = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((WsClient { ws }, chosen))
    }

    /// Connects over TLS to `wss://127.0.0.1:PORT/v1/connect` trusting `roots`; asserts the
    /// server chose `herald.v1`.
    pub async fn connect_tls(addr: SocketAddr, roots: &TlsRoots) -> Self {
        Self::try_connect_tls(addr, roots)
            .await
            .expect("wss handshake")
    }

    /// [`connect_tls`](Self::connect_tls), returning the error (e.g. an untrusted certificate).
    pub async fn try_connect_tls(
        addr: SocketAddr,
        roots: &TlsRoots,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        Self::connect_tls_on(addr, roots, RawSocket::default()).await
    }

    /// [`try_connect_tls`](Self::try_connect_tls) on a socket made with `opts` (e.g. a small
    /// receive buffer, so that the gateway's writes back up).
    pub async fn connect_tls_on(
        addr: SocketAddr,
        roots: &TlsRoots,
        opts: RawSocket,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let mut req = format!("wss://{addr}/v1/connect").into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            WS_SUBPROTOCOL.parse().expect("header value"),
        );
        let stream = raw_socket(addr, opts);
        let connector = tokio_tungstenite::Connector::Rustls(roots.config());
        let (ws, resp) = tokio::time::timeout(
            crate::WAIT,
            tokio_tungstenite::client_async_tls_with_config(req, stream, None, Some(connector)),
        )
        .await
        .expect("wss handshake timed out")?;
        let chosen = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        assert_eq!(chosen, Some(WS_SUBPROTOCOL));
        Ok(WsClient { ws })
    }

    /// Sends HELLO(1, token) and expects WELCOME.
    pub async fn hello(&mut self, token: &str) -> Welcome {
        self.send_frame(&ClientFrame::Hello {
            version: 1,
            token: token.to_owned(),
        })
        .await;
        match self.recv_frame(crate::WAIT).await {
            ServerFrame::Welcome {
                version,
                heartbeat_ms,
                max_subscriptions,
                session_id,
            } => Welcome {
                version,
                heartbeat_ms,
                max_subscriptions,
                session_id,
            },
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    /// Sends one Herald frame as one binary message.
    pub async fn send_frame(&mut self, frame: &ClientFrame) {
        self.send_raw(Message::binary(frame.to_vec())).await;
    }

    /// Sends any WebSocket message as it is.
    pub async fn send_raw(&mut self, msg: Message) {
        self.try_send_raw(msg).await.expect("WebSocket send");
    }

    /// Sends a message, returning the error instead of panicking (the server may already have
    /// closed, e.g. after refusing an oversized frame by its header).
    pub async fn try_send_raw(
        &mut self,
        msg: Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        tokio::time::timeout(crate::WAIT, self.ws.send(msg))
            .await
            .expect("WebSocket send timed out")
    }

    /// The next thing on the socket, waiting at most `wait`.
    pub async fn next_incoming(&mut self, wait: Duration) -> Incoming {
        loop {
            let msg = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return Incoming::Timeout,
                Ok(None) => return Incoming::Ended("stream ended".into()),
                Ok(Some(Err(e))) => return Incoming::Ended(e.to_string()),
                Ok(Some(Ok(m))) => m,
            };
            return match msg {
                Message::Binary(b) => Incoming::Frame(
                    decode_server(&b)
                        .unwrap_or_else(|e| panic!("server sent an undecodable frame: {e}")),
                ),
                Message::Pong(p) => Incoming::Pong(p.to_vec()),
                Message::Close(c) => Incoming::Close(c.map(|c| u16::from(c.code))),
                // tungstenite answers pings itself.
                Message::Ping(_) => continue,
                Message::Text(t) => panic!("server sent a text message: {t}"),
                Message::Frame(_) => continue,
            };
        }
    }

    /// The next Herald frame (within `wait`); panics on anything else.
    pub async fn recv_frame(&mut self, wait: Duration) -> ServerFrame {
        match self.next_incoming(wait).await {
            Incoming::Frame(f) => f,
            other => panic!("expected a Herald frame within {wait:?}, got {other:?}"),
        }
    }

    /// The next Herald frame if one arrives within `wait`; panics on a close or the end.
    pub async fn try_recv_frame(&mut self, wait: Duration) -> Option<ServerFrame> {
        match self.next_incoming(wait).await {
            Incoming::Frame(f) => Some(f),
            Incoming::Timeout => None,
            other => panic!("expected a Herald frame or silence, got {other:?}"),
        }
    }

    /// Expects a close frame within `wait` and returns its code; panics if a Herald frame comes
    /// first, if the stream ends without one, or on timeout.
    pub async fn expect_close(&mut self, wait: Duration) -> u16 {
        match self.next_incoming(wait).await {
            Incoming::Close(Some(code)) => code,
            other => panic!("expected a close frame with a code within {wait:?}, got {other:?}"),
        }
    }

    /// Expects ERROR(code) followed by close 4000 + code.
    pub async fn expect_error_close(&mut self, code: herald_proto::Code) -> String {
        let message = match self.recv_frame(crate::WAIT).await {
            ServerFrame::Error { code: c, message } => {
                assert_eq!(c, code, "ERROR code (message: {message})");
                message
            }
            other => panic!("expected ERROR({code}), got {other:?}"),
        };
        let close = self.expect_close(crate::WAIT).await;
        assert_eq!(Some(close), code.ws_close_code(), "close code after ERROR");
        message
    }

    /// Sends PING(n) and returns every Herald frame received before PONG(n): with the ordering
    /// rule, everything caused by earlier frames.
    pub async fn barrier(&mut self) -> Vec<ServerFrame> {
        let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
        self.send_frame(&ClientFrame::Ping(nonce)).await;
        let mut before = Vec::new();
        loop {
            match self.recv_frame(crate::WAIT).await {
                ServerFrame::Pong(n) if n == nonce => return before,
                other => before.push(other),
            }
        }
    }

    /// SUBSCRIBE `pairs` then a PING barrier; returns what the SUBSCRIBE caused.
    pub async fn subscribe(&mut self, pairs: &[(u64, u64)]) -> Vec<ServerFrame> {
        self.send_frame(&ClientFrame::Subscribe(pairs.to_vec()))
            .await;
        self.barrier().await
    }

    /// UNSUBSCRIBE `ns` then a PING barrier; returns what arrived in between.
    pub async fn unsubscribe(&mut self, ns: &[u64]) -> Vec<ServerFrame> {
        self.send_frame(&ClientFrame::Unsubscribe(ns.to_vec()))
            .await;
        self.barrier().await
    }

    /// Waits for CHANGED entries for `ns` until one reaches `sjid`; returns every SJID seen for
    /// `ns`, in order (entries for other namespaces are skipped). Panics on any other frame, or
    /// after `wait` in total.
    pub async fn changed_until(&mut self, ns: u64, sjid: u64, wait: Duration) -> Vec<u64> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        while seen.last().is_none_or(|&s| s < sjid) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_incoming(left).await {
                Incoming::Frame(ServerFrame::Changed(pairs)) => {
                    seen.extend(pairs.iter().filter(|p| p.0 == ns).map(|p| p.1));
                }
                other => panic!(
                    "waiting for CHANGED({ns}, {sjid}), saw SJIDs up to {:?}, then got {other:?}",
                    seen.last()
                ),
            }
        }
        seen
    }
}

/// Options of a bare TCP socket made before connecting.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawSocket {
    /// `SO_RCVBUF`: a small one keeps the receive window small.
    pub recv_buf: Option<usize>,
    /// `TCP_MAXSEG`: a small MSS announced in the SYN keeps the server's send buffer small
    /// (Linux sizes it from the MSS), so a client that stops reading fills it quickly.
    pub mss: Option<u32>,
}

/// A TCP connection to `addr` on a socket made with `opts`.
fn raw_socket(addr: SocketAddr, opts: RawSocket) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    if let Some(n) = opts.recv_buf {
        socket.set_recv_buffer_size(n).expect("SO_RCVBUF");
    }
    if let Some(mss) = opts.mss {
        socket.set_tcp_mss(mss).expect("TCP_MAXSEG");
    }
    // A blocking connect on loopback is immediate.
    socket
        .connect_timeout(&addr.into(), crate::WAIT)
        .expect("connect");
    socket.set_nonblocking(true).expect("nonblocking");
    TcpStream::from_std(socket.into()).expect("tokio stream")
}

/// Opens a TCP connection with `opts` and completes the WebSocket upgrade by hand. Returns the
/// socket positioned just after the 101 response.
pub async fn raw_upgrade(addr: SocketAddr, opts: RawSocket) -> TcpStream {
    let mut s = raw_socket(addr, opts);
    let req = format!(
        "GET /v1/connect HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {WS_SUBPROTOCOL}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write upgrade");
    // Read byte by byte up to the end of the head, so no WebSocket byte is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(crate::WAIT, s.read(&mut b))
            .await
            .expect("upgrade answer timed out")
            .expect("read upgrade answer");
        assert_eq!(
            n,
            1,
            "EOF during the upgrade: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "upgrade refused: {}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// One server WebSocket frame read from a bare socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    /// A binary message holding a Herald frame.
    Herald(ServerFrame),
    /// A close frame and its code.
    Close(Option<u16>),
    /// Any other opcode, with its payload.
    Other(u8, Vec<u8>),
}

/// Splits the server frames at the front of `buf` (servers never mask). Returns the frames and
/// how many bytes they used; an incomplete frame at the end is left in `buf`.
#[must_use]
pub fn parse_server_frames(buf: &[u8]) -> (Vec<RawFrame>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let [b0, b1, ..] = *rest else { break };
        let (len, hdr) = match b1 & 0x7f {
            126 if rest.len() >= 4 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 if rest.len() >= 10 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&rest[2..10]);
                (u64::from_be_bytes(a) as usize, 10)
            }
            126 | 127 => break,
            n => (usize::from(n), 2),
        };
        let Some(payload) = rest.get(hdr..hdr + len) else {
            break;
        };
        out.push(match b0 & 0x0f {
            0x2 => RawFrame::Herald(decode_server(payload).expect("undecodable server frame")),
            0x8 => RawFrame::Close(
                (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
            ),
            op => RawFrame::Other(op, payload.to_vec()),
        });
        at += hdr + len;
    }
    (out, at)
}

/// Reads server frames from a bare socket until `until` returns true for one (returning every
/// frame read), panicking on EOF or after `wait`.
pub async fn read_raw_until(
    s: &mut TcpStream,
    wait: Duration,
    mut until: impl FnMut(&RawFrame) -> bool,
) -> Vec<RawFrame> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("timed out; frames so far: {frames:?}"))
            .expect("read");
        assert!(n > 0, "EOF; frames so far: {frames:?}");
        buf.extend_from_slice(&chunk[..n]);
        let (got, used) = parse_server_frames(&buf);
        buf.drain(..used);
        for f in got {
            let done = until(&f);
            frames.push(f);
            if done {
                return frames;
            }
        }
    }
}

/// `payload` as one masked, final binary WebSocket frame (what a client must send).
#[must_use]
pub fn masked(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x82];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
