//! [`Event`]s a [`Client`](crate::Client) reports, and the [`EventStream`] that carries them.

use herald_proto::Code;
use tokio::sync::mpsc;

/// Something the app should know about, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A session started (WELCOME received); resubscription follows at once.
    Connected {
        /// The server's id for this session, for support and logs.
        session_id: Vec<u8>,
        /// The heartbeat the server chose.
        heartbeat_ms: u64,
        /// Live subscriptions this connection may hold.
        max_subscriptions: u64,
    },
    /// Namespace `ns` changed at least up to `sjid`: pull from the metaserver. One per pair.
    Changed {
        /// The namespace.
        ns: u64,
        /// The SJID it reached (never lower than one already reported for this subscription).
        sjid: u64,
    },
    /// The cursor for `ns` cannot be vouched for: resync from scratch, then subscribe again.
    /// The client has dropped the subscription.
    Reset {
        /// The namespace.
        ns: u64,
    },
    /// The server refused the subscription to `ns` (`forbidden_namespace`,
    /// `too_many_subscriptions`). The client has dropped it.
    Denied {
        /// Why.
        code: Code,
        /// The namespace.
        ns: u64,
    },
    /// The server asked the client to leave; it reconnects after `reconnect_after_ms`.
    Goaway {
        /// Why (`draining`, `overloaded`, `token_expired`, ...).
        code: Code,
        /// The delay the client waits before reconnecting.
        reconnect_after_ms: u64,
    },
    /// A session ended, or a connection attempt failed; the client retries on its own.
    Disconnected {
        /// Human-readable cause.
        reason: String,
        /// The WebSocket close code, if there was one (4000 + code for Herald closes).
        close_code: Option<u16>,
    },
    /// The server refused this client for good (`bad_frame`, `unsupported_version`, or another
    /// 4000–4099 close): the client task has stopped and will not reconnect.
    Fatal {
        /// Why.
        code: Code,
        /// The server's message or close reason.
        message: String,
    },
}

/// The receiving end of a [`Client`](crate::Client)'s events. Bounded: while it is full the client
/// task waits, so read it promptly. Ends (`recv` returns `None`) once the task has stopped.
#[derive(Debug)]
pub struct EventStream {
    /// Events from the client task.
    rx: mpsc::Receiver<Event>,
}

impl EventStream {
    pub(crate) fn new(rx: mpsc::Receiver<Event>) -> Self {
        EventStream { rx }
    }

    /// The next event, or `None` once the client task has stopped and every event was read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// The underlying channel, e.g. to wrap it in a `Stream`.
    #[must_use]
    pub fn into_inner(self) -> mpsc::Receiver<Event> {
        self.rx
    }
}
