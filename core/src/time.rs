//! Coarse time: deadlines are counted in ticks of 100 ms from an origin the caller keeps. The
//! core never reads a clock; callers pass `now` in ticks, so tests run in virtual time.

use std::time::{Duration, Instant};

/// Coarse time unit of deadlines: 100 ms.
pub const TICK: Duration = Duration::from_millis(100);

/// How long a closing connection may take to answer the close: 5 s.
pub const CLOSE_GRACE_TICKS: u32 = 50;

/// Ticks between `epoch` and `at` (0 if `at` is earlier), capped below `u32::MAX`.
#[must_use]
pub fn ticks(epoch: Instant, at: Instant) -> u32 {
    (at.saturating_duration_since(epoch).as_millis() / TICK.as_millis())
        .min(u128::from(u32::MAX - 1)) as u32
}

/// Ticks in `d`, rounded up.
#[must_use]
pub fn duration_ticks(d: Duration) -> u32 {
    d.as_millis()
        .div_ceil(TICK.as_millis())
        .min(u128::from(u32::MAX / 2)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(duration_ticks(Duration::from_millis(1)), 1);
        assert_eq!(duration_ticks(Duration::from_millis(100)), 1);
        assert_eq!(duration_ticks(Duration::from_millis(101)), 2);
        let t0 = Instant::now();
        assert_eq!(ticks(t0, t0 + Duration::from_millis(199)), 1);
        assert_eq!(ticks(t0 + Duration::from_secs(1), t0), 0);
    }
}
