//! PostgreSQL: the journal table's committed changes from logical replication (`pgoutput`,
//! a publication on the table, a named replication slot), over the replication protocol with
//! `pgwire-replication`.
//!
//! - [`config`]: the `postgres://` URL.
//! - [`preflight`]: refusals (role, `wal_level`, table, column types, replica identity,
//!   publication) and the slot's state.
//! - [`reload`]: slot creation with its snapshot, and the latest SJIDs read in it.
//! - [`decode`]: `pgoutput` Relation / Insert / Update messages to changes.
//!
//! [`PostgresSource`] ties them together on one replication session: checks, decides where to
//! start (the slot, if the checkpoint says the journal already holds what came before it; else
//! a reload), runs `START_REPLICATION`, and hands out the changes of each committed transaction
//! (pgoutput sends only committed ones, in commit order) with the commit's end LSN as the resume
//! point. That LSN is confirmed to the slot (standby status update, flush position) only after
//! the sink acknowledged everything up to it ([`ChangeSource::acknowledged`]).
//!
//! # Slot and checkpoint
//! The slot keeps the position on the server: its `confirmed_flush_lsn` is the last LSN this
//! tailer confirmed, and the server keeps the WAL needed from there. The checkpoint file keeps
//! the same LSN on the tailer's side, written after the same acknowledgement: it proves the
//! journal already holds everything this server committed before it. So the slot is trusted
//! only together with a checkpoint of the same server (system identifier and database); no
//! checkpoint (a new journal), another server, or no slot means a reload. Resuming asks the
//! server to start at the checkpoint's LSN: it streams from the later of that and
//! `confirmed_flush_lsn`, so the two may differ by the last few acknowledgements (the confirm
//! to the slot and the file write are not one step) without losing anything; at worst a
//! crash between them re-sends a little, which merge-is-max makes harmless.

pub mod config;
pub mod decode;
pub mod preflight;
pub mod reload;

pub use config::PostgresConfig;

use crate::assemble::Change;
use crate::checkpoint::Checkpoint;
use crate::metrics as m;
use crate::position::ResumePoint;
use crate::source::{Batch, ChangeSource};
use decode::Decoder;
use futures_util::FutureExt;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use std::collections::VecDeque;

/// Events read before a batch is handed out even if more are ready, so the resume point and
/// the lag metrics keep moving through a long backlog.
const EVENTS_PER_BATCH: usize = 20_000;

/// Why the tailer did not stream from its slot as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadReason {
    /// No checkpoint yet (first start, or a new journal).
    NoCheckpoint,
    /// The checkpoint belongs to another server or database (new host, restored cluster).
    OtherServer,
    /// The server has no slot of that name (dropped, or a new host).
    SlotMissing,
    /// The slot was invalidated (`wal_status = 'lost'`: `max_slot_wal_keep_size` exceeded while
    /// the tailer was away); it is dropped and created anew.
    SlotLost,
}

impl ReloadReason {
    /// Label value of `herald_tail_reloads_total`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadReason::NoCheckpoint => "no_checkpoint",
            ReloadReason::OtherServer => "other_server",
            ReloadReason::SlotMissing => "slot_missing",
            ReloadReason::SlotLost => "slot_lost",
        }
    }
}

/// A logical replication stream of the journal table.
pub struct PostgresSource {
    client: ReplicationClient,
    decoder: Decoder,
    identity: String,
    /// Reload pages still to hand out before the stream's own changes.
    reload: VecDeque<Vec<Change>>,
    /// A resume point to hand out with the last reload page (the slot's consistent point).
    pending: Option<u64>,
    /// Rows of the transaction being received.
    open: Vec<Change>,
    in_transaction: bool,
    /// Changes of committed transactions not yet handed out.
    ready: Vec<Change>,
    /// End of the last committed transaction (or idle WAL end) received.
    resume: u64,
    /// The resume point handed out last.
    handed: u64,
    /// Why this session reloaded, if it did.
    pub reloaded: Option<ReloadReason>,
}

