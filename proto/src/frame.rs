//! Herald frames: one type byte, then a body of varints, `bytes` and `str` (PROTOCOL.md "Frames").
//!
//! A frame is always handled whole: the transport (a WebSocket message, a QUIC length prefix)
//! says where it ends, so decoding takes exactly one frame and refuses trailing bytes.

use crate::code::Code;
use crate::varint::{self, VarintError};
use crate::{MAX_CLIENT_FRAME, MAX_SERVER_FRAME};

/// Frame type bytes.
pub mod kind {
    /// HELLO (client → server).
    pub const HELLO: u8 = 0x01;
    /// SUBSCRIBE (client → server).
    pub const SUBSCRIBE: u8 = 0x02;
    /// UNSUBSCRIBE (client → server).
    pub const UNSUBSCRIBE: u8 = 0x03;
    /// PING (both directions).
    pub const PING: u8 = 0x04;
    /// PONG (both directions).
    pub const PONG: u8 = 0x05;
    /// REFRESH (client → server): a fresh token for a live session (v1 extension, C17). Not
    /// 0x06, the next free byte, which v1 clients and conformance suites use as "unknown type".
    pub const REFRESH: u8 = 0x10;
    /// WELCOME (server → client).
    pub const WELCOME: u8 = 0x81;
    /// CHANGED (server → client).
    pub const CHANGED: u8 = 0x82;
    /// DENIED (server → client).
    pub const DENIED: u8 = 0x83;
    /// RESET (server → client).
    pub const RESET: u8 = 0x84;
    /// GOAWAY (server → client).
    pub const GOAWAY: u8 = 0x85;
    /// ERROR (server → client).
    pub const ERROR: u8 = 0x86;
}

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// First frame of every session.
    Hello {
        /// Protocol version the client speaks.
        version: u64,
        /// The JWT, unparsed.
        token: String,
    },
    /// `(ns, cursor)` pairs, in frame order (repeats are kept; the session resolves them).
    Subscribe(Vec<(u64, u64)>),
    /// Namespaces to drop.
    Unsubscribe(Vec<u64>),
    /// Heartbeat; the server answers PONG with the same nonce.
    Ping(u64),
    /// Answer to a server PING.
    Pong(u64),
    /// A fresh token for the live session (extension C17): same `sub`, new expiry and grants.
    Refresh {
        /// The JWT.
        token: String,
    },
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// Answer to a good HELLO.
    Welcome {
        /// Version the server will speak.
        version: u64,
        /// How often the client must send something.
        heartbeat_ms: u64,
        /// Live subscriptions allowed on this connection.
        max_subscriptions: u64,
        /// Opaque id the server also logs.
        session_id: Vec<u8>,
    },
    /// `(ns, sjid)`: the namespace changed at least up to `sjid`.
    Changed(Vec<(u64, u64)>),
    /// These subscriptions were refused.
    Denied {
        /// Why (`forbidden_namespace` or `too_many_subscriptions`).
        code: Code,
        /// The refused namespaces.
        ns: Vec<u64>,
    },
    /// These cursors cannot be vouched for; the subscriptions ended.
    Reset(Vec<u64>),
    /// The server is about to close; reconnect later.
    Goaway {
        /// Why.
        code: Code,
        /// Server-chosen, already jittered delay.
        reconnect_after_ms: u64,
    },
    /// A fatal error; the server closes next.
    Error {
        /// Why.
        code: Code,
        /// Human-readable detail.
        message: String,
    },
    /// Server-initiated heartbeat.
    Ping(u64),
    /// Answer to a client PING.
    Pong(u64),
}

/// Why bytes are not a valid frame. Every variant maps to ERROR(`bad_frame`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A zero-length message.
    #[error("empty frame")]
    Empty,
    /// A type byte this protocol version does not define.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// A known type sent in the wrong direction (e.g. WELCOME from a client).
    #[error("frame type 0x{0:02x} is not allowed in this direction")]
    WrongDirection(u8),
    /// A varint ended early.
    #[error("truncated varint")]
    TruncatedVarint,
    /// A varint over 10 bytes or past 2^64.
    #[error("varint longer than 10 bytes or past 2^64")]
    VarintOverflow,
    /// A length or count points past the end of the frame.
    #[error("length past the end of the frame")]
    LengthPastFrame,
    /// A `str` that is not UTF-8.
    #[error("invalid UTF-8 in a string")]
    InvalidUtf8,
    /// Bytes left after the body.
    #[error("trailing bytes after the frame body")]
    TrailingBytes,
    /// The frame exceeds the direction's size limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// Size of the frame.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl From<VarintError> for FrameError {
    fn from(e: VarintError) -> Self {
        match e {
            VarintError::Truncated => FrameError::TruncatedVarint,
            VarintError::Overflow => FrameError::VarintOverflow,
        }
    }
}

