//! Where the changes go: Herald's journal, distributed (JetStream, [`crate::jetstream`]) or the
//! embedded journal of a standalone gateway (implemented in the gateway).

use crate::assemble::Change;

/// A journal that stores changes durably.
pub trait JournalSink: Send + Sync + 'static {
    /// Stores `changes` (commit order; a namespace may repeat) and resolves once the journal
    /// has them durably. An error means some may be stored and some not: the tailer resends
    /// from its last checkpoint, which merge-is-max makes harmless.
    fn deliver(
        &self,
        changes: Vec<Change>,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}
