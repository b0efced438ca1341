//! The SUBSCRIBE and HELLO rules of a session (PROTOCOL.md "Rules"), free of I/O: given a frame
//! and the tables it touches, decide what to answer. SUBSCRIBE is two halves ("subscribe, then
//! look up"): [`register`] puts the interest in place, [`complete`] compares each cursor with the
//! latest SJID once it is known, so a change racing the look-up is seen by one of the two.

use crate::interest::Interest;
use crate::token::{Refused, TokenCheck};
use herald_proto::{Claims, Code, NsGrant, PROTOCOL_VERSION, ServerFrame};

/// What a SUBSCRIBE produced, in the order it is sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SubscribeOutcome {
    /// Refused: the token does not grant them.
    pub forbidden: Vec<u64>,
    /// Refused: over `max_subscriptions`.
    pub too_many: Vec<u64>,
    /// Cursor ahead of the latest SJID: subscription ended, client must resync.
    pub reset: Vec<u64>,
    /// Cursor behind: `(ns, latest)`.
    pub changed: Vec<(u64, u64)>,
}

impl SubscribeOutcome {
    /// The frames to send, split to fit the frame limit.
    pub fn frames(&self) -> impl Iterator<Item = ServerFrame> + '_ {
        ServerFrame::denied_frames(Code::FORBIDDEN_NAMESPACE, &self.forbidden)
            .chain(ServerFrame::denied_frames(
                Code::TOO_MANY_SUBSCRIPTIONS,
                &self.too_many,
            ))
            .chain(ServerFrame::reset_frames(&self.reset))
            .chain(ServerFrame::changed_frames(&self.changed))
    }
}

/// A connection's live subscriptions, sorted (binary search, no per-entry allocation).
#[derive(Debug, Default)]
pub struct Subscriptions {
    ns: Vec<u64>,
}

impl Subscriptions {
    /// Live subscription count (what `max_subscriptions` limits).
    #[must_use]
    pub fn len(&self) -> usize {
        self.ns.len()
    }

