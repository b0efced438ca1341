//! The reload after a lost position (no checkpoint, another server, the slot dropped): the
//! slot is (re)created and the latest SJID of every namespace is read in the very snapshot the
//! slot starts from, so nothing committed is skipped: what the snapshot saw is published by
//! the reload, what committed after it is streamed from the slot's consistent point.
//!
//! `CREATE_REPLICATION_SLOT … LOGICAL pgoutput USE_SNAPSHOT`, the first command of a
//! `REPEATABLE READ` transaction on the replication session, makes that transaction's snapshot
//! the slot's own (the same snapshot `EXPORT_SNAPSHOT` + `SET TRANSACTION SNAPSHOT` would give
//! a second connection, without holding one open); the pages are read in it, and
//! `START_REPLICATION` then runs on the same session, from the slot's consistent point.

use super::config::{PostgresConfig, quote_ident, quote_literal};
use super::decode::parse_u64;
use super::preflight::query;
use crate::assemble::Change;
use crate::metrics as m;
use pgwire_replication::ReplicationClient;

/// What a reload read.
#[derive(Debug)]
pub struct Reload {
    /// `(ns, max sjid)` of every namespace, in namespace order.
    pub latest: Vec<Change>,
    /// The slot's consistent point: streaming from it follows the snapshot exactly.
    pub consistent_point: u64,
}

/// Drops the tailer's slot if the server has it (`drop_existing`), creates it, and reads the
/// table in the slot's snapshot.
pub async fn reload(
    client: &mut ReplicationClient,
    cfg: &PostgresConfig,
    drop_existing: bool,
) -> anyhow::Result<Reload> {
    if drop_existing {
        // Fails while another session streams from it: then the session is retried.
        query(
            client,
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}",
                quote_literal(&cfg.slot)
            ),
        )
        .await?;
    }
    query(client, "BEGIN ISOLATION LEVEL REPEATABLE READ").await?;
    let created = query(
        client,
        &format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput USE_SNAPSHOT",
            quote_ident(&cfg.slot)
        ),
    )
    .await?;
    let consistent_point = created
        .first()
        .and_then(|r| r.get(1).cloned().flatten())
        .and_then(|l| crate::position::parse_lsn(&l))
        .ok_or_else(|| anyhow::anyhow!("CREATE_REPLICATION_SLOT returned no consistent point"))?;

    let ns = quote_ident(&cfg.ns_column);
    let sj = quote_ident(&cfg.sjid_column);
    let limit = cfg.reload_batch.max(1);
    let mut latest: Vec<Change> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let filter = after
            .as_deref()
            .map(|a| format!("WHERE {ns} > {}", quote_literal(a)))
            .unwrap_or_default();
        let page = query(
            client,
            &format!(
                "SELECT {ns}::text, MAX({sj})::text FROM {} {filter} GROUP BY {ns} ORDER BY {ns} LIMIT {limit}",
                cfg.qualified_table()
            ),
        )
        .await?;
        let full = page.len() >= limit;
        if let Some(last) = page.last().and_then(|r| r.first().cloned().flatten()) {
            after = Some(last);
        }
        for row in page {
            let value = |i: usize| {
                row.get(i)
                    .and_then(|v| v.as_deref())
                    .and_then(|t| parse_u64(t.as_bytes()))
            };
            match (value(0), value(1)) {
                (Some(ns), Some(sjid)) if sjid > 0 => latest.push((ns, sjid)),
                (Some(_), Some(_)) => {}
                _ => metrics::counter!(m::ROWS_SKIPPED).increment(1),
            }
        }
        if !full {
            break;
        }
    }
    query(client, "COMMIT").await?;
    Ok(Reload {
        latest,
        consistent_point,
    })
}
