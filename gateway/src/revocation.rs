//! Token revocation (PROTOCOL.md C18): `POST /v1/disconnect` names a `sub` and, optionally, a
//! time; tokens of that `sub` issued before it (or without `iat`) are refused from then on, and
//! the workers' sweeps close the live sessions that hold one with ERROR(`unauthorized`). In
//! distributed mode the request travels over NATS (`herald.revoke`) so every gateway acts on it.
//!
//! Bounded: at most [`MAX_ENTRIES`] subjects, each kept [`KEEP_FOR`] (longer than tokens live),
//! the oldest dropped first.

use herald_core::token::sub_hash;
use herald_proto::Claims;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Subjects remembered at most.
pub const MAX_ENTRIES: usize = 100_000;
/// How long a revocation is remembered: a day, longer than the tokens it refuses should live.
pub const KEEP_FOR_S: u64 = 24 * 3600;
/// The NATS subject revocations travel on in distributed mode.
pub const SUBJECT: &str = "herald.revoke";
/// Longest `sub` accepted.
pub const MAX_SUB: usize = 256;

/// A revocation as `POST /v1/disconnect` and `herald.revoke` carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The token subject.
    pub sub: String,
    /// Tokens issued before this time (unix seconds) are refused; absent: the second after the
    /// gateway received it (every token issued up to then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<u64>,
}

impl Revocation {
    /// Parses and checks a request body.
    ///
    /// # Errors
    /// What is wrong, for a 400.
    pub fn parse(body: &[u8]) -> Result<Revocation, String> {
        let r: Revocation =
            serde_json::from_slice(body).map_err(|e| format!("not a revocation: {e}"))?;
        if r.sub.is_empty() || r.sub.len() > MAX_SUB {
            return Err(format!("`sub` must be 1 to {MAX_SUB} bytes"));
        }
        Ok(r)
    }
}

#[derive(Debug, Default)]
struct Table {
    /// `sub_hash` → (issued before, unix time added).
    by_sub: HashMap<u64, (u64, u64)>,
    /// Insertion order, for eviction.
    order: VecDeque<(u64, u64)>,
}

/// The revoked subjects of this gateway, shared by the verifier, the workers and the admin API.
#[derive(Debug, Default)]
pub struct Revocations {
    table: RwLock<Table>,
    /// Bumped by every revocation: a worker's sweep rescans its sessions when it moves.
    generation: AtomicU64,
}

impl Revocations {
    /// Records a revocation received at `now` (unix seconds); returns its `issued_before`
    /// (by default `now + 1`: `iat` has whole seconds, and every token issued up to now is
    /// covered).
    pub fn add(&self, revocation: &Revocation, now: u64) -> u64 {
        let before = revocation.issued_before.unwrap_or(now + 1);
        let sub = sub_hash(&revocation.sub);
        let mut t = self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(&(old, added)) = t.order.front() {
            if t.order.len() < MAX_ENTRIES && added + KEEP_FOR_S > now {
                break;
            }
            t.order.pop_front();
            if t.by_sub.get(&old).is_some_and(|&(_, a)| a == added) {
                t.by_sub.remove(&old);
            }
        }
        let entry = t.by_sub.entry(sub).or_insert((0, now));
        *entry = (entry.0.max(before), now);
        t.order.push_back((sub, now));
        drop(t);
        self.generation.fetch_add(1, Ordering::Release);
        metrics::counter!("herald_revocations_total").increment(1);
        before
    }

    /// Whether a token with these claims is revoked.
    #[must_use]
    pub fn refuses(&self, claims: &Claims) -> bool {
        if self.generation.load(Ordering::Acquire) == 0 {
            return false;
        }
        let t = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.by_sub
            .get(&sub_hash(&claims.sub))
            .is_some_and(|&(before, _)| claims.iat.is_none_or(|iat| iat < before))
    }

    /// Moves with every revocation.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `sub_hash` → issued before, for a sweep's rescan.
    #[must_use]
    pub fn snapshot(&self) -> HashMap<u64, u64> {
        let t = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.by_sub
            .iter()
            .map(|(&s, &(before, _))| (s, before))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::NsGrant;

    fn claims(sub: &str, iat: Option<u64>) -> Claims {
        Claims {
            sub: sub.into(),
            ns: NsGrant::All,
            exp: 10_000,
            nbf: None,
            iss: None,
            cls: None,
            iat,
        }
    }

    #[test]
    fn refuses_older_tokens_of_the_sub_only() {
        let r = Revocations::default();
        assert!(!r.refuses(&claims("a", None)));
        let revocation = Revocation::parse(br#"{"sub":"a"}"#).unwrap();
        assert_eq!(r.add(&revocation, 1000), 1001);
        assert!(
            r.refuses(&claims("a", Some(1000))),
            "issued in the same second"
        );
        assert!(r.refuses(&claims("a", None)), "no iat: cannot be newer");
        assert!(
            !r.refuses(&claims("a", Some(1001))),
            "a token minted after is fine"
        );
        assert!(!r.refuses(&claims("b", Some(1))));
        // A later revocation with an earlier time keeps the later one.
        r.add(
            &Revocation {
                sub: "a".into(),
                issued_before: Some(10),
            },
            1001,
        );
        assert!(r.refuses(&claims("a", Some(999))));
        assert_eq!(r.generation(), 2);
    }

    #[test]
    fn entries_expire_and_are_bounded() {
        let r = Revocations::default();
        let rev = |sub: &str| Revocation {
            sub: sub.into(),
            issued_before: Some(100),
        };
        r.add(&rev("old"), 0);
        r.add(&rev("new"), KEEP_FOR_S);
        assert!(!r.refuses(&claims("old", None)), "expired");
        assert!(r.refuses(&claims("new", None)));
        for i in 0..MAX_ENTRIES + 10 {
            r.add(&rev(&i.to_string()), KEEP_FOR_S);
        }
        assert!(r.snapshot().len() <= MAX_ENTRIES);
        assert!(!r.refuses(&claims("0", None)), "the oldest went first");
        assert!(r.refuses(&claims(&(MAX_ENTRIES + 9).to_string(), None)));
    }

    #[test]
    fn parse_checks_the_body() {
        assert!(Revocation::parse(br#"{"sub":""}"#).is_err());
        assert!(Revocation::parse(b"[]").is_err());
        assert!(Revocation::parse(&[b'x'; 300]).is_err());
        assert_eq!(
            Revocation::parse(br#"{"sub":"u","issued_before":5,"x":1}"#).unwrap(),
            Revocation {
                sub: "u".into(),
                issued_before: Some(5)
            }
        );
    }
}
