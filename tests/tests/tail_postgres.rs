//! The journal tailer (herald-tail) against a private PostgreSQL with `wal_level=logical`:
//! committed changes only, in commit order, through a publication and a replication slot; the
//! flushed LSN confirmed to the slot after the journal's acknowledgement; restart from the
//! slot with changes made while the tailer was down; a dropped slot reloads; refusals; and
//! through the real gateway (`--journal-source postgres://…`) to a client.

use herald_e2e::nats::{NatsServer, RelayOptions, RelayProcess};
use herald_e2e::postgres::{DATABASE, Postgres, TAIL_USER};
use herald_e2e::tail::{Recorder, percentile, process_cpu_seconds};
use herald_e2e::{GatewayOptions, GatewayProcess, ServerFrame};
use herald_tail::{Change, JournalSink, TailConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Bound on one expected change: WAL → tailer is milliseconds; generous for a loaded CI box.
const WAIT: Duration = Duration::from_secs(20);

/// An in-process tailer with its checkpoint in `dir`.
struct Tail {
    out: Recorder,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn config(url: &str, dir: &Path) -> TailConfig {
    TailConfig::from_url(url, dir.join("tail.checkpoint")).expect("config")
}

impl Tail {
    fn start(db: &Postgres, dir: &Path) -> Self {
        Self::start_with(config(&db.tail_url(""), dir))
    }

    /// Starts it and waits until it streams (its first checkpoint is stored), so what the
    /// test writes next comes through the slot rather than a first-start load.
    async fn start_streaming(db: &Postgres, dir: &Path) -> Self {
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

fn insert(db: &Postgres, rows: &[(u64, u64)]) {
    let values: Vec<String> = rows.iter().map(|(n, s)| format!("({n},{s})")).collect();
    db.sql(&format!(
        "INSERT INTO server_file_journal (ns_id, sj_id) VALUES {}",
        values.join(",")
    ));
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("herald-tail-pg-")
        .tempdir()
        .expect("tempdir")
}

/// The LSN in the checkpoint file.
fn checkpoint_lsn(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("tail.checkpoint")).expect("checkpoint");
    let lsn = text
        .lines()
        .find_map(|l| l.strip_prefix("lsn="))
        .expect("an lsn= line");
    herald_tail::position::parse_lsn(lsn).expect("an LSN")
}

/// `confirmed_flush_lsn` of the tailer's slot.
fn slot_confirmed(db: &Postgres) -> Option<u64> {
    let text = db.sql(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'herald_tail'",
    );
    herald_tail::position::parse_lsn(&text)
}

#[tokio::test]
async fn only_committed_changes_in_commit_order_and_the_slot_confirmed_after_the_ack() {
    let db = Postgres::start().await;
    db.create_journal("server_file_journal", "bigint");
    // With the old row in every update, only updates that raise the SJID are announced.
    db.sql("ALTER TABLE server_file_journal REPLICA IDENTITY FULL");
    let dir = tempdir();
    let tail = Tail::start_streaming(&db, dir.path()).await;

    insert(&db, &[(1, 1), (2, 5)]);
    db.sql("UPDATE server_file_journal SET sj_id = 7 WHERE ns_id = 2");
    db.sql("UPDATE server_file_journal SET sj_id = 6 WHERE ns_id = 2");
    db.sql("UPDATE server_file_journal SET note = 'x' WHERE ns_id = 2");
    db.sql("DELETE FROM server_file_journal WHERE ns_id = 1");
    // Rolled back: never announced.
    db.sql("BEGIN; INSERT INTO server_file_journal (ns_id, sj_id) VALUES (3, 9); ROLLBACK");
    // A multi-row transaction: all its rows, after its commit.
    db.sql(
        "BEGIN; INSERT INTO server_file_journal (ns_id, sj_id) VALUES (10, 1); \
         INSERT INTO server_file_journal (ns_id, sj_id) VALUES (11, 1), (10, 2); COMMIT",
    );
    // A subtransaction rolled back inside a committed transaction: only the kept row.
    db.sql(
        "BEGIN; INSERT INTO server_file_journal (ns_id, sj_id) VALUES (12, 1); SAVEPOINT s; \
         INSERT INTO server_file_journal (ns_id, sj_id) VALUES (13, 1); ROLLBACK TO SAVEPOINT s; COMMIT",
    );
    // Another table's changes never reach the journal.
    db.sql("CREATE TABLE other (ns_id bigint, sj_id bigint); INSERT INTO other VALUES (50, 50)");
    insert(&db, &[(99, 1)]);
    tail.out.until(99, 1).await;

    // The slot is confirmed up to the checkpoint once the journal acknowledged it (status
    // updates go out within a second).
    herald_e2e::eventually(WAIT, "the slot confirms the checkpoint", || async {
        let stored = checkpoint_lsn(dir.path());
        (slot_confirmed(&db)? >= stored).then_some(())
    })
    .await;
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
            (12, 1),
            (99, 1)
        ]
    );
}

/// A journal that acknowledges only when the test opens its gate.
#[derive(Clone)]
struct GatedSink {
    open: Arc<tokio::sync::watch::Sender<bool>>,
    out: Recorder,
}

impl JournalSink for GatedSink {
    async fn deliver(&self, changes: Vec<Change>) -> anyhow::Result<()> {
        let mut rx = self.open.subscribe();
        rx.wait_for(|open| *open).await?;
        self.out.deliver(changes).await
    }
}

/// The slot never confirms a change the journal has not acknowledged: while the sink holds a
/// batch, `confirmed_flush_lsn` stays before that batch's commit (status updates go out every
/// second, so three seconds would show a premature confirm); once it acknowledges, it moves on.
#[tokio::test]
async fn the_slot_is_not_confirmed_before_the_journal_acknowledges() {
    let db = Postgres::start().await;
    db.create_journal("server_file_journal", "bigint");
    let dir = tempdir();
    let (open, _) = tokio::sync::watch::channel(true);
    let sink = GatedSink {
        open: Arc::new(open),
        out: Recorder::default(),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(herald_tail::run(
        config(&db.tail_url(""), dir.path()),
        sink.clone(),
        stop.clone(),
    ));
    insert(&db, &[(1, 1)]);
    sink.out.until(1, 1).await;

    sink.open.send_replace(false);
    let before = herald_tail::position::parse_lsn(&db.sql("SELECT pg_current_wal_lsn()")).unwrap();
    insert(&db, &[(2, 2)]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = slot_confirmed(&db).expect("the slot");
    assert!(
        held <= before,
        "confirmed {held:X} past {before:X} before the journal acknowledged"
    );
    assert!(!sink.out.take().contains(&(2, 2)));

    sink.open.send_replace(true);
    sink.out.until(2, 2).await;
    herald_e2e::eventually(WAIT, "the slot confirms past the change", || async {
        (slot_confirmed(&db)? > before).then_some(())
    })
    .await;
    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("tailer stops")
        .expect("join")
        .expect("tailer ran without error");
}

#[tokio::test]
async fn restart_resumes_from_the_slot_and_a_dropped_slot_reloads() {
    let db = Postgres::start().await;
    db.create_journal("server_file_journal", "numeric(20,0)");
    let dir = tempdir();
    insert(&db, &[(1, 1)]);
    // First start: no checkpoint, so the slot is created and the table loaded in its snapshot.
    let tail = Tail::start(&db, dir.path());
    tail.out.until(1, 1).await;
    // numeric(20,0) holds every u64.
    insert(&db, &[(2, u64::MAX)]);
    tail.out.until(2, u64::MAX).await;
    assert_eq!(tail.stop().await, vec![(1, 1), (2, u64::MAX)]);

    // Changes while the tailer is down come from the slot: exactly those, in commit order
    // (a reload would send every namespace, in namespace order).
    insert(&db, &[(3, 3)]);
    db.sql("UPDATE server_file_journal SET sj_id = 4 WHERE ns_id = 1");
    let tail = Tail::start(&db, dir.path());
    tail.out.until(1, 4).await;
    assert_eq!(tail.stop().await, vec![(3, 3), (1, 4)]);

    // The slot is dropped while the tailer is down: it must not start at "now"; it recreates
    // the slot, reloads the latest SJID of every namespace in the slot's snapshot, then streams
    // on from the slot's consistent point.
    db.sql("SELECT pg_drop_replication_slot('herald_tail')");
    insert(&db, &[(5, 5)]);
    let tail = Tail::start(&db, dir.path());
    tail.out.until(5, 5).await;
    insert(&db, &[(6, 6)]);
    tail.out.until(6, 6).await;
    let got = tail.stop().await;
    assert_eq!(
        got,
        vec![(1, 4), (2, u64::MAX), (3, 3), (5, 5), (6, 6)],
        "a reload (namespace order), then the stream"
    );
    assert!(slot_confirmed(&db).is_some(), "the slot was recreated");
}

/// A transaction that began before others and commits after them is announced at its commit,
/// after them (commit order); a 100,000-row transaction arrives whole, in order, in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_large_transactions() {
    use std::io::Write;
    let db = Postgres::start().await;
    db.create_journal("server_file_journal", "bigint");
    let dir = tempdir();
    let tail = Tail::start_streaming(&db, dir.path()).await;

    let mut long = db.psql_session();
    let stdin = long.stdin.as_mut().expect("psql stdin");
    stdin
        .write_all(b"BEGIN;\nINSERT INTO server_file_journal (ns_id, sj_id) VALUES (1, 100);\n")
        .expect("write to psql");
    stdin.flush().expect("flush psql");
    // Make sure the long transaction has written its row before the others commit.
    herald_e2e::eventually(WAIT, "the long transaction's row is written", || async {
        (db.sql("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'") == "1")
            .then_some(())
    })
    .await;
    insert(&db, &[(2, 1)]);
    insert(&db, &[(3, 1)]);
    let stdin = long.stdin.as_mut().expect("psql stdin");
    stdin.write_all(b"COMMIT;\n").expect("write to psql");
    drop(long.stdin.take());
    assert!(long.wait().expect("psql exits").success());
    tail.out.until(1, 100).await;
    assert_eq!(tail.out.take(), vec![(2, 1), (3, 1), (1, 100)]);

    // 100,000 rows in one transaction, over 1,000 namespaces.
    let started = std::time::Instant::now();
    db.sql(
        "INSERT INTO server_file_journal (ns_id, sj_id) \
         SELECT 1000 + g % 1000, 1000 + g FROM generate_series(1, 100000) g",
    );
    let committed = started.elapsed();
    tail.out.until(1000, 101_000).await; // the last row (g = 100,000)
    let delivered_at = started.elapsed();
    let got = tail.stop().await;
    assert_eq!(got.len(), 100_000, "every row of the transaction");
    assert!(
        got.iter().enumerate().all(|(i, &(ns, sj))| {
            let g = i as u64 + 1;
            ns == 1000 + g % 1000 && sj == 1000 + g
        }),
        "in the order the transaction wrote them"
    );
    eprintln!(
        "100k-row transaction: committed in {committed:?}, all delivered {:?} after the commit returned",
        delivered_at - committed
    );
}

/// `max_slot_wal_keep_size` bounds what a stopped tailer's slot holds: past it the server
/// invalidates the slot (`wal_status = 'lost'`). The tailer must notice, recreate it and reload,
/// not retry a dead slot forever nor start at "now".
#[tokio::test]
async fn an_invalidated_slot_is_recreated_and_reloads() {
    let db = Postgres::start_with_settings(&["max_slot_wal_keep_size=1MB"]).await;
    db.create_journal("server_file_journal", "bigint");
    let dir = tempdir();
    let tail = Tail::start_streaming(&db, dir.path()).await;
    insert(&db, &[(1, 1)]);
    tail.out.until(1, 1).await;
    assert_eq!(tail.stop().await, vec![(1, 1)]);

    // While the tailer is down: a change, then WAL past the limit, until the slot is lost.
    insert(&db, &[(2, 2)]);
    for i in 0.. {
        insert(&db, &[(3, 3 + i)]);
        db.sql("SELECT pg_switch_wal()");
        db.sql("CHECKPOINT");
        let status = db.sql("SELECT wal_status FROM pg_replication_slots");
        if status == "lost" {
            break;
        }
        assert!(
            i < 50,
            "the slot is never invalidated (wal_status {status})"
        );
    }
    let tail = Tail::start(&db, dir.path());
    insert(&db, &[(4, 100)]);
    tail.out.until(4, 100).await;
    let got = tail.stop().await;
    let last3 = db.sql("SELECT max(sj_id) FROM server_file_journal WHERE ns_id = 3");
    let last3: u64 = last3.parse().unwrap();
    assert_eq!(got, vec![(1, 1), (2, 2), (3, last3), (4, 100)]);
    assert_eq!(
        db.sql("SELECT wal_status FROM pg_replication_slots"),
        "reserved",
        "a fresh slot"
    );
}

#[tokio::test]
async fn refusals_say_what_to_change() {
    let db = Postgres::start().await;
    db.create_journal("server_file_journal", "bigint");
    db.create_journal("int_journal", "integer");
    db.sql(&format!(
        "CREATE TABLE no_sjid (id bigserial PRIMARY KEY, ns_id bigint, version bigint); \
         GRANT SELECT ON no_sjid TO {TAIL_USER}; \
         CREATE TABLE unpublished (id bigserial PRIMARY KEY, ns_id bigint, sj_id bigint); \
         GRANT SELECT ON unpublished TO {TAIL_USER}; \
         CREATE ROLE plain LOGIN PASSWORD 'plain-pw'"
    ));
    let dir = tempdir();
    let refusal = |url: String| {
        let cfg = config(&url, dir.path());
        async move {
            format!(
                "{:#}",
                herald_tail::preflight(&cfg).await.expect_err("refused")
            )
        }
    };
    let e = refusal(db.tail_url("table=missing")).await;
    assert!(e.contains("public.missing not found"), "{e}");
    let e = refusal(db.tail_url("table=no_sjid&publication=p2")).await;
    assert!(
        e.contains("no column sj_id") && e.contains("ns_id, version"),
        "{e}"
    );
    let e = refusal(db.tail_url("table=int_journal&publication=int_journal_pub")).await;
    assert!(
        e.contains("is integer") && e.contains("TYPE bigint") && e.contains("numeric(20,0)"),
        "{e}"
    );
    // The publication is missing and the role (not the table's owner) cannot create it.
    let e = refusal(db.tail_url("table=unpublished&publication=unpub")).await;
    assert!(e.contains("CREATE PUBLICATION \"unpub\""), "{e}");
    // A role without REPLICATION.
    let url = format!(
        "postgres://plain:plain-pw@127.0.0.1:{}/{DATABASE}",
        db.port()
    );
    let e = refusal(url).await;
    assert!(e.contains("ALTER ROLE <role> REPLICATION"), "{e}");

    // wal_level=replica (the default): refused, and run() stops instead of retrying forever.
    let replica = Postgres::start_with("replica").await;
    replica.create_journal("server_file_journal", "bigint");
    let e = refusal(replica.tail_url("")).await;
    assert!(
        e.contains("wal_level is replica") && e.contains("wal_level = logical"),
        "{e}"
    );
    let run = herald_tail::run(
        config(&replica.tail_url(""), dir.path()),
        Recorder::default(),
        CancellationToken::new(),
    );
    let e = tokio::time::timeout(WAIT, run).await.expect("run returns");
    assert!(e.unwrap_err().to_string().contains("wal_level"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_gateway_journal_source_reaches_a_client() {
    let db = Postgres::start().await;
    db.create_journal("server_file_journal", "bigint");
    insert(&db, &[(1, 3)]);
    let gw = tokio::task::block_in_place(|| {
        GatewayProcess::start(GatewayOptions::new().arg("--journal-source", db.tail_url("")))
    });
    let mut client = gw.client().await;
    // Committed before the gateway started: loaded from the table at the first start.
    let first = client.subscribe(&[(1, 0), (2, 0)]).await;
    assert_eq!(first, vec![ServerFrame::Changed(vec![(1, 3)])]);
    insert(&db, &[(2, 5)]);
    assert_eq!(client.changed_until(2, 5, WAIT).await, vec![5]);
    // Rolled back: never sent; the commit after it is.
    db.sql("BEGIN; INSERT INTO server_file_journal (ns_id, sj_id) VALUES (1, 9); ROLLBACK");
    insert(&db, &[(1, 6)]);
    assert_eq!(client.changed_until(1, 6, WAIT).await, vec![6]);
    // An update that raises; a delete announces nothing (the next change is the update's).
    db.sql("DELETE FROM server_file_journal WHERE ns_id = 2");
    db.sql("UPDATE server_file_journal SET sj_id = 8 WHERE ns_id = 1 AND sj_id = 6");
    assert_eq!(client.changed_until(1, 8, WAIT).await, vec![8]);
    // The tailer's metrics are on the gateway's /metrics.
    herald_e2e::eventually(WAIT, "herald_tail metrics on /metrics", || async {
        let metrics = gw.get("/metrics").await.text();
        (metrics.contains("herald_tail_reloads_total{reason=\"no_checkpoint\"} 1")
            && metrics.contains("herald_tail_changes_published_total"))
        .then_some(())
    })
    .await;
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
        Self::start_in(tempdir(), source, nats, partitions)
    }

    /// Starts it with its checkpoint (and log) in `dir`, as a restart after a crash does.
    fn start_in(dir: tempfile::TempDir, source: &str, nats: &str, partitions: u64) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("tail.log"))
            .expect("log");
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
        let tail = TailProcess {
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
            other => panic!(
                "herald-tail not ready ({other:?}): {}",
                herald_e2e::process::log_tail(&tail.dir.path().join("tail.log"), 30)
            ),
        }
        tail
    }
}

impl TailProcess {
    /// SIGKILL (no shutdown, no last checkpoint write); returns its directory for a restart.
    fn kill9(mut self) -> tempfile::TempDir {
        herald_e2e::process::kill9(&mut self.child);
        let dir = tempfile::Builder::new().tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
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

/// The binary picks PostgreSQL by the URL's scheme and publishes into HERALD_JOURNAL exactly as
/// a metaserver would; a relay and a gateway bring the changes to a client.
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
    let db = Postgres::start().await;
    db.create_journal("server_file_journal", "bigint");
    let tail = TailProcess::start(&db.tail_url(""), &nats.url(), PARTITIONS);
    let mut client = gw.client().await;
    assert!(client.subscribe(&[(21, 0), (22, 0)]).await.is_empty());
    insert(&db, &[(21, 5), (22, 7)]);
    assert_eq!(client.changed_until(21, 5, WAIT).await, vec![5]);
    db.sql("BEGIN; INSERT INTO server_file_journal (ns_id, sj_id) VALUES (22, 9); ROLLBACK");
    insert(&db, &[(22, 8)]);
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

    // SIGKILL, changes (and a rollback) while it is down, restart on the same checkpoint: the
    // client gets exactly the committed values, from the slot.
    let dir = tail.kill9();
    insert(&db, &[(21, 6)]);
    db.sql("BEGIN; INSERT INTO server_file_journal (ns_id, sj_id) VALUES (22, 99); ROLLBACK");
    insert(&db, &[(22, 10)]);
    let _tail = TailProcess::start_in(dir, &db.tail_url(""), &nats.url(), PARTITIONS);
    assert_eq!(client.changed_until(21, 6, WAIT).await, vec![6]);
    assert_eq!(client.changed_until(22, 10, WAIT).await, vec![10]);
}

/// Seeded: random transactions (some rolled back, some updates, some deletes) while the
/// tailer is stopped and restarted at random, once with its slot dropped, and the database
/// crashes and recovers once. `HERALD_TAIL_SEED=<n>` replays a run. At the end the
/// journal (what the tailer delivered, merged by max) holds exactly the committed maximum of
/// every namespace, and nothing delivered was ever a rolled-back value.
#[tokio::test]
async fn model_random_transactions_and_restarts() {
    let seed: u64 = std::env::var("HERALD_TAIL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!(
        "model_random_transactions_and_restarts seed={seed} (HERALD_TAIL_SEED={seed} replays it)"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let db = Postgres::start().await;
    db.create_journal("server_file_journal", "bigint");
    let dir = tempdir();
    // Committed maximum per namespace, and every value that was only ever rolled back.
    let mut committed: HashMap<u64, u64> = HashMap::new();
    let mut next_sjid: u64 = 1;
    let mut rolled_back = Vec::new();
    let mut journal: HashMap<u64, u64> = HashMap::new();
    let mut delivered = Vec::new();
    let mut tail = Some(Tail::start(&db, dir.path()));
    let dropped_at = rng.random_range(3..8);
    let restarted_at = rng.random_range(1..9);
    let mut db = db;
    for round in 0..10 {
        // The database crashes once (SIGKILL, crash recovery) under a running tailer, which
        // reconnects and resumes.
        if round == restarted_at {
            db.restart().await;
        }
        for _ in 0..rng.random_range(2..6) {
            let mut stmts = Vec::new();
            let mut pending = Vec::new();
            for _ in 0..rng.random_range(1..4) {
                let ns = rng.random_range(1..8u64);
                let sjid = next_sjid;
                next_sjid += 1;
                if rng.random_bool(0.2) && committed.contains_key(&ns) {
                    stmts.push(format!(
                        "UPDATE server_file_journal SET sj_id = {sjid} WHERE ns_id = {ns}"
                    ));
                } else {
                    stmts.push(format!(
                        "INSERT INTO server_file_journal (ns_id, sj_id) VALUES ({ns}, {sjid})"
                    ));
                }
                pending.push((ns, sjid));
            }
            if rng.random_bool(0.1) {
                // Pruning as a metaserver would: rows below their namespace's latest.
                stmts.push(
                    "DELETE FROM server_file_journal a WHERE EXISTS (SELECT 1 FROM \
                     server_file_journal b WHERE b.ns_id = a.ns_id AND b.sj_id > a.sj_id)"
                        .into(),
                );
            }
            let commit = rng.random_bool(0.75);
            db.sql(&format!(
                "BEGIN; {}; {}",
                stmts.join("; "),
                if commit { "COMMIT" } else { "ROLLBACK" }
            ));
            for (ns, sjid) in pending {
                if commit {
                    let e = committed.entry(ns).or_insert(0);
                    *e = (*e).max(sjid);
                } else {
                    rolled_back.push((ns, sjid));
                }
            }
        }
        // Restart the tailer at random, once losing the slot while it is down.
        if rng.random_bool(0.5) || round == dropped_at {
            if let Some(t) = tail.take() {
                delivered.extend(t.stop().await);
            }
            if round == dropped_at {
                db.sql(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = 'herald_tail'",
                );
            }
            tail = Some(Tail::start(&db, dir.path()));
        }
    }
    let t = tail.take().expect("a tailer");
    for (&ns, &max) in &committed {
        t.out.until(ns, max).await;
    }
    delivered.extend(t.stop().await);
    for &(ns, sjid) in &delivered {
        assert!(
            !rolled_back.contains(&(ns, sjid)),
            "seed={seed}: rolled-back ({ns}, {sjid}) was delivered"
        );
        let e = journal.entry(ns).or_insert(0);
        *e = (*e).max(sjid);
    }
    // Updates may lower a row's value, but the journal keeps the max committed per namespace.
    assert_eq!(journal, committed, "seed={seed}");
}

/// Commit → client latency through PostgreSQL and `--journal-source`, beside the direct publish
/// path (`POST /v1/publish`) of the same gateway, one change at a time. Prints the figures;
/// asserts only that every change arrived. Run with
/// `cargo test -p herald-e2e --test tail_postgres -- --ignored --nocapture bench`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand"]
async fn bench_commit_to_client_latency() {
    use std::io::Write;
    const N: u64 = 200;
    let db = Postgres::start().await;
    db.create_journal("server_file_journal", "bigint");
    let gw = tokio::task::block_in_place(|| {
        GatewayProcess::start(GatewayOptions::new().arg("--journal-source", db.tail_url("")))
    });
    let mut client = gw.client().await;
    client.subscribe(&[(1, 0), (2, 0)]).await;
    // One psql session: each INSERT commits on its own (autocommit) as soon as it is read.
    let mut psql = db.psql_session();
    let mut via_db = Vec::new();
    let mut direct = Vec::new();
    for i in 1..=N {
        let started = std::time::Instant::now();
        let stdin = psql.stdin.as_mut().expect("psql stdin");
        writeln!(
            stdin,
            "INSERT INTO server_file_journal (ns_id, sj_id) VALUES (1, {i});"
        )
        .expect("write");
        stdin.flush().expect("flush");
        client.changed_until(1, i, WAIT).await;
        via_db.push(started.elapsed());

        let started = std::time::Instant::now();
        gw.publish_ok(&[(2, i)]).await;
        client.changed_until(2, i, WAIT).await;
        direct.push(started.elapsed());
    }
    drop(psql.stdin.take());
    let _ = psql.wait();
    via_db.sort();
    direct.sort();
    eprintln!(
        "commit -> client, {N} changes one at a time: PostgreSQL tail p50 {:?} p99 {:?}; direct POST /v1/publish p50 {:?} p99 {:?}",
        percentile(&via_db, 0.5),
        percentile(&via_db, 0.99),
        percentile(&direct, 0.5),
        percentile(&direct, 0.99)
    );
}

/// Catch-up after an outage and the rows a second the tailer sustains: the tailer stops,
/// `HERALD_TAIL_BENCH_ROWS` rows (default 1,000,000; 10,000-row transactions over 100,000
/// namespaces) commit, then it starts again from its checkpoint and reads them all into a
/// counting sink (the decoding and the slot's pace; the journal sink's own pace is measured in
/// "Herald beside its peers"). Prints the time, rows/s and CPU-seconds per 1M rows. Run with
/// `cargo test --release -p herald-e2e --test tail_postgres -- --ignored --nocapture bench_catch_up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand"]
async fn bench_catch_up_throughput() {
    let rows: u64 = std::env::var("HERALD_TAIL_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let db = Postgres::start().await;
    db.create_journal("server_file_journal", "bigint");
    let dir = tempdir();
    let tail = Tail::start_streaming(&db, dir.path()).await;
    tail.stop().await;
    let written = std::time::Instant::now();
    let mut next = 1u64;
    while next <= rows {
        let last = (next + 9_999).min(rows);
        db.sql(&format!(
            "INSERT INTO server_file_journal (ns_id, sj_id) \
             SELECT s % 100000, s FROM generate_series({next}, {last}) AS s"
        ));
        next = last + 1;
    }
    let write_s = written.elapsed().as_secs_f64();
    #[derive(Clone)]
    struct Counter(Arc<std::sync::atomic::AtomicU64>);
    impl JournalSink for Counter {
        async fn deliver(&self, changes: Vec<Change>) -> anyhow::Result<()> {
            self.0
                .fetch_add(changes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    }
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cpu0 = process_cpu_seconds();
    let started = std::time::Instant::now();
    let stop = CancellationToken::new();
    let task = tokio::spawn(herald_tail::run(
        config(&db.tail_url(""), dir.path()),
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
    eprintln!(
        "PostgreSQL catch-up over a backlog of {rows} rows (written in {write_s:.1} s): \
         {elapsed:.2} s, {:.0} rows/s, {:.2} CPU-s per 1M rows (tailer, in-process)",
        rows as f64 / elapsed,
        cpu * 1e6 / rows as f64
    );
}
