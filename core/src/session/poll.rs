//! The long-poll side of a session (PROTOCOL.md C16): a request checked and registered like a
//! SUBSCRIBE, answered at once or left waiting for the fan-out or its deadline, then released.

use super::{Authorized, Env, Mode, Output, Phase, Session, handshake_deadline};
use crate::subscribe::{self, SubscribeOutcome};
use crate::token::Refused;
use herald_proto::Code;
use herald_proto::longpoll::ErrorName;

/// A long-poll request refused: the HTTP status, the error name's code and message, and the
/// namespaces concerned (for 403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRefused {
    /// HTTP status.
    pub status: u16,
    /// The error's name.
    pub error: ErrorName,
    /// For the client.
    pub message: String,
    /// The namespaces the token does not grant (403 only).
    pub namespaces: Vec<u64>,
}

/// What a poll request led to.
#[derive(Debug, PartialEq, Eq)]
pub enum PollStarted {
    /// Cursors behind or ahead: answer at once with these.
    Answer {
        /// `(ns, latest)` for cursors behind.
        changed: Vec<(u64, u64)>,
        /// Cursors ahead of the latest SJID.
        reset: Vec<u64>,
    },
    /// Nothing yet: the poll waits for the fan-out or its deadline.
    Wait,
    /// The look-up needs the network: the transport takes it with [`Session::take_lookup`].
    Lookup,
}

impl Session {
    /// A long-poll request (PROTOCOL.md "Long-poll"): checks the token and the cursors, registers
    /// interest like a SUBSCRIBE, and sets the poll's deadline: `wait` ticks, plus `jitter`.
    ///
    /// # Errors
    /// [`PollRefused`] with the HTTP answer (nothing is registered then).
    pub fn poll(
        &mut self,
        env: &mut Env<'_>,
        token: &str,
        cursors: &[(u64, u64)],
        wait: u32,
        jitter: u32,
    ) -> Result<PollStarted, PollRefused> {
        let claims = env.tokens.check(token).map_err(|e: Refused| {
            metrics::counter!("herald_handshake_failures_total", "reason" => e.label).increment(1);
            PollRefused {
                status: 401,
                error: if e.is_expiry() {
                    ErrorName::TokenExpired
                } else {
                    ErrorName::Unauthorized
                },
                message: e.message,
                namespaces: Vec::new(),
            }
        })?;
        let mut forbidden: Vec<u64> = cursors
            .iter()
            .map(|&(ns, _)| ns)
            .filter(|&ns| !claims.ns.allows(ns))
            .collect();
        if !forbidden.is_empty() {
            forbidden.sort_unstable();
            forbidden.dedup();
            return Err(PollRefused {
                status: 403,
                error: ErrorName::ForbiddenNamespace,
                message: "the token does not grant these namespaces".to_owned(),
                namespaces: forbidden,
            });
        }
        let max = env.limits.max_subscriptions;
        if cursors.len() as u64 > max {
            return Err(PollRefused {
                status: 400,
                error: ErrorName::BadRequest,
                message: format!("at most {max} cursors per poll"),
                namespaces: Vec::new(),
            });
        }
        self.mode = Mode::Poll;
        self.phase = Phase::Open;
        self.deadline = env.now.saturating_add(wait + jitter + 1);
        self.grant = Some(Authorized::of(&claims));
        let reg = subscribe::register(
            &mut self.subs,
            env.conn,
            cursors,
            &claims.ns,
            max,
            env.interest,
        );
        match env.latest {
            Some(latest) => {
                let outcome =
                    subscribe::complete(&mut self.subs, env.conn, reg, env.interest, |ns| {
                        latest.get(ns)
                    });
                Ok(Self::poll_outcome(outcome))
            }
            None => {
                self.pending = Some(Box::new(reg));
                Ok(PollStarted::Lookup)
            }
        }
    }

    /// What a poll's completed SUBSCRIBE means for it: an answer now, or a wait.
    #[must_use]
    pub fn poll_outcome(outcome: SubscribeOutcome) -> PollStarted {
        if outcome.reset.is_empty() && outcome.changed.is_empty() {
            PollStarted::Wait
        } else {
            PollStarted::Answer {
                changed: outcome.changed,
                reset: outcome.reset,
            }
        }
    }

    /// The transport answered the poll: its interest goes, and the connection waits for the
    /// next request within the handshake timeout (`keep_alive`) or ends once flushed.
    pub fn poll_answered(&mut self, env: &mut Env<'_>, out: &mut dyn Output, keep_alive: bool) {
        self.release_to(env.conn, env.interest, out);
        self.grant = None;
        if keep_alive {
            self.phase = Phase::Connecting;
            self.deadline = handshake_deadline(env.now, env.limits);
        } else {
            out.close(Code(0), false);
            self.closing(env.now);
        }
    }
}
