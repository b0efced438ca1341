//! One connection's session, as a state machine free of I/O (the way quinn-proto and rustls
//! keep their protocol logic): the transport hands it decoded client frames, look-up results and
//! ticks, each with `now` passed in, and it answers through [`Output`] (frames to send, a close
//! with its code, interest to release upstream). Every rule of PROTOCOL.md "Rules" that is not
//! about bytes lives here once: the HELLO/auth phase, SUBSCRIBE with its cursor checks and the
//! ordering barrier of a look-up, RESET, DENIED, limits, heartbeat, handshake timeout, token
//! expiry, GOAWAY and drain, slow consumer, close with grace, and the long-poll's life.
//!
//! ```text
//!  Connecting ──upgraded──► AwaitHello ──HELLO ok──► Open ──close (code)──► Closing ──► (ended)
//!      │  (HTTP head;            │ timeout,              │ heartbeat, token expiry,     grace
//!      │   long-poll request)    │ bad HELLO             │ drain, slow consumer,        passed /
//!      └──── poll ──► Open(poll) ┘                       │ bad frame                    answered
//! ```
//!
//! The transports (WebSocket, TLS, QUIC, long-poll) are adapters: they deframe, implement
//! [`Output`] in their framing, and wait for readiness.

mod auth;
mod poll;
#[cfg(test)]
mod tests;

use auth::Authorized;
pub use auth::token_deadline;
pub use poll::{PollRefused, PollStarted};

use crate::interest::Interest;
use crate::latest::LatestTable;
use crate::subscribe::{self, Registered, SubscribeOutcome, Subscriptions};
use crate::time::{CLOSE_GRACE_TICKS, duration_ticks};
use crate::token::TokenCheck;
use herald_proto::{ClientFrame, Code, NsGrant, PROTOCOL_VERSION, ServerFrame};
use rand::Rng;
use std::collections::HashMap;
use std::time::Duration;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the transport is ready for frames (reading the HTTP request; between two polls of
    /// a kept-alive long-poll connection). The handshake deadline runs.
    Connecting,
    /// Upgraded; waiting for HELLO. The handshake deadline runs.
    AwaitHello,
    /// WELCOME sent (or a poll accepted): subscriptions live.
    Open,
    /// A close is under way: nothing more is processed; the transport drops the connection when
    /// the client answers, when it has flushed, or when the grace deadline passes.
    Closing,
}

/// How the session talks to its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Frames both ways (WebSocket, TLS, QUIC).
    Framed,
    /// HTTP long-poll: one request, one JSON reply; no frames, no heartbeat, no token expiry
    /// (the token comes with every poll).
    Poll,
}

/// The session rules' settings.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Announced in WELCOME; silence for 2.5× this closes the connection.
    pub heartbeat: Duration,
    /// Heartbeats by client class (the token's `cls` claim); class id = index + 1, 0 = default.
    pub heartbeat_classes: Vec<(String, Duration)>,
    /// From accept to HELLO (and between two polls of a kept-alive long-poll connection).
    pub handshake_timeout: Duration,
    /// Live subscriptions per connection (cursors per poll).
    pub max_subscriptions: u64,
    /// Seconds a token is honoured past its `exp` (clock skew; `token::TOKEN_LEEWAY_S` by default).
    pub token_leeway_s: u64,
}

impl Limits {
    /// The class id of a token's `cls` (0: none, or not configured).
    #[must_use]
    pub fn class_of(&self, cls: Option<&str>) -> u8 {
        cls.and_then(|c| {
            self.heartbeat_classes
                .iter()
                .position(|(name, _)| name == c)
        })
        .map_or(0, |i| (i + 1) as u8)
    }

    /// The heartbeat of class `id`.
    #[must_use]
    pub fn heartbeat_of(&self, id: u8) -> Duration {
        match id {
            0 => self.heartbeat,
            i => self
                .heartbeat_classes
                .get(usize::from(i) - 1)
                .map_or(self.heartbeat, |c| c.1),
        }
    }

