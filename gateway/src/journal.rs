//! The embedded journal of standalone mode: `(ns, sjid)` records appended with group commit to
//! a segmented log, compacted online into a snapshot of one record per namespace.
//!
//! Why a hand-made log and not an embedded database: the latest table must live in memory anyway
//! (every SUBSCRIBE reads it), so the disk only has to survive a restart. Checksummed batches
//! appended to a file do that with one `write` + one `fdatasync` per group of publishes.
//!
//! Disk use stays O(namespaces): when the active segment passes `--journal-compact-bytes`, the
//! writer opens the next segment (a file create and a directory sync, the only pause a publish
//! sees) and hands its number to the [`compactor`] thread, which snapshots the table to a temp
//! file, fsyncs it, renames it into place, syncs the directory and only then deletes the older
//! segments. Recovery reads the snapshot and replays the segments after it, so a restart costs
//! O(namespaces + compact bytes), whatever the number of publishes. File layout and the crash
//! argument: [`store`]; the record format: [`record`].
//!
//! Two ways to append. With fdatasync (the default), a writer thread does group commit: the sync
//! blocks for milliseconds, so it must not run on the admin runtime, and it is shared by every
//! publish waiting. Without it (`--journal-no-sync`), a `write` to the page cache takes a few
//! microseconds, and handing each publish to a thread and back cost more than the write itself
//! (two thread wake-ups per publish, about an eighth of the gateway's CPU per delivery in the
//! fan-out benchmark): the publishing task appends itself, under an async lock that keeps the
//! log and the fan-out in the same order.

use crate::config::JournalConfig;
use anyhow::Context;
use herald_core::batch::Batch;
use herald_core::latest::{LatestTable, Merged};
use std::path::PathBuf;
use std::sync::Arc;
use store::{Io, Segment};
use tokio::sync::{mpsc, oneshot};

mod compactor;
mod record;
mod store;

#[cfg(test)]
pub(crate) use store::CrashPoint;
/// Publish requests waiting for the writer thread; past this, publishers wait.
const QUEUE: usize = 1024;

/// Handle to the journal.
#[derive(Clone)]
pub struct Journal {
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    /// Durable: group commit on the writer thread.
    Thread(mpsc::Sender<Append>),
    /// `--journal-no-sync`: appended by the caller.
    Inline(Arc<tokio::sync::Mutex<Log>>),
}

struct Append {
    changes: Vec<(u64, u64)>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The open log and what an append updates after writing.
struct Log {
    dir: PathBuf,
    io: Io,
    /// The active segment. Its `len` is the length up to the last good write, so a failed write
    /// (disk full) can be cut back instead of leaving a torn batch in front of later ones.
    segment: Segment,
    sync: bool,
    /// Segment size that triggers a roll.
    compact_bytes: u64,
    /// Wakes the compactor with the number of a new active segment.
    compactor: std::sync::mpsc::Sender<u64>,
    buf: Vec<u8>,
    latest: Arc<LatestTable>,
    fanout: Vec<mpsc::Sender<Batch>>,
}

impl Journal {
    /// Recovers the snapshot and segments in `cfg.dir` into `latest` and compacts them, then,
    /// after each durable group, raises `latest` and hands the raised entries to `fanout` (in
    /// log order).
    pub fn open(
        cfg: &JournalConfig,
        latest: Arc<LatestTable>,
        fanout: Vec<mpsc::Sender<Batch>>,
    ) -> anyhow::Result<Self> {
        Self::open_with_io(cfg, latest, fanout, Io::default())
    }

