//! Server-side WebSocket framing (RFC 6455 section 5), sans-IO.
//!
//! Why by hand: tungstenite keeps a read buffer and a write buffer per connection for its whole
//! life, and at a million idle connections those buffers are the gateway's whole memory budget
//! (DESIGN.md measures 2.4 KB per connection at best). Herald reads every socket into a per-worker
//! scratch buffer and needs a parser that works on borrowed, possibly partial bytes, keeps no state
//! between frames except an in-progress fragmented message, and unmasks in place. The handshake is
//! plain HTTP and stays with the gateway; this module is only frames.
//!
//! What is implemented of RFC 6455 for a server: client frames must be masked; RSV bits must be
//! zero (no extensions are negotiated); control frames (close, ping, pong) are at most 125 bytes and
//! never fragmented, and may arrive between the fragments of a data message; fragmented data
//! messages are reassembled up to the message limit; close frames are validated (no 1-byte body,
//! UTF-8 reason). Server frames are never masked and never fragmented.
//!
//! The client side, for clients that keep no per-connection buffers either (the load generator's
//! `lean-hold`): [`encode_client_frame`] masks a frame, [`parse_server_header`] reads a server
//! frame's header and refuses a masked one.

use std::borrow::Cow;

/// WebSocket opcodes.
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// Text message (a protocol error for Herald).
    pub const TEXT: u8 = 0x1;
    /// Binary message: one Herald frame.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Close code for a normal closure.
pub const CLOSE_NORMAL: u16 = 1000;

/// Largest header a server writes (2 + 8 bytes: no mask).
pub const MAX_SERVER_HEADER: usize = 10;

/// Why client bytes are not acceptable WebSocket frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// RSV1–3 set without a negotiated extension.
    #[error("reserved bits set")]
    ReservedBits,
    /// An opcode RFC 6455 reserves.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A client frame without a mask.
    #[error("client frame not masked")]
    Unmasked,
    /// A control frame over 125 bytes or with FIN clear.
    #[error("malformed control frame")]
    BadControl,
    /// A continuation frame with no message in progress, or a new data frame inside one.
    #[error("unexpected continuation or interleaved data frame")]
    BadFragmentation,
    /// A text message (Herald speaks binary only).
    #[error("text messages are not allowed")]
    Text,
    /// A data message over the limit.
    #[error("message of at least {len} bytes exceeds the limit of {max}")]
    TooBig {
        /// Size seen so far.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A close frame with a 1-byte body, an invalid code or a reason that is not UTF-8.
    #[error("malformed close frame")]
    BadClose,
    /// A server frame with a mask (RFC 6455 section 5.1: a client must close the connection).
    #[error("server frame masked")]
    Masked,
}

/// A frame header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// FIN bit.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// Bytes of header (including the mask key).
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: u64,
    /// The client's masking key.
    pub mask: [u8; 4],
}

/// Parses a client frame header from the front of `buf`. `Ok(None)` means more bytes are needed.
/// `max_payload` bounds data frames, so a hostile length is refused before it is buffered.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, WsError> {
    parse_any_header(buf, max_payload, true)
}

/// Parses a server frame header from the front of `buf`, on the client side. `Ok(None)` means
/// more bytes are needed. Server frames must not be masked ([`WsError::Masked`]); the returned
/// header's `mask` is all zeroes. RSV bits, reserved opcodes, control-frame limits and
/// `max_payload` (for data frames) are checked as in [`parse_header`].
pub fn parse_server_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, WsError> {
    parse_any_header(buf, max_payload, false)
}

/// Both directions: frames from a client must be masked (`masked`), frames from a server must
/// not be.
#[inline]
fn parse_any_header(
    buf: &[u8],
    max_payload: usize,
    masked: bool,
) -> Result<Option<Header>, WsError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    match opcode {
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {}
        opcode::CLOSE | opcode::PING | opcode::PONG => {
            if !fin || (b1 & 0x7f) > 125 {
                return Err(WsError::BadControl);
            }
        }
        other => return Err(WsError::ReservedOpcode(other)),
    }
    match (b1 & 0x80 != 0, masked) {
        (false, true) => return Err(WsError::Unmasked),
        (true, false) => return Err(WsError::Masked),
        _ => {}
    }
    let (payload_len, len_bytes) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 2)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            (u64::from_be_bytes(a), 8)
        }
        n => (u64::from(n), 0),
    };
    // Control frames are bounded (125 bytes) above and do not count towards a data message.
    let is_data = opcode < opcode::CLOSE;
    if is_data && payload_len > max_payload as u64 {
        return Err(WsError::TooBig {
            len: payload_len,
            max: max_payload,
        });
    }
    let mask_at = 2 + len_bytes;
    let mask = if masked {
        let Some(m) = buf.get(mask_at..mask_at + 4) else {
            return Ok(None);
        };
        [m[0], m[1], m[2], m[3]]
    } else {
        [0; 4]
    };
    Ok(Some(Header {
        fin,
        opcode,
        header_len: if masked { mask_at + 4 } else { mask_at },
        payload_len,
        mask,
    }))
}

