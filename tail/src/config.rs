//! What the tailer follows and where it keeps its place, from one URL whose scheme picks the
//! database: [`TailConfig::from_url`] reads `mysql://` (MySQL/MariaDB, [`MysqlConfig`]) or
//! `postgres://` / `postgresql://` (PostgreSQL, [`crate::postgres::PostgresConfig`]).
//!
//! `mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE?server_id=N&table=T&ns_column=C&sjid_column=C&password_file=PATH`
//!
//! The tailer's own parameters are taken out of the query string; the rest goes to the MySQL
//! client unchanged. The password comes from the URL, else from `password_file`, else from the
//! environment variable [`PASSWORD_ENV`], so it need not be on a command line.

use anyhow::Context;
use std::path::PathBuf;

/// Environment variable holding the database password when neither the URL nor
/// `password_file` gives one.
pub const PASSWORD_ENV: &str = "HERALD_TAIL_PASSWORD";

/// Default journal table of the metaserver.
pub const DEFAULT_TABLE: &str = "server_file_journal";
/// Default namespace column.
pub const DEFAULT_NS_COLUMN: &str = "ns_id";
/// Default SJID column.
pub const DEFAULT_SJID_COLUMN: &str = "sj_id";
/// Default replication server id (must differ from every server's and replica's id).
pub const DEFAULT_SERVER_ID: u32 = 4_251_001;

/// The tailer's settings, per database.
#[derive(Clone, Debug)]
pub enum TailConfig {
    /// MySQL / MariaDB: the row-based binlog.
    Mysql(MysqlConfig),
    /// PostgreSQL: logical replication (`pgoutput`) from a replication slot.
    Postgres(crate::postgres::PostgresConfig),
}

impl TailConfig {
    /// Parses `url`, choosing the database by its scheme; the checkpoint lives at `checkpoint`.
    pub fn from_url(url: &str, checkpoint: PathBuf) -> anyhow::Result<Self> {
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        match scheme.to_ascii_lowercase().as_str() {
            "mysql" | "mariadb" => Ok(TailConfig::Mysql(MysqlConfig::from_url(url, checkpoint)?)),
            "postgres" | "postgresql" => Ok(TailConfig::Postgres(
                crate::postgres::PostgresConfig::from_url(url, checkpoint)?,
            )),
            _ => anyhow::bail!(
                "journal source URL: start it with mysql:// (MySQL/MariaDB binlog) or postgres:// (PostgreSQL logical replication)"
            ),
        }
    }

    /// File holding the resume point.
    #[must_use]
    pub fn checkpoint(&self) -> &std::path::Path {
        match self {
            TailConfig::Mysql(c) => &c.checkpoint,
            TailConfig::Postgres(c) => &c.checkpoint,
        }
    }

    /// Most changes handed to the sink at once.
    #[must_use]
    pub fn max_batch(&self) -> usize {
        match self {
            TailConfig::Mysql(c) => c.max_batch,
            TailConfig::Postgres(c) => c.max_batch,
        }
    }
}

/// The MySQL / MariaDB tailer's settings.
#[derive(Clone)]
pub struct MysqlConfig {
    /// Connection options of the MySQL client (credentials resolved).
    pub opts: mysql_async::Opts,
    /// Database (schema) of the journal table: the URL's path.
    pub database: String,
    /// Journal table.
    pub table: String,
    /// Namespace column (unsigned integer).
    pub ns_column: String,
    /// SJID column (unsigned integer).
    pub sjid_column: String,
    /// Replication server id announced to the database; unique among its replicas.
    pub server_id: u32,
    /// File holding the resume point.
    pub checkpoint: PathBuf,
    /// Rows per batch of a reload (`SELECT ns, MAX(sjid) … GROUP BY ns`, keyset paginated).
    pub reload_batch: usize,
    /// Most changes handed to the sink at once.
    pub max_batch: usize,
}

