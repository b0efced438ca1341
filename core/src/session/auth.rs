//! A session's token: what it grants and whose it is, its expiry, in-band refresh (REFRESH,
//! PROTOCOL.md C17) and revocation (C18).

use super::{Env, Mode, Output, Phase, Session};
use crate::subscribe;
use crate::time::duration_ticks;
use crate::token::sub_hash;
use herald_proto::{Claims, Code, NsGrant, ServerFrame};
use std::collections::HashMap;
use std::time::Duration;

/// What the token of an open session grants, and whose it is. Boxed in the session: only open
/// sessions carry it.
#[derive(Debug)]
pub(super) struct Authorized {
    /// The namespaces it grants.
    pub(super) grant: NsGrant,
    /// [`sub_hash`] of its `sub`: a refresh must keep it; a revocation names it.
    pub(super) sub: u64,
    /// Its `iat` in unix seconds (fits until 2106), 0 if it had none. With the grant's 16 bytes
    /// the box is 32 bytes, the allocation size a bare grant took before.
    pub(super) iat: u32,
}

impl Authorized {
    pub(super) fn of(claims: &Claims) -> Box<Self> {
        Box::new(Authorized {
            grant: claims.ns.clone(),
            sub: sub_hash(&claims.sub),
            iat: claims
                .iat
                .map_or(0, |iat| u32::try_from(iat).unwrap_or(u32::MAX)),
        })
    }
}

/// The tick at which a token with `exp` (unix seconds) stops being honoured, `leeway_s` after.
#[must_use]
pub fn token_deadline(exp: u64, leeway_s: u64, now: u32, unix_now: u64) -> u32 {
    let left_s = (exp + leeway_s).saturating_sub(unix_now);
    // Both clocks are floored: one tick more so it never fires before the time.
    now.saturating_add(duration_ticks(Duration::from_secs(left_s)) + 1)
}

impl Session {
    /// REFRESH (PROTOCOL.md C17): a fresh token for this session. Verified like HELLO's and for
    /// the same `sub`; it moves the expiry and applies its grants: subscriptions it no longer
    /// grants end with DENIED(`forbidden_namespace`), the others continue untouched. A bad token,
    /// or another `sub`'s, gets ERROR(`unauthorized`) and the close.
    pub(super) fn refresh(&mut self, env: &mut Env<'_>, out: &mut dyn Output, token: &str) {
        let Some(current) = self.grant.as_deref() else {
            return;
        };
        let claims = match env.tokens.check(token) {
            Ok(claims) if sub_hash(&claims.sub) == current.sub => claims,
            refused => {
                let (label, message) = match refused {
                    Ok(_) => (
                        "other_sub",
                        "the refreshed token is for another sub".to_owned(),
                    ),
                    Err(e) => (e.label, e.message),
                };
                metrics::counter!("herald_token_refreshes_total", "result" => label).increment(1);
                tracing::debug!(session = %format_args!("{:016x}", self.id), reason = label, "REFRESH refused");
                let error = ServerFrame::Error {
                    code: Code::UNAUTHORIZED,
                    message,
                };
                self.close(env.now, out, Some(error), Code::UNAUTHORIZED, true);
                return;
            }
        };
        self.deadline =
            token_deadline(claims.exp, env.limits.token_leeway_s, env.now, env.unix_now);
        let dropped: Vec<u64> = self
            .subs
            .iter()
            .filter(|&ns| !claims.ns.allows(ns))
            .collect();
        if !dropped.is_empty() {
            subscribe::unsubscribe(&mut self.subs, env.conn, &dropped, env.interest);
            out.released(&dropped);
            for frame in ServerFrame::denied_frames(Code::FORBIDDEN_NAMESPACE, &dropped) {
                out.send(&frame);
            }
        }
        self.grant = Some(Authorized::of(&claims));
        metrics::counter!("herald_token_refreshes_total", "result" => "ok").increment(1);
    }

    /// Whether a revocation in `revoked` ([`sub_hash`] → issued before, unix seconds) covers
    /// this session's token.
    #[must_use]
    pub fn is_revoked_in(&self, revoked: &HashMap<u64, u64>) -> bool {
        let Some(a) = self.grant.as_deref() else {
            return false;
        };
        revoked
            .get(&a.sub)
            .is_some_and(|&before| self.is_revoked_by(a.sub, before))
    }

    /// Whether a revocation of `sub` (a [`sub_hash`]) for tokens issued before `issued_before`
    /// (unix seconds; a token without `iat` counts as issued before) covers this session's token.
    #[must_use]
    pub fn is_revoked_by(&self, sub: u64, issued_before: u64) -> bool {
        self.phase == Phase::Open
            && self
                .grant
                .as_deref()
                .is_some_and(|a| a.sub == sub && (a.iat == 0 || u64::from(a.iat) < issued_before))
    }

    /// Its token was revoked: ERROR(`unauthorized`) and the close (a waiting poll just ends; its
    /// next poll is refused with 401).
    pub fn revoke(&mut self, now: u32, out: &mut dyn Output) {
        metrics::counter!("herald_revoked_sessions_total").increment(1);
        let error = ServerFrame::Error {
            code: Code::UNAUTHORIZED,
            message: "the token was revoked".to_owned(),
        };
        let frame = (self.mode == Mode::Framed).then_some(error);
        self.close(now, out, frame, Code::UNAUTHORIZED, true);
    }
}
