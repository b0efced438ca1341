//! The PostgreSQL tailer's settings, from one `postgres://` URL:
//!
//! `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE?table=T&schema=S&ns_column=C&sjid_column=C&slot=NAME&publication=NAME&password_file=PATH`
//!
//! (`postgresql://` works too; `host=/socket/dir` in the query connects over a Unix socket.)
//! The password comes from the URL, else from `password_file`, else from the environment
//! variable [`crate::config::PASSWORD_ENV`], so it need not be on a command line.

use crate::config::{DEFAULT_NS_COLUMN, DEFAULT_SJID_COLUMN, DEFAULT_TABLE, PASSWORD_ENV};
use anyhow::Context;
use std::path::PathBuf;

/// Default replication slot of the tailer (one per tailer and journal).
pub const DEFAULT_SLOT: &str = "herald_tail";
/// Default publication on the journal table.
pub const DEFAULT_PUBLICATION: &str = "herald_journal";
/// Default schema of the journal table.
pub const DEFAULT_SCHEMA: &str = "public";
/// Default port.
pub const DEFAULT_PORT: u16 = 5432;

/// The PostgreSQL tailer's settings.
#[derive(Clone)]
pub struct PostgresConfig {
    /// Host name or address, or a Unix socket directory (starting with `/`).
    pub host: String,
    /// TCP port (also names the Unix socket `.s.PGSQL.<port>`).
    pub port: u16,
    /// Role; it needs `REPLICATION` (or superuser) and `SELECT` on the table.
    pub user: String,
    /// Password (empty for trust or peer authentication).
    pub password: String,
    /// Database of the journal table.
    pub database: String,
    /// Schema of the journal table.
    pub schema: String,
    /// Journal table.
    pub table: String,
    /// Namespace column (`bigint` or `numeric`).
    pub ns_column: String,
    /// SJID column (`bigint` or `numeric`).
    pub sjid_column: String,
    /// Logical replication slot: keeps this tailer's position on the server.
    pub slot: String,
    /// Publication on the journal table (`publish = 'insert, update'`).
    pub publication: String,
    /// File holding the resume point.
    pub checkpoint: PathBuf,
    /// Namespaces per page of a reload (`SELECT ns, MAX(sjid) … GROUP BY ns`, keyset paginated).
    pub reload_batch: usize,
    /// Most changes handed to the sink at once.
    pub max_batch: usize,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("ns_column", &self.ns_column)
            .field("sjid_column", &self.sjid_column)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// Parses a `postgres://` `url`; the checkpoint lives at `checkpoint`.
    pub fn from_url(url: &str, checkpoint: PathBuf) -> anyhow::Result<Self> {
        let rest = url
            .split_once("://")
            .filter(|(s, _)| matches!(s.to_ascii_lowercase().as_str(), "postgres" | "postgresql"))
            .map(|(_, r)| r)
            .context("journal source URL: expected postgres://USER@HOST:PORT/DATABASE")?;
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, database) = base.split_once('/').unwrap_or((base, ""));
        let database = decode(database)?;
        anyhow::ensure!(
            !database.is_empty(),
            "journal source URL: name the journal table's database in the path (postgres://user@host:5432/DATABASE)"
        );
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (decode(u)?, Some(decode(p)?)),
                None => (decode(u)?, None),
            },
            None => (String::new(), None),
        };
        anyhow::ensure!(
            !user.is_empty(),
            "journal source URL: name the role (postgres://USER@host/database); it needs REPLICATION and SELECT on the journal table"
        );
        let port_of = |p: &str| -> anyhow::Result<u16> {
            p.parse()
                .with_context(|| format!("journal source URL: port {p:?} is not a number"))
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, tail) = v6
                .split_once(']')
                .context("journal source URL: unclosed [ in the host")?;
            match tail.strip_prefix(':') {
                Some(p) => (h.to_owned(), port_of(p)?),
                None => (h.to_owned(), DEFAULT_PORT),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), port_of(p)?),
                None => (hostport.to_owned(), DEFAULT_PORT),
            }
        };
        let host = if host.is_empty() {
            "127.0.0.1".to_owned()
        } else {
            host
        };

        let mut cfg = PostgresConfig {
            host,
            port,
            user,
            password: String::new(),
            database,
            schema: DEFAULT_SCHEMA.to_owned(),
            table: DEFAULT_TABLE.to_owned(),
            ns_column: DEFAULT_NS_COLUMN.to_owned(),
            sjid_column: DEFAULT_SJID_COLUMN.to_owned(),
            slot: DEFAULT_SLOT.to_owned(),
            publication: DEFAULT_PUBLICATION.to_owned(),
            checkpoint,
            reload_batch: 10_000,
            max_batch: 8_192,
        };
        let mut password_file = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v)?;
            match k {
                "table" => cfg.table = identifier(k, &v)?,
                "schema" => cfg.schema = identifier(k, &v)?,
                "ns_column" => cfg.ns_column = identifier(k, &v)?,
                "sjid_column" => cfg.sjid_column = identifier(k, &v)?,
                "publication" => cfg.publication = identifier(k, &v)?,
                "slot" => cfg.slot = slot_name(&v)?,
                "host" => cfg.host = v,
                "password_file" => password_file = Some(PathBuf::from(v)),
                "sslmode" if matches!(v.as_str(), "disable" | "allow" | "prefer") => {}
                "sslmode" => anyhow::bail!(
                    "sslmode={v}: this build of herald-tail connects to PostgreSQL without TLS; run it beside the database (loopback or a Unix socket) or through a TLS tunnel, and use sslmode=disable"
                ),
                _ => anyhow::bail!(
                    "journal source URL: unknown parameter {k:?} (known: table, schema, ns_column, sjid_column, slot, publication, host, password_file, sslmode)"
                ),
            }
        }
        cfg.password = match (password, password_file) {
            (Some(p), _) => p,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .with_context(|| format!("reading password_file {}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            (None, None) => std::env::var(PASSWORD_ENV).unwrap_or_default(),
        };
        Ok(cfg)
    }

    /// `"schema"."table"`, quoted for SQL.
    #[must_use]
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

/// Percent-decoding of URL parts (`%40` → `@`).
fn decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .with_context(|| format!("journal source URL: bad percent-escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("journal source URL: not UTF-8 after percent-decoding")
}

/// A table, schema, column or publication name: quoted with double quotes in SQL, so only
/// refuse what cannot be quoted safely or is longer than PostgreSQL keeps.
fn identifier(key: &str, value: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !value.is_empty() && !value.contains(['"', '\0']) && value.len() <= 63,
        "{key}={value:?}: a name of 1 to 63 bytes without double quotes"
    );
    Ok(value.to_owned())
}

/// A replication slot name as PostgreSQL requires it.
fn slot_name(value: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !value.is_empty()
            && value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "slot={value:?}: a replication slot name is 1 to 63 characters of a-z, 0-9 and _"
    );
    Ok(value.to_owned())
}

