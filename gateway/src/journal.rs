//! The embedded journal of standalone mode: an append-only log of `(ns, sjid)` records, replayed
//! and compacted at start, appended with group commit.
//!
//! Why a hand-made log and not an embedded database: the latest table must live in memory anyway
//! (every SUBSCRIBE reads it), so the disk only has to survive a restart. An append-only file with
//! checksummed batches does that with one `write` + one `fdatasync` per group of publishes, and
//! compaction at start bounds its size to one record per namespace.
//!
//! Record batch: `count: u32 LE`, `crc32(entries): u32 LE`, then `count` × (`ns: u64 LE`,
//! `sjid: u64 LE`). A torn batch at the end (crash mid-write) fails its length or checksum and is
//! cut off at start; everything acknowledged before it was synced and survives.
//!
//! Two ways to append. With fdatasync (the default), a writer thread does group commit: the sync
//! blocks for milliseconds, so it must not run on the admin runtime, and it is shared by every
//! publish waiting. Without it (`--journal-no-sync`), a `write` to the page cache takes a few
//! microseconds, and handing each publish to a thread and back cost more than the write itself
//! (two thread wake-ups per publish, about an eighth of the gateway's CPU per delivery in the
//! fan-out benchmark): the publishing task appends itself, under an async lock that keeps the
//! log and the fan-out in the same order.

use crate::config::JournalConfig;
use crate::latest::{LatestTable, Merged};
use crate::worker::Batch;
use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

const LOG: &str = "journal.log";
const LOG_TMP: &str = "journal.log.tmp";
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
    file: File,
    sync: bool,
    /// Length of the log up to the last good write, so a failed write (disk full) can be cut
    /// back instead of leaving a torn batch in front of later ones.
    good_len: u64,
    buf: Vec<u8>,
    latest: Arc<LatestTable>,
    fanout: Vec<mpsc::Sender<Batch>>,
}

impl Journal {
    /// Replays and compacts the log in `cfg.dir` into `latest`, then, after each durable group,
    /// raises `latest` and hands the raised entries to `fanout` (in log order).
    pub fn open(
        cfg: &JournalConfig,
        latest: Arc<LatestTable>,
        fanout: Vec<mpsc::Sender<Batch>>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.dir)
            .with_context(|| format!("creating data dir {}", cfg.dir.display()))?;
        let path = cfg.dir.join(LOG);
        let (entries, torn) = replay(&path)?;
        for &(ns, sjid) in &entries {
            latest.merge(ns, sjid);
        }
        if torn {
            tracing::warn!(path = %path.display(), "journal had a torn tail (crash mid-write); it was cut off");
        }
        compact(&cfg.dir, &latest.snapshot())?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        tracing::info!(namespaces = latest.len(), path = %path.display(), sync = cfg.sync, "journal loaded");
        let log = Log {
            good_len: file.metadata().map_or(0, |m| m.len()),
            file,
            sync: cfg.sync,
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
            encode_batch(changes, &mut self.buf);
        }
        let started = std::time::Instant::now();
        let written = self.file.write_all(&self.buf).and_then(|()| {
            if self.sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        metrics::histogram!("herald_journal_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = written {
            let _ = self.file.set_len(self.good_len);
            tracing::error!(error = %e, "journal write failed; publishes are refused until it succeeds");
            return Err(format!("journal write failed: {e}"));
        }
        self.good_len += self.buf.len() as u64;
        let latest = &self.latest;
        let mut count = 0;
        let raised: Vec<(u64, u64)> = groups
            .flat_map(|changes| changes.iter().copied())
            .inspect(|_| count += 1)
            .filter(|&(ns, sjid)| latest.merge(ns, sjid) == Merged::Raised)
            .collect();
        metrics::counter!("herald_journal_changes_total").increment(count);
        Ok((!raised.is_empty()).then(|| raised.into()))
    }
}

fn encode_batch(changes: &[(u64, u64)], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&(changes.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for &(ns, sjid) in changes {
        out.extend_from_slice(&ns.to_le_bytes());
        out.extend_from_slice(&sjid.to_le_bytes());
    }
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads every whole batch; returns the entries and whether a torn tail was found.
fn replay(path: &Path) -> anyhow::Result<(Vec<(u64, u64)>, bool)> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)
                .with_context(|| format!("reading {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    }
    Ok(decode_batches(&bytes))
}

fn decode_batches(mut bytes: &[u8]) -> (Vec<(u64, u64)>, bool) {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let Some((head, rest)) = bytes.split_first_chunk::<8>() else {
            return (entries, true);
        };
        let count = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(body) = rest.get(..count * 16) else {
            return (entries, true);
        };
        if crc32fast::hash(body) != crc {
            return (entries, true);
        }
        for rec in body.chunks_exact(16) {
            let ns = u64::from_le_bytes(rec[..8].try_into().unwrap_or_default());
            let sjid = u64::from_le_bytes(rec[8..].try_into().unwrap_or_default());
            entries.push((ns, sjid));
        }
        bytes = &rest[count * 16..];
    }
    (entries, false)
}

/// Rewrites the log as one record per namespace (temp file, fsync, rename, fsync dir).
fn compact(dir: &Path, snapshot: &[(u64, u64)]) -> anyhow::Result<()> {
    let tmp = dir.join(LOG_TMP);
    let mut out = Vec::with_capacity(snapshot.len() * 16 + 64);
    for chunk in snapshot.chunks(65_536) {
        encode_batch(chunk, &mut out);
    }
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&out)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(LOG))?;
    File::open(dir)?.sync_all()?;
    Ok(())
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
