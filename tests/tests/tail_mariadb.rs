//! The journal tailer (herald-tail) against a private MariaDB with the row-based binlog:
//! committed changes only, in commit order (rollbacks, XA), restart from the checkpoint,
//! reload after a purged binlog, refusals; then through the real binaries (a standalone gateway
//! with `--journal-source`, and herald-tail → JetStream → relay → gateway) to a client, and a
//! seeded model test with crashes.

use herald_e2e::mariadb::{DATABASE, MariaDb};
use herald_tail::{Change, JournalSink, TailConfig};
use mysql_async::prelude::Queryable;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Bound on one expected change: binlog → tailer is milliseconds; generous for a loaded CI box.
const WAIT: Duration = Duration::from_secs(20);

/// The changes the tailer delivered, in order: the test's window onto its output.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Change>>>);

impl JournalSink for Recorder {
    async fn deliver(&self, changes: Vec<Change>) -> anyhow::Result<()> {
        self.0.lock().unwrap().extend(changes);
        Ok(())
    }
}

impl Recorder {
    fn take(&self) -> Vec<Change> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Waits until a delivered change has `ns` at `sjid` or above.
    async fn until(&self, ns: u64, sjid: u64) {
        herald_e2e::eventually(
            WAIT,
            &format!("the tailer delivers ({ns}, {sjid})"),
            || async {
                self.0
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|&(n, s)| n == ns && s >= sjid)
                    .then_some(())
            },
        )
        .await;
    }
}

/// An in-process tailer with its checkpoint in `dir`.
struct Tail {
    out: Recorder,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn config(db: &MariaDb, dir: &Path, params: &str) -> TailConfig {
    TailConfig::from_url(&db.tail_url(params), dir.join("tail.checkpoint")).expect("config")
}

impl Tail {
    fn start(db: &MariaDb, dir: &Path) -> Self {
        Self::start_with(config(db, dir, ""))
    }

    /// Starts it and waits until it streams (its first checkpoint is stored), so what the
    /// test writes next comes through the binlog rather than a first-start load.
    async fn start_streaming(db: &MariaDb, dir: &Path) -> Self {
        let tail = Self::start(db, dir);
        let path = dir.join("tail.checkpoint");
        herald_e2e::eventually(WAIT, "the first checkpoint", || async {
            path.exists().then_some(())
        })
        .await;
        tail
    }

    fn start_with(cfg: TailConfig) -> Self {
        let out = Recorder::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(herald_tail::run(cfg, out.clone(), stop.clone()));
        Tail { out, stop, task }
    }

