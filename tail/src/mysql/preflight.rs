//! Checks made before reading anything: the binlog is on, row-based with full row images, and
//! the journal table has its two unsigned integer columns. Each refusal says what to change.

use crate::config::MysqlConfig;
use mysql_async::prelude::Queryable;

/// A configuration the tailer cannot work with; retrying does not help, an operator must act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// What the checks learned about the server.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    /// MariaDB (true) or MySQL.
    pub mariadb: bool,
    /// `@@version`.
    pub version: String,
    /// Identity of the binlog's writer: a checkpoint made against another identity is not a
    /// position on this server (a new host, a restored backup) and leads to a reload.
    pub identity: String,
    /// 0-based positions of the namespace and SJID columns in the table, as row events number
    /// them when they carry no column names.
    pub ns_index: usize,
    /// See `ns_index`.
    pub sjid_index: usize,
    /// Number of columns of the table.
    pub columns: usize,
}

/// Runs every check on `conn`.
pub async fn check(
    conn: &mut mysql_async::Conn,
    cfg: &MysqlConfig,
) -> Result<ServerFacts, anyhow::Error> {
    let (log_bin, format, row_image, server_id, version): (String, String, String, u32, String) =
        conn.query_first(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@server_id, @@version",
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("the server answered no variables"))?;
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    if !matches!(log_bin.as_str(), "1" | "ON") {
        return Err(Refusal(format!(
            "the binary log is off on {version}: start the server with log_bin (for example `--log-bin --binlog-format=ROW --server-id=1`, or `log_bin = ON` in my.cnf) and restart it"
        ))
        .into());
    }
    if !format.eq_ignore_ascii_case("ROW") {
        return Err(Refusal(format!(
            "binlog_format is {format}, the tailer needs ROW: set `binlog_format = ROW` in my.cnf (or `SET GLOBAL binlog_format = 'ROW'` and reconnect the writers)"
        ))
        .into());
    }
    if !(row_image.eq_ignore_ascii_case("FULL") || row_image.eq_ignore_ascii_case("NOBLOB")) {
        return Err(Refusal(format!(
            "binlog_row_image is {row_image}: an UPDATE's image must carry both journal columns; set `binlog_row_image = FULL`"
        ))
        .into());
    }
    if server_id == cfg.server_id {
        return Err(Refusal(format!(
            "the tailer's server_id {} is the database's own @@server_id: pick another (URL parameter server_id=N), unique among the database's replicas",
            cfg.server_id
        ))
        .into());
    }
    let identity = if mariadb {
        format!("mariadb server_id={server_id}")
    } else {
        let uuid: Option<String> = conn.query_first("SELECT @@server_uuid").await?;
        format!("mysql server_uuid={}", uuid.unwrap_or_default())
    };

    let rows: Vec<(String, u64, String, String)> = conn
        .exec(
            "SELECT COLUMN_NAME, ORDINAL_POSITION, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&cfg.database, &cfg.table),
        )
        .await?;
    if rows.is_empty() {
        return Err(Refusal(format!(
            "table `{}`.`{}` not found (or the tailer's user lacks SELECT on it): create it, or name the journal table with the URL parameter table=NAME and grant SELECT on it",
            cfg.database, cfg.table
        ))
        .into());
    }
    let find = |name: &str| -> Result<usize, Refusal> {
        let (i, (_, _, data_type, column_type)) = rows
            .iter()
            .enumerate()
            .find(|(_, r)| r.0.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                let have: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
                Refusal(format!(
                    "table `{}`.`{}` has no column `{name}` (it has {}): name the column with the URL parameter ns_column= or sjid_column=",
                    cfg.database, cfg.table, have.join(", ")
                ))
            })?;
        let integer = matches!(
            data_type.to_ascii_lowercase().as_str(),
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
        );
        if !integer || !column_type.to_ascii_lowercase().contains("unsigned") {
            return Err(Refusal(format!(
                "column `{}`.`{name}` is {column_type}, the tailer needs an unsigned integer (up to 64 bits): `ALTER TABLE `{}` MODIFY `{name}` BIGINT UNSIGNED NOT NULL`",
                cfg.table, cfg.table
            )));
        }
        Ok(i)
    };
    let ns_index = find(&cfg.ns_column)?;
    let sjid_index = find(&cfg.sjid_column)?;
    Ok(ServerFacts {
        mariadb,
        version,
        identity,
        ns_index,
        sjid_index,
        columns: rows.len(),
    })
}

/// The binlog files the server still has, with their sizes (`SHOW BINARY LOGS`).
pub async fn binary_logs(conn: &mut mysql_async::Conn) -> anyhow::Result<Vec<(String, u64)>> {
    let rows: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await?;
    Ok(rows
        .into_iter()
        .filter_map(|mut r| Some((r.take::<String, _>(0)?, r.take::<u64, _>(1)?)))
        .collect())
}
