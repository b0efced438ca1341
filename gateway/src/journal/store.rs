//! The files of the journal directory: numbered segments of records and one snapshot.
//!
//! ```text
//! data-dir/
//!   snapshot.bin                    "HRLDSNP1", covers: u64, entries: u64, record batches
//!   segment-00000000000000000007.log  record batches appended by the writer (active: the last)
//! ```
//!
//! The snapshot holds one record per namespace and *covers* every segment numbered below
//! `covers`; recovery reads it, then replays the segments from `covers` on in order. Merge is
//! max, so a record found in both the snapshot and a later segment is harmless. A segment is
//! only deleted once a snapshot covering it has been renamed into place and the directory
//! synced, so a crash between any two steps leaves either the old snapshot with every segment
//! it does not cover, or the new one.
//!
//! `journal.log` (the single log of earlier versions) is replayed as if it were segment 0 when
//! there is no snapshot yet, and deleted by the first compaction.

use super::record::{self, ENTRY, HEADER};
use anyhow::Context;
use herald_core::latest::LatestTable;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const SNAPSHOT: &str = "snapshot.bin";
const SNAPSHOT_TMP: &str = "snapshot.bin.tmp";
const SNAPSHOT_MAGIC: &[u8; 8] = b"HRLDSNP1";
/// Magic, `covers`, entry count.
const SNAPSHOT_HEADER: usize = 24;
const LEGACY_LOG: &str = "journal.log";
const LEGACY_TMP: &str = "journal.log.tmp";
/// Bytes of a snapshot written between two syncs.
const SNAPSHOT_SYNC_BYTES: usize = 1 << 20;
/// Entries per batch in a snapshot.
const SNAPSHOT_BATCH: usize = 65_536;

/// The file name of segment `seq`.
fn segment_name(seq: u64) -> String {
    format!("segment-{seq:020}.log")
}

/// The sequence number of a segment file name.
fn parse_segment(name: &str) -> Option<u64> {
    name.strip_prefix("segment-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// A simulated crash for tests: after `left` file-system steps every step fails, and the step
/// that crashes a write leaves half of it on disk (a torn write). Steps run one at a time under
/// its lock, so once a caller has seen the crash no step is still under way.
#[derive(Debug)]
pub(crate) struct CrashPoint {
    state: Mutex<CrashState>,
}

#[derive(Debug)]
struct CrashState {
    left: u64,
    steps: u64,
    crashed: bool,
    crashed_in: Option<String>,
}

impl CrashPoint {
    fn lock(&self) -> std::sync::MutexGuard<'_, CrashState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
impl CrashPoint {
    /// Crashes at step `left + 1` (`u64::MAX`: never, only counts).
    pub(crate) fn after(left: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(CrashState {
                left,
                steps: 0,
                crashed: false,
                crashed_in: None,
            }),
        })
    }

    /// Steps taken so far.
    pub(crate) fn steps(&self) -> u64 {
        self.lock().steps
    }

    /// Crashes now (when it has not yet), waiting for a step under way.
    pub(crate) fn crash_now(&self) {
        self.lock().crashed = true;
    }

    /// The name of the thread whose step crashed, if one did.
    pub(crate) fn crashed_in(&self) -> Option<String> {
        self.lock().crashed_in.clone()
    }
}

/// The file-system steps of the journal, through which tests inject crashes. Production code
/// uses `Io::default()`, which only runs them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Io(Option<Arc<CrashPoint>>);

impl Io {
    /// Steps that go through `crash`.
    #[cfg(test)]
    pub(crate) fn with_crash(crash: Arc<CrashPoint>) -> Self {
        Self(Some(crash))
    }

    /// Runs `op` as one step (`torn`: what a crash at this step still does, e.g. half a write).
    fn step<T>(&self, op: impl FnOnce() -> io::Result<T>, torn: impl FnOnce()) -> io::Result<T> {
        let Some(crash) = &self.0 else {
            return op();
        };
        let mut state = crash.lock();
        if state.crashed {
            return Err(io::Error::other("simulated crash"));
        }
        state.steps += 1;
        if state.left == 0 {
            state.crashed = true;
            state.crashed_in = std::thread::current().name().map(str::to_owned);
            torn();
            return Err(io::Error::other("simulated crash"));
        }
        state.left -= 1;
        op()
    }

    fn run<T>(&self, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        self.step(op, || {})
    }

    /// Writes all of `buf` (a crash here leaves its first half).
    pub(super) fn write_all(&self, file: &File, buf: &[u8]) -> io::Result<()> {
        self.step(
            || (&mut &*file).write_all(buf),
            || {
                let _ = (&mut &*file).write_all(&buf[..buf.len() / 2]);
            },
        )
    }

    /// `fdatasync`.
    pub(super) fn sync_data(&self, file: &File) -> io::Result<()> {
        self.run(|| file.sync_data())
    }

    /// Cuts `file` back to `len` (after a failed write).
    pub(super) fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        self.run(|| file.set_len(len))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.run(|| File::open(dir)?.sync_all())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.run(|| match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
    }
}

/// The segment being appended to.
#[derive(Debug)]
pub(super) struct Segment {
    /// Open for appending.
    pub(super) file: File,
    /// Its number.
    pub(super) seq: u64,
    /// Its length up to the last good write.
    pub(super) len: u64,
}

/// Creates segment `seq` and syncs the directory, so records synced into it survive a power
/// loss too. Segment `seq` is never written before it becomes active, so a file left by a
/// failed roll is empty.
pub(super) fn create_segment(dir: &Path, io: &Io, seq: u64) -> io::Result<Segment> {
    let path = dir.join(segment_name(seq));
    let file = io.run(|| OpenOptions::new().create(true).append(true).open(&path))?;
    let len = io.run(|| file.metadata())?.len();
    io.sync_dir(dir)?;
    Ok(Segment { file, seq, len })
}

/// What recovery found.
#[derive(Debug)]
pub(super) struct Recovered {
    /// Segments below this are covered by the snapshot.
    pub(super) covers: u64,
    /// The highest segment number found (`None`: no segment).
    pub(super) last_segment: Option<u64>,
    /// Bytes of segments replayed (the legacy log included).
    pub(super) replayed_bytes: u64,
    /// Records read from the snapshot.
    pub(super) snapshot_entries: u64,
    /// Files whose tail was torn (cut off in the replay).
    pub(super) torn: Vec<PathBuf>,
}

/// Reads the snapshot and the segments it does not cover into `latest`.
pub(super) fn recover(dir: &Path, latest: &LatestTable) -> anyhow::Result<Recovered> {
    let mut rec = Recovered {
        covers: 0,
        last_segment: None,
        replayed_bytes: 0,
        snapshot_entries: 0,
        torn: Vec::new(),
    };
    let snapshot = dir.join(SNAPSHOT);
    match std::fs::read(&snapshot) {
        Ok(bytes) => {
            let (covers, entries) = read_snapshot(&bytes, latest)
                .with_context(|| format!("reading {}", snapshot.display()))?;
            rec.covers = covers;
            rec.snapshot_entries = entries;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            replay_file(&dir.join(LEGACY_LOG), latest, &mut rec)?;
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", snapshot.display())),
    }
    let mut segments = list_segments(dir)?;
    segments.sort_unstable();
    rec.last_segment = segments.last().copied();
    let covers = rec.covers;
    for seq in segments.into_iter().filter(|&s| s >= covers) {
        replay_file(&dir.join(segment_name(seq)), latest, &mut rec)?;
    }
    Ok(rec)
}

/// Parses a snapshot into `latest`; returns its `covers` and entry count. A snapshot is only
/// ever renamed into place whole, so anything short or corrupt is an error, not a torn tail.
fn read_snapshot(bytes: &[u8], latest: &LatestTable) -> anyhow::Result<(u64, u64)> {
    let (head, body) = bytes
        .split_first_chunk::<SNAPSHOT_HEADER>()
        .context("shorter than its header")?;
    anyhow::ensure!(
        &head[..8] == SNAPSHOT_MAGIC,
        "not a Herald journal snapshot"
    );
    let covers = u64::from_le_bytes(head[8..16].try_into()?);
    let count = u64::from_le_bytes(head[16..24].try_into()?);
    let mut seen = 0u64;
    let decoded = record::decode_batches(body, |ns, sjid| {
        seen += 1;
        latest.merge(ns, sjid);
    });
    anyhow::ensure!(
        !decoded.torn && seen == count,
        "corrupt: {seen} of {count} records readable"
    );
    Ok((covers, count))
}

/// Replays one segment (or the legacy log), if it exists; a torn tail ends it.
fn replay_file(path: &Path, latest: &LatestTable, rec: &mut Recovered) -> anyhow::Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let decoded = record::decode_batches(&bytes, |ns, sjid| {
        latest.merge(ns, sjid);
    });
    rec.replayed_bytes += decoded.good_len as u64;
    if decoded.torn {
        rec.torn.push(path.to_owned());
    }
    Ok(())
}

fn list_segments(dir: &Path) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment) {
            out.push(seq);
        }
    }
    Ok(out)
}

