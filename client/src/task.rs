//! The client task: connect, run a session (`session.rs`), wait (backoff, GOAWAY delay), repeat,
//! until closed or refused for good.
//!
//! ```text
//!  Client ──Command──► Task ──► Connection::connect ──► session ──► Next ──► sleep ──┐
//!  (handle)  (unbounded) ▲                              (frames,                     │
//!            EventStream ◄── Event ──────────────────── heartbeat)                   │
//!                        └───────────────────────────────────────────────────────────┘
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_proto::Code;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep};
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::config::ClientConfig;
use crate::connection::Connection;
use crate::cursors::Cursors;
use crate::error::ClientError;
use crate::event::Event;

/// Resolves one [`Client::barrier`](crate::Client::barrier).
pub(crate) type BarrierTx = oneshot::Sender<Result<(), ClientError>>;

/// What a [`Client`](crate::Client) asks of its task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send SUBSCRIBE (the cursor table is already updated).
    Subscribe(Vec<(u64, u64)>),
    /// Send UNSUBSCRIBE (the cursor table is already updated).
    Unsubscribe(Vec<u64>),
    /// Send PING and resolve on its PONG.
    Barrier(BarrierTx),
    /// Drop the socket as a network cut would.
    DisconnectNow,
}

/// What the task does after a session or a failed connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Reconnect after the next backoff delay.
    Backoff,
    /// Reconnect after exactly this delay (GOAWAY's `reconnect_after_ms`, already jittered).
    Exactly(Duration),
    /// Reconnect after this delay plus a little jitter (HTTP 503 `Retry-After`).
    AtLeast(Duration),
    /// Stop for good and report [`Event::Fatal`].
    Fatal {
        /// Why.
        code: Code,
        /// The server's message or close reason.
        message: String,
    },
    /// `close()` was called, or every `Client` handle was dropped.
    Stop,
}

/// The background task behind a [`Client`](crate::Client).
pub(crate) struct Task {
    /// Url, token source, timings.
    pub(crate) config: ClientConfig,
    /// `ns -> cursor`, shared with the handles.
    pub(crate) cursors: Arc<Mutex<Cursors>>,
    /// From the handles; `None` once they are all dropped.
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    /// To the app; bounded, so a slow app slows the task.
    events: mpsc::Sender<Event>,
    /// `true` once `close()` was called.
    pub(crate) close: watch::Receiver<bool>,
    /// Reconnect delays.
    backoff: Backoff,
    /// Connection attempts so far; picks the URL among `url` and `fallback_urls` in turn.
    attempts: usize,
    /// Last PING nonce used; nonces are never reused within a client.
    next_nonce: u64,
    /// Barriers waiting for a connection: asked while offline, or whose PONG was lost with the
    /// connection. The next session pings for them after resubscribing.
    pub(crate) waiting: Vec<BarrierTx>,
    /// The token of the current session (for `refresh_tokens`).
    pub(crate) token: String,
    /// Jitter of token refreshes.
    pub(crate) refresh_rng: rand::rngs::StdRng,
}

impl Task {
    pub(crate) fn new(
        config: ClientConfig,
        cursors: Arc<Mutex<Cursors>>,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::Sender<Event>,
        close: watch::Receiver<bool>,
    ) -> Self {
        let backoff = Backoff::new(config.backoff_initial, config.backoff_max, config.rng_seed);
        let refresh_rng = match config.rng_seed {
            Some(seed) => rand::SeedableRng::seed_from_u64(seed ^ 0x0072_6566_7265_7368),
            None => rand::SeedableRng::from_os_rng(),
        };
        Task {
            config,
            cursors,
            commands,
            events,
            close,
            backoff,
            attempts: 0,
            next_nonce: 0,
            waiting: Vec::new(),
            token: String::new(),
            refresh_rng,
        }
    }

    /// Runs until closed or refused for good, then fails every pending barrier. Dropping the
    /// command receiver on return is what [`Client::close`](crate::Client::close) waits for.
    pub(crate) async fn run(mut self) {
        let err = self.run_loop().await;
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            if let Command::Barrier(tx) = cmd {
                self.waiting.push(tx);
            }
        }
        for tx in self.waiting.drain(..) {
            let _ = tx.send(Err(err.clone()));
        }
        debug!(url = %self.config.url, "herald client stopped");
    }

    /// The connect/session/sleep loop; returns the error pending barriers get.
    async fn run_loop(&mut self) -> ClientError {
        loop {
            let token = (self.config.token)();
            let url = self.config.url_for_attempt(self.attempts).to_owned();
            self.attempts += 1;
            let opts = self.config.connect_options();
            let next = match self.offline(Connection::connect(&url, &token, opts)).await {
                None => Next::Stop,
                Some(Ok((conn, welcome))) => {
                    self.token = token;
                    let started = Instant::now();
                    let next = self.session(conn, welcome).await;
                    self.backoff.session_ended(started.elapsed());
                    next
                }
                Some(Err(e)) => {
                    let next = after_error(&e);
                    debug!(%url, error = %e, ?next, "herald connect failed");
                    if !matches!(next, Next::Fatal { .. }) {
                        let ev = Event::Disconnected {
                            reason: e.to_string(),
                            close_code: e.close_code(),
                        };
                        self.emit(ev).await;
                    }
                    next
                }
            };
            let delay = match next {
                Next::Stop => return ClientError::ClientClosed,
                Next::Fatal { code, message } => {
                    warn!(%url, %code, %message, "herald refused this client; not reconnecting");
                    let ev = Event::Fatal {
                        code,
                        message: message.clone(),
                    };
                    self.emit(ev).await;
                    return ClientError::Server { code, message };
                }
                Next::Backoff => self.backoff.next_delay(),
                Next::Exactly(d) => d,
                Next::AtLeast(d) => d + self.backoff.jitter(),
            };
            debug!(%url, ?delay, attempt = self.backoff.attempt(), "herald reconnecting");
            if self.offline(sleep(delay)).await.is_none() {
                return ClientError::ClientClosed;
            }
        }
    }

    /// Drives `fut` while there is no connection, handling commands meanwhile (subscribes are
    /// already in the cursor table; barriers wait for the next session). `None` if the client
    /// is closed first.
    async fn offline<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        let mut close = self.close.clone();
        loop {
            tokio::select! {
                biased;
                () = closed(&mut close) => return None,
                out = &mut fut => return Some(out),
                cmd = self.commands.recv() => match cmd {
                    None => return None,
                    Some(Command::Barrier(tx)) => self.waiting.push(tx),
                    Some(Command::Subscribe(_) | Command::Unsubscribe(_) | Command::DisconnectNow) => {}
                },
            }
        }
    }

    /// Hands `ev` to the app, waiting while the stream is full (unless the client is closed).
    /// An app that dropped its stream just does not get events.
    pub(crate) async fn emit(&mut self, ev: Event) {
        let mut close = self.close.clone();
        tokio::select! {
            biased;
            () = closed(&mut close) => {}
            _ = self.events.send(ev) => {}
        }
    }

    /// A fresh PING nonce.
    pub(crate) fn nonce(&mut self) -> u64 {
        self.next_nonce += 1;
        self.next_nonce
    }
}

