//! The codes carried by DENIED, GOAWAY and ERROR, and (as 4000 + code) by WebSocket close frames.

use std::fmt;

/// A protocol code. A newtype rather than an enum so that a client decoding a code from a newer
/// server still gets a value it can log and classify ([`Code::reconnect_with_backoff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u64);

impl Code {
    /// A frame the server could not decode; do not reconnect until fixed.
    pub const BAD_FRAME: Code = Code(1);
    /// HELLO asked for a version the server does not speak.
    pub const UNSUPPORTED_VERSION: Code = Code(2);
    /// The token is missing, malformed, badly signed or otherwise refused.
    pub const UNAUTHORIZED: Code = Code(3);
    /// (DENIED) the token does not grant this namespace.
    pub const FORBIDDEN_NAMESPACE: Code = Code(4);
    /// (DENIED) the connection is at `max_subscriptions`.
    pub const TOO_MANY_SUBSCRIPTIONS: Code = Code(5);
    /// (GOAWAY) the server is shutting down; reconnect after `reconnect_after_ms`.
    pub const DRAINING: Code = Code(100);
    /// (GOAWAY, or HTTP 503) the server is over capacity.
    pub const OVERLOADED: Code = Code(101);
    /// (GOAWAY) the client did not read fast enough.
    pub const SLOW_CONSUMER: Code = Code(102);
    /// (GOAWAY) the token expired on a live connection.
    pub const TOKEN_EXPIRED: Code = Code(103);
    /// Handshake or heartbeat timeout (close code only).
    pub const TIMEOUT: Code = Code(104);

    /// The snake_case name PROTOCOL.md uses, or `"unknown"`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "bad_frame",
            2 => "unsupported_version",
            3 => "unauthorized",
            4 => "forbidden_namespace",
            5 => "too_many_subscriptions",
            100 => "draining",
            101 => "overloaded",
            102 => "slow_consumer",
            103 => "token_expired",
            104 => "timeout",
            _ => "unknown",
        }
    }

    /// The WebSocket close code for this code (4000 + code), if it fits the 4000–4999 range.
    #[must_use]
    pub fn ws_close_code(self) -> Option<u16> {
        (self.0 < 1000).then(|| 4000 + self.0 as u16)
    }

    /// The code a WebSocket close code carries, if it is in Herald's 4000–4999 range.
    #[must_use]
    pub fn from_ws_close_code(close: u16) -> Option<Code> {
        (4000..5000)
            .contains(&close)
            .then(|| Code(u64::from(close - 4000)))
    }

    /// True for codes whose close means "reconnect with backoff" (close codes 4100–4199).
    #[must_use]
    pub fn reconnect_with_backoff(self) -> bool {
        (100..200).contains(&self.0)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        assert_eq!(Code::BAD_FRAME.ws_close_code(), Some(4001));
        assert_eq!(Code::TIMEOUT.ws_close_code(), Some(4104));
        assert_eq!(Code::from_ws_close_code(4102), Some(Code::SLOW_CONSUMER));
        assert_eq!(Code::from_ws_close_code(1000), None);
        assert!(Code::DRAINING.reconnect_with_backoff());
        assert!(!Code::UNAUTHORIZED.reconnect_with_backoff());
        assert_eq!(Code(77).name(), "unknown");
    }
}
