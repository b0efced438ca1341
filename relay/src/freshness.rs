//! Whether a relay's latest table may answer look-ups: written by the journal source, read by
//! the responder.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether the relay's table may answer look-ups (`herald.latest.<p>`): it holds everything the
/// journal held when the journal consumer was last seen caught up, and the NATS connection has
/// not been lost since (what was published while it was away may be missing until the consumer
/// catches up again). A gateway acts on a look-up's answer (a cursor above it is RESET), so a
/// stale answer would make it reset clients that saw newer changes; a relay that is not current
/// answers with no entries instead, and the gateway asks again (another relay, or this one
/// later). Shared by the journal source, which marks it, and the responder, which reads it.
#[derive(Debug, Clone)]
pub struct Freshness {
    /// The connection count at the moment the consumer was last seen caught up (`u64::MAX`:
    /// not since it was last restarted).
    caught_up_at: Arc<AtomicU64>,
    /// The relay client's counters (`connects` counts every reconnect).
    statistics: Arc<async_nats::Statistics>,
}

impl Freshness {
    /// Not current until [`Freshness::caught_up`].
    #[must_use]
    pub fn new(statistics: Arc<async_nats::Statistics>) -> Self {
        Freshness {
            caught_up_at: Arc::new(AtomicU64::new(u64::MAX)),
            statistics,
        }
    }

    fn connects(&self) -> u64 {
        self.statistics.connects.load(Ordering::Acquire)
    }

    /// The consumer has applied everything the stream held a moment ago.
    pub fn caught_up(&self) {
        self.caught_up_at.store(self.connects(), Ordering::Release);
    }

    /// The consumer starts over (or stalled): not current until it catches up.
    pub fn behind(&self) {
        self.caught_up_at.store(u64::MAX, Ordering::Release);
    }

    /// True while look-ups may be answered from the table.
    #[must_use]
    pub fn is_current(&self) -> bool {
        self.caught_up_at.load(Ordering::Acquire) == self.connects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_makes_the_table_stale_until_caught_up_again() {
        let statistics = Arc::new(async_nats::Statistics::default());
        statistics.connects.store(1, Ordering::Release);
        let fresh = Freshness::new(statistics.clone());
        assert!(!fresh.is_current(), "current before the first catch-up");
        fresh.caught_up();
        assert!(fresh.is_current());
        statistics.connects.store(2, Ordering::Release);
        assert!(!fresh.is_current(), "still current after a reconnect");
        fresh.caught_up();
        assert!(fresh.is_current());
        fresh.behind();
        assert!(
            !fresh.is_current(),
            "still current after the consumer restarted"
        );
    }
}
