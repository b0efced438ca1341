//! The relay tier against a real nats-server: the journal stream, fan-out batches, latest
//! look-ups, restarts, active-active relays and bad journal messages.

use async_nats::jetstream;
use herald_e2e::nats::{
    FanoutWatcher, NatsServer, RelayOptions, RelayProcess, latest, latest_raw, relay_command,
};
use herald_proto::fanout::{JOURNAL_STREAM, partition};
use herald_relay::Publisher;
use std::collections::HashSet;
use std::time::Duration;

/// Bound on one expected batch, reply or state change.
const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must not arrive.
const QUIET: Duration = Duration::from_millis(300);
/// Partitions of every test deployment: small, so partition numbers are easy to read.
const PARTITIONS: u64 = 4;

/// These tests read the fan-out itself, so it goes out at once (`--coalesce-us`), not as
/// vouching batches (tests/tests/journal_direct.rs covers those).
fn options() -> RelayOptions {
    RelayOptions::new()
        .arg("--partitions", PARTITIONS)
        .arg("--vouch-ms", 0)
}

async fn publisher(nats: &NatsServer) -> Publisher {
    Publisher::new(jetstream::new(nats.client().await), PARTITIONS)
}

/// Polls `herald.latest.<p>` until `ns` is at `sjid` (the relay has applied it).
async fn until_latest(client: &async_nats::Client, ns: u64, sjid: u64) -> u64 {
    let p = partition(ns, PARTITIONS);
    herald_e2e::eventually(WAIT, &format!("latest({ns}) = {sjid}"), || async {
        let reply = latest(client, p, &[ns], Duration::from_millis(500)).await?;
        (reply.entries == [(ns, sjid)]).then_some(reply.epoch)
    })
    .await
}