impl PostgresSource {
    /// Connects, checks, picks the start (the slot or a reload) and starts streaming.
    pub async fn open(
        cfg: &PostgresConfig,
        checkpoint: Option<&Checkpoint>,
    ) -> anyhow::Result<Self> {
        // Resuming starts at the checkpoint (the server skips what committed before it, so a
        // confirmation that did not reach the slot before a stop re-sends nothing).
        let guess = match checkpoint {
            Some(Checkpoint {
                position: ResumePoint::Lsn(lsn),
                ..
            }) => *lsn,
            _ => 0,
        };
        let mut client = preflight::connect(cfg, guess).await?;
        let facts = preflight::check(&mut client, cfg).await?;
        let slot = preflight::slot(&mut client, cfg).await?;
        let resume = match (checkpoint, &slot) {
            (None, _) => Err(ReloadReason::NoCheckpoint),
            (Some(cp), _) if cp.server != facts.identity => Err(ReloadReason::OtherServer),
            (Some(_), None) => Err(ReloadReason::SlotMissing),
            (Some(_), Some(s)) if s.lost => Err(ReloadReason::SlotLost),
            (
                Some(Checkpoint {
                    position: ResumePoint::Lsn(lsn),
                    ..
                }),
                Some(s),
            ) => Ok((*lsn, s.confirmed_flush)),
            (Some(_), Some(_)) => Err(ReloadReason::OtherServer),
        };
        let mut reload_pages = VecDeque::new();
        let (start, reloaded) = match resume {
            Ok((lsn, confirmed)) => {
                tracing::info!(checkpoint = %crate::position::format_lsn(lsn), slot_confirmed_flush = ?confirmed.map(crate::position::format_lsn), slot = %cfg.slot, "resuming from the replication slot");
                (lsn, None)
            }
            Err(reason) => {
                if guess != 0 {
                    // A reload starts at the new slot's consistent point, never at an LSN of
                    // another slot or server: a fresh session that starts at 0.
                    drop(client);
                    client = preflight::connect(cfg, 0).await?;
                }
                let started = std::time::Instant::now();
                let loaded = reload::reload(&mut client, cfg, slot.is_some()).await?;
                let namespaces = loaded.latest.len();
                metrics::counter!(m::RELOADS, "reason" => reason.as_str()).increment(1);
                metrics::counter!(m::RELOAD_NAMESPACES).increment(namespaces as u64);
                let position = crate::position::format_lsn(loaded.consistent_point);
                let elapsed_ms = started.elapsed().as_millis() as u64;
                if reason == ReloadReason::NoCheckpoint {
                    tracing::info!(reason = reason.as_str(), namespaces, %position, slot = %cfg.slot, elapsed_ms, "first start: created the replication slot and loaded the latest SJID of every namespace in its snapshot");
                } else {
                    let checkpoint = checkpoint.map(|c| format!("{} @ {}", c.server, c.position));
                    tracing::warn!(reason = reason.as_str(), ?checkpoint, namespaces, %position, slot = %cfg.slot, elapsed_ms, "resume point lost: recreated the replication slot and reloaded the latest SJID of every namespace in its snapshot");
                }
                reload_pages.extend(
                    loaded
                        .latest
                        .chunks(cfg.max_batch.max(1))
                        .map(<[Change]>::to_vec),
                );
                (loaded.consistent_point, Some(reason))
            }
        };
        client
            .start()
            .await
            .map_err(|e| anyhow::anyhow!("START_REPLICATION: {e}"))?;
        client
            .wait_started()
            .await
            .map_err(|e| anyhow::anyhow!("START_REPLICATION on slot {}: {e}", cfg.slot))?;
        tracing::info!(server = %facts.identity, version = %facts.version, slot = %cfg.slot, publication = %cfg.publication, "streaming logical replication");
        Ok(PostgresSource {
            client,
            decoder: Decoder::new(&cfg.schema, &cfg.table, &cfg.ns_column, &cfg.sjid_column),
            identity: facts.identity,
            reload: reload_pages,
            // A reload's consistent point must be stored even if nothing follows it.
            pending: reloaded.map(|_| start),
            open: Vec::new(),
            in_transaction: false,
            ready: Vec::new(),
            resume: start,
            handed: start,
            reloaded,
        })
    }

