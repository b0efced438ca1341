//! The compactor: a thread that, each time the writer rolls to a new segment, snapshots the
//! latest table and deletes the segments the snapshot covers. It runs off the publish path:
//! the writer only creates the next segment and hands over its number.
//!
//! The table is sharded (see [`LatestTable`]), and taking the snapshot read-locks one shard at a
//! time, so a publish waits at most for one shard's copy, not for the whole table or the disk.

use super::store::{self, Io};
use herald_core::latest::LatestTable;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

/// Starts the compactor thread; send it the number of a new active segment to compact
/// everything below it. It stops when every sender is dropped.
pub(super) fn spawn(
    dir: PathBuf,
    io: Io,
    latest: Arc<LatestTable>,
) -> std::io::Result<Sender<u64>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("herald-compactor".into())
        .spawn(move || run(&dir, &io, &latest, &rx))?;
    Ok(tx)
}

fn run(dir: &std::path::Path, io: &Io, latest: &LatestTable, rx: &Receiver<u64>) {
    while let Ok(mut covers) = rx.recv() {
        // Rolls that queued up while a compaction ran are served by one snapshot.
        while let Ok(later) = rx.try_recv() {
            covers = covers.max(later);
        }
        let started = std::time::Instant::now();
        match store::compact(dir, io, latest, covers) {
            Ok(done) => {
                metrics::counter!("herald_journal_compactions_total").increment(1);
                metrics::histogram!("herald_journal_compaction_seconds")
                    .record(started.elapsed().as_secs_f64());
                tracing::debug!(
                    covers,
                    namespaces = done.entries,
                    snapshot_bytes = done.bytes,
                    removed = done.removed,
                    took_ms = started.elapsed().as_millis() as u64,
                    "journal compacted"
                );
            }
            // The segments stay; the next roll tries again.
            Err(e) => {
                metrics::counter!("herald_journal_compaction_failures_total").increment(1);
                tracing::error!(error = %e, covers, "journal compaction failed; will retry at the next segment");
            }
        }
    }
}
