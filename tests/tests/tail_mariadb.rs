//! The journal tailer (herald-tail) against a private MariaDB with the row-based binlog:
//! committed changes only, in commit order (rollbacks, XA), restart from the checkpoint,
//! reload after a purged binlog, refusals; then through the real binaries (a standalone gateway
//! with `--journal-source`, and herald-tail → JetStream → relay → gateway) to a client, and a
//! seeded model test with crashes.

use herald_e2e::mariadb::{DATABASE, MariaDb};
use herald_e2e::nats::{NatsServer, RelayOptions, RelayProcess};
use herald_e2e::tail::{Recorder, percentile, process_cpu_seconds};
use herald_e2e::ws::Incoming;
use herald_e2e::{ClientFrame, GatewayOptions, GatewayProcess, ServerFrame, WsClient};
use herald_tail::{Change, JournalSink, TailConfig};
use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Bound on one expected change: binlog → tailer is milliseconds; generous for a loaded CI box.
const WAIT: Duration = Duration::from_secs(20);

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
async fn a_transaction_of_100k_rows_is_announced_whole_after_its_commit() {
    let db = MariaDb::start().await;
    db.create_journal("server_file_journal", "BIGINT UNSIGNED")
        .await;
    let dir = tempdir();
    let tail = Tail::start_streaming(&db, dir.path()).await;
    let mut c = db.root().await;
    exec(&mut c, "START TRANSACTION").await;
    for chunk in 0..10u64 {
        let rows: Vec<Change> = (chunk * 10_000 + 1..=(chunk + 1) * 10_000)
            .map(|s| (s % 1000, s))
            .collect();
        insert(&mut c, &rows).await;
    }
    // Nothing of it before the commit, though its rows are written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tail.out.is_empty());
    exec(&mut c, "COMMIT").await;
    tail.out.until(0, 100_000).await;
    let got = tail.stop().await;
    assert_eq!(got.len(), 100_000, "every row of the transaction");
    let mut max: HashMap<u64, u64> = HashMap::new();
    for (ns, sjid) in got {
        let e = max.entry(ns).or_default();
        *e = (*e).max(sjid);
    }
    assert_eq!(max.len(), 1000);
    assert!(
        max.iter()
            .all(|(&ns, &sjid)| sjid == 99_000 + if ns == 0 { 1000 } else { ns })
    );
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

/// `target/<profile>/herald-tail`, beside the test executable's `deps/`.
fn tail_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is not under target/<profile>/deps")
        .join("herald-tail");
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build --workspace --bins` (ops/test.sh does) first",
        bin.display()
    );
    bin
}

/// A running `herald-tail` binary; killed (SIGKILL) and reaped on drop.
struct TailProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl TailProcess {
    fn start(source: &str, nats: &str, partitions: u64) -> Self {
        let dir = tempdir();
        let log = std::fs::File::create(dir.path().join("tail.log")).expect("log");
        let mut child = Command::new(tail_binary())
            .arg("--source")
            .arg(source)
            .arg("--checkpoint")
            .arg(dir.path().join("tail.checkpoint"))
            .arg("--nats")
            .arg(nats)
            .arg("--partitions")
            .arg(partitions.to_string())
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .env("HERALD_LOG", "info,herald_tail=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn herald-tail");
        let stdout = child.stdout.take().expect("stdout");
        let mut tail = TailProcess {
            child: Some(child),
            dir,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(WAIT) {
            Ok(line) if line.starts_with("herald-tail ready") => {}
            other => panic!("herald-tail not ready ({other:?}): {}", tail.log()),
        }
        let _ = tail.child.as_mut();
        tail
    }

    fn log(&self) -> String {
        herald_e2e::process::log_tail(&self.dir.path().join("tail.log"), 30)
    }
}

impl Drop for TailProcess {
    fn drop(&mut self) {
        herald_e2e::process::show_log_if_panicking(
            "herald-tail",
            &self.dir.path().join("tail.log"),
        );
        herald_e2e::process::kill9(&mut self.child);
    }
}

/// Commits `(ns, 9)` in a transaction that rolls back, then `(ns, sjid)`; the client must see
/// `sjid` and never 9.
async fn rollback_then_commit(c: &mut mysql_async::Conn, ns: u64, sjid: u64) {
    exec(c, "START TRANSACTION").await;
    insert(c, &[(ns, 9)]).await;
    exec(c, "ROLLBACK").await;
    insert(c, &[(ns, sjid)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_gateway_journal_source_reaches_a_client() {
    let db = MariaDb::start().await;
    db.create_journal("server_file_journal", "BIGINT UNSIGNED")
        .await;
    let mut c = db.root().await;
    insert(&mut c, &[(1, 3)]).await;
    let gw = tokio::task::block_in_place(|| {
        GatewayProcess::start(GatewayOptions::new().arg("--journal-source", db.tail_url("")))
    });
    let mut client = gw.client().await;
    // Committed before the gateway started: loaded from the table at the first start.
    let first = client.subscribe(&[(1, 0), (2, 0)]).await;
    assert_eq!(first, vec![ServerFrame::Changed(vec![(1, 3)])]);
    insert(&mut c, &[(2, 5)]).await;
    assert_eq!(client.changed_until(2, 5, WAIT).await, vec![5]);
    rollback_then_commit(&mut c, 1, 6).await;
    assert_eq!(client.changed_until(1, 6, WAIT).await, vec![6]);
    // The tailer's metrics are on the gateway's /metrics.
    herald_e2e::eventually(WAIT, "herald_tail metrics on /metrics", || async {
        let metrics = gw.get("/metrics").await.text();
        (metrics.contains("herald_tail_reloads_total{reason=\"no_checkpoint\"} 1")
            && metrics.contains("herald_tail_changes_published_total"))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_herald_tail_to_jetstream_relay_gateway_client() {
    const PARTITIONS: u64 = 4;
    let nats = NatsServer::start();
    let _relay = RelayProcess::start(
        &nats.url(),
        RelayOptions::new().arg("--partitions", PARTITIONS),
    )
    .await;
    let gw = tokio::task::block_in_place(|| {
        GatewayProcess::start(
            GatewayOptions::new()
                .arg("--nats", nats.url())
                .arg("--partitions", PARTITIONS),
        )
    });
    let db = MariaDb::start().await;
    db.create_journal("server_file_journal", "BIGINT UNSIGNED")
        .await;
    let _tail = TailProcess::start(&db.tail_url(""), &nats.url(), PARTITIONS);
    let mut client = gw.client().await;
    assert!(client.subscribe(&[(21, 0), (22, 0)]).await.is_empty());
    let mut c = db.root().await;
    insert(&mut c, &[(21, 5), (22, 7)]).await;
    assert_eq!(client.changed_until(21, 5, WAIT).await, vec![5]);
    rollback_then_commit(&mut c, 22, 8).await;
    assert_eq!(client.changed_until(22, 8, WAIT).await, vec![7, 8]);

    // In HERALD_JOURNAL exactly as a metaserver publishes: subject, 8-byte body, Nats-Msg-Id.
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js
        .get_stream(herald_proto::fanout::JOURNAL_STREAM)
        .await
        .expect("journal stream");
    let subject = herald_proto::fanout::journal_subject(22, PARTITIONS);
    let msg = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .expect("last message of ns 22");
    assert_eq!(&msg.payload[..], &8u64.to_be_bytes());
    let id = msg
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_owned());
    assert_eq!(id.as_deref(), Some("22:8"));
}

/// The database side of the model test: every committed and rolled-back change.
#[derive(Default)]
struct Model {
    committed: HashSet<Change>,
    max: HashMap<u64, u64>,
    rolled_back: HashSet<Change>,
}

/// One writer: random transactions until `stop`. SJIDs come from `next`, unique per row.
async fn writer(
    db_opts: mysql_async::Opts,
    seed: u64,
    id: usize,
    namespaces: u64,
    next: Arc<std::sync::atomic::AtomicU64>,
    model: Arc<Mutex<Model>>,
    pause: Arc<tokio::sync::RwLock<()>>,
    stop: CancellationToken,
) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64 + 1));
    let t = format!("{DATABASE}.server_file_journal");
    let mut done = 0;
    while !stop.is_cancelled() {
        let _guard = pause.read().await;
        let mut c = mysql_async::Conn::new(db_opts.clone())
            .await
            .expect("writer connects");
        let rows: Vec<Change> = (0..rng.random_range(1..=4))
            .map(|_| {
                let sjid = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (rng.random_range(0..namespaces), sjid)
            })
            .collect();
        let values: Vec<String> = rows.iter().map(|(n, s)| format!("({n},{s})")).collect();
        let insert_sql = format!("INSERT INTO {t} (ns_id, sj_id) VALUES {}", values.join(","));
        let kind = rng.random_range(0..100);
        let xid = format!("w{id}-{done}");
        // A deadlock (the UPDATE's locks against concurrent inserts) rolls the whole
        // transaction back: its rows are recorded as rolled back, the connection dropped.
        macro_rules! write_or_abort {
            ($sql:expr) => {
                if let Err(e) = c.query_drop($sql).await {
                    assert!(
                        e.to_string().contains("1213") || e.to_string().contains("1205"),
                        "{}: {e}",
                        $sql
                    );
                    model
                        .lock()
                        .unwrap()
                        .rolled_back
                        .extend(rows.iter().copied());
                    drop(c);
                    done += 1;
                    continue;
                }
            };
        }
        let committed = match kind {
            0..45 => {
                exec(&mut c, "START TRANSACTION").await;
                write_or_abort!(&insert_sql);
                exec(&mut c, "COMMIT").await;
                true
            }
            45..60 => {
                exec(&mut c, "START TRANSACTION").await;
                write_or_abort!(&insert_sql);
                exec(&mut c, "ROLLBACK").await;
                false
            }
            60..70 => {
                // Long-running: others commit meanwhile; it is announced at its own commit.
                exec(&mut c, "START TRANSACTION").await;
                write_or_abort!(&insert_sql);
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
                exec(&mut c, "COMMIT").await;
                true
            }
            70..80 => {
                exec(&mut c, &format!("XA START '{xid}'")).await;
                write_or_abort!(&insert_sql);
                exec(&mut c, &format!("XA END '{xid}'")).await;
                exec(&mut c, &format!("XA PREPARE '{xid}'")).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
                exec(&mut c, &format!("XA COMMIT '{xid}'")).await;
                true
            }
            80..88 => {
                exec(&mut c, &format!("XA START '{xid}'")).await;
                write_or_abort!(&insert_sql);
                for sql in [
                    format!("XA END '{xid}'"),
                    format!("XA PREPARE '{xid}'"),
                    format!("XA ROLLBACK '{xid}'"),
                ] {
                    exec(&mut c, &sql).await;
                }
                false
            }
            _ => {
                // An UPDATE raising one row of the namespace (if it has one) to the new SJID.
                let (ns, sjid) = rows[0];
                exec(&mut c, "START TRANSACTION").await;
                write_or_abort!(&format!(
                    "UPDATE {t} SET sj_id = {sjid} WHERE ns_id = {ns} ORDER BY id LIMIT 1"
                ));
                let changed = c.affected_rows() > 0;
                exec(&mut c, "COMMIT").await;
                if changed {
                    let mut m = model.lock().unwrap();
                    m.committed.insert((ns, sjid));
                    let e = m.max.entry(ns).or_default();
                    *e = (*e).max(sjid);
                }
                done += 1;
                let _ = c.disconnect().await;
                continue;
            }
        };
        {
            let mut m = model.lock().unwrap();
            for &(ns, sjid) in &rows {
                if committed {
                    m.committed.insert((ns, sjid));
                    let e = m.max.entry(ns).or_default();
                    *e = (*e).max(sjid);
                } else {
                    m.rolled_back.insert((ns, sjid));
                }
            }
        }
        done += 1;
        let _ = c.disconnect().await;
    }
    done
}

/// One client connection for the life of one gateway process: subscribes every namespace at
/// its cursors and records every CHANGED until the connection ends or `stop`.
async fn observe(
    gw_addr: std::net::SocketAddr,
    token: String,
    mut cursors: HashMap<u64, u64>,
    stop: CancellationToken,
) -> (HashMap<u64, u64>, Vec<Change>) {
    let mut seen = Vec::new();
    let mut client = WsClient::connect(gw_addr).await;
    client.hello(&token).await;
    let pairs: Vec<Change> = cursors.iter().map(|(&n, &s)| (n, s)).collect();
    client.send_frame(&ClientFrame::Subscribe(pairs)).await;
    loop {
        let incoming = tokio::select! {
            i = client.next_incoming(Duration::from_millis(200)) => i,
            () = stop.cancelled() => break,
        };
        match incoming {
            Incoming::Frame(ServerFrame::Changed(changes)) => {
                for (ns, sjid) in changes {
                    seen.push((ns, sjid));
                    let e = cursors.entry(ns).or_default();
                    *e = (*e).max(sjid);
                }
            }
            Incoming::Frame(_) | Incoming::Pong(_) | Incoming::Timeout => {}
            Incoming::Close(_) | Incoming::Ended(_) => break,
        }
    }
    (cursors, seen)
}

/// Seeded model test: writers commit, roll back, hold long and XA transactions while the
/// gateway (with the tailer inside) is SIGKILLed at random moments, the binlog rotates, the
/// database restarts once and one restart loses the checkpoint. At the end the client is at
/// the committed maximum of every namespace, and it was never sent an SJID that was not
/// committed. `HERALD_TAIL_SEED=<n>` replays a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_random_transactions_and_crashes() {
    const NAMESPACES: u64 = 16;
    const WRITERS: usize = 3;
    let seed: u64 = std::env::var("HERALD_TAIL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("model test seed: HERALD_TAIL_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut db = MariaDb::start().await;
    db.create_journal("server_file_journal", "BIGINT UNSIGNED")
        .await;
    let mut gw = tokio::task::block_in_place(|| {
        GatewayProcess::start(GatewayOptions::new().arg("--journal-source", db.tail_url("")))
    });
    let model = Arc::new(Mutex::new(Model::default()));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let pause = Arc::new(tokio::sync::RwLock::new(()));
    let stop_writers = CancellationToken::new();
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            tokio::spawn(writer(
                db.root_opts(),
                seed,
                id,
                NAMESPACES,
                next.clone(),
                model.clone(),
                pause.clone(),
                stop_writers.clone(),
            ))
        })
        .collect();

    let mut cursors: HashMap<u64, u64> = (0..NAMESPACES).map(|n| (n, 0)).collect();
    let mut seen_all = Vec::new();
    for round in 0..6 {
        let stop_observer = CancellationToken::new();
        let observer = tokio::spawn(observe(
            gw.ws_addr(),
            gw.token_all(),
            cursors.clone(),
            stop_observer.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        match round {
            1 => {
                let mut c = db.root().await;
                exec(&mut c, "FLUSH BINARY LOGS").await;
            }
            2 => {
                // The database crashes and restarts (writers paused, so every commit's outcome
                // is known); the tailer reconnects on its own.
                let _paused = pause.write().await;
                db.restart().await;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
        // SIGKILL at a random moment of the stream: maybe between the journal's ack and the
        // checkpoint write.
        gw.kill9();
        if round == 3 {
            // This restart has lost its resume point: it must reload, not start at "now".
            let _ = std::fs::remove_file(gw.data_dir().join("tail.checkpoint"));
        }
        let (c, seen) = observer.await.expect("observer");
        cursors = c;
        seen_all.extend(seen);
        tokio::task::block_in_place(|| gw.restart());
        if round == 3 {
            let what = format!("seed {seed}: the lost checkpoint is reloaded and counted");
            herald_e2e::eventually(WAIT, &what, || async {
                let metrics = gw.get("/metrics").await.text();
                metrics
                    .contains("herald_tail_reloads_total{reason=\"no_checkpoint\"} 1")
                    .then_some(())
            })
            .await;
        }
    }
    stop_writers.cancel();
    let mut transactions = 0;
    for w in writers {
        transactions += w.await.expect("writer");
    }
    let (max, committed, rolled_back) = {
        let m = model.lock().unwrap();
        (m.max.clone(), m.committed.clone(), m.rolled_back.clone())
    };
    // The last client stays until it is at the committed maximum of every namespace.
    let stop_observer = CancellationToken::new();
    let observer = tokio::spawn(observe(
        gw.ws_addr(),
        gw.token_all(),
        cursors.clone(),
        stop_observer.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut fresh = WsClient::connect(gw.ws_addr()).await;
    fresh.hello(&gw.token_all()).await;
    let all: Vec<Change> = (0..NAMESPACES).map(|n| (n, 0)).collect();
    let mut latest: HashMap<u64, u64> = HashMap::new();
    loop {
        // A fresh subscription with cursor 0 reports the gateway's latest of every namespace.
        for frame in fresh.subscribe(&all).await {
            if let ServerFrame::Changed(changes) = frame {
                latest.extend(changes);
            }
        }
        fresh
            .unsubscribe(&(0..NAMESPACES).collect::<Vec<_>>())
            .await;
        if max.iter().all(|(ns, sjid)| latest.get(ns) == Some(sjid)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: the gateway never reached the committed maxima {max:?}; latest {latest:?}\n{}",
            gw.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_observer.cancel();
    let (final_cursors, seen) = observer.await.expect("observer");
    seen_all.extend(seen);
    for (ns, sjid) in &max {
        assert_eq!(
            final_cursors.get(ns),
            Some(sjid),
            "seed {seed}: the client is not at the committed maximum of ns {ns}"
        );
    }
    for change in &seen_all {
        assert!(
            committed.contains(change),
            "seed {seed}: the client was sent {change:?}, which was never committed (rolled back: {})",
            rolled_back.contains(change)
        );
    }
    eprintln!(
        "model test seed {seed}: {transactions} transactions, {} committed rows, {} rolled back, {} CHANGED entries seen",
        committed.len(),
        rolled_back.len(),
        seen_all.len()
    );
    assert!(
        !rolled_back.is_empty() && committed.len() > 50,
        "seed {seed}: too little traffic"
    );
}

/// Benchmark (BENCHMARKS.md "Journal tailer"): commit → client latency through the binlog
/// beside the direct path (commit, then `POST /v1/publish`) in the same run, and the rows per
/// second and CPU-seconds per 1M rows of a catch-up over a backlog.
/// `cargo test --release -p herald-e2e --test tail_mariadb -- --ignored --nocapture bench`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand, figures go to BENCHMARKS.md"]
async fn bench_tail_latency_and_throughput() {
    let samples: usize = std::env::var("HERALD_TAIL_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let rows: u64 = std::env::var("HERALD_TAIL_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let db = MariaDb::start().await;
    db.create_journal("server_file_journal", "BIGINT UNSIGNED")
        .await;
    // The direct path's metaserver writes a table the tailer does not follow.
    db.create_journal("direct_journal", "BIGINT UNSIGNED").await;
    let gw = tokio::task::block_in_place(|| {
        GatewayProcess::start(GatewayOptions::new().arg("--journal-source", db.tail_url("")))
    });
    let mut client = gw.client().await;
    assert!(client.subscribe(&[(1, 0), (2, 0)]).await.is_empty());
    let mut c = db.root().await;
    let (mut tail_lat, mut direct_lat) = (Vec::new(), Vec::new());
    for i in 1..=samples as u64 {
        let started = std::time::Instant::now();
        insert(&mut c, &[(1, i)]).await;
        client.changed_until(1, i, WAIT).await;
        tail_lat.push(started.elapsed());

        let started = std::time::Instant::now();
        exec(
            &mut c,
            &format!("INSERT INTO {DATABASE}.direct_journal (ns_id, sj_id) VALUES (2, {i})"),
        )
        .await;
        gw.publish_ok(&[(2, i)]).await;
        client.changed_until(2, i, WAIT).await;
        direct_lat.push(started.elapsed());
    }
    tail_lat.sort();
    direct_lat.sort();
    println!(
        "commit -> client over {samples} commits: tailer p50 {:?} p99 {:?}; direct (commit, then POST /v1/publish) p50 {:?} p99 {:?}",
        percentile(&tail_lat, 0.5),
        percentile(&tail_lat, 0.99),
        percentile(&direct_lat, 0.5),
        percentile(&direct_lat, 0.99)
    );
    drop(client);
    drop(gw);

    // Catch-up: the tailer stops, `rows` rows commit (10k-row transactions), the tailer
    // starts again from its checkpoint and reads them all.
    let dir = tempdir();
    let tail = Tail::start_streaming(&db, dir.path()).await;
    tail.stop().await;
    let written = std::time::Instant::now();
    let mut next = 1u64;
    while next <= rows {
        let batch: Vec<Change> = (next..(next + 10_000).min(rows + 1))
            .map(|s| (s % 100_000, s))
            .collect();
        next += batch.len() as u64;
        insert(&mut c, &batch).await;
    }
    let write_s = written.elapsed().as_secs_f64();
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    #[derive(Clone)]
    struct Counter(Arc<std::sync::atomic::AtomicU64>);
    impl JournalSink for Counter {
        async fn deliver(&self, changes: Vec<Change>) -> anyhow::Result<()> {
            self.0
                .fetch_add(changes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    }
    let cpu0 = process_cpu_seconds();
    let started = std::time::Instant::now();
    let stop = CancellationToken::new();
    let task = tokio::spawn(herald_tail::run(
        config(&db, dir.path(), ""),
        Counter(counted.clone()),
        stop.clone(),
    ));
    herald_e2e::eventually(Duration::from_secs(600), "catch-up", || async {
        (counted.load(std::sync::atomic::Ordering::Relaxed) >= rows).then_some(())
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu0;
    stop.cancel();
    let _ = task.await;
    println!(
        "catch-up over a backlog of {rows} rows (written in {write_s:.1} s): {elapsed:.2} s, {:.0} rows/s, {:.2} CPU-s per 1M rows (tailer process)",
        rows as f64 / elapsed,
        cpu * 1e6 / rows as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_tail_binary_exits_on_a_refusal_with_what_to_change() {
    let db = MariaDb::start().await;
    db.create_journal("server_file_journal", "BIGINT").await;
    let dir = tempdir();
    let log = dir.path().join("stderr.log");
    let child = Command::new(tail_binary())
        .arg("--source")
        .arg(db.tail_url(""))
        .arg("--checkpoint")
        .arg(dir.path().join("tail.checkpoint"))
        .arg("--admin-listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn herald-tail");
    let mut child = Some(child);
    let status = herald_e2e::process::wait_exit(&mut child, WAIT).await;
    herald_e2e::process::kill9(&mut child);
    let status = status.expect("herald-tail exits on a refusal");
    assert!(!status.success());
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        stderr.contains("BIGINT UNSIGNED NOT NULL") && stderr.contains("`ns_id`"),
        "{stderr}"
    );
    assert!(!dir.path().join("tail.checkpoint").exists());
}