    /// True when there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ns.is_empty()
    }

    /// The subscribed namespaces, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ns.iter().copied()
    }

    fn contains(&self, ns: u64) -> bool {
        self.ns.binary_search(&ns).is_ok()
    }

    fn insert(&mut self, ns: u64) {
        if let Err(i) = self.ns.binary_search(&ns) {
            self.ns.insert(i, ns);
        }
    }

    fn remove(&mut self, ns: u64) -> bool {
        match self.ns.binary_search(&ns) {
            Ok(i) => {
                self.ns.remove(i);
                if self.ns.is_empty() {
                    self.ns = Vec::new();
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Drops every subscription from `interest` (the connection is closing); returns them.
    pub fn release(&mut self, conn: u32, interest: &mut Interest) -> Vec<u64> {
        for &ns in &self.ns {
            interest.remove(ns, conn);
        }
        std::mem::take(&mut self.ns)
    }
}

/// Checks a HELLO: the version, then the token. On refusal, the ERROR to send (then close).
///
/// # Errors
/// The ERROR frame, and the token refusal when it was the token (not the version).
pub fn hello(
    version: u64,
    token: &str,
    tokens: &dyn TokenCheck,
) -> Result<Claims, (ServerFrame, Option<Refused>)> {
    if version != PROTOCOL_VERSION {
        return Err((
            ServerFrame::Error {
                code: Code::UNSUPPORTED_VERSION,
                message: format!("this server speaks version {PROTOCOL_VERSION}"),
            },
            None,
        ));
    }
    tokens.check(token).map_err(|e| {
        let frame = ServerFrame::Error {
            code: Code::UNAUTHORIZED,
            message: e.message.clone(),
        };
        (frame, Some(e))
    })
}

/// The first half of a SUBSCRIBE: checks and interest registration, before any look-up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Registered {
    /// Refused: the token does not grant them.
    pub forbidden: Vec<u64>,
    /// Refused: over `max_subscriptions`.
    pub too_many: Vec<u64>,
    /// `(ns, cursor)` now registered, in frame order; their latest SJIDs are needed next.
    pub accepted: Vec<(u64, u64)>,
    /// The accepted namespaces this connection did not hold before (new upstream interest).
    pub added: Vec<u64>,
}

impl Registered {
    /// Namespaces whose latest SJID [`complete`] needs.
    pub fn namespaces(&self) -> impl Iterator<Item = u64> + '_ {
        self.accepted.iter().map(|&(ns, _)| ns)
    }
}

/// Registers a SUBSCRIBE's interest (the "subscribe" of "subscribe, then look up": a change racing
/// with the look-up that follows is seen by one of the two paths).
pub fn register(
    subs: &mut Subscriptions,
    conn: u32,
    pairs: &[(u64, u64)],
    grant: &NsGrant,
    max_subscriptions: u64,
    interest: &mut Interest,
) -> Registered {
    let mut reg = Registered {
        accepted: Vec::with_capacity(pairs.len()),
        ..Registered::default()
    };
    for (i, &(ns, _)) in pairs.iter().enumerate() {
        // A namespace repeated in one frame counts once, at its first position, with its last cursor.
        if pairs[..i].iter().any(|&(n, _)| n == ns) {
            continue;
        }
        let cursor = pairs[i..]
            .iter()
            .rev()
            .find(|&&(n, _)| n == ns)
            .map_or(0, |&(_, c)| c);
        if !grant.allows(ns) {
            reg.forbidden.push(ns);
        } else if subs.contains(ns) || (subs.len() as u64) < max_subscriptions {
            if !subs.contains(ns) {
                subs.insert(ns);
                reg.added.push(ns);
            }
            // Resubscribing forgets what was sent: the new cursor is all the client knows.
            interest.set(ns, conn, cursor);
            reg.accepted.push((ns, cursor));
        } else {
            reg.too_many.push(ns);
        }
    }
    reg
}

/// The second half: compares each cursor with the latest SJID. A cursor ahead ends its
/// subscription (RESET, listed in the outcome so upstream interest can be dropped too); one behind
/// gets CHANGED unless the fan-out already told the connection as much.
pub fn complete(
    subs: &mut Subscriptions,
    conn: u32,
    reg: Registered,
    interest: &mut Interest,
    latest: impl Fn(u64) -> u64,
) -> SubscribeOutcome {
    let mut out = SubscribeOutcome {
        forbidden: reg.forbidden,
        too_many: reg.too_many,
        ..SubscribeOutcome::default()
    };
    for (ns, cursor) in reg.accepted {
        let latest = latest(ns);
        if cursor > latest {
            subs.remove(ns);
            interest.remove(ns, conn);
            out.reset.push(ns);
        } else if interest.raise(ns, conn, latest) {
            out.changed.push((ns, latest));
        }
    }
    out
}

/// A whole SUBSCRIBE when the latest table is at hand (standalone mode, tests).
pub fn subscribe(
    subs: &mut Subscriptions,
    conn: u32,
    pairs: &[(u64, u64)],
    grant: &NsGrant,
    max_subscriptions: u64,
    interest: &mut Interest,
    latest: impl Fn(u64) -> u64,
) -> SubscribeOutcome {
    let reg = register(subs, conn, pairs, grant, max_subscriptions, interest);
    complete(subs, conn, reg, interest, latest)
}

/// Applies an UNSUBSCRIBE; namespaces not subscribed are ignored. Returns the ones dropped.
pub fn unsubscribe(
    subs: &mut Subscriptions,
    conn: u32,
    ns: &[u64],
    interest: &mut Interest,
) -> Vec<u64> {
    let mut dropped = Vec::new();
    for &n in ns {
        if subs.remove(n) {
            interest.remove(n, conn);
            dropped.push(n);
        }
    }
    dropped
}

#[cfg(test)]
mod tests;
