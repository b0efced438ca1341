//! MySQL / MariaDB: the journal table's committed changes from the row-based binlog.
//!
//! - [`preflight`]: refusals of a server or table the tailer cannot follow.
//! - [`reload`]: latest SJIDs from a consistent snapshot, when the position is lost.
//! - [`decode`]: binlog events to assembler inputs (table maps, rows, transaction ends).
//!
//! [`MysqlSource`] ties them together: it decides where to start (the checkpoint if the server
//! still has it, else a reload), opens the binlog stream there as a replica would
//! (`COM_REGISTER_SLAVE` + `COM_BINLOG_DUMP` with a server id of its own), and hands out batches
//! of committed changes with the resume point that is safe once they are acknowledged.

pub mod decode;
pub mod preflight;
pub mod reload;

use crate::assemble::{Assembler, Change};
use crate::checkpoint::Checkpoint;
use crate::config::MysqlConfig;
use crate::metrics as m;
use crate::position::{BinlogPosition, ResumePoint};
use crate::source::{Batch, ChangeSource};
use decode::Decoder;
use futures_util::{FutureExt, StreamExt};
use mysql_async::prelude::Queryable;
use preflight::ServerFacts;
use std::collections::VecDeque;
use std::time::Duration;

/// The server sends a heartbeat this often while it has nothing else to send.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// No event for this long (heartbeats included) means the connection is dead.
const SILENCE: Duration = Duration::from_secs(10);
/// Events read before a batch is handed out even if more are ready, so the resume point and
/// the lag metrics keep moving through a long backlog of other tables' traffic.
const EVENTS_PER_BATCH: usize = 20_000;

/// Why the tailer did not resume from its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadReason {
    /// No checkpoint yet (first start).
    NoCheckpoint,
    /// The checkpoint belongs to another server (new host, restored backup).
    OtherServer,
    /// The server no longer has the checkpoint's binlog file (purged) or position.
    Purged,
}

impl ReloadReason {
    /// Label value of `herald_tail_reloads_total`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadReason::NoCheckpoint => "no_checkpoint",
            ReloadReason::OtherServer => "other_server",
            ReloadReason::Purged => "purged",
        }
    }
}

/// A binlog stream of one server, assembled into committed changes.
pub struct MysqlSource {
    stream: mysql_async::BinlogStream,
    decoder: Decoder,
    assembler: Assembler,
    identity: String,
    /// Reload pages still to hand out before the stream's own changes.
    reload: VecDeque<Vec<Change>>,
    /// The resume point handed out last.
    last_resume: Option<BinlogPosition>,
    /// Why this session reloaded, if it did.
    pub reloaded: Option<ReloadReason>,
}

impl MysqlSource {
    /// Connects, checks, picks the start (checkpoint or reload) and opens the stream.
    pub async fn open(cfg: &MysqlConfig, checkpoint: Option<&Checkpoint>) -> anyhow::Result<Self> {
        let mut conn = mysql_async::Conn::new(cfg.opts.clone()).await?;
        let facts = preflight::check(&mut conn, cfg).await?;
        let logs = preflight::binary_logs(&mut conn).await?;
        let resume = match checkpoint {
            None => Err(ReloadReason::NoCheckpoint),
            Some(cp) if cp.server != facts.identity => Err(ReloadReason::OtherServer),
            Some(Checkpoint {
                position: ResumePoint::Binlog(position),
                ..
            }) => {
                let held = logs
                    .iter()
                    .any(|(file, size)| *file == position.file && *size >= position.pos);
                if held {
                    Ok(position.clone())
                } else {
                    Err(ReloadReason::Purged)
                }
            }
            // A PostgreSQL checkpoint (its identity differs, so this is not reached).
            Some(_) => Err(ReloadReason::OtherServer),
        };
        let mut reload_pages = VecDeque::new();
        let (start, reloaded) = match resume {
            Ok(position) => (position, None),
            Err(reason) => {
                let started = std::time::Instant::now();
                let loaded = reload::reload(&mut conn, cfg, &facts).await?;
                let namespaces = loaded.latest.len();
                metrics::counter!(m::RELOADS, "reason" => reason.as_str()).increment(1);
                metrics::counter!(m::RELOAD_NAMESPACES).increment(namespaces as u64);
                let level_warn = reason != ReloadReason::NoCheckpoint;
                let checkpoint = checkpoint.map(|c| format!("{} @ {}", c.server, c.position));
                if level_warn {
                    tracing::warn!(reason = reason.as_str(), ?checkpoint, namespaces, position = %loaded.position, elapsed_ms = started.elapsed().as_millis() as u64, "resume point lost: reloaded the latest SJID of every namespace from the table");
                } else {
                    tracing::info!(reason = reason.as_str(), namespaces, position = %loaded.position, elapsed_ms = started.elapsed().as_millis() as u64, "first start: loaded the latest SJID of every namespace from the table");
                }
                reload_pages.extend(
                    loaded
                        .latest
                        .chunks(cfg.max_batch.max(1))
                        .map(<[Change]>::to_vec),
                );
                (loaded.position, Some(reason))
            }
        };
        let stream = open_stream(conn, cfg, &facts, &start).await?;
        tracing::info!(server = %facts.identity, version = %facts.version, position = %start, "streaming the binlog");
        Ok(MysqlSource {
            stream,
            decoder: Decoder::new(cfg, &facts, start.file.clone()),
            assembler: Assembler::new(start.clone()),
            identity: facts.identity,
            reload: reload_pages,
            // A reload's position must be stored even if nothing follows it.
            last_resume: reloaded.is_none().then_some(start),
            reloaded,
        })
    }