    /// Ticks of silence allowed per class (index = class id): 2.5 heartbeats. Computed once per
    /// sweep, not per connection.
    #[must_use]
    pub fn silence_ticks(&self) -> Vec<u32> {
        (0..=self.heartbeat_classes.len())
            .map(|c| duration_ticks(self.heartbeat_of(c as u8).mul_f64(2.5)))
            .collect()
    }
}

/// What a session acts with: the tables it touches and the time, passed in for every event.
pub struct Env<'a> {
    /// The connection's id in `interest`.
    pub conn: u32,
    /// Now, in ticks.
    pub now: u32,
    /// Now, in unix seconds (token `exp` is in these).
    pub unix_now: u64,
    /// The worker's interest table.
    pub interest: &'a mut Interest,
    /// Token verification.
    pub tokens: &'a dyn TokenCheck,
    /// Settings.
    pub limits: &'a Limits,
    /// The latest table when a look-up needs no waiting (standalone); `None` in distributed mode,
    /// where a SUBSCRIBE waits for [`Session::on_lookup`].
    pub latest: Option<&'a LatestTable>,
}

/// What the session asks of its transport.
pub trait Output {
    /// Queues a frame (framed mode only).
    fn send(&mut self, frame: &ServerFrame);
    /// Ends the session after what was queued, with `code` (0: the client ended it). WebSocket
    /// sends a close 4000 + code; with `linger` it waits for the client's answer (up to the grace
    /// deadline), without it the connection ends once flushed. QUIC and long-poll end once flushed.
    fn close(&mut self, code: Code, linger: bool);
    /// Ends the connection now, sending nothing more.
    fn abort(&mut self);
    /// These namespaces are no longer wanted by this connection (upstream interest may go).
    fn released(&mut self, ns: &[u64]);
}

/// What a tick did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing was due.
    Idle,
    /// The session closed or ended: the transport must be woken.
    Acted,
    /// A waiting poll must be answered now (its deadline, or draining): the transport answers
    /// and calls [`Session::poll_answered`].
    AnswerPoll,
}

/// One connection's protocol state: 64 bytes while idle.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    mode: Mode,
    /// Client class (from the token), which sets its heartbeat.
    class: u8,
    /// The code of the close the server started (0: none, or the client's).
    close_code: u16,
    /// Tick of the last bytes received.
    last_rx: u32,
    /// The next deadline, by phase: the handshake's (Connecting, AwaitHello); when the token's
    /// `exp` plus leeway passes (framed Open; `u32::MAX`: never); the poll's (Open, Poll); the
    /// grace deadline (Closing). One field for all four keeps an idle session at 64 bytes.
    deadline: u32,
    /// Random id, sent in WELCOME and written in logs.
    id: u64,
    /// What the token grants and whose it is (Open only).
    grant: Option<Box<Authorized>>,
    subs: Subscriptions,
    /// A SUBSCRIBE (or poll) waiting for its look-up: while set, no further frame is processed,
    /// which keeps the per-connection ordering rule.
    pending: Option<Box<Registered>>,
}

/// A uniformly random delay in `[lo, hi]` milliseconds, for `reconnect_after_ms`.
#[must_use]
pub fn jitter_ms(lo: u64, hi: u64) -> u64 {
    rand::rng().random_range(lo..=hi)
}

/// A GOAWAY frame.
#[must_use]
pub fn goaway(code: Code, reconnect_after_ms: u64) -> ServerFrame {
    ServerFrame::Goaway {
        code,
        reconnect_after_ms,
    }
}

impl Session {
    /// A new session in `Connecting`, whose handshake must finish within the limit from `now`.
    #[must_use]
    pub fn new(mode: Mode, now: u32, limits: &Limits, id: u64) -> Self {
        Session {
            phase: Phase::Connecting,
            mode,
            class: 0,
            close_code: 0,
            last_rx: now,
            deadline: handshake_deadline(now, limits),
            id,
            grant: None,
            subs: Subscriptions::default(),
            pending: None,
        }
    }

    /// The phase.
    #[must_use]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The mode.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Open and framed, or a poll waiting: the fan-out may deliver.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// The session id (WELCOME, logs).
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The code of the close the server started (0: none).
    #[must_use]
    pub fn close_code(&self) -> u16 {
        self.close_code
    }

