//! [`Connection`]: one WebSocket session with a Herald gateway, no reconnect. The managed
//! [`Client`](crate::Client) drives one of these per session; tests and the load generator can use
//! it directly.

use futures_util::{SinkExt, StreamExt};
use herald_proto::WS_SUBPROTOCOL;
use herald_proto::frame::decode_server;
use herald_proto::{
    ClientFrame, MAX_CLIENT_FRAME, MAX_SERVER_FRAME, PROTOCOL_VERSION, ServerFrame,
};
use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream, client_async_tls_with_config,
    connect_async_tls_with_config,
};

use crate::config::ConnectOptions;
use crate::error::ClientError;
pub use crate::incoming::Incoming;
use crate::tls::TlsRoots;

/// The socket type behind a [`Connection`].
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What WELCOME told the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The protocol version the server speaks (always 1 here: others are refused).
    pub version: u64,
    /// How often the client must send something (it sends PING this often).
    pub heartbeat_ms: u64,
    /// Live subscriptions this connection may hold.
    pub max_subscriptions: u64,
    /// Opaque id the server also logs; quote it in bug reports.
    pub session_id: Vec<u8>,
}

/// One WebSocket session speaking Herald frames.
///
/// WebSocket pings from the server are answered by tungstenite as long as the caller keeps
/// calling [`recv`](Connection::recv) (or sending).
#[derive(Debug)]
pub struct Connection {
    /// The transport under the session.
    inner: Inner,
}

/// WebSocket (`ws://`, `wss://`) or QUIC (`quic://`), chosen by the URL's scheme.
#[derive(Debug)]
enum Inner {
    /// The upgraded socket.
    Ws(Box<Ws>),
    /// A QUIC connection and its session stream.
    Quic(Box<crate::quic::QuicSession>),
}

/// Small buffers: the load generator holds ~15k connections in one process, and Herald messages
/// are at most 64 KiB (server) and 4 KiB (client).
fn ws_config() -> WebSocketConfig {
    let max_in = MAX_SERVER_FRAME + 1024;
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(max_in))
        .max_frame_size(Some(max_in))
}

impl Connection {
    /// Connects to `url` (`ws://host:port/v1/connect`, or `wss://` trusting `opts.tls`), offers
    /// `herald.v1`, sends HELLO with
    /// `token` and waits for WELCOME, all within `opts.connect_timeout`.
    ///
    /// An ERROR in reply becomes [`ClientError::Server`], a close [`ClientError::Closed`].
    pub async fn connect(
        url: &str,
        token: &str,
        opts: ConnectOptions,
    ) -> Result<(Connection, Welcome), ClientError> {
        let limit = opts.connect_timeout;
        let attempt = async {
            let mut conn = Self::open_inner(url, opts).await?;
            let welcome = conn.hello(token).await?;
            Ok((conn, welcome))
        };
        timeout(limit, attempt)
            .await
            .map_err(|_| ClientError::ConnectTimeout(limit))?
    }

    /// Only the WebSocket upgrade (subprotocol checked), no HELLO: for tests that need to send a
    /// bad first frame. Follow with [`hello`](Connection::hello) for a normal session.
    pub async fn open(url: &str, opts: ConnectOptions) -> Result<Connection, ClientError> {
        let limit = opts.connect_timeout;
        timeout(limit, Self::open_inner(url, opts))
            .await
            .map_err(|_| ClientError::ConnectTimeout(limit))?
    }

