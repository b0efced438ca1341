//! Connecting to NATS: retry with backoff until the server answers (or shutdown), log the
//! connection's life (disconnects, reconnects, slow consumer) clearly.

use async_nats::{Client, ConnectOptions, Event};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Exponential backoff with a cap, for retries of anything that talks to the broker.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The next wait.
    next: Duration,
    /// The first wait, and where [`Backoff::reset`] returns.
    min: Duration,
    /// The longest wait.
    max: Duration,
}

impl Backoff {
    /// 100 ms doubling up to 5 s.
    #[must_use]
    pub fn new() -> Self {
        Self::with_bounds(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Custom bounds.
    #[must_use]
    pub fn with_bounds(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The wait to use now; the following one is twice as long, up to the cap.
    pub fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    /// Back to the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// Sleeps for the next step; false when shutdown came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.step();
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = shutdown.cancelled() => false,
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

fn options(name: &str) -> ConnectOptions {
    ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(3))
        // Reconnect and ping like the gateways do (herald-upstream): a relay back within the
        // delivery bound after an outage, and a hung server noticed in seconds.
        .max_reconnects(None)
        .reconnect_delay_callback(herald_upstream::upstream::reconnect_delay)
        .ping_interval(herald_upstream::upstream::PING_INTERVAL)
        // The journal consumer delivers fast during the load; leave room in its channel.
        .subscription_capacity(256 * 1024)
        .event_callback(|event| async move {
            match event {
                Event::Connected => tracing::info!("NATS connection (re)established"),
                Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting in the background");
                }
                Event::Closed => tracing::info!("NATS connection closed"),
                Event::SlowConsumer(sid) => {
                    tracing::warn!(sid, "NATS slow consumer: messages were dropped");
                }
                other => tracing::warn!(event = %other, "NATS connection event"),
            }
        })
}

/// Connects once, without retrying (for the one-shot subcommands).
pub async fn connect_once(url: &str, name: &str) -> anyhow::Result<Client> {
    options(name)
        .connect(herald_upstream::config::servers(url))
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {url}: {e}"))
}

/// Connects, retrying with backoff while the server is unreachable. `None` if shutdown came
/// first. Once connected, the client reconnects by itself for as long as the process runs.
pub async fn connect(url: &str, name: &str, shutdown: &CancellationToken) -> Option<Client> {
    let mut backoff = Backoff::new();
    loop {
        let attempt = tokio::select! {
            r = options(name).connect(herald_upstream::config::servers(url)) => r,
            () = shutdown.cancelled() => return None,
        };
        match attempt {
            Ok(client) => return Some(client),
            Err(e) => {
                let wait = backoff.step();
                tracing::warn!(url, error = %e, retry_in = ?wait, "cannot connect to NATS; retrying");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::with_bounds(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<u128> = (0..4).map(|_| b.step().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(100));
    }
}
