//! [`Backoff`]: exponential backoff with full jitter, sans clock (it hands out durations; the
//! caller sleeps).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A session that got WELCOME and lived this long (or the backoff's `max`, if shorter) proves the
/// server healthy and resets the backoff ([`Backoff::session_ended`]).
pub const STABLE_SESSION: Duration = Duration::from_secs(10);

/// Reconnect delays: attempt `n` (from 0) sleeps uniformly in `[0, min(max, initial * 2^n)]`
/// ("full jitter"), so 15k clients cut at once spread their reconnects instead of stampeding.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Cap of the first attempt.
    initial: Duration,
    /// Largest cap.
    max: Duration,
    /// Attempts since the last [`reset`](Backoff::reset).
    attempt: u32,
    /// Jitter source; seeded in tests for reproducible delays.
    rng: StdRng,
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`, with jitter seeded by `seed` (or by the
    /// OS when `None`).
    #[must_use]
    pub fn new(initial: Duration, max: Duration, seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng,
        }
    }

    /// The upper bound of the next delay: `min(max, initial * 2^attempt)`.
    #[must_use]
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |c| c.min(self.max))
    }

    /// The next delay, uniform in `[0, cap()]`; counts one attempt.
    pub fn next_delay(&mut self) -> Duration {
        let cap = u64::try_from(self.cap().as_nanos()).unwrap_or(u64::MAX);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_nanos(self.rng.random_range(0..=cap))
    }

    /// A delay in `[0, initial]` regardless of the attempt count, to spread clients told to come
    /// back at the same moment (HTTP 503 `Retry-After`).
    pub fn jitter(&mut self) -> Duration {
        let cap = u64::try_from(self.initial.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=cap))
    }

    /// Attempts counted since the last reset.
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts over from `initial`, after a session that proved the server healthy.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// After a session that got as far as the server's welcome (or a peer's confirmation) and
    /// then ended after `lived`: a session that lived at least `min(max, 10 s)` proves the server
    /// healthy and resets the backoff (see [`STABLE_SESSION`]).
    pub fn session_ended(&mut self, lived: Duration) {
        if lived >= self.max.min(STABLE_SESSION) {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn cap_doubles_then_saturates() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, Some(1));
        let caps: Vec<_> = (0..7)
            .map(|_| {
                let cap = b.cap();
                let _ = b.next_delay();
                cap
            })
            .collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000, 1000].map(|m| m * MS));
        b.reset();
        assert_eq!(b.cap(), 100 * MS);
        assert_eq!(b.attempt(), 0);
    }

    #[test]
    fn only_a_stable_session_resets_the_backoff() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(30), Some(1));
        let _ = (b.next_delay(), b.next_delay());
        b.session_ended(STABLE_SESSION - MS);
        assert_eq!(b.attempt(), 2);
        b.session_ended(STABLE_SESSION);
        assert_eq!(b.attempt(), 0);
        // A small `max` makes a shorter session stable enough.
        let mut b = Backoff::new(100 * MS, 1000 * MS, Some(1));
        let _ = b.next_delay();
        b.session_ended(1000 * MS);
        assert_eq!(b.attempt(), 0);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(30), Some(1));
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        assert_eq!(b.cap(), Duration::from_secs(30));
    }

    #[test]
    fn full_jitter_stays_within_cap_and_spreads() {
        let mut b = Backoff::new(100 * MS, 100 * MS, Some(7));
        let delays: Vec<_> = (0..1000).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= 100 * MS));
        // Full jitter: both halves of [0, cap] are used.
        assert!(delays.iter().any(|d| *d < 50 * MS));
        assert!(delays.iter().any(|d| *d > 50 * MS));
    }

    #[test]
    fn seeded_backoff_is_deterministic() {
        let run = |seed| {
            let mut b = Backoff::new(100 * MS, Duration::from_secs(30), Some(seed));
            (0..20).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn jitter_is_bounded_by_initial() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(30), Some(3));
        for _ in 0..10 {
            let _ = b.next_delay();
        }
        assert!((0..100).all(|_| b.jitter() <= 100 * MS));
    }
}
