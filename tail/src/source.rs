//! The interface between a database's change stream and the tailer's loop, so another database
//! plugs in beside the other: [`crate::mysql::MysqlSource`], [`crate::postgres::PostgresSource`].

use crate::assemble::Change;
use crate::checkpoint::Checkpoint;

/// Committed changes and the resume point that becomes safe once they are acknowledged.
#[derive(Debug, Default)]
pub struct Batch {
    /// Changes of committed transactions, in commit order (may be empty).
    pub changes: Vec<Change>,
    /// Store this once `changes` (and everything before) are acknowledged; `None` when the
    /// resume point has not moved or must not be stored yet (the middle of a reload).
    pub checkpoint: Option<Checkpoint>,
}

/// A stream of committed changes of the journal table.
pub trait ChangeSource: Send {
    /// Waits for the next batch (at most about `max` changes).
    fn next_batch(
        &mut self,
        max: usize,
    ) -> impl std::future::Future<Output = anyhow::Result<Batch>> + Send;

    /// Called once the sink has acknowledged every change up to `checkpoint` (a batch's
    /// checkpoint), before it is stored. A source whose server keeps the position (a
    /// PostgreSQL replication slot) confirms it there; the default does nothing.
    fn acknowledged(&mut self, checkpoint: &Checkpoint) {
        let _ = checkpoint;
    }
}
