//! The HTTP long-poll transport (PROTOCOL.md "Transports", C16), for clients that cannot keep a
//! socket open:
//! - [`poll_once`] / [`PollConnection`]: one `POST /v1/longpoll` exchange (for tests and the load
//!   generator);
//! - [`LongPoller`]: a managed poller that keeps the cursors, polls in a loop (one HTTP/1.1
//!   connection kept alive between polls), honours `backoff_s` and `Retry-After`, backs off with
//!   jitter on errors, and reports the same [`Event`]s as the managed [`Client`](crate::Client)
//!   (`Changed`, `Reset`, `Denied`, `Disconnected`, `Fatal`), so callers can mix transports.
//!
//! Only `http://` URLs: this build has no TLS client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::client::lock;
use crate::config::TokenSource;
use crate::cursors::Cursors;
use crate::error::ClientError;
use crate::event::{Event, EventStream};
use herald_proto::Code;
use herald_proto::longpoll::{ErrorBody, ErrorName, Request};

/// The answer to one poll (the protocol's reply body, `herald_proto::longpoll::Reply`).
pub type PollReply = herald_proto::longpoll::Reply;

/// An HTTP error answer to a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollError {
    /// HTTP status.
    pub status: u16,
    /// The body's `error` (one of `herald_proto::longpoll::ErrorName` from a Herald gateway,
    /// empty when a proxy answered with something else).
    pub error: String,
    /// The body's `message`.
    pub message: String,
    /// `Retry-After`, seconds (429/503).
    pub retry_after: Option<u64>,
    /// The refused namespaces (403).
    pub namespaces: Vec<u64>,
}

/// What can go wrong with one poll.
#[derive(Debug)]
pub enum PollFailure {
    /// The server answered with an error status.
    Refused(PollError),
    /// No answer: connect, I/O or a malformed reply.
    Transport(ClientError),
}

impl std::fmt::Display for PollFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollFailure::Refused(e) => write!(f, "HTTP {} {}: {}", e.status, e.error, e.message),
            PollFailure::Transport(e) => write!(f, "{e}"),
        }
    }
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, String), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::InvalidUrl(format!("{url}: only http:// is supported")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, herald_proto::longpoll::PATH),
    };
    if authority.is_empty() {
        return Err(ClientError::InvalidUrl(url.to_owned()));
    }
    Ok((authority.to_owned(), path.to_owned()))
}

/// One HTTP/1.1 connection to a gateway's long-poll endpoint, kept alive between polls.
pub struct PollConnection {
    sender: http1::SendRequest<Full<Bytes>>,
    authority: String,
    path: String,
}

impl PollConnection {
    /// Connects to `url` (`http://host:port/v1/longpoll`).
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let (authority, path) = split_url(url)?;
        let stream = TcpStream::connect(&authority)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Self::handshake(stream, authority, path).await
    }

    /// Uses an already connected socket (e.g. bound to a chosen source address).
    pub async fn handshake(
        stream: TcpStream,
        authority: String,
        path: String,
    ) -> Result<Self, ClientError> {
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(PollConnection {
            sender,
            authority,
            path,
        })
    }

    /// True while the connection can carry another poll.
    #[must_use]
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends one poll and waits for its answer (no timeout of its own: wrap it in one).
    pub async fn poll(
        &mut self,
        token: &str,
        cursors: &[(u64, u64)],
        timeout_s: u64,
    ) -> Result<PollReply, PollFailure> {
        let request = Request {
            token: token.to_owned(),
            cursors: cursors.to_vec(),
            timeout_s,
        };
        self.poll_raw(request.encode()).await
    }

    /// Sends `body` as it is (tests send malformed ones).
    pub async fn poll_raw(&mut self, body: Vec<u8>) -> Result<PollReply, PollFailure> {
        let transport = |e: &dyn std::fmt::Display| {
            PollFailure::Transport(ClientError::Transport(e.to_string()))
        };
        self.sender.ready().await.map_err(|e| transport(&e))?;
        let req = hyper::Request::post(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| transport(&e))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| transport(&e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(&e))?
            .to_bytes();
        if status == 200 {
            return PollReply::parse(&body).map_err(|e| {
                PollFailure::Transport(ClientError::Unexpected(format!("long-poll reply: {e}")))
            });
        }
        let ErrorBody {
            error,
            message,
            namespaces,
        } = ErrorBody::parse_lenient(&body);
        Err(PollFailure::Refused(PollError {
            status,
            error,
            message,
            retry_after,
            namespaces,
        }))
    }
}

