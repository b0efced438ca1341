//! Checks made before streaming, on the replication session itself (so what they read describes
//! the server the stream then opens on): the role may replicate, `wal_level` is `logical`, the
//! journal table has its two columns with types that hold SJIDs and a replica identity, and the
//! publication publishes its inserts and updates (created when missing and the role may). Each
//! refusal says what to change.

use super::config::{PostgresConfig, quote_ident, quote_literal};
use crate::mysql::preflight::Refusal;
use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationConfig};
use std::time::Duration;

/// What the checks learned about the server.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    /// `SHOW server_version`.
    pub version: String,
    /// `postgres system_id=… db=…`: a checkpoint of another identity (a new host, a restored
    /// cluster) is no position on this server and leads to a reload.
    pub identity: String,
}

/// The replication slot as the server has it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// Whether a session streams from it now.
    pub active: bool,
    /// `confirmed_flush_lsn`: what the server knows this tailer has acknowledged.
    pub confirmed_flush: Option<u64>,
    /// `wal_status = 'lost'`: the server removed WAL the slot needed (`max_slot_wal_keep_size`);
    /// it can never stream again and is as good as missing.
    pub lost: bool,
}

/// Opens an authenticated replication session (`replication=database`) that waits, so queries
/// and replication commands can run before `START_REPLICATION`. The stream will start at
/// `start`: the server streams from the slot's `confirmed_flush_lsn` or `start`, whichever is
/// later, skipping transactions that committed before `start` (0: from the slot's position).
/// `start` is also the flush position reported until the first acknowledgement, so it must be
/// a point the journal holds everything before.
pub async fn connect(cfg: &PostgresConfig, start: u64) -> anyhow::Result<ReplicationClient> {
    let rc = ReplicationConfig::new(
        cfg.host.clone(),
        cfg.user.clone(),
        cfg.password.clone(),
        cfg.database.clone(),
        cfg.slot.clone(),
        cfg.publication.clone(),
    )
    .with_port(cfg.port)
    .with_start_lsn(Lsn(start))
    // An acknowledged LSN reaches the slot within a second; idle sessions still report.
    .with_status_interval(Duration::from_secs(1))
    .with_wakeup_interval(Duration::from_secs(5))
    .with_application_name("herald-tail");
    ReplicationClient::connect_gated(rc)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL: {e}"))
}

/// A query's rows as text (`None` for NULL).
pub async fn query(
    client: &mut ReplicationClient,
    sql: &str,
) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let rows = client
        .simple_query(sql)
        .await
        .map_err(|e| classify(e, sql))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                .collect()
        })
        .collect())
}

/// The first column of the first row.
async fn scalar(client: &mut ReplicationClient, sql: &str) -> anyhow::Result<Option<String>> {
    Ok(query(client, sql)
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten()))
}

/// Turns the errors an operator must fix into [`Refusal`]s.
fn classify(e: PgWireError, sql: &str) -> anyhow::Error {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    if lower.contains("replication role")
        || lower.contains("start wal sender")
        || lower.contains("replication attribute")
    {
        return Refusal(format!(
            "the tailer's role may not stream changes ({text}): `ALTER ROLE <role> REPLICATION` (or connect as a role that has it), and allow it in pg_hba.conf"
        ))
        .into();
    }
    if lower.contains("does not exist") && lower.contains("database") {
        return Refusal(format!(
            "{text}: name the journal table's database in the URL path (postgres://user@host/DATABASE)"
        ))
        .into();
    }
    anyhow::anyhow!("PostgreSQL: {text} (running {sql:?})")
}

/// Connects, runs every check, and closes the session: for a program that must refuse a
/// misconfigured database before it reports itself ready.
pub async fn check_only(cfg: &PostgresConfig) -> anyhow::Result<()> {
    let mut client = connect(cfg, 0).await?;
    check(&mut client, cfg).await?;
    drop(client);
    Ok(())
}