    fn apply(&mut self, event: Option<ReplicationEvent>) -> anyhow::Result<()> {
        let event =
            event.ok_or_else(|| anyhow::anyhow!("the server ended the replication stream"))?;
        match event {
            ReplicationEvent::Begin { .. } => {
                self.in_transaction = true;
                self.open.clear();
            }
            ReplicationEvent::XLogData { data, wal_end, .. } => {
                self.decoder.feed(&data, &mut self.open)?;
                self.lag_bytes(wal_end.0);
            }
            ReplicationEvent::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                self.in_transaction = false;
                self.ready.append(&mut self.open);
                self.resume = self.resume.max(end_lsn.0);
                let committed = pgwire_replication::protocol::replication::pg_to_unix_timestamp(
                    commit_time_micros,
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as i64);
                metrics::gauge!(m::LAG_SECONDS)
                    .set((now.saturating_sub(committed)).max(0) as f64 / 1e6);
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                // Everything committed before the server's WAL end has been sent: with no
                // transaction half received, that end is a safe resume point, so the slot
                // moves on (and frees WAL) while the journal table is quiet.
                if !self.in_transaction && wal_end.0 > self.resume {
                    self.resume = wal_end.0;
                    metrics::gauge!(m::LAG_SECONDS).set(0.0);
                }
                self.lag_bytes(wal_end.0);
            }
            _ => {}
        }
        Ok(())
    }

    fn lag_bytes(&self, wal_end: u64) {
        if wal_end > 0 {
            metrics::gauge!(m::LAG_BYTES).set(wal_end.saturating_sub(self.handed) as f64);
        }
    }

    fn batch(&mut self) -> Option<Batch> {
        let moved = self.resume > self.handed;
        if self.ready.is_empty() && !moved {
            return None;
        }
        let checkpoint = moved.then(|| {
            self.handed = self.resume;
            Checkpoint {
                server: self.identity.clone(),
                position: ResumePoint::Lsn(self.resume),
            }
        });
        Some(Batch {
            changes: std::mem::take(&mut self.ready),
            checkpoint,
        })
    }
}

impl ChangeSource for PostgresSource {
    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Batch> {
        if let Some(page) = self.reload.pop_front() {
            let last = self.reload.is_empty();
            return Ok(Batch {
                changes: page,
                checkpoint: if last {
                    self.checkpoint_pending()
                } else {
                    None
                },
            });
        }
        if let Some(cp) = self.checkpoint_pending() {
            return Ok(Batch {
                changes: Vec::new(),
                checkpoint: Some(cp),
            });
        }
        loop {
            let first = self.client.recv().await?;
            self.apply(first)?;
            let mut events = 1;
            while self.ready.len() < max && events < EVENTS_PER_BATCH {
                match self.client.recv().now_or_never() {
                    Some(event) => self.apply(event?)?,
                    None => break,
                }
                events += 1;
            }
            if let Some(batch) = self.batch() {
                return Ok(batch);
            }
        }
    }

    fn acknowledged(&mut self, checkpoint: &Checkpoint) {
        if let ResumePoint::Lsn(lsn) = checkpoint.position {
            self.client.update_applied_lsn(Lsn(lsn));
        }
    }
}

impl PostgresSource {
    fn checkpoint_pending(&mut self) -> Option<Checkpoint> {
        self.pending.take().map(|lsn| Checkpoint {
            server: self.identity.clone(),
            position: ResumePoint::Lsn(lsn),
        })
    }
}
