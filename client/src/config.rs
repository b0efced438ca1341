//! Configuration: [`ConnectOptions`] for one [`Connection`](crate::Connection), [`ClientConfig`]
//! for a managed [`Client`](crate::Client).

use std::fmt;
use std::net::IpAddr;

use crate::tls::TlsRoots;
use std::sync::Arc;
use std::time::Duration;

/// Produces the token for HELLO. Called on every connect attempt, so a source that refreshes
/// tokens gets a new one after `unauthorized` or `token_expired`.
pub type TokenSource = Arc<dyn Fn() -> String + Send + Sync>;

/// Options for one WebSocket session ([`Connection::connect`](crate::Connection::connect)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Bound on TCP connect + WebSocket upgrade (+ HELLO/WELCOME for `connect`). Default 10 s,
    /// the server's own handshake timeout.
    pub connect_timeout: Duration,
    /// Sets `TCP_NODELAY`. Default true: frames are small and a doorbell should not wait for
    /// Nagle.
    pub nodelay: bool,
    /// Whom `wss://` and `quic://` URLs trust. Default `None`: the system's certificate store.
    pub tls: Option<TlsRoots>,
    /// Source address to bind the socket to (port chosen by the kernel). Default `None`: the
    /// kernel picks. The load generator spreads clients over 127.0.0.2, 127.0.0.3, … so that
    /// they do not run out of ephemeral ports.
    pub local_addr: Option<IpAddr>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            nodelay: true,
            tls: None,
            local_addr: None,
        }
    }
}

/// Settings for [`Client::spawn`](crate::Client::spawn). Build with [`ClientConfig::new`] or
/// [`ClientConfig::with_token_source`], then adjust the public fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// `ws://host:port/v1/connect`, `wss://host:port/v1/connect` or `quic://host:port`.
    pub url: String,
    /// Other gateways to try: each connection attempt (after a failure, a GOAWAY or a dropped
    /// session) takes the next of `url`, then these, in turn. Empty by default.
    pub fallback_urls: Vec<String>,
    /// Called on every connect attempt for the HELLO token.
    pub token: TokenSource,
    /// Backoff cap for the first retry (default 100 ms); doubles per failed attempt.
    pub backoff_initial: Duration,
    /// Largest backoff cap (default 30 s). A session that got WELCOME and lived at least
    /// `min(backoff_max, 10 s)` resets the backoff.
    pub backoff_max: Duration,
    /// Bound on TCP connect + upgrade + HELLO/WELCOME (default 10 s).
    pub connect_timeout: Duration,
    /// Overrides WELCOME's `heartbeat_ms` (normally `None`: the server chooses). Tests use a short
    /// one to exercise dead-connection detection.
    pub heartbeat: Option<Duration>,
    /// Capacity of the [`EventStream`](crate::EventStream) (default 1024). When it is full the
    /// client task waits, and so stops reading its socket.
    pub event_capacity: usize,
    /// Seeds the backoff jitter, for deterministic tests. `None` seeds from the OS.
    pub rng_seed: Option<u64>,
    /// Whom `wss://` and `quic://` URLs trust (default `None`: the system's certificate store).
    pub tls: Option<TlsRoots>,
    /// Source address of every connection attempt (see [`ConnectOptions::local_addr`]).
    pub local_addr: Option<IpAddr>,
    /// Refresh the token in-band (REFRESH, PROTOCOL.md C17) before it expires, instead of being
    /// sent away with GOAWAY(`token_expired`) and reconnecting: at 80% ± 10% of its lifetime
    /// ([`crate::refresh`]) the token source is called and a fresher token is sent on the live
    /// session. Off by default: a gateway without the extension answers REFRESH with
    /// ERROR(`bad_frame`). Needs a token source that returns fresh tokens.
    pub refresh_tokens: bool,
}

impl ClientConfig {
    /// A config with a fixed token and the defaults above.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        let token: String = token.into();
        Self::with_token_source(url, move || token.clone())
    }

    /// A config whose token comes from `source`, called on every connect attempt.
    pub fn with_token_source(
        url: impl Into<String>,
        source: impl Fn() -> String + Send + Sync + 'static,
    ) -> Self {
        ClientConfig {
            url: url.into(),
            fallback_urls: Vec::new(),
            token: Arc::new(source),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            heartbeat: None,
            event_capacity: 1024,
            rng_seed: None,
            tls: None,
            local_addr: None,
            refresh_tokens: false,
        }
    }

    /// The URL of connection attempt number `attempt` (0, 1, …): `url`, then each fallback.
    #[must_use]
    pub fn url_for_attempt(&self, attempt: usize) -> &str {
        match attempt % (1 + self.fallback_urls.len()) {
            0 => &self.url,
            i => &self.fallback_urls[i - 1],
        }
    }

    /// The slice of this config one connection attempt needs.
    pub(crate) fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            connect_timeout: self.connect_timeout,
            tls: self.tls.clone(),
            local_addr: self.local_addr,
            ..ConnectOptions::default()
        }
    }
}

impl fmt::Debug for ClientConfig {
    /// Leaves out the token source: it is not `Debug`, and tokens do not belong in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("fallback_urls", &self.fallback_urls)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("event_capacity", &self.event_capacity)
            .field("rng_seed", &self.rng_seed)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_rotate_over_fallbacks() {
        let mut c = ClientConfig::new("ws://a", "t");
        assert_eq!(c.url_for_attempt(0), "ws://a");
        assert_eq!(c.url_for_attempt(7), "ws://a");
        c.fallback_urls = vec!["ws://b".into(), "ws://c".into()];
        let seq: Vec<&str> = (0..4).map(|i| c.url_for_attempt(i)).collect();
        assert_eq!(seq, ["ws://a", "ws://b", "ws://c", "ws://a"]);
    }
}