/// A cursor over a frame body.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, FrameError> {
        let (v, n) = varint::decode(self.buf)?;
        self.buf = &self.buf[n..];
        Ok(v)
    }

    fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let len = self.varint()?;
        if len > self.buf.len() as u64 {
            return Err(FrameError::LengthPastFrame);
        }
        let (head, rest) = self.buf.split_at(len as usize);
        self.buf = rest;
        Ok(head)
    }

    fn str(&mut self) -> Result<String, FrameError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| FrameError::InvalidUtf8)
    }

    /// A count of items each at least `min_item` bytes long: refuses counts the rest of the frame
    /// cannot hold, so a hostile count never drives an allocation.
    fn count(&mut self, min_item: usize) -> Result<usize, FrameError> {
        let n = self.varint()?;
        if n > (self.buf.len() / min_item) as u64 {
            return Err(FrameError::LengthPastFrame);
        }
        Ok(n as usize)
    }

    fn pairs(&mut self) -> Result<Vec<(u64, u64)>, FrameError> {
        let n = self.count(2)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((self.varint()?, self.varint()?));
        }
        Ok(out)
    }

    fn list(&mut self) -> Result<Vec<u64>, FrameError> {
        let n = self.count(1)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.varint()?);
        }
        Ok(out)
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes)
        }
    }
}

fn split_type(buf: &[u8], max: usize) -> Result<(u8, Reader<'_>), FrameError> {
    if buf.len() > max {
        return Err(FrameError::Oversized {
            len: buf.len(),
            max,
        });
    }
    let (&ty, body) = buf.split_first().ok_or(FrameError::Empty)?;
    Ok((ty, Reader { buf: body }))
}

/// Decodes one whole client frame (at most [`MAX_CLIENT_FRAME`] bytes).
pub fn decode_client(buf: &[u8]) -> Result<ClientFrame, FrameError> {
    let (ty, mut r) = split_type(buf, MAX_CLIENT_FRAME)?;
    let frame = match ty {
        kind::HELLO => ClientFrame::Hello {
            version: r.varint()?,
            token: r.str()?,
        },
        kind::SUBSCRIBE => ClientFrame::Subscribe(r.pairs()?),
        kind::UNSUBSCRIBE => ClientFrame::Unsubscribe(r.list()?),
        kind::PING => ClientFrame::Ping(r.varint()?),
        kind::PONG => ClientFrame::Pong(r.varint()?),
        kind::REFRESH => ClientFrame::Refresh { token: r.str()? },
        kind::WELCOME..=kind::ERROR => return Err(FrameError::WrongDirection(ty)),
        other => return Err(FrameError::UnknownType(other)),
    };
    r.finish()?;
    Ok(frame)
}

/// Decodes one whole server frame (at most [`MAX_SERVER_FRAME`] bytes).
pub fn decode_server(buf: &[u8]) -> Result<ServerFrame, FrameError> {
    let (ty, mut r) = split_type(buf, MAX_SERVER_FRAME)?;
    let frame = match ty {
        kind::WELCOME => ServerFrame::Welcome {
            version: r.varint()?,
            heartbeat_ms: r.varint()?,
            max_subscriptions: r.varint()?,
            session_id: r.bytes()?.to_vec(),
        },
        kind::CHANGED => ServerFrame::Changed(r.pairs()?),
        kind::DENIED => ServerFrame::Denied {
            code: Code(r.varint()?),
            ns: r.list()?,
        },
        kind::RESET => ServerFrame::Reset(r.list()?),
        kind::GOAWAY => ServerFrame::Goaway {
            code: Code(r.varint()?),
            reconnect_after_ms: r.varint()?,
        },
        kind::ERROR => ServerFrame::Error {
            code: Code(r.varint()?),
            message: r.str()?,
        },
        kind::PING => ServerFrame::Ping(r.varint()?),
        kind::PONG => ServerFrame::Pong(r.varint()?),
        kind::HELLO..=kind::UNSUBSCRIBE | kind::REFRESH => {
            return Err(FrameError::WrongDirection(ty));
        }
        other => return Err(FrameError::UnknownType(other)),
    };
    r.finish()?;
    Ok(frame)
}

fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    varint::encode(b.len() as u64, out);
    out.extend_from_slice(b);
}

fn put_pairs(pairs: &[(u64, u64)], out: &mut Vec<u8>) {
    varint::encode(pairs.len() as u64, out);
    for &(a, b) in pairs {
        varint::encode(a, out);
        varint::encode(b, out);
    }
}

fn put_list(items: &[u64], out: &mut Vec<u8>) {
    varint::encode(items.len() as u64, out);
    for &v in items {
        varint::encode(v, out);
    }
}

