//! [`MariaDb`]: a private `mariadbd` per test, on a free loopback port with a throwaway data
//! directory, stopped by pid (SIGKILL) when dropped. Never the machine's shared server.
//!
//! `mariadb-install-db` runs once per test binary into a template directory, which every
//! server then copies (a few milliseconds instead of seconds). The binaries come from the
//! Debian packages (`mariadb-server-core`; `ops/test-tail.sh` installs them when missing).

use mysql_async::prelude::Queryable;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The journal database every test uses.
pub const DATABASE: &str = "meta";
/// The tailer's user, with exactly the grants the runbook lists.
pub const TAIL_USER: &str = "herald_tail";
/// Its password.
pub const TAIL_PASSWORD: &str = "tail-pw";

fn binary(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} not found: install the Debian package mariadb-server-core (ops/test-tail.sh does)"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

/// The initialised data directory all servers copy.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("herald-mariadb-template-")
                .tempdir()
                .expect("tempdir");
            let data = dir.path().join("data");
            let mut cmd = Command::new(binary("mariadb-install-db"));
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg("--auth-root-authentication-method=normal")
                .arg("--skip-test-db");
            if is_root() {
                cmd.arg("--user=root");
            }
            let out = cmd.output().expect("run mariadb-install-db");
            assert!(
                out.status.success(),
                "mariadb-install-db failed: {}{}",
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

/// A private MariaDB server.
pub struct MariaDb {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    args: Vec<String>,
}

impl MariaDb {
    /// A server with the row-based binlog on (`--log-bin --binlog-format=ROW --server-id=1`).
    pub async fn start() -> Self {
        Self::start_with(&["--log-bin=mb", "--binlog-format=ROW", "--server-id=1"]).await
    }

    /// A server with exactly these extra flags (no binlog unless given).
    pub async fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herald-mariadb-")
            .tempdir()
            .expect("tempdir");
        let status = Command::new("cp")
            .arg("-a")
            .arg(template().join("data"))
            .arg(dir.path().join("data"))
            .status()
            .expect("cp");
        assert!(status.success(), "copying the template data directory");
        let mut db = MariaDb {
            child: None,
            dir,
            port: free_port(),
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        db.spawn();
        db.wait_ready().await;
        db
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let mut cmd = Command::new(binary("mariadbd"));
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg("--skip-name-resolve")
            .arg("--innodb-buffer-pool-size=32M")
            .arg("--innodb-log-file-size=48M")
            .arg("--max-connections=200")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            cmd.arg("--user=root");
        }
        self.child = Some(cmd.spawn().expect("spawn mariadbd"));
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(conn) = mysql_async::Conn::new(self.root_opts()).await {
                let _ = conn.disconnect().await;
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("mariadbd exited with {status}: {}", self.log_tail(30));
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not accept connections within {START_TIMEOUT:?}: {}",
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

    /// Connection options of `root` (no password) over TCP.
    #[must_use]
    pub fn root_opts(&self) -> mysql_async::Opts {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some("root"))
            .prefer_socket(false)
            .into()
    }

    /// A root connection.
    pub async fn root(&self) -> mysql_async::Conn {
        mysql_async::Conn::new(self.root_opts())
            .await
            .expect("connect as root")
    }

    /// Creates the journal database, `table` with `ns_id`/`sj_id` columns of `column_type`,
    /// and the tailer's user with the runbook's grants.
    pub async fn create_journal(&self, table: &str, column_type: &str) {
        let mut c = self.root().await;
        c.query_drop(format!("CREATE DATABASE IF NOT EXISTS {DATABASE}"))
            .await
            .expect("create database");
        c.query_drop(format!(
            "CREATE TABLE {DATABASE}.{table} (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, \
             ns_id {column_type} NOT NULL, sj_id {column_type} NOT NULL, note VARCHAR(32), \
             KEY ns_sj (ns_id, sj_id)) ENGINE=InnoDB"
        ))
        .await
        .expect("create table");
        c.query_drop(format!(
            "CREATE USER IF NOT EXISTS '{TAIL_USER}'@'127.0.0.1' IDENTIFIED BY '{TAIL_PASSWORD}'"
        ))
        .await
        .expect("create user");
        c.query_drop(format!(
            "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{TAIL_USER}'@'127.0.0.1'"
        ))
        .await
        .expect("grant replication");
        c.query_drop(format!(
            "GRANT SELECT ON {DATABASE}.* TO '{TAIL_USER}'@'127.0.0.1'"
        ))
        .await
        .expect("grant select");
        let _ = c.disconnect().await;
    }

    /// The tailer's URL (its own user and password), with `params` appended.
    #[must_use]
    pub fn tail_url(&self, params: &str) -> String {
        let sep = if params.is_empty() { "" } else { "&" };
        format!(
            "mysql://{TAIL_USER}:{TAIL_PASSWORD}@127.0.0.1:{}/{DATABASE}?prefer_socket=false&server_id=4242{sep}{params}",
            self.port
        )
    }

    /// Kills the server (SIGKILL: a crash) and starts it again on the same data and port.
    pub async fn restart(&mut self) {
        crate::process::kill9(&mut self.child);
        self.spawn();
        self.wait_ready().await;
    }

    /// The last `lines` lines of the server's error log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.dir.path().join("error.log"), lines)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        crate::process::kill9(&mut self.child);
    }
}
