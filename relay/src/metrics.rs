//! The relay's Prometheus metrics (`herald_relay_` prefix, units in the names). Counters are
//! registered once and kept as handles, so counting a journal message is one atomic add.

use anyhow::Context;
use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Journal messages applied to the latest table (raised or not).
pub const JOURNAL_MESSAGES: &str = "herald_relay_journal_messages_total";
/// Journal messages skipped or suspicious, by `reason`: `body` (not 8 bytes, skipped), `subject`
/// (not `herald.journal.<p>.<ns>`, skipped), `partition` (`p != ns % partitions`: a misconfigured
/// publisher; the change is still applied).
pub const BAD_MESSAGES: &str = "herald_relay_bad_messages_total";
/// Late lower SJIDs in the journal overwritten with the latest (see `source::repair`).
pub const JOURNAL_REPAIRS: &str = "herald_relay_journal_repairs_total";
/// Fan-out batches published.
pub const FANOUT_BATCHES: &str = "herald_relay_fanout_batches_total";
/// `(ns, sjid)` changes published in fan-out batches.
pub const FANOUT_CHANGES: &str = "herald_relay_fanout_changes_total";
/// Rounds of heartbeats sent (one empty batch per partition each).
pub const HEARTBEATS: &str = "herald_relay_heartbeats_total";
/// Latest requests answered, by `result`: `ok` or `malformed` (answered with no entries).
pub const LATEST_REQUESTS: &str = "herald_relay_latest_requests_total";
/// Namespaces looked up by latest requests.
pub const LATEST_LOOKUPS: &str = "herald_relay_latest_lookups_total";
/// Seconds the initial journal load took.
pub const LOAD_SECONDS: &str = "herald_relay_load_seconds";
/// Namespaces in the latest table.
pub const NAMESPACES: &str = "herald_relay_namespaces";
/// 1 while ready (loaded and answering), else 0.
pub const READY: &str = "herald_relay_ready";

/// Installs the Prometheus recorder once per process and returns its handle (later calls
/// return the same handle).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Counter handles of the source side.
#[derive(Debug, Clone)]
pub struct SourceMetrics {
    /// [`JOURNAL_MESSAGES`].
    pub applied: Counter,
    /// [`BAD_MESSAGES`] `reason="body"`.
    pub bad_body: Counter,
    /// [`BAD_MESSAGES`] `reason="subject"`.
    pub bad_subject: Counter,
    /// [`BAD_MESSAGES`] `reason="partition"`.
    pub bad_partition: Counter,
    /// [`LOAD_SECONDS`].
    pub load_seconds: Gauge,
}

impl SourceMetrics {
    /// Registers the handles.
    #[must_use]
    pub fn new() -> Self {
        SourceMetrics {
            applied: metrics::counter!(JOURNAL_MESSAGES),
            bad_body: metrics::counter!(BAD_MESSAGES, "reason" => "body"),
            bad_subject: metrics::counter!(BAD_MESSAGES, "reason" => "subject"),
            bad_partition: metrics::counter!(BAD_MESSAGES, "reason" => "partition"),
            load_seconds: metrics::gauge!(LOAD_SECONDS),
        }
    }
}

impl Default for SourceMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs the first few occurrences of something, then one in a thousand, so a misbehaving
/// publisher cannot flood the log.
#[derive(Debug, Default)]
pub struct LogLimiter {
    /// Occurrences so far.
    seen: u64,
}

impl LogLimiter {
    /// Counts one occurrence; true when this one should be logged.
    pub fn allow(&mut self) -> bool {
        self.seen += 1;
        self.seen <= 10 || self.seen.is_multiple_of(1000)
    }

    /// Occurrences so far.
    #[must_use]
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_logs_the_first_ten_then_one_in_a_thousand() {
        let mut l = LogLimiter::default();
        let logged = (0..3000).filter(|_| l.allow()).count();
        assert_eq!(logged, 10 + 3);
        assert_eq!(l.seen(), 3000);
    }
}