/// One poll on a new connection.
pub async fn poll_once(
    url: &str,
    token: &str,
    cursors: &[(u64, u64)],
    timeout_s: u64,
) -> Result<PollReply, PollFailure> {
    let mut conn = PollConnection::connect(url)
        .await
        .map_err(PollFailure::Transport)?;
    conn.poll(token, cursors, timeout_s).await
}

/// Settings for [`LongPoller::spawn`].
#[derive(Clone)]
#[non_exhaustive]
pub struct LongPollConfig {
    /// `http://host:port/v1/longpoll`.
    pub url: String,
    /// Called before every poll for the token.
    pub token: TokenSource,
    /// `timeout_s` sent with every poll (30–480; default 30).
    pub timeout_s: u64,
    /// Backoff cap for the first retry after an error (default 100 ms); doubles per failure.
    pub backoff_initial: Duration,
    /// Largest backoff cap (default 30 s).
    pub backoff_max: Duration,
    /// Capacity of the event stream (default 1024).
    pub event_capacity: usize,
    /// Seeds the backoff jitter, for deterministic tests.
    pub rng_seed: Option<u64>,
}

impl LongPollConfig {
    /// A config with a fixed token and the defaults above.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        let token: String = token.into();
        LongPollConfig {
            url: url.into(),
            token: Arc::new(move || token.clone()),
            timeout_s: 30,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            event_capacity: 1024,
            rng_seed: None,
        }
    }
}

impl std::fmt::Debug for LongPollConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LongPollConfig")
            .field("url", &self.url)
            .field("timeout_s", &self.timeout_s)
            .finish_non_exhaustive()
    }
}

/// A managed long-poll client. Cheap to clone; dropping every clone stops its task.
#[derive(Debug, Clone)]
pub struct LongPoller {
    /// Wakes the task when the cursors change (a running poll is abandoned for a new one).
    changed: Arc<watch::Sender<u64>>,
    cursors: Arc<Mutex<Cursors>>,
    close: Arc<watch::Sender<bool>>,
    done: Arc<tokio::sync::Notify>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl LongPoller {
    /// Starts the polling task.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn spawn(config: LongPollConfig) -> (LongPoller, EventStream) {
        let (events, events_rx) = mpsc::channel(config.event_capacity.max(1));
        let (changed, changed_rx) = watch::channel(0);
        let (close, close_rx) = watch::channel(false);
        let cursors = Arc::new(Mutex::new(Cursors::new()));
        let done = Arc::new(tokio::sync::Notify::new());
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = PollTask {
            backoff: Backoff::new(config.backoff_initial, config.backoff_max, config.rng_seed),
            config,
            cursors: cursors.clone(),
            events,
            changed: changed_rx,
            close: close_rx,
        };
        let (d, s) = (done.clone(), stopped.clone());
        tokio::spawn(async move {
            task.run().await;
            s.store(true, std::sync::atomic::Ordering::SeqCst);
            d.notify_waiters();
        });
        let poller = LongPoller {
            changed: Arc::new(changed),
            cursors,
            close: Arc::new(close),
            done,
            stopped,
        };
        (poller, EventStream::new(events_rx))
    }