/// Runs every check on a gated session.
pub async fn check(
    client: &mut ReplicationClient,
    cfg: &PostgresConfig,
) -> anyhow::Result<ServerFacts> {
    let system = client
        .identify_system()
        .await
        .map_err(|e| classify(e, "IDENTIFY_SYSTEM"))?;
    let version = scalar(client, "SHOW server_version")
        .await?
        .unwrap_or_default();
    let wal_level = scalar(client, "SHOW wal_level").await?.unwrap_or_default();
    if wal_level != "logical" {
        return Err(Refusal(format!(
            "wal_level is {wal_level} on PostgreSQL {version}, the tailer needs logical: `ALTER SYSTEM SET wal_level = logical` (or wal_level = logical in postgresql.conf) and restart the server"
        ))
        .into());
    }
    check_table(client, cfg).await?;
    check_publication(client, cfg).await?;
    Ok(ServerFacts {
        identity: format!(
            "postgres system_id={} db={}",
            system.system_id, cfg.database
        ),
        version,
    })
}

/// The two columns exist with types that hold SJIDs, and updates can be published.
async fn check_table(client: &mut ReplicationClient, cfg: &PostgresConfig) -> anyhow::Result<()> {
    let table = format!("{}.{}", cfg.schema, cfg.table);
    let columns = query(
        client,
        &format!(
            "SELECT column_name, data_type, numeric_precision::text, numeric_scale::text \
             FROM information_schema.columns WHERE table_schema = {} AND table_name = {} \
             ORDER BY ordinal_position",
            quote_literal(&cfg.schema),
            quote_literal(&cfg.table)
        ),
    )
    .await?;
    if columns.is_empty() {
        return Err(Refusal(format!(
            "table {table} not found in database {} (or the tailer's role lacks SELECT on it): create it, or name the journal table with the URL parameters table= and schema=, and `GRANT SELECT ON {} TO <role>`",
            cfg.database,
            cfg.qualified_table()
        ))
        .into());
    }
    for wanted in [&cfg.ns_column, &cfg.sjid_column] {
        let Some(col) = columns
            .iter()
            .find(|c| c.first().and_then(|n| n.as_deref()) == Some(wanted.as_str()))
        else {
            let have: Vec<&str> = columns
                .iter()
                .filter_map(|c| c.first().and_then(|n| n.as_deref()))
                .collect();
            return Err(Refusal(format!(
                "table {table} has no column {wanted} (it has {}): name the columns with the URL parameters ns_column= and sjid_column=",
                have.join(", ")
            ))
            .into());
        };
        let text = |i: usize| col.get(i).cloned().flatten();
        let data_type = text(1).unwrap_or_default();
        let precision = text(2).and_then(|p| p.parse::<u32>().ok());
        let scale = text(3).and_then(|s| s.parse::<u32>().ok());
        let holds_sjids = match data_type.as_str() {
            "bigint" => true,
            // numeric(p, 0) with p ≥ 20 holds every u64; unconstrained numeric too.
            "numeric" => scale.unwrap_or(0) == 0 && precision.is_none_or(|p| p >= 20),
            _ => false,
        };
        if !holds_sjids {
            let shown = match (data_type.as_str(), precision, scale) {
                ("numeric", Some(p), Some(s)) => format!("numeric({p},{s})"),
                (t, _, _) => t.to_owned(),
            };
            return Err(Refusal(format!(
                "column {table}.{wanted} is {shown}, the tailer needs bigint (SJIDs up to 2^63-1) or numeric(20,0) (every unsigned 64-bit SJID): `ALTER TABLE {} ALTER COLUMN {} TYPE bigint`",
                cfg.qualified_table(),
                quote_ident(wanted)
            ))
            .into());
        }
    }
    // A table without a replica identity in a publication that publishes updates makes every
    // UPDATE on it fail on the primary: refuse before adding it to one.
    let identity = query(
        client,
        &format!(
            "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {}",
            quote_literal(&cfg.schema),
            quote_literal(&cfg.table)
        ),
    )
    .await?;
    let row = identity.into_iter().next().unwrap_or_default();
    let replident = row.first().cloned().flatten().unwrap_or_default();
    let has_pk = row.get(1).cloned().flatten().as_deref() == Some("true");
    if replident == "n" || (replident == "d" && !has_pk) {
        return Err(Refusal(format!(
            "table {table} has no replica identity (no primary key, or REPLICA IDENTITY NOTHING): in a publication of updates its UPDATEs would fail; add a primary key or `ALTER TABLE {} REPLICA IDENTITY FULL`",
            cfg.qualified_table()
        ))
        .into());
    }
    Ok(())
}