    /// Live subscriptions.
    #[must_use]
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// A look-up is outstanding: the transport must not feed further frames until
    /// [`Session::on_lookup`].
    #[must_use]
    pub fn awaiting_lookup(&self) -> bool {
        self.pending.is_some()
    }

    /// The registered half of a SUBSCRIBE (or poll) whose look-up the transport must run.
    pub fn take_lookup(&mut self) -> Option<Box<Registered>> {
        self.pending.take()
    }

    /// The transport is ready for frames (WebSocket upgraded, QUIC stream open).
    pub fn upgraded(&mut self) {
        if self.phase == Phase::Connecting {
            self.phase = Phase::AwaitHello;
            self.mode = Mode::Framed;
        }
    }

    /// Bytes arrived (the heartbeat counts any).
    pub fn received(&mut self, now: u32) {
        self.last_rx = now;
    }

    /// Applies one client frame.
    pub fn on_frame(&mut self, env: &mut Env<'_>, out: &mut dyn Output, frame: ClientFrame) {
        match (self.phase, frame) {
            (Phase::AwaitHello, ClientFrame::Hello { version, token }) => {
                self.hello(env, out, version, &token);
            }
            (Phase::AwaitHello, _) => {
                self.protocol_error(env.now, out, "the first frame must be HELLO")
            }
            (Phase::Open, ClientFrame::Hello { .. }) => {
                self.protocol_error(env.now, out, "HELLO was already received");
            }
            (Phase::Open, ClientFrame::Subscribe(pairs)) => {
                let Some(grant) = self.grant.as_deref().map(|a| &a.grant) else {
                    return;
                };
                let max = env.limits.max_subscriptions;
                let reg =
                    subscribe::register(&mut self.subs, env.conn, &pairs, grant, max, env.interest);
                match env.latest {
                    Some(latest) => {
                        let outcome = subscribe::complete(
                            &mut self.subs,
                            env.conn,
                            reg,
                            env.interest,
                            |ns| latest.get(ns),
                        );
                        self.deliver(out, &outcome);
                    }
                    None => self.pending = Some(Box::new(reg)),
                }
            }
            (Phase::Open, ClientFrame::Unsubscribe(ns)) => {
                let dropped = subscribe::unsubscribe(&mut self.subs, env.conn, &ns, env.interest);
                if !dropped.is_empty() {
                    out.released(&dropped);
                }
            }
            (Phase::Open, ClientFrame::Ping(nonce)) => out.send(&ServerFrame::Pong(nonce)),
            (Phase::Open, ClientFrame::Refresh { token }) => self.refresh(env, out, &token),
            (Phase::Open, ClientFrame::Pong(_)) | (Phase::Connecting | Phase::Closing, _) => {}
        }
    }

    fn hello(&mut self, env: &mut Env<'_>, out: &mut dyn Output, version: u64, token: &str) {
        match subscribe::hello(version, token, env.tokens) {
            Ok(claims) => {
                self.phase = Phase::Open;
                self.deadline =
                    token_deadline(claims.exp, env.limits.token_leeway_s, env.now, env.unix_now);
                self.class = env.limits.class_of(claims.cls.as_deref());
                self.grant = Some(Authorized::of(&claims));
                out.send(&ServerFrame::Welcome {
                    version: PROTOCOL_VERSION,
                    heartbeat_ms: env.limits.heartbeat_of(self.class).as_millis() as u64,
                    max_subscriptions: env.limits.max_subscriptions,
                    session_id: self.id.to_be_bytes().to_vec(),
                });
                metrics::counter!("herald_sessions_opened_total").increment(1);
                tracing::debug!(session = %format_args!("{:016x}", self.id), sub = %claims.sub, "session open");
            }
            Err((error, refused)) => {
                let reason = refused.as_ref().map_or("unsupported_version", |e| e.label);
                metrics::counter!("herald_handshake_failures_total", "reason" => reason)
                    .increment(1);
                tracing::debug!(session = %format_args!("{:016x}", self.id), reason, "HELLO refused");
                let code = match &error {
                    ServerFrame::Error { code, .. } => *code,
                    _ => Code::UNAUTHORIZED,
                };
                self.close(env.now, out, Some(error), code, true);
            }
        }
    }

