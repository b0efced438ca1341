//! Admission control for new handshakes: a token bucket per worker (its share of the gateway's
//! rate) and one per source address, so a reconnect storm is paced instead of served all at once.
//! Refused upgrades get `503` with `Retry-After` before any WebSocket work.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Most source addresses tracked at once; past it, idle (full) buckets are forgotten.
const MAX_SOURCES: usize = 65_536;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    #[must_use]
    pub fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= burst
    }
}

/// Handshake rates of one worker. A rate of 0 means unlimited.
#[derive(Debug)]
pub struct Admission {
    rate: f64,
    per_source_rate: f64,
    global: Bucket,
    sources: HashMap<IpAddr, Bucket>,
}

impl Admission {
    /// `rate` handshakes a second for this worker, `per_source_rate` for each source address;
    /// each may burst to one second's worth.
    #[must_use]
    pub fn new(rate: f64, per_source_rate: f64, now: Instant) -> Self {
        Admission {
            rate,
            per_source_rate,
            global: Bucket::full(rate, now),
            sources: HashMap::new(),
        }
    }

    /// Whether a new connection from `source` may proceed.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.per_source_rate > 0.0 {
            let (rate, burst) = (self.per_source_rate, self.per_source_rate.max(1.0));
            if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&source) {
                self.sources.retain(|_, b| !b.is_full(rate, burst, now));
            }
            let bucket = self
                .sources
                .entry(source)
                .or_insert_with(|| Bucket::full(burst, now));
            if !bucket.take(rate, burst, now) {
                return false;
            }
        }
        self.rate <= 0.0 || self.global.take(self.rate, self.rate.max(1.0), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn paces_globally_and_per_source() {
        let t0 = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let mut adm = Admission::new(4.0, 2.0, t0);
        assert!(adm.admit(a, t0) && adm.admit(a, t0));
        assert!(!adm.admit(a, t0), "per-source burst spent");
        assert!(adm.admit(b, t0) && adm.admit(b, t0));
        let c: IpAddr = [10, 0, 0, 3].into();
        assert!(!adm.admit(c, t0), "global burst spent");
        let later = t0 + Duration::from_millis(500);
        assert!(adm.admit(a, later), "tokens come back at the rate");
        let mut open = Admission::new(0.0, 0.0, t0);
        assert!((0..10_000).all(|_| open.admit(a, t0)));
    }
}