/// The publication exists (created here when missing), covers the table, and publishes inserts
/// and updates.
async fn check_publication(
    client: &mut ReplicationClient,
    cfg: &PostgresConfig,
) -> anyhow::Result<()> {
    let create = format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update')",
        quote_ident(&cfg.publication),
        cfg.qualified_table()
    );
    let found = query(
        client,
        &format!(
            "SELECT pubinsert::text, pubupdate::text FROM pg_publication WHERE pubname = {}",
            quote_literal(&cfg.publication)
        ),
    )
    .await?;
    let Some(row) = found.into_iter().next() else {
        return match query(client, &create).await {
            Ok(_) => {
                tracing::info!(publication = %cfg.publication, table = %cfg.qualified_table(), "created the publication");
                Ok(())
            }
            Err(e) => Err(Refusal(format!(
                "publication {} does not exist and the tailer's role could not create it ({e:#}): as the table's owner run `{create}`",
                cfg.publication
            ))
            .into()),
        };
    };
    let yes = |i: usize| row.get(i).cloned().flatten().as_deref() == Some("true");
    if !(yes(0) && yes(1)) {
        return Err(Refusal(format!(
            "publication {} does not publish both inserts and updates: `ALTER PUBLICATION {} SET (publish = 'insert, update')`",
            cfg.publication,
            quote_ident(&cfg.publication)
        ))
        .into());
    }
    let covered = scalar(
        client,
        &format!(
            "SELECT count(*)::text FROM pg_publication_tables WHERE pubname = {} AND schemaname = {} AND tablename = {}",
            quote_literal(&cfg.publication),
            quote_literal(&cfg.schema),
            quote_literal(&cfg.table)
        ),
    )
    .await?;
    if covered.as_deref() != Some("1") {
        return Err(Refusal(format!(
            "publication {} does not include {}.{}: `ALTER PUBLICATION {} ADD TABLE {}`",
            cfg.publication,
            cfg.schema,
            cfg.table,
            quote_ident(&cfg.publication),
            cfg.qualified_table()
        ))
        .into());
    }
    Ok(())
}

/// The tailer's replication slot, if the server has it; refuses a slot of that name that is
/// not a `pgoutput` slot of this database (someone else's).
pub async fn slot(
    client: &mut ReplicationClient,
    cfg: &PostgresConfig,
) -> anyhow::Result<Option<SlotInfo>> {
    let rows = query(
        client,
        &format!(
            "SELECT plugin, database, active::text, confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = {}",
            quote_literal(&cfg.slot)
        ),
    )
    .await?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let text = |i: usize| row.get(i).cloned().flatten();
    if text(0).as_deref() != Some("pgoutput") || text(1).as_deref() != Some(cfg.database.as_str()) {
        return Err(Refusal(format!(
            "replication slot {} exists but is not a pgoutput slot of database {} (plugin {:?}, database {:?}): pick another slot name with the URL parameter slot=",
            cfg.slot,
            cfg.database,
            text(0),
            text(1)
        ))
        .into());
    }
    Ok(Some(SlotInfo {
        active: text(2).as_deref() == Some("true"),
        confirmed_flush: text(3).and_then(|l| crate::position::parse_lsn(&l)),
        lost: text(4).as_deref() == Some("lost"),
    }))
}
