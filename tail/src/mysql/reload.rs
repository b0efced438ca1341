//! The reload after a lost position: the latest SJID of every namespace, read from the table
//! in one consistent snapshot, together with the binlog position that snapshot corresponds to.
//! Streaming then continues from that position, so nothing committed is skipped: what the
//! snapshot saw is published by the reload, what committed after it is in the binlog after the
//! position (a change in both is published twice, which merge-is-max makes harmless).

use super::preflight::ServerFacts;
use crate::assemble::Change;
use crate::config::MysqlConfig;
use crate::position::BinlogPosition;
use mysql_async::prelude::Queryable;

/// What a reload read.
#[derive(Debug)]
pub struct Reload {
    /// `(ns, max sjid)` of every namespace, in namespace order.
    pub latest: Vec<Change>,
    /// The binlog position the snapshot is consistent with.
    pub position: BinlogPosition,
}

/// Reads the table's latest SJIDs and the matching binlog position.
///
/// MariaDB (and Percona Server) report the binlog position of a
/// `START TRANSACTION WITH CONSISTENT SNAPSHOT` in `binlog_snapshot_file/position` without any
/// lock. Plain MySQL has no such status: there the tailer takes `LOCK TABLES <journal> READ` for
/// the instant of reading the binlog position (every transaction written to the binlog before it
/// that touched the table has then finished committing), releases it, and opens the snapshot,
/// which therefore sees at least everything before the position.
pub async fn reload(
    conn: &mut mysql_async::Conn,
    cfg: &MysqlConfig,
    facts: &ServerFacts,
) -> anyhow::Result<Reload> {
    let table = format!("`{}`.`{}`", cfg.database, cfg.table);
    conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await?;
    let position = if facts.mariadb {
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await?;
        let rows: Vec<(String, String)> =
            conn.query("SHOW STATUS LIKE 'binlog_snapshot_%'").await?;
        let get = |name: &str| rows.iter().find(|r| r.0 == name).map(|r| r.1.clone());
        match (get("Binlog_snapshot_file"), get("Binlog_snapshot_position")) {
            (Some(file), Some(pos)) if !file.is_empty() => BinlogPosition::new(file, pos.parse()?),
            _ => anyhow::bail!("the server reports no binlog_snapshot_file/position"),
        }
    } else {
        conn.query_drop(format!("LOCK TABLES {table} READ")).await?;
        let status = match conn
            .query_first::<mysql_async::Row, _>("SHOW BINARY LOG STATUS")
            .await
        {
            Ok(row) => row,
            Err(_) => conn.query_first("SHOW MASTER STATUS").await?,
        };
        conn.query_drop("UNLOCK TABLES").await?;
        let mut status = status.ok_or_else(|| anyhow::anyhow!("no binary log status"))?;
        let file: String = status.take(0).unwrap_or_default();
        let pos: u64 = status.take(1).unwrap_or_default();
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await?;
        BinlogPosition::new(file, pos)
    };

    let query = format!(
        "SELECT `{ns}`, MAX(`{sj}`) FROM {table} WHERE `{ns}` > ? GROUP BY `{ns}` ORDER BY `{ns}` LIMIT {limit}",
        ns = cfg.ns_column,
        sj = cfg.sjid_column,
        limit = cfg.reload_batch.max(1),
    );
    let first = format!(
        "SELECT `{ns}`, MAX(`{sj}`) FROM {table} GROUP BY `{ns}` ORDER BY `{ns}` LIMIT {limit}",
        ns = cfg.ns_column,
        sj = cfg.sjid_column,
        limit = cfg.reload_batch.max(1),
    );
    let mut latest: Vec<Change> = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let page: Vec<(u64, Option<u64>)> = match after {
            None => conn.query(&first).await?,
            Some(ns) => conn.exec(&query, (ns,)).await?,
        };
        let full = page.len() >= cfg.reload_batch.max(1);
        after = page.last().map(|p| p.0).or(after);
        latest.extend(
            page.into_iter()
                .filter_map(|(ns, sj)| sj.filter(|&s| s > 0).map(|s| (ns, s))),
        );
        if !full {
            break;
        }
    }
    conn.query_drop("COMMIT").await?;
    Ok(Reload { latest, position })
}