    /// [`Journal::open`] with the file-system steps going through `io` (tests inject crashes).
    fn open_with_io(
        cfg: &JournalConfig,
        latest: Arc<LatestTable>,
        fanout: Vec<mpsc::Sender<Batch>>,
        io: Io,
    ) -> anyhow::Result<Self> {
        let dir = &cfg.dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        let started = std::time::Instant::now();
        let recovered = store::recover(dir, &latest)?;
        let replayed = started.elapsed();
        for path in &recovered.torn {
            tracing::warn!(path = %path.display(), "journal segment had a torn tail (crash mid-write); it was cut off");
        }
        // Start on a fresh segment and compact everything before it, so a restart leaves one
        // snapshot and an empty segment.
        let seq = recovered
            .last_segment
            .map_or(recovered.covers, |last| last + 1)
            .max(recovered.covers);
        let segment = store::create_segment(dir, &io, seq)
            .with_context(|| format!("creating a journal segment in {}", dir.display()))?;
        store::compact(dir, &io, &latest, seq)
            .with_context(|| format!("compacting the journal in {}", dir.display()))?;
        tracing::info!(
            namespaces = latest.len(),
            snapshot_records = recovered.snapshot_entries,
            replayed_bytes = recovered.replayed_bytes,
            replay_ms = replayed.as_millis() as u64,
            open_ms = started.elapsed().as_millis() as u64,
            dir = %dir.display(),
            sync = cfg.sync,
            compact_bytes = cfg.compact_bytes,
            "journal loaded"
        );
        let compactor = compactor::spawn(dir.clone(), io.clone(), latest.clone())?;
        let log = Log {
            dir: dir.clone(),
            io,
            segment,
            sync: cfg.sync,
            compact_bytes: cfg.compact_bytes,
            compactor,
            buf: Vec::new(),
            latest,
            fanout,
        };
        if !cfg.sync {
            return Ok(Journal {
                mode: Mode::Inline(Arc::new(tokio::sync::Mutex::new(log))),
            });
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("herald-journal".into())
            .spawn(move || writer(log, rx))?;
        Ok(Journal {
            mode: Mode::Thread(tx),
        })
    }

    /// Appends `changes` durably (or, without sync, to the page cache), then fans them out.
    /// Resolves once they are written.
    pub async fn append(&self, changes: Vec<(u64, u64)>) -> Result<(), String> {
        match &self.mode {
            Mode::Thread(tx) => {
                let (done, rx) = oneshot::channel();
                tx.send(Append { changes, done })
                    .await
                    .map_err(|_| "journal writer stopped".to_owned())?;
                rx.await.map_err(|_| "journal writer stopped".to_owned())?
            }
            Mode::Inline(log) => {
                let log = log.clone();
                // Its own task (on the caller's runtime: no thread hop), so a publisher that goes
                // away (its HTTP request dropped) cannot stop an append between the log and the
                // fan-out: a change written and raised is always handed to every worker.
                tokio::spawn(async move {
                    let mut log = log.lock().await;
                    let raised = log.commit(std::iter::once(&changes[..]))?;
                    if let Some(batch) = raised {
                        for worker in &log.fanout {
                            // A worker that has stopped (shutdown) is simply skipped.
                            let _ = worker.send(batch.clone()).await;
                        }
                    }
                    Ok(())
                })
                .await
                .map_err(|_| "journal append stopped".to_owned())?
            }
        }
    }
}

impl Log {
    /// Writes `groups` as one write (and one sync, if syncing), then raises the latest table.
    /// Returns the raised entries, in order, for the fan-out.
    fn commit<'a>(
        &mut self,
        groups: impl Iterator<Item = &'a [(u64, u64)]> + Clone,
    ) -> Result<Option<Batch>, String> {
        self.buf.clear();
        for changes in groups.clone() {
            record::encode_batch(changes, &mut self.buf);
        }
        let started = std::time::Instant::now();
        let file = &self.segment.file;
        let written = self.io.write_all(file, &self.buf).and_then(|()| {
            if self.sync {
                self.io.sync_data(file)
            } else {
                Ok(())
            }
        });
        metrics::histogram!("herald_journal_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = written {
            let _ = self.io.set_len(file, self.segment.len);
            tracing::error!(error = %e, "journal write failed; publishes are refused until it succeeds");
            return Err(format!("journal write failed: {e}"));
        }
        self.segment.len += self.buf.len() as u64;
        let latest = &self.latest;
        let mut count = 0;
        let raised: Vec<(u64, u64)> = groups
            .flat_map(|changes| changes.iter().copied())
            .inspect(|_| count += 1)
            .filter(|&(ns, sjid)| latest.merge(ns, sjid) == Merged::Raised)
            .collect();
        metrics::counter!("herald_journal_changes_total").increment(count);
        // Everything in this segment is in the table now, so a snapshot taken from here on
        // covers it.
        if self.segment.len >= self.compact_bytes {
            self.roll();
        }
        Ok((!raised.is_empty()).then(|| Batch::new(raised, std::time::Instant::now())))
    }

    /// Moves on to the next segment and has the compactor fold the older ones into a snapshot.
    /// A failure (disk full) keeps the current segment; the next commit tries again.
    fn roll(&mut self) {
        let next = self.segment.seq + 1;
        match store::create_segment(&self.dir, &self.io, next) {
            Ok(segment) => {
                self.segment = segment;
                // A compactor that has stopped only leaves the segments for the next start.
                let _ = self.compactor.send(next);
            }
            Err(e) => {
                tracing::error!(error = %e, next, "could not start a new journal segment; compaction waits");
            }
        }
    }
}

/// The writer thread: group commit. Takes every request waiting, writes them as one batch,
/// syncs once, then applies and fans out, then acknowledges.
fn writer(mut log: Log, mut rx: mpsc::Receiver<Append>) {
    let mut group = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < QUEUE {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let result = log
            .commit(group.iter().map(|a: &Append| &a.changes[..]))
            .map(|raised| {
                if let Some(batch) = raised {
                    for worker in &log.fanout {
                        // A worker that has stopped (shutdown) is simply skipped.
                        let _ = worker.blocking_send(batch.clone());
                    }
                }
            });
        for a in group.drain(..) {
            let _ = a.done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests;