/// Resolves once `close()` was called or every handle dropped. (Returns `()` so that no watch
/// guard is held across the `select!` handler's awaits: that would make the task `!Send`.)
pub(crate) async fn closed(close: &mut watch::Receiver<bool>) {
    let _ = close.wait_for(|c| *c).await;
}

/// What to do after the server's ERROR code or close code (PROTOCOL.md "Codes").
pub(crate) fn after_code(code: Code, message: String) -> Next {
    if code == Code::UNAUTHORIZED || code == Code::TOKEN_EXPIRED {
        // The token source is called again on every attempt and may return a fresh token.
        Next::Backoff
    } else if code.0 < 100 {
        // 4000–4099: "do not reconnect as is" (bad_frame, unsupported_version, and codes this
        // client does not know).
        Next::Fatal { code, message }
    } else {
        Next::Backoff
    }
}

/// What to do after a WebSocket close with `code` (none: EOF or a reset).
pub(crate) fn after_close(code: Option<u16>, reason: String) -> Next {
    match code.and_then(Code::from_ws_close_code) {
        Some(code) => after_code(code, reason),
        None => Next::Backoff,
    }
}

/// What to do after a failed connection attempt.
fn after_error(e: &ClientError) -> Next {
    match e {
        ClientError::Server { code, message } => after_code(*code, message.clone()),
        ClientError::Closed { code, reason } => after_close(*code, reason.clone()),
        ClientError::UnsupportedVersion(_) => Next::Fatal {
            code: Code::UNSUPPORTED_VERSION,
            message: e.to_string(),
        },
        ClientError::Http {
            retry_after: Some(s),
            ..
        } => Next::AtLeast(Duration::from_secs(*s)),
        _ => Next::Backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fatal(code: Code) -> Next {
        Next::Fatal {
            code,
            message: "m".into(),
        }
    }

    #[test]
    fn codes_classify_as_protocol_md_says() {
        assert_eq!(
            after_code(Code::BAD_FRAME, "m".into()),
            fatal(Code::BAD_FRAME)
        );
        assert_eq!(
            after_code(Code::UNSUPPORTED_VERSION, "m".into()),
            fatal(Code::UNSUPPORTED_VERSION)
        );
        assert_eq!(after_code(Code::UNAUTHORIZED, "m".into()), Next::Backoff);
        assert_eq!(after_code(Code::TOKEN_EXPIRED, "m".into()), Next::Backoff);
        assert_eq!(after_code(Code::SLOW_CONSUMER, "m".into()), Next::Backoff);
        assert_eq!(after_code(Code(42), "m".into()), fatal(Code(42)));
    }

    #[test]
    fn close_codes_classify_by_range() {
        assert_eq!(after_close(Some(4001), "m".into()), fatal(Code::BAD_FRAME));
        assert_eq!(after_close(Some(4003), "m".into()), Next::Backoff);
        assert_eq!(after_close(Some(4104), "m".into()), Next::Backoff);
        assert_eq!(after_close(Some(1000), "m".into()), Next::Backoff);
        assert_eq!(after_close(Some(1006), "m".into()), Next::Backoff);
        assert_eq!(after_close(None, "m".into()), Next::Backoff);
    }

    #[test]
    fn connect_errors_classify() {
        let e = ClientError::Server {
            code: Code::BAD_FRAME,
            message: "m".into(),
        };
        assert_eq!(after_error(&e), fatal(Code::BAD_FRAME));
        let e = ClientError::Http {
            status: 503,
            retry_after: Some(3),
        };
        assert_eq!(after_error(&e), Next::AtLeast(Duration::from_secs(3)));
        assert!(matches!(
            after_error(&ClientError::UnsupportedVersion(2)),
            Next::Fatal {
                code: Code::UNSUPPORTED_VERSION,
                ..
            }
        ));
        assert_eq!(
            after_error(&ClientError::Transport("reset".into())),
            Next::Backoff
        );
    }
}
