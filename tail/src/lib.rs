//! # herald-tail
//!
//! Committed means notified: the tailer follows the metaserver database's own commit stream
//! (the MySQL/MariaDB row-based binlog, or PostgreSQL logical replication) and feeds every committed change of the journal table
//! into Herald's journal, so no change is lost between the database commit and a publish.
//!
//! ```text
//!  MySQL/MariaDB ── binlog (as a replica: COM_BINLOG_DUMP, own server id) ──► mysql::decode
//!      table maps, rows of the journal table, transaction and XA ends
//!                     ▼
//!  assemble::Assembler   rows buffered per transaction; released at COMMIT / XA COMMIT,
//!                        dropped at ROLLBACK / XA ROLLBACK; commit order
//!                     ▼
//!  tailer::run ──► JournalSink::deliver (acknowledged = durable in the journal)
//!      │              jetstream::JetStreamSink: HERALD_JOURNAL, as a metaserver publishes
//!      │              herald-gateway --journal-source: its embedded journal
//!      ▼
//!  checkpoint: binlog file+position, stored (fsync, rename) only after the ack
//! ```
//!
//! PostgreSQL takes the same path from its own source: `pgoutput` over the replication protocol
//! (a publication on the journal table, a named slot), committed transactions only, in commit
//! order; the commit's end LSN is confirmed to the slot and stored as the checkpoint after the
//! sink's ack.
//!
//! A lost resume point (no checkpoint, binlog purged, another server) leads to a reload: the
//! latest SJID of every namespace from one consistent snapshot, then the binlog from the
//! position that snapshot matches.
//!
//! # Layout
//! - [`config`]: the URL (`mysql://` or `postgres://`) and the tailer's parameters.
//! - [`mysql`]: preflight refusals, reload, binlog decoding, [`mysql::MysqlSource`].
//! - [`postgres`]: the same for PostgreSQL (`pgoutput` from a replication slot, the LSN
//!   confirmed after the sink's ack), [`postgres::PostgresSource`].
//! - [`assemble`]: sans-IO transaction assembly (commit order, rollbacks, XA).
//! - [`source`]: [`ChangeSource`], what a database source provides; [`sink`]: [`JournalSink`].
//! - [`checkpoint`], [`position`]: the resume point and its durable storage.
//! - [`tailer`]: the loop ([`run`]); [`metrics`]: metric names.
//! - `jetstream` (feature `jetstream`): the distributed sink.
#![warn(missing_docs)]

pub mod assemble;
pub mod checkpoint;
pub mod config;
#[cfg(feature = "jetstream")]
pub mod jetstream;
pub mod metrics;
pub mod mysql;
pub mod position;
pub mod postgres;
pub mod sink;
pub mod source;
pub mod tailer;

pub use assemble::Change;
pub use checkpoint::Checkpoint;
pub use config::TailConfig;
pub use mysql::preflight::Refusal;
pub use position::{BinlogPosition, ResumePoint};
pub use sink::JournalSink;
pub use source::{Batch, ChangeSource};
pub use tailer::run;

/// Connects once and runs the preflight checks, so a program can refuse a misconfigured
/// database before it reports itself ready.
pub async fn preflight(cfg: &TailConfig) -> anyhow::Result<()> {
    match cfg {
        TailConfig::Mysql(cfg) => {
            let mut conn = mysql_async::Conn::new(cfg.opts.clone()).await?;
            mysql::preflight::check(&mut conn, cfg).await?;
            let _ = conn.disconnect().await;
        }
        TailConfig::Postgres(cfg) => postgres::preflight::check_only(cfg).await?,
    }
    Ok(())
}