/// Appends a masked, unfragmented client frame to `out` (RFC 6455 section 5.3: every client
/// frame is masked; `mask` should be unpredictable per frame). What a client sends and what
/// [`Assembler`] reads on the server.
pub fn encode_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
}

/// XORs `data` with the masking key, starting at key offset 0.
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// One event from the client's byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole binary message: one Herald frame (borrowed from the input, or owned when it was
    /// reassembled from fragments).
    Message(Cow<'a, [u8]>),
    /// A ping; answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong (counts as activity).
    Pong,
    /// The client closes, with the code it gave (if any).
    Close(Option<u16>),
}

/// Reassembles client messages from frames. Holds nothing while no fragmented message is in
/// progress, so an idle connection's `Assembler` is one empty `Vec` (no heap allocation).
#[derive(Debug, Default)]
pub struct Assembler {
    /// Fragments of a message in progress. `Some` only between a non-FIN data frame and its
    /// final continuation; allocated on the first fragment and freed on the last.
    fragments: Option<Vec<u8>>,
}

/// Result of [`Assembler::next`].
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// An event, and how many bytes of the input it consumed.
    Event(Event<'a>, usize),
    /// A frame was consumed but produced no event yet (a non-final fragment).
    Consumed(usize),
    /// The input holds no whole frame; keep the bytes and read more.
    NeedMore,
}

impl Assembler {
    /// Parses the next frame at the front of `buf`, unmasking it in place. `max_message` bounds a
    /// data message (whole or reassembled).
    pub fn next<'a>(&mut self, buf: &'a mut [u8], max_message: usize) -> Result<Step<'a>, WsError> {
        let in_progress = self.fragments.as_ref().map_or(0, Vec::len);
        let Some(h) = parse_header(buf, max_message - in_progress.min(max_message))? else {
            return Ok(Step::NeedMore);
        };
        let total = h.header_len + h.payload_len as usize;
        if buf.len() < total {
            return Ok(Step::NeedMore);
        }
        let payload = &mut buf[h.header_len..total];
        unmask(payload, h.mask);
        let payload: &'a [u8] = payload;
        let event = match h.opcode {
            opcode::PING => Event::Ping(payload),
            opcode::PONG => Event::Pong,
            opcode::CLOSE => Event::Close(parse_close(payload)?),
            opcode::TEXT => return Err(WsError::Text),
            opcode::BINARY if self.fragments.is_some() => return Err(WsError::BadFragmentation),
            opcode::BINARY if h.fin => Event::Message(Cow::Borrowed(payload)),
            opcode::BINARY => {
                self.fragments = Some(payload.to_vec());
                return Ok(Step::Consumed(total));
            }
            _ /* CONTINUATION */ => {
                let Some(frags) = self.fragments.as_mut() else {
                    return Err(WsError::BadFragmentation);
                };
                frags.extend_from_slice(payload);
                if !h.fin {
                    return Ok(Step::Consumed(total));
                }
                let whole = self.fragments.take().unwrap_or_default();
                return Ok(Step::Event(Event::Message(Cow::Owned(whole)), total));
            }
        };
        Ok(Step::Event(event, total))
    }

    /// True while a fragmented message is being reassembled.
    #[must_use]
    pub fn in_progress(&self) -> bool {
        self.fragments.is_some()
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::BadClose),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid || std::str::from_utf8(reason).is_err() {
                return Err(WsError::BadClose);
            }
            Ok(Some(code))
        }
    }
}

/// Appends an unmasked, unfragmented server frame to `out`.
pub fn encode_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and a short `reason` (truncated to fit 125 bytes).
pub fn encode_close(code: u16, reason: &str, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(2 + reason.len().min(123));
    body.extend_from_slice(&code.to_be_bytes());
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    body.extend_from_slice(&reason.as_bytes()[..cut]);
    encode_frame(opcode::CLOSE, &body, out);
}

#[cfg(test)]
mod tests;
