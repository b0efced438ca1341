//! Metric names of the tailer (Prometheus, `herald_tail_` prefix).

/// Counter: rows of the journal table read from the binlog (inserts, updates, deletes).
pub const ROWS: &str = "herald_tail_rows_total";
/// Counter: journal rows whose columns were NULL or not integers (skipped).
pub const ROWS_SKIPPED: &str = "herald_tail_rows_skipped_total";
/// Counter: changes acknowledged by the journal (reload entries included).
pub const CHANGES_PUBLISHED: &str = "herald_tail_changes_published_total";
/// Counter, label `reason` (`no_checkpoint`, `other_server`, `purged`; PostgreSQL also
/// `slot_missing`, `slot_lost`): reloads from the table.
pub const RELOADS: &str = "herald_tail_reloads_total";
/// Counter: namespaces read by reloads.
pub const RELOAD_NAMESPACES: &str = "herald_tail_reload_namespaces_total";
/// Gauge: seconds between the last event's commit on the database and its reading (0 while the
/// server only sends heartbeats, i.e. the tailer is caught up).
pub const LAG_SECONDS: &str = "herald_tail_lag_seconds";
/// Gauge: seconds an acknowledged resume point has waited to be stored (0 while the stored
/// checkpoint is current; grows only while storing fails, e.g. a full or read-only disk).
pub const CHECKPOINT_AGE_SECONDS: &str = "herald_tail_checkpoint_age_seconds";
/// Histogram: seconds the journal took to acknowledge a batch.
pub const SINK_SECONDS: &str = "herald_tail_sink_seconds";
/// Counter, label `kind` (`source`, `sink`, `checkpoint`): errors that led to a retry.
pub const ERRORS: &str = "herald_tail_errors_total";
/// Gauge: 1 while streaming from the database.
pub const CONNECTED: &str = "herald_tail_connected";
/// Gauge: XA transactions prepared and not yet decided (they hold the checkpoint back).
pub const XA_PREPARED: &str = "herald_tail_xa_prepared";
/// Gauge (PostgreSQL): bytes of WAL between the server's end and the last resume point handed to
/// the journal (what the slot holds back beyond this tailer's unacknowledged work).
pub const LAG_BYTES: &str = "herald_tail_lag_bytes";
