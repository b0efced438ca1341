//! [`Postgres`]: a private `postgres` per test, on a free loopback port with a throwaway data
//! directory and socket directory, stopped by pid (SIGKILL) when dropped. Never the machine's
//! shared server.
//!
//! `initdb` runs once per test binary into a template directory, which every server then
//! copies. PostgreSQL refuses to run as root, so under root both run as the `postgres` system
//! user (the Debian package's; `ops/test-tail.sh` installs `postgresql` when missing). Local
//! (socket) connections trust; TCP connections need a password (SCRAM), so the tailer's own
//! login is exercised as in production. The tests write SQL with `psql` over the socket.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The journal database every test uses.
pub const DATABASE: &str = "meta";
/// The tailer's role: LOGIN REPLICATION, SELECT on the journal table (the runbook's grants).
pub const TAIL_USER: &str = "herald_tail";
/// Its password.
pub const TAIL_PASSWORD: &str = "tail-pw";
/// Password of the superuser `postgres` over TCP.
pub const SUPER_PASSWORD: &str = "super-pw";

/// A PostgreSQL program (`/usr/local/bin` or the Debian package's directory).
#[must_use]
pub fn binary(name: &str) -> PathBuf {
    for dir in [
        "/usr/local/bin",
        "/usr/lib/postgresql/17/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/15/bin",
        "/usr/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found: install the Debian package postgresql (ops/test-tail.sh does)");
}

/// Under root: the uid and gid of the `postgres` user the server runs as.
fn run_as() -> Option<(u32, u32)> {
    let id = |flag: &str, user: Option<&str>| -> Option<u32> {
        let out = Command::new("id").arg(flag).args(user).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u", None)? != 0 {
        return None;
    }
    Some((
        id("-u", Some("postgres")).expect("a `postgres` system user to run the server as"),
        id("-g", Some("postgres")).expect("its group"),
    ))
}

/// A command that runs as the server's user.
fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = run_as() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A temporary directory the server's user owns.
fn owned_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir");
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the tempdir");
    }
    dir
}

/// The initialised data directory all servers copy.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let dir = owned_tempdir("herald-pg-template-");
            let out = command(&binary("initdb"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .args(["-U", "postgres", "-E", "UTF8", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .output()
                .expect("run initdb");
            assert!(
                out.status.success(),
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            dir
        })
        .path()
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local_addr").port()
}

/// A private PostgreSQL server.
pub struct Postgres {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    /// `-c name=value` settings of the server.
    settings: Vec<String>,
}

impl Postgres {
    /// A server with `wal_level=logical`.
    pub async fn start() -> Self {
        Self::start_with_settings(&[]).await
    }

    /// A server with this `wal_level`.
    pub async fn start_with(wal_level: &str) -> Self {
        Self::start_with_settings(&[&format!("wal_level={wal_level}")]).await
    }

    /// A server with these `-c name=value` settings (after the defaults: `wal_level=logical`).
    pub async fn start_with_settings(settings: &[&str]) -> Self {
        let dir = owned_tempdir("herald-pg-");
        let status = Command::new("cp")
            .arg("-a")
            .arg(template().join("data"))
            .arg(dir.path().join("data"))
            .status()
            .expect("cp");
        assert!(status.success(), "copying the template data directory");
        let mut db = Postgres {
            child: None,
            dir,
            port: free_port(),
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
        };
        db.spawn();
        db.wait_ready().await;
        db.sql_in("postgres", &format!("CREATE DATABASE {DATABASE}"));
        db.sql_in(
            "postgres",
            &format!("ALTER ROLE postgres PASSWORD '{SUPER_PASSWORD}'"),
        );
        db
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("postgres.log"))
            .expect("open the server log");
        let mut cmd = command(&binary("postgres"));
        cmd.arg("-D")
            .arg(d.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(d)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "wal_level=logical"])
            .args(["-c", "max_wal_senders=10", "-c", "max_replication_slots=10"])
            .args(["-c", "fsync=off", "-c", "shared_buffers=16MB"])
            .args(["-c", "wal_sender_timeout=10s"]);
        for setting in &self.settings {
            cmd.arg("-c").arg(setting);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().expect("spawn postgres"));
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.try_sql_in("postgres", "SELECT 1").is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("postgres exited with {status}: {}", self.log_tail(30));
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within {START_TIMEOUT:?}: {}",
                self.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `sql` (one or more statements) in `database` as the superuser over the socket.
    pub fn try_sql_in(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(binary("psql"))
            .arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", database])
            .args(["-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// An interactive `psql` in the journal database (statements written to its stdin), for a
    /// transaction held open across other commits. The caller closes stdin and waits for it.
    #[must_use]
    pub fn psql_session(&self) -> Child {
        Command::new(binary("psql"))
            .arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", DATABASE])
            .args(["-v", "ON_ERROR_STOP=1", "-qAtX"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn psql")
    }

    /// Like [`Self::try_sql_in`], panicking on an error.
    pub fn sql_in(&self, database: &str, sql: &str) -> String {
        self.try_sql_in(database, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs `sql` in the journal database as the superuser.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_in(DATABASE, sql)
    }

    /// Creates `table` with `ns_id`/`sj_id` columns of `column_type` (and a primary key), the
    /// tailer's role with the runbook's grants, and the publication on the table
    /// (`herald_journal` for `server_file_journal`, `<table>_pub` for another table).
    pub fn create_journal(&self, table: &str, column_type: &str) {
        self.sql(&format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, ns_id {column_type} NOT NULL, \
             sj_id {column_type} NOT NULL, note text); \
             CREATE INDEX ON {table} (ns_id, sj_id)"
        ));
        self.sql(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{TAIL_USER}') THEN \
             CREATE ROLE {TAIL_USER} LOGIN REPLICATION PASSWORD '{TAIL_PASSWORD}'; END IF; END $$; \
             GRANT SELECT ON {table} TO {TAIL_USER}"
        ));
        let publication = if table == "server_file_journal" {
            "herald_journal".to_owned()
        } else {
            format!("{table}_pub")
        };
        self.sql(&format!(
            "CREATE PUBLICATION {publication} FOR TABLE {table} WITH (publish = 'insert, update')"
        ));
    }

    /// The tailer's URL (its own role and password, over TCP), with `params` appended.
    #[must_use]
    pub fn tail_url(&self, params: &str) -> String {
        let q = if params.is_empty() { "" } else { "?" };
        format!(
            "postgres://{TAIL_USER}:{TAIL_PASSWORD}@127.0.0.1:{}/{DATABASE}{q}{params}",
            self.port
        )
    }

    /// The superuser's URL, with `params` appended.
    #[must_use]
    pub fn super_url(&self, params: &str) -> String {
        let q = if params.is_empty() { "" } else { "?" };
        format!(
            "postgres://postgres:{SUPER_PASSWORD}@127.0.0.1:{}/{DATABASE}{q}{params}",
            self.port
        )
    }

    /// Kills the server (SIGKILL: a crash) and starts it again on the same data and port.
    pub async fn restart(&mut self) {
        crate::process::kill9(&mut self.child);
        self.spawn();
        self.wait_ready().await;
    }

    /// The last `lines` lines of the server's log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.dir.path().join("postgres.log"), lines)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        crate::process::kill9(&mut self.child);
    }
}