/// `"name"` for SQL (names are checked to hold no double quote).
#[must_use]
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` for SQL (`standard_conforming_strings` is on since PostgreSQL 9.1).
#[must_use]
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_parameters_and_defaults() {
        let cfg = PostgresConfig::from_url(
            "postgres://herald:p%40ss@127.0.0.1:5433/meta?table=j&schema=s&ns_column=n&sjid_column=v&slot=tail_1&publication=pub",
            "cp".into(),
        )
        .unwrap();
        assert_eq!(
            (
                cfg.host.as_str(),
                cfg.port,
                cfg.user.as_str(),
                cfg.password.as_str(),
                cfg.database.as_str()
            ),
            ("127.0.0.1", 5433, "herald", "p@ss", "meta")
        );
        assert_eq!(
            (
                cfg.schema.as_str(),
                cfg.table.as_str(),
                cfg.ns_column.as_str(),
                cfg.sjid_column.as_str(),
                cfg.slot.as_str(),
                cfg.publication.as_str()
            ),
            ("s", "j", "n", "v", "tail_1", "pub")
        );
        assert_eq!(cfg.qualified_table(), "\"s\".\"j\"");
        assert!(!format!("{cfg:?}").contains("p@ss"));
        let d = PostgresConfig::from_url("postgresql://u@db/meta", "cp".into()).unwrap();
        assert_eq!((d.host.as_str(), d.port), ("db", DEFAULT_PORT));
        assert_eq!(
            (d.table.as_str(), d.slot.as_str(), d.publication.as_str()),
            (DEFAULT_TABLE, DEFAULT_SLOT, DEFAULT_PUBLICATION)
        );
        let sock =
            PostgresConfig::from_url("postgres://u@x/meta?host=/run/pg", "cp".into()).unwrap();
        assert_eq!(sock.host, "/run/pg");
    }

    #[test]
    fn refusals_say_what_to_change() {
        let err = |url: &str| {
            PostgresConfig::from_url(url, "cp".into())
                .unwrap_err()
                .to_string()
        };
        assert!(err("postgres://u@h:5432").contains("database"));
        assert!(err("postgres://u@h/m?slot=Bad-Name").contains("a-z"));
        assert!(err("postgres://u@h/m?sslmode=require").contains("TLS"));
        assert!(err("postgres://u@h/m?tabel=x").contains("unknown parameter"));
        assert!(err("postgres://h/m").contains("REPLICATION"));
    }

    #[test]
    fn password_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let url = format!("postgres://u@h/m?password_file={}", file.display());
        let cfg = PostgresConfig::from_url(&url, "cp".into()).unwrap();
        assert_eq!(cfg.password, "s3cret");
    }
}
