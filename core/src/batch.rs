//! The unit of fan-out inside a process: changes that raised the latest table, handed to every
//! worker. The gateway's embedded journal and its upstream (the relays) both produce them.

use std::sync::Arc;
use std::time::Instant;

/// Changes handed to every worker for fan-out: `(ns, sjid)`, each one a raise of the latest
/// table, and when the process got them (for `herald_fanout_lag_seconds`).
#[derive(Debug, Clone)]
pub struct Batch {
    /// The raised changes, shared by every worker.
    pub changes: Arc<[(u64, u64)]>,
    /// When they were accepted (journal commit) or arrived (from the relays).
    pub at: Instant,
}

impl Batch {
    /// A batch of `changes` that arrived at `at`.
    #[must_use]
    pub fn new(changes: Vec<(u64, u64)>, at: Instant) -> Self {
        Batch {
            changes: changes.into(),
            at,
        }
    }
}
