//! What a connection yields, whatever its transport (WebSocket in `connection`, QUIC in `quic`).

use herald_proto::ServerFrame;

/// One thing read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A decoded server frame.
    Frame(ServerFrame),
    /// The connection ended: with a close frame (`code` set), or without one (EOF).
    Closed {
        /// The WebSocket close code (4000 + Herald code for Herald closes).
        code: Option<u16>,
        /// The close reason, possibly empty.
        reason: String,
    },
}