    /// Adds or replaces `(ns, cursor)` pairs; the next poll carries them.
    pub fn subscribe(&self, pairs: &[(u64, u64)]) {
        lock(&self.cursors).subscribe(pairs);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Drops namespaces.
    pub fn unsubscribe(&self, ns: &[u64]) {
        lock(&self.cursors).unsubscribe(ns);
        self.changed.send_modify(|n| *n += 1);
    }

    /// A snapshot of `ns -> cursor`, advanced by every change delivered.
    #[must_use]
    pub fn cursors(&self) -> HashMap<u64, u64> {
        lock(&self.cursors).snapshot()
    }

    /// Stops the task and waits until it has stopped.
    pub async fn close(&self) {
        let done = self.done.notified();
        self.close.send_replace(true);
        if !self.is_closed() {
            done.await;
        }
    }

    /// True once the task has stopped.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct PollTask {
    config: LongPollConfig,
    backoff: Backoff,
    cursors: Arc<Mutex<Cursors>>,
    events: mpsc::Sender<Event>,
    changed: watch::Receiver<u64>,
    close: watch::Receiver<bool>,
}

/// What the loop does after a poll.
enum Next {
    Again,
    Wait(Duration),
    Stop,
}

impl PollTask {
    async fn run(mut self) {
        let mut conn: Option<PollConnection> = None;
        loop {
            if *self.close.borrow() {
                return;
            }
            self.changed.borrow_and_update();
            let pairs: Vec<(u64, u64)> = lock(&self.cursors).snapshot().into_iter().collect();
            if pairs.is_empty() {
                tokio::select! {
                    _ = self.changed.changed() => continue,
                    _ = self.close.changed() => return,
                }
            }
            let token = (self.config.token)();
            // The server answers by timeout + 10%; give it that and some slack before giving up.
            let limit = Duration::from_secs(self.config.timeout_s * 11 / 10 + 10);
            let timeout_s = self.config.timeout_s;
            let url = self.config.url.clone();
            let mut c = conn.take();
            let attempt = async {
                let mut c = match c.take().filter(PollConnection::is_open) {
                    Some(c) => c,
                    None => PollConnection::connect(&url)
                        .await
                        .map_err(PollFailure::Transport)?,
                };
                let r = c.poll(&token, &pairs, timeout_s).await;
                Ok::<_, PollFailure>((c, r))
            };
            let outcome = tokio::select! {
                r = tokio::time::timeout(limit, attempt) => r,
                // New cursors: abandon this poll (and its connection) and send a new one.
                _ = self.changed.changed() => continue,
                _ = self.close.changed() => return,
            };
            let next = match outcome {
                Err(_) => self.failed("poll timed out".into()).await,
                Ok(Err(f)) => self.failed(f.to_string()).await,
                Ok(Ok((c, Ok(reply)))) => {
                    conn = Some(c);
                    self.backoff.reset();
                    self.apply(reply).await
                }
                Ok(Ok((c, Err(PollFailure::Refused(e))))) => {
                    if e.status < 500 && e.status != 429 {
                        // The server closes after an error; a connection kept would be dead.
                        drop(c);
                    }
                    self.refused(e).await
                }
                Ok(Ok((_, Err(f)))) => self.failed(f.to_string()).await,
            };
            match next {
                Next::Again => {}
                Next::Stop => return,
                Next::Wait(d) => {
                    tokio::select! {
                        () = tokio::time::sleep(d) => {}
                        _ = self.close.changed() => return,
                    }
                }
            }
        }
    }

    async fn emit(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    async fn apply(&mut self, reply: PollReply) -> Next {
        for &ns in &reply.reset {
            if lock(&self.cursors).remove(ns) {
                self.emit(Event::Reset { ns }).await;
            }
        }
        for &(ns, sjid) in &reply.changes {
            let advanced = {
                let mut c = lock(&self.cursors);
                let before = c.get(ns);
                before.is_some_and(|b| sjid > b) && c.changed(ns, sjid)
            };
            if advanced {
                self.emit(Event::Changed { ns, sjid }).await;
            }
        }
        match reply.backoff_s {
            Some(s) => Next::Wait(Duration::from_secs(s) + self.backoff.jitter()),
            None => Next::Again,
        }
    }

    async fn failed(&mut self, reason: String) -> Next {
        self.emit(Event::Disconnected {
            reason,
            close_code: None,
        })
        .await;
        Next::Wait(self.backoff.next_delay())
    }

    async fn refused(&mut self, e: PollError) -> Next {
        match (e.status, ErrorName::from_wire(&e.error)) {
            (403, _) => {
                for &ns in &e.namespaces {
                    if lock(&self.cursors).remove(ns) {
                        self.emit(Event::Denied {
                            code: Code::FORBIDDEN_NAMESPACE,
                            ns,
                        })
                        .await;
                    }
                }
                if e.namespaces.is_empty() {
                    return self.fatal(Code::FORBIDDEN_NAMESPACE, e.message).await;
                }
                Next::Again
            }
            // A fresh token comes from the token source on the next poll.
            (401, Some(ErrorName::TokenExpired)) | (429 | 503, _) => {
                let after = Duration::from_secs(e.retry_after.unwrap_or(0));
                let reason = format!("HTTP {} {}: {}", e.status, e.error, e.message);
                self.emit(Event::Disconnected {
                    reason,
                    close_code: None,
                })
                .await;
                Next::Wait(after.max(self.backoff.next_delay()) + self.backoff.jitter())
            }
            (401, _) => self.fatal(Code::UNAUTHORIZED, e.message).await,
            (s, _) if s >= 500 => self.failed(format!("HTTP {s}: {}", e.message)).await,
            _ => {
                let message = format!("HTTP {} {}: {}", e.status, e.error, e.message);
                self.fatal(Code::BAD_FRAME, message).await
            }
        }
    }

    async fn fatal(&mut self, code: Code, message: String) -> Next {
        self.emit(Event::Fatal { code, message }).await;
        Next::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/v1/longpoll").unwrap(),
            ("127.0.0.1:8080".into(), "/v1/longpoll".into())
        );
        assert!(split_url("https://x/v1/longpoll").is_err());
    }
}