    async fn open_inner(url: &str, opts: ConnectOptions) -> Result<Connection, ClientError> {
        if url.starts_with(crate::quic::SCHEME) {
            let session = crate::quic::QuicSession::open(url, &opts).await?;
            return Ok(Connection {
                inner: Inner::Quic(Box::new(session)),
            });
        }
        let mut req = url
            .into_client_request()
            .map_err(|e| ClientError::InvalidUrl(format!("{url}: {e}")))?;
        req.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(WS_SUBPROTOCOL),
        );
        // `wss://`: rustls with the configured roots (or the system's); `ws://`: plain TCP.
        let connector = match req.uri().scheme_str() {
            Some("wss") => Some(Connector::Rustls(match &opts.tls {
                Some(roots) => roots.config(),
                None => TlsRoots::native()?.config(),
            })),
            _ => None,
        };
        let (ws, resp) = match opts.local_addr {
            None => connect_async_tls_with_config(req, Some(ws_config()), opts.nodelay, connector)
                .await
                .map_err(ClientError::from_ws)?,
            Some(local) => {
                let stream = connect_from(local, req.uri(), opts.nodelay).await?;
                client_async_tls_with_config(req, stream, Some(ws_config()), connector)
                    .await
                    .map_err(ClientError::from_ws)?
            }
        };
        let selected = resp
            .headers()
            .get(SEC_WEBSOCKET_PROTOCOL)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if selected.as_deref() != Some(WS_SUBPROTOCOL) {
            return Err(ClientError::NoSubprotocol { selected });
        }
        Ok(Connection {
            inner: Inner::Ws(Box::new(ws)),
        })
    }

    /// Sends HELLO (version 1) and waits for WELCOME. No timeout of its own: `connect` bounds it.
    pub async fn hello(&mut self, token: &str) -> Result<Welcome, ClientError> {
        self.send(&ClientFrame::Hello {
            version: PROTOCOL_VERSION,
            token: token.to_owned(),
        })
        .await?;
        match self.recv().await? {
            Incoming::Frame(ServerFrame::Welcome {
                version,
                heartbeat_ms,
                max_subscriptions,
                session_id,
            }) => {
                if version != PROTOCOL_VERSION {
                    return Err(ClientError::UnsupportedVersion(version));
                }
                Ok(Welcome {
                    version,
                    heartbeat_ms,
                    max_subscriptions,
                    session_id,
                })
            }
            Incoming::Frame(ServerFrame::Error { code, message }) => {
                Err(ClientError::Server { code, message })
            }
            Incoming::Frame(other) => Err(ClientError::Unexpected(format!(
                "{other:?} in reply to HELLO"
            ))),
            Incoming::Closed { code, reason } => Err(ClientError::Closed { code, reason }),
        }
    }

    /// Sends one frame as one binary message. Refuses (without sending) a frame over
    /// `MAX_CLIENT_FRAME` bytes: the server would answer `bad_frame`.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let bytes = frame.to_vec();
        if bytes.len() > MAX_CLIENT_FRAME {
            return Err(ClientError::FrameTooLarge(bytes.len()));
        }
        match &mut self.inner {
            Inner::Ws(_) => self.send_raw(Message::binary(bytes)).await,
            Inner::Quic(q) => {
                let mut wire = Vec::with_capacity(bytes.len() + 2);
                herald_proto::quic::encode_frame(&bytes, &mut wire);
                q.send_bytes(&wire).await
            }
        }
    }

    /// QUIC only: writes `bytes` on the session stream as they are (no length prefix added),
    /// for tests of the server's error handling.
    pub async fn send_stream_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match &mut self.inner {
            Inner::Quic(q) => q.send_bytes(bytes).await,
            Inner::Ws(_) => Err(ClientError::Unexpected(
                "send_stream_bytes is for quic:// connections".into(),
            )),
        }
    }

    /// QUIC only: the QUIC connection (to open more streams, read statistics).
    pub fn quic_connection(&self) -> Option<&quinn::Connection> {
        match &self.inner {
            Inner::Quic(q) => Some(q.connection()),
            Inner::Ws(_) => None,
        }
    }

    /// Sends any WebSocket message as is (text, garbage bytes, oversized frames, ...): for tests
    /// of the server's error handling.
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), ClientError> {
        match &mut self.inner {
            Inner::Ws(ws) => ws.send(msg).await.map_err(ClientError::from_ws),
            Inner::Quic(_) => Err(ClientError::Unexpected(
                "send_raw is for WebSocket connections; use send_stream_bytes".into(),
            )),
        }
    }

    /// Reads the next server frame, skipping WebSocket pings and pongs (tungstenite answers the
    /// pings). A text message is [`ClientError::Unexpected`], undecodable bytes
    /// [`ClientError::Decode`].
    ///
    /// Cancel safe: it only awaits the socket's read, so it can be a `select!` branch.
    pub async fn recv(&mut self) -> Result<Incoming, ClientError> {
        let ws = match &mut self.inner {
            Inner::Ws(ws) => ws,
            Inner::Quic(q) => return q.recv().await,
        };
        loop {
            let msg = match ws.next().await {
                None => return Ok(closed_without_frame()),
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => {
                    return Ok(closed_without_frame());
                }
                Some(Err(e)) => return Err(ClientError::from_ws(e)),
                Some(Ok(msg)) => msg,
            };
            return match msg {
                Message::Binary(b) => decode_server(&b)
                    .map(Incoming::Frame)
                    .map_err(ClientError::Decode),
                Message::Text(_) => Err(ClientError::Unexpected("text message".into())),
                Message::Close(frame) => Ok(Incoming::Closed {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                }),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
        }
    }

    /// Sends a normal (1000) close and reads until the server's close or EOF. Callers bound it
    /// with a timeout: a server that never answers would keep it waiting.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        if let Inner::Quic(q) = &mut self.inner {
            q.close().await;
            return Ok(());
        }
        self.close_with(CloseCode::Normal, "").await
    }

    async fn close_with(&mut self, code: CloseCode, reason: &str) -> Result<(), ClientError> {
        let frame = CloseFrame {
            code,
            reason: reason.to_owned().into(),
        };
        let Inner::Ws(ws) = &mut self.inner else {
            return Ok(());
        };
        match (**ws).close(Some(frame)).await {
            Ok(()) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(());
            }
            Err(e) => return Err(ClientError::from_ws(e)),
        }
        while let Ok(Incoming::Frame(_)) = self.recv().await {}
        Ok(())
    }
}

/// A TCP connection to the `ws://` URI's host and port from source address `local` (what
/// `connect_async_with_config` does, plus the bind it has no option for).
async fn connect_from(
    local: IpAddr,
    uri: &tungstenite::http::Uri,
    nodelay: bool,
) -> Result<TcpStream, ClientError> {
    let transport = |e: std::io::Error| ClientError::Transport(e.to_string());
    if uri.scheme_str() != Some("ws") {
        return Err(ClientError::InvalidUrl(format!(
            "{uri}: only ws:// is supported"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| ClientError::InvalidUrl(format!("{uri}: no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let remote = tokio::net::lookup_host((host, port))
        .await
        .map_err(transport)?
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| ClientError::InvalidUrl(format!("{uri}: no address like {local}")))?;
    let socket = if local.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(transport)?;
    socket.bind(SocketAddr::new(local, 0)).map_err(transport)?;
    let stream = socket.connect(remote).await.map_err(transport)?;
    stream.set_nodelay(nodelay).map_err(transport)?;
    Ok(stream)
}

fn closed_without_frame() -> Incoming {
    Incoming::Closed {
        code: None,
        reason: String::new(),
    }
}
