use super::*;
use crate::config::{Cli, ServeArgs};
use crate::conn::Transport;
use crate::lookup::Lookup;
use clap::Parser;
use herald_core::latest::LatestTable;
use std::time::Duration;

fn args() -> ServeArgs {
    Cli::try_parse_from(["herald-gateway"])
        .expect("defaults")
        .serve
}

fn worker(outbox_limit_bytes: usize) -> Worker {
    let mut limits = args().conn_limits(1024);
    limits.outbox_limit_bytes = outbox_limit_bytes;
    Worker::new(
        0,
        Lookup::Embedded(Arc::new(LatestTable::new())),
        Arc::new(Verifier::new(std::collections::HashMap::new(), None, None)),
        limits,
        Arc::new(Shared::default()),
        1,
    )
}

/// An open WebSocket connection of `worker`, subscribed to `ns`, and its client socket.
async fn open_subscriber(worker: &Worker, ns: u64) -> (Rc<Conn>, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"));
    let (accepted, client) = tokio::join!(listener.accept(), client);
    let conn = worker.insert(Io::Tcp(accepted.expect("accept").0), Transport::WebSocket);
    conn.state.borrow_mut().session.open_unchecked();
    worker.interest.borrow_mut().set(ns, conn.key, 0);
    (conn, client.expect("connect"))
}

/// Reads `count` CHANGED frames (unmasked server WebSocket frames) from `client`.
async fn read_changes(client: &mut tokio::net::TcpStream, count: usize) -> Vec<(u64, u64)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut changes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while changes.len() < count {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, client.read(&mut chunk))
            .await
            .expect("the changes arrive")
            .expect("read");
        assert!(n > 0, "the gateway closed after {} changes", changes.len());
        buf.extend_from_slice(&chunk[..n]);
        // Server frames are unmasked: FIN + binary, then a 7-bit length (CHANGED of one
        // pair is short).
        while buf.len() >= 2 && buf.len() >= 2 + usize::from(buf[1]) {
            assert_eq!(buf[0], 0x82, "a final binary frame");
            assert!(buf[1] < 126, "a short frame");
            let end = 2 + usize::from(buf[1]);
            match herald_proto::frame::decode_server(&buf[2..end]).expect("frame") {
                herald_proto::ServerFrame::Changed(pairs) => changes.extend(pairs),
                other => panic!("unexpected {other:?}"),
            }
            buf.drain(..end);
        }
    }
    changes
}

/// Batches waiting for the fan-out share one round: each connection gets one write with
/// all of their changes for it, in order.
#[tokio::test]
async fn a_round_writes_each_connection_once() {
    let worker = worker(64 * 1024);
    let (_a, mut client_a) = open_subscriber(&worker, 1).await;
    let (_b, mut client_b) = open_subscriber(&worker, 2).await;
    worker.fanout(&[(1, 10), (2, 20)]);
    worker.fanout(&[(1, 11)]);
    worker.fanout(&[(1, 12), (2, 21)]);
    worker.flush_round();
    assert_eq!(worker.stats.notifications_sent.take(), 5);
    assert_eq!(
        worker.stats.fanout_writes.take(),
        2,
        "one write per connection"
    );
    assert_eq!(
        read_changes(&mut client_a, 3).await,
        [(1, 10), (1, 11), (1, 12)]
    );
    assert_eq!(read_changes(&mut client_b, 2).await, [(2, 20), (2, 21)]);
    // A paced batch alone is a round of its own.
    worker.fanout(&[(2, 22)]);
    worker.flush_round();
    assert_eq!(worker.stats.fanout_writes.take(), 1);
    assert_eq!(read_changes(&mut client_b, 1).await, [(2, 22)]);
}

/// A round that queues more than the outbox limit for a client whose socket keeps up does
/// not make it a slow consumer: past half the limit the queue is written at once.
#[tokio::test]
async fn a_long_round_is_not_a_slow_consumer() {
    let worker = worker(4096);
    let (conn, mut client) = open_subscriber(&worker, 7).await;
    let sent: Vec<(u64, u64)> = (1..=1000).map(|sjid| (7, sjid)).collect();
    for change in &sent {
        worker.fanout(std::slice::from_ref(change));
    }
    worker.flush_round();
    assert_eq!(worker.stats.slow_consumers.take(), 0);
    assert!(conn.state.borrow().session.is_open());
    assert_eq!(read_changes(&mut client, sent.len()).await, sent);
}