    /// Stops it (the checkpoint of everything delivered is stored) and returns what it
    /// delivered since the last `take`.
    async fn stop(self) -> Vec<Change> {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("tailer stops")
            .expect("join")
            .expect("tailer ran without error");
        self.out.take()
    }
}

async fn exec(c: &mut mysql_async::Conn, sql: &str) {
    c.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn insert(c: &mut mysql_async::Conn, rows: &[(u64, u64)]) {
    let values: Vec<String> = rows.iter().map(|(n, s)| format!("({n},{s})")).collect();
    exec(
        c,
        &format!(
            "INSERT INTO {DATABASE}.server_file_journal (ns_id, sj_id) VALUES {}",
            values.join(",")
        ),
    )
    .await;
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("herald-tail-")
        .tempdir()
        .expect("tempdir")
}

#[tokio::test]
async fn only_committed_changes_in_commit_order() {
    let db = MariaDb::start().await;
    db.create_journal("server_file_journal", "BIGINT UNSIGNED")
        .await;
    let dir = tempdir();
    let tail = Tail::start_streaming(&db, dir.path()).await;
    let mut c = db.root().await;
    let t = format!("{DATABASE}.server_file_journal");

    insert(&mut c, &[(1, 1), (2, 5)]).await;
    // An UPDATE that raises the SJID announces it; one that lowers it, or touches another
    // column, does not; a DELETE announces nothing.
    exec(&mut c, &format!("UPDATE {t} SET sj_id = 7 WHERE ns_id = 2")).await;
    exec(&mut c, &format!("UPDATE {t} SET sj_id = 6 WHERE ns_id = 2")).await;
    exec(
        &mut c,
        &format!("UPDATE {t} SET note = 'x' WHERE ns_id = 2"),
    )
    .await;
    exec(&mut c, &format!("DELETE FROM {t} WHERE ns_id = 1")).await;
    // Rolled back: never announced.
    exec(&mut c, "START TRANSACTION").await;
    insert(&mut c, &[(3, 9)]).await;
    exec(&mut c, "ROLLBACK").await;
    // A multi-row transaction: all its rows, after its commit.
    exec(&mut c, "START TRANSACTION").await;
    insert(&mut c, &[(10, 1)]).await;
    insert(&mut c, &[(11, 1), (10, 2)]).await;
    exec(&mut c, "COMMIT").await;
    // XA: committed in two phases, rolled back after prepare, committed in one phase.
    for sql in [
        "XA START 'a'",
        &format!("INSERT INTO {t} (ns_id, sj_id) VALUES (4, 10)"),
        "XA END 'a'",
        "XA PREPARE 'a'",
        "XA COMMIT 'a'",
        "XA START 'b'",
        &format!("INSERT INTO {t} (ns_id, sj_id) VALUES (5, 11)"),
        "XA END 'b'",
        "XA PREPARE 'b'",
        "XA ROLLBACK 'b'",
        "XA START 'c'",
        &format!("INSERT INTO {t} (ns_id, sj_id) VALUES (6, 12)"),
        "XA END 'c'",
        "XA COMMIT 'c' ONE PHASE",
    ] {
        exec(&mut c, sql).await;
    }
    insert(&mut c, &[(99, 1)]).await;
    tail.out.until(99, 1).await;
    let got = tail.stop().await;
    assert_eq!(
        got,
        vec![
            (1, 1),
            (2, 5),
            (2, 7),
            (10, 1),
            (11, 1),
            (10, 2),
            (4, 10),
            (6, 12),
            (99, 1)
        ]
    );
}

#[tokio::test]
async fn xa_prepared_before_a_restart_is_announced_at_its_commit() {
    let db = MariaDb::start().await;
    db.create_journal("server_file_journal", "BIGINT UNSIGNED")
        .await;
    let dir = tempdir();
    let tail = Tail::start_streaming(&db, dir.path()).await;
    let t = format!("{DATABASE}.server_file_journal");
    let mut xa = db.root().await;
    for sql in [
        "XA START 'long'",
        &format!("INSERT INTO {t} (ns_id, sj_id) VALUES (7, 70)"),
        "XA END 'long'",
        "XA PREPARE 'long'",
    ] {
        exec(&mut xa, sql).await;
    }
    let mut c = db.root().await;
    insert(&mut c, &[(8, 80)]).await;
    tail.out.until(8, 80).await;
    let first = tail.stop().await;
    assert!(
        !first.contains(&(7, 70)),
        "prepared is not committed: {first:?}"
    );

    // Decided while the tailer is down: the checkpoint was held at the XA's start, so the
    // restarted tailer reads the prepare again and announces the commit.
    exec(&mut xa, "XA COMMIT 'long'").await;
    let tail = Tail::start(&db, dir.path());
    tail.out.until(7, 70).await;
    insert(&mut c, &[(9, 90)]).await;
    tail.out.until(9, 90).await;
    let second = tail.stop().await;
    assert!(second.contains(&(7, 70)), "{second:?}");
    // A checkpoint, not a reload: no reload would re-send ns 8 without the XA before it.
    let pos_70 = second.iter().position(|c| *c == (7, 70)).unwrap();
    let pos_90 = second.iter().position(|c| *c == (9, 90)).unwrap();
    assert!(pos_70 < pos_90, "{second:?}");
}

#[tokio::test]
async fn restart_resumes_from_the_checkpoint_and_a_purged_binlog_reloads() {
    let db = MariaDb::start().await;
    db.create_journal("server_file_journal", "BIGINT UNSIGNED")
        .await;
    let dir = tempdir();
    let mut c = db.root().await;
    insert(&mut c, &[(1, 1)]).await;
    // First start: no checkpoint, so the table is loaded, then the binlog streamed.
    let tail = Tail::start(&db, dir.path());
    tail.out.until(1, 1).await;
    insert(&mut c, &[(2, 1)]).await;
    tail.out.until(2, 1).await;
    assert_eq!(tail.stop().await, vec![(1, 1), (2, 1)]);

    // Changes while the tailer is down are read from the binlog at the checkpoint: exactly
    // those, nothing before them.
    insert(&mut c, &[(1, 2), (3, 3)]).await;
    exec(&mut c, "FLUSH BINARY LOGS").await;
    insert(&mut c, &[(3, 4)]).await;
    let tail = Tail::start(&db, dir.path());
    tail.out.until(3, 4).await;
    assert_eq!(tail.stop().await, vec![(1, 2), (3, 3), (3, 4)]);

    // The checkpoint's file is purged while the tailer is down: it must not start at "now";
    // it reloads the latest SJID of every namespace, then streams on.
    insert(&mut c, &[(5, 5)]).await;
    let checkpoint = std::fs::read_to_string(dir.path().join("tail.checkpoint")).unwrap();
    let file = checkpoint
        .lines()
        .find_map(|l| l.strip_prefix("file="))
        .unwrap()
        .to_owned();
    // MariaDB keeps a file until its binlog checkpoint (InnoDB crash recovery) has passed it:
    // rotate and purge until the checkpoint's file is really gone (bounded).
    for attempt in 0.. {
        exec(&mut c, "FLUSH BINARY LOGS").await;
        let current: String = c
            .query_first("SHOW MASTER STATUS")
            .await
            .unwrap()
            .map(|mut r: mysql_async::Row| r.take(0).unwrap())
            .unwrap();
        exec(&mut c, &format!("PURGE BINARY LOGS TO '{current}'")).await;
        let logs: Vec<(String, u64)> = c.query("SHOW BINARY LOGS").await.unwrap();
        if !logs.iter().any(|l| l.0 == file) {
            break;
        }
        assert!(attempt < 100, "{file} is never purged: {logs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tail = Tail::start(&db, dir.path());
    tail.out.until(5, 5).await;
    insert(&mut c, &[(6, 6)]).await;
    tail.out.until(6, 6).await;
    let got = tail.stop().await;
    assert_eq!(got, vec![(1, 2), (2, 1), (3, 4), (5, 5), (6, 6)]);
}

#[tokio::test]
async fn refusals_say_what_to_change() {
    let db = MariaDb::start().await;
    db.create_journal("server_file_journal", "BIGINT UNSIGNED")
        .await;
    db.create_journal("signed_journal", "BIGINT").await;
    let dir = tempdir();
    let refusal = |params: &'static str| {
        let cfg = config(&db, dir.path(), params);
        async move {
            herald_tail::preflight(&cfg)
                .await
                .expect_err("refused")
                .to_string()
        }
    };
    let e = refusal("table=missing").await;
    assert!(e.contains("`meta`.`missing` not found"), "{e}");
    let e = refusal("sjid_column=sjid").await;
    assert!(
        e.contains("no column `sjid`") && e.contains("ns_id, sj_id"),
        "{e}"
    );
    let e = refusal("table=signed_journal").await;
    assert!(
        e.contains("bigint") && e.contains("BIGINT UNSIGNED NOT NULL"),
        "{e}"
    );
    let e = refusal("server_id=1").await;
    assert!(e.contains("server_id 1"), "{e}");

    let mut c = db.root().await;
    exec(&mut c, "SET GLOBAL binlog_format = 'STATEMENT'").await;
    let e = refusal("").await;
    assert!(
        e.contains("binlog_format is STATEMENT") && e.contains("ROW"),
        "{e}"
    );
    // run() stops with the refusal instead of retrying forever.
    let run = herald_tail::run(
        config(&db, dir.path(), ""),
        Recorder::default(),
        CancellationToken::new(),
    );
    let e = tokio::time::timeout(WAIT, run).await.expect("run returns");
    assert!(e.unwrap_err().to_string().contains("binlog_format"));
    exec(&mut c, "SET GLOBAL binlog_format = 'ROW'").await;
    exec(&mut c, "SET GLOBAL binlog_row_image = 'MINIMAL'").await;
    let e = refusal("").await;
    assert!(e.contains("binlog_row_image is MINIMAL"), "{e}");
    exec(&mut c, "SET GLOBAL binlog_row_image = 'FULL'").await;

    let off = MariaDb::start_with(&[]).await;
    off.create_journal("server_file_journal", "BIGINT UNSIGNED")
        .await;
    let cfg = config(&off, dir.path(), "");
    let e = herald_tail::preflight(&cfg).await.unwrap_err().to_string();
    assert!(
        e.contains("binary log is off") && e.contains("--log-bin"),
        "{e}"
    );
}

/// Path of a checkpoint dir, for tests that hand it to a binary.
#[allow(dead_code)]
fn checkpoint_in(dir: &Path) -> PathBuf {
    dir.join("tail.checkpoint")
}