impl ClientFrame {
    /// Appends the encoded frame to `out`. The caller keeps lists short enough for
    /// [`MAX_CLIENT_FRAME`] (see [`MAX_PAIRS_PER_CLIENT_FRAME`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ClientFrame::Hello { version, token } => {
                out.push(kind::HELLO);
                varint::encode(*version, out);
                put_bytes(token.as_bytes(), out);
            }
            ClientFrame::Subscribe(pairs) => {
                out.push(kind::SUBSCRIBE);
                put_pairs(pairs, out);
            }
            ClientFrame::Unsubscribe(ns) => {
                out.push(kind::UNSUBSCRIBE);
                put_list(ns, out);
            }
            ClientFrame::Ping(n) => {
                out.push(kind::PING);
                varint::encode(*n, out);
            }
            ClientFrame::Pong(n) => {
                out.push(kind::PONG);
                varint::encode(*n, out);
            }
            ClientFrame::Refresh { token } => {
                out.push(kind::REFRESH);
                put_bytes(token.as_bytes(), out);
            }
        }
    }

    /// The encoded frame as a new vector.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

impl ServerFrame {
    /// Appends the encoded frame to `out`. Long lists must first be split with
    /// [`ServerFrame::changed_frames`] and friends to respect [`MAX_SERVER_FRAME`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ServerFrame::Welcome {
                version,
                heartbeat_ms,
                max_subscriptions,
                session_id,
            } => {
                out.push(kind::WELCOME);
                varint::encode(*version, out);
                varint::encode(*heartbeat_ms, out);
                varint::encode(*max_subscriptions, out);
                put_bytes(session_id, out);
            }
            ServerFrame::Changed(pairs) => {
                out.push(kind::CHANGED);
                put_pairs(pairs, out);
            }
            ServerFrame::Denied { code, ns } => {
                out.push(kind::DENIED);
                varint::encode(code.0, out);
                put_list(ns, out);
            }
            ServerFrame::Reset(ns) => {
                out.push(kind::RESET);
                put_list(ns, out);
            }
            ServerFrame::Goaway {
                code,
                reconnect_after_ms,
            } => {
                out.push(kind::GOAWAY);
                varint::encode(code.0, out);
                varint::encode(*reconnect_after_ms, out);
            }
            ServerFrame::Error { code, message } => {
                out.push(kind::ERROR);
                varint::encode(code.0, out);
                put_bytes(message.as_bytes(), out);
            }
            ServerFrame::Ping(n) => {
                out.push(kind::PING);
                varint::encode(*n, out);
            }
            ServerFrame::Pong(n) => {
                out.push(kind::PONG);
                varint::encode(*n, out);
            }
        }
    }

    /// The encoded frame as a new vector.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// CHANGED frames for `pairs`, split so that each stays within [`MAX_SERVER_FRAME`].
    pub fn changed_frames(pairs: &[(u64, u64)]) -> impl Iterator<Item = ServerFrame> + '_ {
        pairs
            .chunks(MAX_PAIRS_PER_SERVER_FRAME)
            .map(|c| ServerFrame::Changed(c.to_vec()))
    }

    /// RESET frames for `ns`, split to stay within [`MAX_SERVER_FRAME`].
    pub fn reset_frames(ns: &[u64]) -> impl Iterator<Item = ServerFrame> + '_ {
        ns.chunks(MAX_ITEMS_PER_SERVER_FRAME)
            .map(|c| ServerFrame::Reset(c.to_vec()))
    }

    /// DENIED frames for `ns`, split to stay within [`MAX_SERVER_FRAME`].
    pub fn denied_frames(code: Code, ns: &[u64]) -> impl Iterator<Item = ServerFrame> + '_ {
        ns.chunks(MAX_ITEMS_PER_SERVER_FRAME)
            .map(move |c| ServerFrame::Denied {
                code,
                ns: c.to_vec(),
            })
    }
}

/// Most `(ns, sjid)` pairs one server frame can hold in the worst case (20 bytes a pair, plus the
/// type byte, a 10-byte count and a 10-byte code).
pub const MAX_PAIRS_PER_SERVER_FRAME: usize = (MAX_SERVER_FRAME - 21) / 20;
/// Most namespaces one DENIED or RESET frame can hold in the worst case.
pub const MAX_ITEMS_PER_SERVER_FRAME: usize = (MAX_SERVER_FRAME - 21) / 10;
/// Most `(ns, cursor)` pairs one client frame can hold in the worst case; clients split longer
/// subscriptions into several SUBSCRIBE frames.
pub const MAX_PAIRS_PER_CLIENT_FRAME: usize = (MAX_CLIENT_FRAME - 11) / 20;

#[cfg(test)]
mod tests;
