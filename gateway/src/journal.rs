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

/// Handle to the journal writer thread.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Append>,
}

struct Append {
    changes: Vec<(u64, u64)>,
    done: oneshot::Sender<Result<(), String>>,
}

impl Journal {
    /// Replays and compacts the log in `cfg.dir` into `latest`, then starts the writer thread,
    /// which after each durable group raises `latest` and hands the raised entries to `fanout`.
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
        tracing::info!(namespaces = latest.len(), path = %path.display(), "journal loaded");
        let (tx, rx) = mpsc::channel(QUEUE);
        let sync = cfg.sync;
        std::thread::Builder::new()
            .name("herald-journal".into())
            .spawn(move || writer(file, sync, rx, &latest, &fanout))?;
        Ok(Journal { tx })
    }

    /// Appends `changes` durably, then fans them out. Resolves once they are on disk.
    pub async fn append(&self, changes: Vec<(u64, u64)>) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Append { changes, done })
            .await
            .map_err(|_| "journal writer stopped".to_owned())?;
        rx.await.map_err(|_| "journal writer stopped".to_owned())?
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
fn writer(
    mut file: File,
    sync: bool,
    mut rx: mpsc::Receiver<Append>,
    latest: &LatestTable,
    fanout: &[mpsc::Sender<Batch>],
) {
    let mut group = Vec::new();
    let mut buf = Vec::new();
    // Length of the log up to the last good write, so a failed write (disk full) can be cut
    // back instead of leaving a torn batch in front of later ones.
    let mut good_len = file.metadata().map_or(0, |m| m.len());
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < QUEUE {
            match rx.try_recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        buf.clear();
        for a in &group {
            encode_batch(&a.changes, &mut buf);
        }
        let started = std::time::Instant::now();
        let written = file
            .write_all(&buf)
            .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        metrics::histogram!("herald_journal_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        let result = match written {
            Ok(()) => {
                good_len += buf.len() as u64;
                let raised: Vec<(u64, u64)> = group
                    .iter()
                    .flat_map(|a| a.changes.iter().copied())
                    .filter(|&(ns, sjid)| latest.merge(ns, sjid) == Merged::Raised)
                    .collect();
                metrics::counter!("herald_journal_changes_total").increment(buf.len() as u64 / 16);
                if !raised.is_empty() {
                    let batch: Batch = raised.into();
                    for worker in fanout {
                        // A worker that has stopped (shutdown) is simply skipped.
                        let _ = worker.blocking_send(batch.clone());
                    }
                }
                Ok(())
            }
            Err(e) => {
                let _ = file.set_len(good_len);
                tracing::error!(error = %e, "journal write failed; publishes are refused until it succeeds");
                Err(format!("journal write failed: {e}"))
            }
        };
        for a in group.drain(..) {
            let _ = a.done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests;