/// What one compaction wrote.
#[derive(Debug, Clone, Copy)]
pub(super) struct Compacted {
    /// Records in the new snapshot (namespaces).
    pub(super) entries: usize,
    /// Its size.
    pub(super) bytes: usize,
    /// Segment files deleted.
    pub(super) removed: usize,
}

/// Writes a snapshot of `latest` covering the segments below `covers` (temp file, fsync,
/// rename, fsync of the directory), then deletes those segments and the legacy log.
///
/// `latest` must already hold every record of the segments below `covers`: the writer rolls to
/// segment `covers` only after raising the table with everything written before.
pub(super) fn compact(
    dir: &Path,
    io: &Io,
    latest: &LatestTable,
    covers: u64,
) -> io::Result<Compacted> {
    let entries = latest.snapshot();
    let mut out = Vec::with_capacity(
        SNAPSHOT_HEADER + entries.len() * ENTRY + entries.len().div_ceil(SNAPSHOT_BATCH) * HEADER,
    );
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&covers.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for chunk in entries.chunks(SNAPSHOT_BATCH) {
        record::encode_batch(chunk, &mut out);
    }
    let tmp = dir.join(SNAPSHOT_TMP);
    io.remove(&tmp)?;
    let file = io.run(|| File::create(&tmp))?;
    // Written and synced a slice at a time: one fsync of a whole large snapshot would queue the
    // writer's fdatasync (same disk, same file-system journal) behind all of it.
    for chunk in out.chunks(SNAPSHOT_SYNC_BYTES) {
        io.write_all(&file, chunk)?;
        io.sync_data(&file)?;
    }
    io.run(|| file.sync_all())?;
    drop(file);
    io.run(|| std::fs::rename(&tmp, dir.join(SNAPSHOT)))?;
    io.sync_dir(dir)?;
    let mut removed = 0;
    let covered = list_segments(dir)
        .map_err(io::Error::other)?
        .into_iter()
        .filter(|&s| s < covers);
    for seq in covered {
        io.remove(&dir.join(segment_name(seq)))?;
        removed += 1;
    }
    for legacy in [LEGACY_LOG, LEGACY_TMP] {
        if dir.join(legacy).exists() {
            io.remove(&dir.join(legacy))?;
            removed += 1;
        }
    }
    Ok(Compacted {
        entries: entries.len(),
        bytes: out.len(),
        removed,
    })
}
