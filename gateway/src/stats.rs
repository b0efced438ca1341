//! Counters of the hot paths. A worker counts in plain cells (no atomics, no registry lookup per
//! delivery) and its sweep adds the deltas to the Prometheus registry twice a second.

use std::cell::Cell;

/// A counter owned by one worker thread.
#[derive(Debug, Default)]
pub struct LocalCounter {
    pending: Cell<u64>,
}

impl LocalCounter {
    /// Counts `n` more.
    pub fn add(&self, n: u64) {
        self.pending.set(self.pending.get() + n);
    }

    /// Takes what was counted since the last call.
    pub fn take(&self) -> u64 {
        self.pending.replace(0)
    }
}

/// Hot-path counters of one worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// CHANGED frames written or queued by the fan-out.
    pub notifications_sent: LocalCounter,
    /// Connections the fan-out wrote to at the end of a round (each write carries all of the
    /// round's changes for that connection; `notifications_sent` ÷ this is changes per write).
    pub fanout_writes: LocalCounter,
    /// Changes received by the fan-out.
    pub changes_in: LocalCounter,
    /// Subscribers skipped because they already knew as much (coalesced or duplicate changes,
    /// e.g. the same change from two relays).
    pub already_known: LocalCounter,
    /// Herald frames received from clients.
    pub frames_in: LocalCounter,
    /// Connections closed as slow consumers.
    pub slow_consumers: LocalCounter,
}

impl WorkerStats {
    /// Adds the deltas to the global registry.
    pub fn flush(&self) {
        metrics::counter!("herald_notifications_sent_total")
            .increment(self.notifications_sent.take());
        metrics::counter!("herald_fanout_changes_total").increment(self.changes_in.take());
        metrics::counter!("herald_fanout_writes_total").increment(self.fanout_writes.take());
        metrics::counter!("herald_fanout_already_known_total").increment(self.already_known.take());
        metrics::counter!("herald_frames_received_total").increment(self.frames_in.take());
        metrics::counter!("herald_slow_consumers_total").increment(self.slow_consumers.take());
    }
}

/// Heap bytes allocated and resident, when built with jemalloc.
#[must_use]
pub fn heap() -> Option<(u64, u64)> {
    #[cfg(feature = "jemalloc")]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().ok()?;
        Some((
            stats::allocated::read().ok()? as u64,
            stats::resident::read().ok()? as u64,
        ))
    }
    #[cfg(not(feature = "jemalloc"))]
    None
}

/// Resident set size of this process from `/proc/self/statm`.
#[must_use]
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