#[tokio::test]
async fn stream_is_created_idempotently_and_checked() {
    let nats = NatsServer::start();
    let url = nats.url();
    let (ok, out, err) = relay_command(&["create-stream", "--nats", &url]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("created"), "{out}");
    let (ok, out, err) = relay_command(&["create-stream", "--nats", &url]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("exists"), "{out}");

    // A relay starts on the existing stream and leaves it as it is.
    let relay = RelayProcess::start(&url, options()).await;
    let js = jetstream::new(nats.client().await);
    let mut stream = js.get_stream(JOURNAL_STREAM).await.expect("stream");
    let config = stream.info().await.expect("info").config.clone();
    assert_eq!(config.subjects, ["herald.journal.>"]);
    assert_eq!(config.max_messages_per_subject, 1);
    assert_eq!(config.duplicate_window, Duration::from_secs(10));
    assert_eq!(config.num_replicas, 1);
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert_eq!(relay.get("/readyz").await.status, 200);
    assert_eq!(relay.get("/healthz").await.status, 200);

    // An incompatible stream is refused with a message that names the setting.
    let other = NatsServer::start();
    let js = jetstream::new(other.client().await);
    js.create_stream(jetstream::stream::Config {
        name: JOURNAL_STREAM.into(),
        subjects: vec!["herald.journal.>".into()],
        max_messages_per_subject: 5,
        ..Default::default()
    })
    .await
    .expect("create a history stream");
    let (ok, out, err) = relay_command(&["create-stream", "--nats", &other.url()]);
    assert!(!ok, "{out}");
    assert!(err.contains("max_msgs_per_subject"), "{err}");

    // A server without JetStream is refused by name, by the relay as well.
    let plain = NatsServer::start_without_jetstream();
    let (ok, _, err) = relay_command(&["create-stream", "--nats", &plain.url()]);
    assert!(!ok);
    assert!(err.contains("JetStream"), "{err}");
    let (ok, _, err) = relay_command(&["--nats", &plain.url(), "--admin-listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(err.contains("no JetStream"), "{err}");
}

#[tokio::test]
async fn batches_are_numbered_per_partition_and_coalesced() {
    let nats = NatsServer::start();
    // A long window, so that a burst is surely one batch.
    let relay = RelayProcess::start(&nats.url(), options().arg("--coalesce-us", 100_000)).await;
    let client = nats.client().await;
    let mut watch = FanoutWatcher::subscribe(&client, "herald.fanout.>").await;
    let publisher = publisher(&nats).await;

    // One burst: ns 5 three times, in SJID order as publishers must (the max goes out, once),
    // and ns 9, both in partition 1.
    for change in [(5, 1), (5, 2), (9, 7), (5, 3)] {
        publisher.publish(&[change]).await.expect("publish");
    }
    let (p, batch) = watch.next(WAIT).await.expect("a batch");
    assert_eq!((p, batch.epoch, batch.seq), (1, relay.epoch(), 1));
    let mut changes = batch.changes.clone();
    changes.sort_unstable();
    assert_eq!(changes, vec![(5, 3), (9, 7)]);

    // Next burst on the same partition: seq 2; another partition starts at 1.
    publisher
        .publish(&[(13, 1), (2, 8)])
        .await
        .expect("publish");
    let mut got = Vec::new();
    for _ in 0..2 {
        let (p, b) = watch.next(WAIT).await.expect("a batch");
        assert_eq!(b.epoch, relay.epoch());
        got.push((p, b.seq, b.changes));
    }
    got.sort_unstable();
    assert_eq!(got, vec![(1, 2, vec![(13, 1)]), (2, 1, vec![(2, 8)])]);

    // Not a raise (lower or equal SJID): nothing goes out.
    publisher.publish(&[(5, 3), (9, 6)]).await.expect("publish");
    assert!(
        watch.next(QUIET).await.is_none(),
        "a non-raise was fanned out"
    );

    assert_eq!(relay.metric("herald_relay_fanout_batches_total").await, 3.0);
    assert_eq!(relay.metric("herald_relay_fanout_changes_total").await, 4.0);
    // At most 8 messages; the compacted journal may drop an older message of a subject before
    // the consumer reads it.
    let applied = relay.metric("herald_relay_journal_messages_total").await;
    assert!((4.0..=8.0).contains(&applied), "{applied}");
    assert_eq!(relay.metric("herald_relay_namespaces").await, 4.0);
}

#[tokio::test]
async fn heartbeats_carry_each_partitions_last_seq() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    let mut watch = FanoutWatcher::subscribe(&client, "herald.fanout.>").await;
    let relay = RelayProcess::start(&nats.url(), options().arg("--heartbeat-ms", 100)).await;
    // Right at ready, every partition hears the new epoch, with seq 0.
    let mut seen = HashSet::new();
    while seen.len() < PARTITIONS as usize {
        let (p, b) = watch.next_any(WAIT).await.expect("a heartbeat");
        assert_eq!((b.epoch, b.seq, b.changes.len()), (relay.epoch(), 0, 0));
        seen.insert(p);
    }
    publisher(&nats)
        .await
        .publish(&[(6, 4)])
        .await
        .expect("publish");
    // Partition 2 then carries seq 1 in its heartbeats: a subscriber that lost the batch sees
    // the gap without waiting for another change.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (p, b) = watch.next_any(WAIT).await.expect("fan-out traffic");
        if p == 2 && b.changes.is_empty() && b.seq == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat with seq 1 on partition 2"
        );
    }
}

#[tokio::test]
async fn publish_at_once_has_sub_second_latency() {
    let nats = NatsServer::start();
    let relay = RelayProcess::start(&nats.url(), options().arg("--coalesce-us", 0)).await;
    let client = nats.client().await;
    let mut watch = FanoutWatcher::subscribe(&client, "herald.fanout.3").await;
    let publisher = publisher(&nats).await;
    let mut last_seq = 0;
    for sjid in 1..=20u64 {
        let started = std::time::Instant::now();
        publisher.publish(&[(7, sjid)]).await.expect("publish");
        let (p, batch) = watch.next(WAIT).await.expect("a batch");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!((p, batch.epoch), (3, relay.epoch()));
        assert_eq!(batch.changes, vec![(7, sjid)]);
        assert_eq!(batch.seq, last_seq + 1, "seq goes up by one");
        last_seq = batch.seq;
    }
}