    /// The look-up of a SUBSCRIBE (or poll) that waited finished: `latest` holds the latest SJID
    /// of each namespace (absent: 0), `None` if it failed (the client is sent elsewhere:
    /// GOAWAY(overloaded), or for a poll 503). Returns the outcome for a poll (the transport
    /// answers it with [`Session::poll_outcome`]); framed sessions get their frames here.
    pub fn on_lookup(
        &mut self,
        env: &mut Env<'_>,
        out: &mut dyn Output,
        reg: Registered,
        latest: Option<&HashMap<u64, u64>>,
    ) -> Option<SubscribeOutcome> {
        let Some(latest) = latest else {
            metrics::counter!("herald_lookup_failures_total").increment(1);
            if self.mode == Mode::Poll {
                // The registered interest goes; the transport answers 503.
                self.release_to(env.conn, env.interest, out);
                return None;
            }
            let goaway = goaway(Code::OVERLOADED, jitter_ms(1000, 5000));
            self.close(env.now, out, Some(goaway), Code::OVERLOADED, true);
            return None;
        };
        let outcome = subscribe::complete(&mut self.subs, env.conn, reg, env.interest, |n| {
            latest.get(&n).copied().unwrap_or(0)
        });
        if self.mode == Mode::Poll {
            if !outcome.reset.is_empty() {
                out.released(&outcome.reset);
            }
            return Some(outcome);
        }
        if self.phase == Phase::Open {
            self.deliver(out, &outcome);
        } else if !outcome.reset.is_empty() {
            out.released(&outcome.reset);
        }
        None
    }

    fn deliver(&mut self, out: &mut dyn Output, outcome: &SubscribeOutcome) {
        if !outcome.reset.is_empty() {
            out.released(&outcome.reset);
        }
        for frame in outcome.frames() {
            out.send(&frame);
        }
    }

    /// A frame that does not decode, or breaks the framing: ERROR(`bad_frame`), then close.
    pub fn protocol_error(&mut self, now: u32, out: &mut dyn Output, message: &str) {
        if self.phase == Phase::Closing {
            out.abort();
            return;
        }
        metrics::counter!("herald_protocol_errors_total").increment(1);
        tracing::debug!(session = %format_args!("{:016x}", self.id), message, "bad frame");
        let error = ServerFrame::Error {
            code: Code::BAD_FRAME,
            message: message.to_owned(),
        };
        self.close(now, out, Some(error), Code::BAD_FRAME, true);
    }

    /// The client did not read fast enough (its queue passed the limit): GOAWAY(slow_consumer).
    pub fn slow_consumer(&mut self, now: u32, out: &mut dyn Output) {
        tracing::debug!(session = %format_args!("{:016x}", self.id), "slow consumer");
        let frame = goaway(Code::SLOW_CONSUMER, jitter_ms(1000, 5000));
        self.close(now, out, Some(frame), Code::SLOW_CONSUMER, true);
    }

    /// Starts closing: sends `frame` (ERROR or GOAWAY, or nothing for a timeout), then ends the
    /// session the transport's way ([`Output::close`]); the transport drops the connection by
    /// the grace deadline at the latest. Before the transport is ready (`Connecting`) there is
    /// nothing to say: the connection just ends. Once closing, further closes are ignored.
    pub fn close(
        &mut self,
        now: u32,
        out: &mut dyn Output,
        frame: Option<ServerFrame>,
        code: Code,
        linger: bool,
    ) {
        if self.phase == Phase::Closing {
            return;
        }
        self.close_code = u16::try_from(code.0).unwrap_or(u16::MAX);
        if self.phase == Phase::Connecting {
            self.phase = Phase::Closing;
            out.abort();
            return;
        }
        if let Some(f) = frame {
            out.send(&f);
        }
        out.close(code, linger);
        self.closing(now);
    }