    /// Reads one event (waiting at most [`SILENCE`]) into the assembler.
    async fn read_one(&mut self) -> anyhow::Result<()> {
        let event = tokio::time::timeout(SILENCE, self.stream.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!("no binlog event or heartbeat for {SILENCE:?}: reconnecting")
            })?;
        self.apply(event)
    }

    fn apply(
        &mut self,
        event: Option<mysql_async::Result<mysql_async::binlog::events::Event>>,
    ) -> anyhow::Result<()> {
        let event =
            event.ok_or_else(|| anyhow::anyhow!("the server ended the binlog stream"))??;
        self.decoder.feed(&event, &self.stream, &mut self.assembler)
    }

    fn batch(&mut self) -> Batch {
        let changes = self.assembler.take_ready();
        let resume = self.assembler.resume_point();
        let checkpoint = (self.last_resume.as_ref() != Some(&resume)).then(|| {
            self.last_resume = Some(resume.clone());
            Checkpoint {
                server: self.identity.clone(),
                position: ResumePoint::Binlog(resume),
            }
        });
        metrics::gauge!(m::XA_PREPARED).set(self.assembler.prepared_len() as f64);
        Batch {
            changes,
            checkpoint,
        }
    }
}

impl ChangeSource for MysqlSource {
    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Batch> {
        if let Some(page) = self.reload.pop_front() {
            return Ok(Batch {
                changes: page,
                checkpoint: None,
            });
        }
        // Wait for the first event, then take whatever else is already here.
        self.read_one().await?;
        let mut events = 1;
        while self.assembler.ready_len() < max && events < EVENTS_PER_BATCH {
            match self.stream.next().now_or_never() {
                Some(event) => self.apply(event)?,
                None => break,
            }
            events += 1;
        }
        Ok(self.batch())
    }
}

/// Registers as a replica and requests the binlog from `start`.
async fn open_stream(
    mut conn: mysql_async::Conn,
    cfg: &MysqlConfig,
    facts: &ServerFacts,
    start: &BinlogPosition,
) -> anyhow::Result<mysql_async::BinlogStream> {
    conn.query_drop(format!(
        "SET @master_heartbeat_period = {}",
        HEARTBEAT.as_nanos()
    ))
    .await?;
    if facts.mariadb {
        // GTID events (4 = MARIA_SLAVE_CAPABILITY_GTID) mark transaction starts and XA groups;
        // without it MariaDB rewrites them as BEGIN queries and drops the XA flags.
        conn.query_drop("SET @mariadb_slave_capability = 4").await?;
    }
    let request = mysql_async::BinlogStreamRequest::new(cfg.server_id)
        .with_filename(start.file.as_bytes())
        .with_pos(start.pos);
    Ok(conn.get_binlog_stream(request).await?)
}
