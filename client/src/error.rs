//! [`ClientError`]: every way a connection attempt, a session or a client call can fail.

use std::time::Duration;

use herald_proto::{Code, FrameError};
use tokio_tungstenite::tungstenite::{self, error::ProtocolError, http::header::RETRY_AFTER};

/// Why a [`Connection`](crate::Connection) or [`Client`](crate::Client) call failed.
///
/// `Clone` and `PartialEq` so tests can compare errors and a [`Client`](crate::Client) can hand the
/// same error to every waiting [`barrier`](crate::Client::barrier). Transport errors are therefore
/// kept as their message rather than the underlying `tungstenite::Error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL could not be turned into a WebSocket request (bad syntax, unsupported scheme).
    #[error("invalid url: {0}")]
    InvalidUrl(String),
    /// TCP connect, WebSocket upgrade and (for [`Connection::connect`](crate::Connection::connect))
    /// HELLO/WELCOME did not complete within the connect timeout.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The server answered the upgrade with an HTTP error (400 without subprotocol, 503 when over
    /// capacity, ...).
    #[error("upgrade refused with HTTP {status}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// `Retry-After`, in seconds, when the server sent one (with 503 `overloaded`).
        retry_after: Option<u64>,
    },
    /// The server completed the upgrade without selecting the `herald.v1` subprotocol.
    #[error("server did not select subprotocol herald.v1 (selected {selected:?})")]
    NoSubprotocol {
        /// What the server selected, if anything.
        selected: Option<String>,
    },
    /// The TLS trust anchors could not be loaded (a bad PEM file, no system certificates).
    #[error("tls: {0}")]
    Tls(String),
    /// An I/O or WebSocket-level failure (reset, refused, oversized message, a certificate the
    /// client does not trust, ...).
    #[error("transport: {0}")]
    Transport(String),
    /// The server sent ERROR; it closes the connection next.
    #[error("server error {code}: {message}")]
    Server {
        /// The ERROR code.
        code: Code,
        /// The server's human-readable detail.
        message: String,
    },
    /// The connection closed (with the WebSocket close code and reason, when there was a close
    /// frame).
    #[error("connection closed (code {code:?}, reason {reason:?})")]
    Closed {
        /// The WebSocket close code, if the server sent a close frame.
        code: Option<u16>,
        /// The close reason, possibly empty.
        reason: String,
    },
    /// The server sent bytes that are not a valid server frame.
    #[error("bad frame from server: {0}")]
    Decode(FrameError),
    /// The server sent something valid but out of place: a text message, or a frame other than
    /// WELCOME or ERROR in reply to HELLO.
    #[error("unexpected from server: {0}")]
    Unexpected(String),
    /// WELCOME named a protocol version this client does not speak.
    #[error("server speaks protocol version {0}, this client speaks 1")]
    UnsupportedVersion(u64),
    /// A frame to send encodes to more than `MAX_CLIENT_FRAME` bytes (a token that is too long);
    /// it was not sent.
    #[error("frame of {0} bytes exceeds the client frame limit")]
    FrameTooLarge(usize),
    /// The [`Client`](crate::Client) was closed (or all its handles dropped) before the call
    /// could complete.
    #[error("client closed")]
    ClientClosed,
}

impl ClientError {
    /// The WebSocket close code this error carries or implies (ERROR's code as 4000 + code), for
    /// [`Event::Disconnected`](crate::Event::Disconnected).
    #[must_use]
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ClientError::Closed { code, .. } => *code,
            ClientError::Server { code, .. } => code.ws_close_code(),
            _ => None,
        }
    }

    /// Classifies a tungstenite error.
    pub(crate) fn from_ws(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(resp) => ClientError::Http {
                status: resp.status().as_u16(),
                retry_after: resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok()),
            },
            tungstenite::Error::Url(u) => ClientError::InvalidUrl(u.to_string()),
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                ClientError::Closed {
                    code: None,
                    reason: String::new(),
                }
            }
            tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(_)) => {
                ClientError::NoSubprotocol { selected: None }
            }
            other => ClientError::Transport(other.to_string()),
        }
    }
}