    /// The transport is ending the connection itself (an HTTP refusal, the answer to a client's
    /// WebSocket close): nothing more is processed, and it is dropped by the grace deadline.
    pub fn closing(&mut self, now: u32) {
        self.phase = Phase::Closing;
        self.deadline = now.saturating_add(CLOSE_GRACE_TICKS);
    }

    /// The coarse timer: handshake and heartbeat timeouts, token expiry, the poll deadline, the
    /// grace deadline. `silence` is [`Limits::silence_ticks`].
    pub fn on_tick(&mut self, now: u32, silence: &[u32], out: &mut dyn Output) -> Tick {
        match (self.phase, self.mode) {
            (Phase::Open, Mode::Poll) => {
                if self.pending.is_none() && now >= self.deadline {
                    Tick::AnswerPoll
                } else {
                    Tick::Idle
                }
            }
            (Phase::Connecting | Phase::AwaitHello, _) if now >= self.deadline => {
                self.close(now, out, None, Code::TIMEOUT, false);
                Tick::Acted
            }
            // Strictly more: `last_rx` is floored like `now` (C8: never early).
            (Phase::Open, Mode::Framed)
                if now.saturating_sub(self.last_rx)
                    > silence.get(usize::from(self.class)).copied().unwrap_or(0) =>
            {
                self.close(now, out, None, Code::TIMEOUT, false);
                Tick::Acted
            }
            (Phase::Open, Mode::Framed) if now >= self.deadline => {
                let frame = goaway(Code::TOKEN_EXPIRED, jitter_ms(0, 1000));
                self.close(now, out, Some(frame), Code::TOKEN_EXPIRED, true);
                Tick::Acted
            }
            (Phase::Closing, _) if now >= self.deadline => {
                out.abort();
                Tick::Acted
            }
            _ => Tick::Idle,
        }
    }

    /// Draining: tells this session to go (GOAWAY(draining), with a short jittered delay: the
    /// caller already spreads sessions over the drain period). A waiting poll is answered
    /// instead, and a kept-alive long-poll connection between polls just ends. Returns what was
    /// done, or `Idle` if the session was not one to tell.
    pub fn drain(&mut self, now: u32, out: &mut dyn Output) -> Tick {
        match (self.phase, self.mode) {
            (Phase::Open, Mode::Poll) if self.pending.is_none() => Tick::AnswerPoll,
            (Phase::Connecting, Mode::Poll) => {
                self.close(now, out, None, Code::DRAINING, false);
                Tick::Acted
            }
            (Phase::AwaitHello | Phase::Open, Mode::Framed) => {
                let frame = goaway(Code::DRAINING, jitter_ms(100, 1000));
                self.close(now, out, Some(frame), Code::DRAINING, true);
                Tick::Acted
            }
            _ => Tick::Idle,
        }
    }

    /// Drops every subscription from `interest` (the connection is gone); returns them.
    pub fn release(&mut self, conn: u32, interest: &mut Interest) -> Vec<u64> {
        self.pending = None;
        self.subs.release(conn, interest)
    }

    fn release_to(&mut self, conn: u32, interest: &mut Interest, out: &mut dyn Output) {
        let dropped = self.subs.release(conn, interest);
        if !dropped.is_empty() {
            out.released(&dropped);
        }
    }

    /// Marks the session open without a handshake, with everything granted (tests of the
    /// transports' fan-out paths).
    #[doc(hidden)]
    pub fn open_unchecked(&mut self) {
        self.phase = Phase::Open;
        self.mode = Mode::Framed;
        self.deadline = u32::MAX;
        self.grant = Some(Box::new(Authorized {
            grant: NsGrant::All,
            sub: 0,
            iat: 0,
        }));
    }
}

/// The handshake deadline of a connection starting now. Ticks are floored, so `now` may be up to
/// one tick behind: one tick more keeps the timeout from firing early (C8: late by up to 1 s,
/// never early).
fn handshake_deadline(now: u32, limits: &Limits) -> u32 {
    now.saturating_add(duration_ticks(limits.handshake_timeout) + 1)
}
