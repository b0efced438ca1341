//! The relay-silence watchdog: notices a NATS server that hangs (accepts TCP, delivers nothing)
//! within the configured silence, instead of the two unanswered pings (~10 s) the client library
//! needs, and moves the connection to another server of the list.
//!
//! Relays send an empty heartbeat batch on every partition every 500 ms, so while at least one
//! partition is followed, something arrives several times a second. When nothing has for longer
//! than `relay_silence`, the watchdog remembers the server it gave up on and forces a reconnect;
//! the reconnect callback ([`pick_server`]) then prefers any other server of the pool, and the
//! usual reconnect path resyncs every partition (changes published meanwhile come back from the
//! relays' latest tables).
//!
//! If the relays themselves are all silent (down, or cut from the cluster), switching servers
//! cannot help: each switch that is not followed by a relay message doubles the silence allowed
//! before the next one (up to 8×), until a relay is heard again.

use async_nats::{ReconnectToServer, Server, ServerInfo};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the watchdog shares with the partition readers and the reconnect callback.
#[derive(Debug)]
pub struct Silence {
    start: Instant,
    /// Milliseconds since `start` when anything was last heard (or the clock was last reset).
    last_heard_ms: AtomicU64,
    /// `(host, port)` of the server given up on, until connected elsewhere.
    avoid: Mutex<Option<(String, u16)>>,
    /// Switches since a relay was last heard.
    strikes: AtomicU32,
}

impl Default for Silence {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            avoid: Mutex::new(None),
            strikes: AtomicU32::new(0),
        }
    }
}

impl Silence {
    /// A message from a relay arrived: the clock restarts and the allowance is back to 1×.
    pub fn heard_from_relay(&self) {
        self.strikes.store(0, Ordering::Relaxed);
        self.heard();
    }

    /// The clock restarts without a relay having spoken (a new connection, new interest).
    pub fn heard(&self) {
        self.last_heard_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since [`Silence::heard`].
    #[must_use]
    pub fn silent_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_heard_ms.load(Ordering::Relaxed)))
    }

    fn avoid(&self) -> std::sync::MutexGuard<'_, Option<(String, u16)>> {
        self.avoid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The silence allowed now: `limit`, doubled for each switch since a relay was last heard
    /// (at most 8×).
    #[must_use]
    pub fn allowance(&self, limit: Duration) -> Duration {
        limit * (1 << self.strikes.load(Ordering::Relaxed).min(3))
    }

    /// Gives up on the server described by `info`: reconnects prefer the others.
    pub fn give_up_on(&self, info: &ServerInfo) {
        *self.avoid() = Some((info.host.clone(), info.port));
        self.strikes.fetch_add(1, Ordering::Relaxed);
    }

    /// Connected again: every server is fair game from now on.
    pub fn connected(&self) {
        *self.avoid() = None;
        self.heard();
    }

    /// The server to reconnect to: `None` (the library's own choice) unless a server was given
    /// up on, then the pool's other server with the fewest failed attempts, at once.
    #[must_use]
    pub fn pick_server(&self, pool: &[Server]) -> Option<ReconnectToServer> {
        let avoid = self.avoid().clone()?;
        pool.iter()
            .filter(|s| !same_server(s, &avoid))
            .min_by_key(|s| s.failed_attempts)
            .map(|s| ReconnectToServer {
                addr: s.addr.clone(),
                delay: Some(Duration::ZERO),
            })
    }
}

/// True when pool entry `s` is the server at `(host, port)` as its INFO described it (a server
/// bound to every address reports `0.0.0.0`, so then the port decides).
fn same_server(s: &Server, (host, port): &(String, u16)) -> bool {
    s.addr.port() == *port
        && (s.addr.host() == host || host == "0.0.0.0" || host == "::" || host.is_empty())
}

/// How often the watchdog looks: a quarter of the silence, so it acts within 1.25× of it.
#[must_use]
pub fn check_interval(silence: Duration) -> Duration {
    (silence / 4).max(Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_without_a_relay_back_off_until_one_speaks() {
        let s = Silence::default();
        let limit = Duration::from_secs(2);
        assert_eq!(s.allowance(limit), limit);
        let info = ServerInfo::default();
        for want in [4, 8, 16, 16] {
            s.give_up_on(&info);
            assert_eq!(s.allowance(limit), Duration::from_secs(want));
        }
        s.heard();
        assert_eq!(s.allowance(limit), Duration::from_secs(16));
        s.heard_from_relay();
        assert_eq!(s.allowance(limit), limit);
    }
}