#[tokio::test]
async fn latest_requests_are_answered() {
    let nats = NatsServer::start();
    let relay = RelayProcess::start(&nats.url(), options()).await;
    let client = nats.client().await;
    publisher(&nats)
        .await
        .publish(&[(7, 42), (11, 5), (11, 6), (u64::MAX, u64::MAX)])
        .await
        .expect("publish");
    assert_eq!(until_latest(&client, 7, 42).await, relay.epoch());

    let reply = latest(&client, 3, &[7, 11, 999, u64::MAX], WAIT)
        .await
        .expect("an answer");
    assert_eq!(reply.epoch, relay.epoch());
    assert_eq!(
        reply.entries,
        vec![(7, 42), (11, 6), (999, 0), (u64::MAX, u64::MAX)]
    );
    let reply = latest(&client, 0, &[], WAIT).await.expect("an answer");
    assert!(reply.entries.is_empty());

    // A malformed request gets a reply with no entries (and is counted), quickly.
    let reply = latest_raw(&client, 3, b"\x07junk".to_vec(), WAIT)
        .await
        .expect("an answer to a malformed request");
    assert_eq!((reply.epoch, reply.entries.len()), (relay.epoch(), 0));
    assert_eq!(
        relay
            .metric("herald_relay_latest_requests_total{result=\"malformed\"}")
            .await,
        1.0
    );
    assert!(
        relay
            .metric("herald_relay_latest_requests_total{result=\"ok\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn restart_loads_the_journal_with_a_new_epoch() {
    let nats = NatsServer::start();
    let mut relay = RelayProcess::start(&nats.url(), options()).await;
    let first_epoch = relay.epoch();
    let client = nats.client().await;
    let publisher = publisher(&nats).await;
    let changes: Vec<(u64, u64)> = (0..2000).map(|ns| (ns, ns + 100)).collect();
    publisher.publish(&changes).await.expect("publish");
    until_latest(&client, 1999, 2099).await;

    // A late lower SJID (against the publishing rule) replaces ns 7's message in the compacted
    // journal; the relay ignores it and writes the latest back.
    publisher.publish(&[(7, 5)]).await.expect("publish");
    herald_e2e::eventually(WAIT, "the journal repaired", || async {
        (relay.metric("herald_relay_journal_repairs_total").await == 1.0).then_some(())
    })
    .await;
    assert_eq!(until_latest(&client, 7, 107).await, first_epoch);

    // While it is down, more changes land in the journal: a new namespace and a raise.
    relay.kill9();
    publisher
        .publish(&[(5000, 1), (1, 1000)])
        .await
        .expect("publish");
    let mut watch = FanoutWatcher::subscribe(&client, "herald.fanout.>").await;

    relay.restart().await;
    assert_ne!(relay.epoch(), first_epoch, "a new process has a new epoch");
    assert_eq!(relay.get("/readyz").await.status, 200);
    let reply = latest(&client, 0, &[0, 4, 1996, 5000], WAIT)
        .await
        .expect("an answer");
    assert_eq!(reply.epoch, relay.epoch());
    assert_eq!(
        reply.entries,
        vec![(0, 100), (4, 104), (1996, 2096), (5000, 1)]
    );
    let reply = latest(&client, 1, &[1], WAIT).await.expect("an answer");
    assert_eq!(reply.entries, vec![(1, 1000)]);
    let reply = latest(&client, 3, &[7], WAIT).await.expect("an answer");
    assert_eq!(
        reply.entries,
        vec![(7, 107)],
        "the repaired value was loaded"
    );
    // The load is not fanned out (gateways resync on the new epoch instead).
    assert!(watch.next(QUIET).await.is_none(), "the load was fanned out");
    assert_eq!(relay.metric("herald_relay_namespaces").await, 2001.0);
    assert!(relay.metric("herald_relay_load_seconds").await > 0.0);

    // Tailing goes on after the load.
    publisher.publish(&[(4, 105)]).await.expect("publish");
    let seen = watch.until(relay.epoch(), 4, 105, WAIT).await;
    assert_eq!(seen.last().map(|(_, b)| b.seq), Some(1));
}

#[tokio::test]
async fn two_relays_run_active_active() {
    let nats = NatsServer::start();
    let a = RelayProcess::start(&nats.url(), options().arg("--coalesce-us", 0)).await;
    let b = RelayProcess::start(&nats.url(), options().arg("--coalesce-us", 0)).await;
    assert_ne!(a.epoch(), b.epoch());
    let client = nats.client().await;
    let mut watch = FanoutWatcher::subscribe(&client, "herald.fanout.2").await;
    publisher(&nats)
        .await
        .publish(&[(6, 9)])
        .await
        .expect("publish");

    let mut epochs = HashSet::new();
    while epochs.len() < 2 {
        let (p, batch) = watch.next(WAIT).await.expect("a batch from each relay");
        assert_eq!(
            (p, batch.seq, batch.changes.as_slice()),
            (2, 1, &[(6, 9)][..])
        );
        epochs.insert(batch.epoch);
    }
    assert_eq!(epochs, HashSet::from([a.epoch(), b.epoch()]));

    // Both answer look-ups (queue group herald-relay spreads requests over them).
    let mut answered = HashSet::new();
    for _ in 0..64 {
        let reply = latest(&client, 2, &[6], WAIT).await.expect("an answer");
        assert_eq!(reply.entries, vec![(6, 9)]);
        answered.insert(reply.epoch);
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered, HashSet::from([a.epoch(), b.epoch()]));

    // One goes away: the other still answers every request.
    drop(a);
    for _ in 0..10 {
        let reply = latest(&client, 2, &[6], WAIT).await.expect("an answer");
        assert_eq!(reply.epoch, b.epoch());
    }
}

#[tokio::test]
async fn bad_journal_messages_are_skipped_and_counted() {
    let nats = NatsServer::start();
    let (ok, out, err) = relay_command(&["create-stream", "--nats", &nats.url()]);
    assert!(ok, "{out}{err}");
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let raw = |subject: &'static str, body: &[u8]| {
        let body = body.to_vec();
        let js = js.clone();
        async move {
            js.publish(subject, body.into())
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
    };
    // Already in the journal when the relay loads: one bad body, one good.
    raw("herald.journal.1.1", b"not a sjid").await;
    raw("herald.journal.2.2", &5u64.to_be_bytes()).await;
    let relay = RelayProcess::start(&nats.url(), options().arg("--coalesce-us", 0)).await;
    assert_eq!(
        relay
            .metric("herald_relay_bad_messages_total{reason=\"body\"}")
            .await,
        1.0
    );
    until_latest(&client, 2, 5).await;

    let mut watch = FanoutWatcher::subscribe(&client, "herald.fanout.>").await;
    raw("herald.journal.1.5", b"").await;
    // (Another subject: the compacted journal may drop a subject's older message unread.)
    raw("herald.journal.1.9", b"123456789").await;
    raw("herald.journal.x.5", &1u64.to_be_bytes()).await;
    // p = 3 but 5 % 4 = 1: a misconfigured publisher, counted, still applied.
    raw("herald.journal.3.5", &8u64.to_be_bytes()).await;
    let seen = watch.until(relay.epoch(), 5, 8, WAIT).await;
    assert_eq!(seen.len(), 1, "only the valid change went out: {seen:?}");
    assert_eq!(seen[0].0, 1, "fanned out on the namespace's own partition");
    until_latest(&client, 5, 8).await;
    let bad = |reason: &str| format!("herald_relay_bad_messages_total{{reason=\"{reason}\"}}");
    assert_eq!(relay.metric(&bad("body")).await, 3.0);
    assert_eq!(relay.metric(&bad("subject")).await, 1.0);
    assert_eq!(relay.metric(&bad("partition")).await, 1.0);

    // And it keeps going.
    publisher(&nats)
        .await
        .publish(&[(5, 9)])
        .await
        .expect("publish");
    watch.until(relay.epoch(), 5, 9, WAIT).await;
    assert_eq!(relay.get("/readyz").await.status, 200);
}

#[tokio::test]
async fn relay_waits_for_nats_and_survives_its_restart() {
    let mut nats = NatsServer::unstarted(true);
    let mut relay = RelayProcess::spawn_unready(&nats.url(), options().arg("--coalesce-us", 0));
    // Not ready without a broker: no ready line within a second; then the broker comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        relay.log_tail(20).contains("cannot connect to NATS"),
        "{}",
        relay.log_tail(20)
    );
    nats.resume();
    relay.wait_ready(Duration::from_secs(15)).await;
    let client = nats.client().await;
    publisher(&nats)
        .await
        .publish(&[(3, 1)])
        .await
        .expect("publish");
    until_latest(&client, 3, 1).await;
    drop(client);

    // The broker restarts (same store): the relay reconnects, keeps tailing and answering.
    nats.stop();
    nats.resume();
    let client = nats.client().await;
    let mut watch = FanoutWatcher::subscribe(&client, "herald.fanout.3").await;
    let publisher = herald_e2e::eventually(WAIT, "JetStream back", || async {
        let p = publisher(&nats).await;
        p.publish(&[(3, 2)]).await.ok().map(|_| p)
    })
    .await;
    watch
        .until(relay.epoch(), 3, 2, Duration::from_secs(10))
        .await;
    publisher.publish(&[(3, 3)]).await.expect("publish");
    watch.until(relay.epoch(), 3, 3, WAIT).await;
    assert_eq!(until_latest(&client, 3, 3).await, relay.epoch());

    // SIGTERM stops it cleanly.
    relay.sigterm();
    let status = relay.wait_exit(WAIT).await.expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_deleted_stream_is_recreated_and_read_again() {
    let nats = NatsServer::start();
    let relay = RelayProcess::start(&nats.url(), options().arg("--coalesce-us", 0)).await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    publisher(&nats)
        .await
        .publish(&[(1, 10)])
        .await
        .expect("publish");
    until_latest(&client, 1, 10).await;

    js.delete_stream(JOURNAL_STREAM).await.expect("delete");
    let mut watch = FanoutWatcher::subscribe(&client, "herald.fanout.1").await;
    // The relay notices (within a few seconds), creates the stream again and reads it.
    let publisher = herald_e2e::eventually(Duration::from_secs(10), "the stream back", || async {
        let p = publisher(&nats).await;
        p.publish(&[(1, 11)]).await.ok().map(|_| p)
    })
    .await;
    watch.until(relay.epoch(), 1, 11, WAIT).await;
    publisher.publish(&[(5, 1)]).await.expect("publish");
    watch.until(relay.epoch(), 5, 1, WAIT).await;
    assert!(
        relay.log_tail(50).contains("disappeared"),
        "{}",
        relay.log_tail(50)
    );
    assert_eq!(relay.get("/readyz").await.status, 200);
}

/// A vouching relay reads the journal with pulls of its own pull consumer. When that consumer is
/// lost (deleted here; a NATS node failure does the same), the next pull starts a new one after
/// the last sequence applied, and the changes published meanwhile still go out.
#[tokio::test]
async fn a_pulling_relay_replaces_a_lost_pull_consumer() {
    let nats = NatsServer::start();
    let relay = RelayProcess::start(
        &nats.url(),
        RelayOptions::new()
            .arg("--partitions", PARTITIONS)
            .arg("--vouch-ms", 100),
    )
    .await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let publisher = publisher(&nats).await;
    publisher.publish(&[(1, 10)]).await.expect("publish");
    until_latest(&client, 1, 10).await;

    let stream = js.get_stream(JOURNAL_STREAM).await.expect("journal stream");
    let names: Vec<String> = {
        use futures_util::StreamExt;
        stream
            .consumer_names()
            .filter_map(|n| async move { n.ok() })
            .collect()
            .await
    };
    assert_eq!(names.len(), 1, "one pull consumer: {names:?}");
    stream.delete_consumer(&names[0]).await.expect("delete");

    let mut watch = FanoutWatcher::subscribe(&client, "herald.fanout.1").await;
    publisher
        .publish(&[(1, 11), (5, 3)])
        .await
        .expect("publish");
    watch.until(relay.epoch(), 1, 11, WAIT).await;
    until_latest(&client, 5, 3).await;
    assert!(
        relay
            .metric("herald_relay_journal_pull_restarts_total")
            .await
            >= 1.0,
        "{}",
        relay.log_tail(30)
    );
}

/// Load speed of the journal (DESIGN.md measured ~4 s for 1M namespaces). A benchmark, not a
/// test: `cargo build --release -p herald-relay && cargo test --release -p herald-e2e --test relay
/// -- --ignored --nocapture` (HERALD_LOAD_NAMESPACES to change the count).
#[tokio::test]
#[ignore = "benchmark: publishes a million journal messages"]
async fn load_speed() {
    let n: u64 = std::env::var("HERALD_LOAD_NAMESPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let nats = NatsServer::start();
    let (ok, out, err) = relay_command(&["create-stream", "--nats", &nats.url()]);
    assert!(ok, "{out}{err}");
    let publisher = Publisher::new(jetstream::new(nats.client().await), 64);
    let started = std::time::Instant::now();
    let changes: Vec<(u64, u64)> = (0..n).map(|ns| (ns, ns + 1)).collect();
    for chunk in changes.chunks(10_000) {
        publisher.publish(chunk).await.expect("publish");
    }
    let publish_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let relay = RelayProcess::start(&nats.url(), RelayOptions::new()).await;
    let ready_s = started.elapsed().as_secs_f64();
    let load_s = relay.metric("herald_relay_load_seconds").await;
    assert_eq!(relay.metric("herald_relay_namespaces").await, n as f64);
    println!(
        "{n} namespaces: published in {publish_s:.2} s ({:.0}/s); relay ready in {ready_s:.2} s, \
         load {load_s:.2} s ({:.0}/s)",
        n as f64 / publish_s,
        n as f64 / load_s
    );
}
