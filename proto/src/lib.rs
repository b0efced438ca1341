//! # herald-proto
//!
//! The Herald wire protocol (see `PROTOCOL.md` beside this crate) as plain functions over byte
//! slices. This crate does no networking, reads no clock and spawns nothing: callers hand it bytes
//! and get frames back, or hand it frames and get bytes. That keeps it fuzzable and lets every
//! transport (WebSocket, QUIC, long-poll) and the client library share one codec.
//!
//! ```text
//!  socket bytes ──► ws::Assembler ──► one binary message ──► frame::decode_client ──► ClientFrame
//!                   (RFC 6455)        (≤ 4096 bytes)          (typed FrameError on bad input)
//!  ServerFrame ──► frame::encode ──► ws::encode_server_frame ──► bytes shared by every recipient
//! ```
//!
//! # Layout
//! - [`varint`]: unsigned LEB128, at most 10 bytes.
//! - [`code`]: the error/close codes shared by DENIED, GOAWAY, ERROR and close frames.
//! - [`frame`]: HELLO … ERROR, encode and decode, size limits, splitting of long lists.
//! - [`ws`]: server-side RFC 6455 framing (client frames in, server frames out).
//! - [`quic`]: the QUIC session stream's framing (a varint length before each frame).
//! - [`claims`]: the JWT claims a token carries, with the `ns` grant rules.
//! - [`fanout`]: the NATS messages between journal, relays and gateways (batches, look-ups).
//! - [`json`]: the big-number rule of every JSON body (numbers above 2^53 as decimal strings).
//! - [`longpoll`]: the long-poll request, reply and error bodies, limits and error names.
//! - [`http`]: the client listener's HTTP/1.1 heads: WebSocket upgrade, long-poll, refusals.
//! - [`cors`]: which web origins may read long-poll answers.
//! - [`publish`]: the body of a standalone gateway's `POST /v1/publish`.
#![warn(missing_docs)]

pub mod claims;
pub mod code;
pub mod cors;
pub mod fanout;
pub mod frame;
pub mod http;
pub mod json;
pub mod longpoll;
pub mod publish;
pub mod quic;
pub mod varint;
pub mod ws;

pub use claims::{Claims, NsGrant};
pub use code::Code;
pub use frame::{ClientFrame, FrameError, ServerFrame};

/// The protocol version this crate speaks, sent in HELLO and WELCOME.
pub const PROTOCOL_VERSION: u64 = 1;
/// Largest client frame, in bytes (type byte included).
pub const MAX_CLIENT_FRAME: usize = 4096;
/// Largest server frame, in bytes (type byte included).
pub const MAX_SERVER_FRAME: usize = 65536;
/// WebSocket subprotocol a client must offer.
pub const WS_SUBPROTOCOL: &str = "herald.v1";
/// ALPN identifier for the QUIC transport.
pub const QUIC_ALPN: &[u8] = b"herald/1";