impl std::fmt::Debug for MysqlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlConfig")
            .field("host", &self.opts.ip_or_hostname())
            .field("port", &self.opts.tcp_port())
            .field("user", &self.opts.user())
            .field("database", &self.database)
            .field("table", &self.table)
            .field("ns_column", &self.ns_column)
            .field("sjid_column", &self.sjid_column)
            .field("server_id", &self.server_id)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl MysqlConfig {
    /// Parses a `mysql://` `url`; the checkpoint lives at `checkpoint`.
    pub fn from_url(url: &str, checkpoint: PathBuf) -> anyhow::Result<Self> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut table = DEFAULT_TABLE.to_owned();
        let mut ns_column = DEFAULT_NS_COLUMN.to_owned();
        let mut sjid_column = DEFAULT_SJID_COLUMN.to_owned();
        let mut server_id = DEFAULT_SERVER_ID;
        let mut password_file = None;
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "table" => table = identifier(k, v)?,
                "ns_column" => ns_column = identifier(k, v)?,
                "sjid_column" => sjid_column = identifier(k, v)?,
                "server_id" => {
                    server_id = v
                        .parse()
                        .ok()
                        .filter(|&id| id != 0)
                        .with_context(|| format!("server_id={v:?}: a replication server id is a non-zero u32, unique among the database's replicas"))?;
                }
                "password_file" => password_file = Some(PathBuf::from(v)),
                _ => passed.push(pair),
            }
        }
        let client_url = if passed.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", passed.join("&"))
        };
        let opts = mysql_async::Opts::from_url(&client_url)
            .map_err(|e| anyhow::anyhow!("journal source URL: {e}"))?;
        let database = opts
            .db_name()
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .context("journal source URL: name the journal table's database in the path (mysql://user@host:3306/DATABASE)")?;
        let mut builder = mysql_async::OptsBuilder::from_opts(opts.clone());
        if opts.pass().is_none() {
            if let Some(path) = password_file {
                let pass = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading password_file {}", path.display()))?;
                builder = builder.pass(Some(pass.trim_end_matches(['\n', '\r']).to_owned()));
            } else if let Ok(pass) = std::env::var(PASSWORD_ENV) {
                builder = builder.pass(Some(pass));
            }
        }
        Ok(MysqlConfig {
            opts: builder.into(),
            database,
            table,
            ns_column,
            sjid_column,
            server_id,
            checkpoint,
            reload_batch: 10_000,
            max_batch: 8_192,
        })
    }
}

/// A table or column name: quoted with backticks in SQL, so only refuse what cannot be quoted.
fn identifier(key: &str, value: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !value.is_empty() && !value.contains('`') && value.len() <= 64,
        "{key}={value:?}: a table or column name of 1 to 64 characters without backticks"
    );
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_parameters_are_taken_out() {
        let cfg = MysqlConfig::from_url(
            "mysql://herald:pw@127.0.0.1:3307/meta?table=j&ns_column=n&sjid_column=s&server_id=77&prefer_socket=false",
            "cp".into(),
        )
        .unwrap();
        assert_eq!(
            (
                cfg.database.as_str(),
                cfg.table.as_str(),
                cfg.ns_column.as_str(),
                cfg.sjid_column.as_str(),
                cfg.server_id
            ),
            ("meta", "j", "n", "s", 77)
        );
        assert_eq!(cfg.opts.pass(), Some("pw"));
        assert_eq!(cfg.opts.tcp_port(), 3307);
        assert!(!cfg.opts.prefer_socket());
        let defaults = MysqlConfig::from_url("mysql://u@h/meta", "cp".into()).unwrap();
        assert_eq!(defaults.table, DEFAULT_TABLE);
        assert_eq!(defaults.server_id, DEFAULT_SERVER_ID);
    }

    #[test]
    fn refusals_say_what_to_change() {
        let no_db = MysqlConfig::from_url("mysql://u@h:3306", "cp".into()).unwrap_err();
        assert!(no_db.to_string().contains("database"), "{no_db}");
        let bad_id = MysqlConfig::from_url("mysql://u@h/m?server_id=0", "cp".into()).unwrap_err();
        assert!(bad_id.to_string().contains("server_id"), "{bad_id}");
    }

    #[test]
    fn password_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let url = format!("mysql://u@h/m?password_file={}", file.display());
        let cfg = MysqlConfig::from_url(&url, "cp".into()).unwrap();
        assert_eq!(cfg.opts.pass(), Some("s3cret"));
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn scheme_picks_the_database() {
        assert!(matches!(
            TailConfig::from_url("mysql://u@h/m", "cp".into()).unwrap(),
            TailConfig::Mysql(_)
        ));
        assert!(matches!(
            TailConfig::from_url("postgres://u@h/m", "cp".into()).unwrap(),
            TailConfig::Postgres(_)
        ));
        let other = TailConfig::from_url("redis://h", "cp".into()).unwrap_err();
        assert!(other.to_string().contains("postgres://"), "{other}");
    }
}
