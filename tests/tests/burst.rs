//! A burst of publishes reaches every transport whole and in order. Under a burst the workers'
//! fan-out rounds take every batch waiting, queue each change in its subscribers' outboxes and
//! write each connection once (several CHANGED per write, over TLS several per record batch, over
//! QUIC several per stream write): nothing may be lost, repeated or reordered by that.

use herald_client::{ClientFrame, ConnectOptions, Connection, Incoming, ServerFrame};
use herald_e2e::{GatewayOptions, GatewayProcess};
use std::collections::BTreeMap;
use std::time::Duration;

/// Namespaces every connection subscribes to.
const NAMESPACES: u64 = 40;
/// Changes published to each namespace (SJIDs 1, 2, …).
const PUBLISHES: u64 = 300;
/// Publish calls in flight at once (so that batches wait behind each other in the workers).
const IN_FLIGHT: usize = 8;
/// Connections per transport (spread over the workers).
const PER_TRANSPORT: usize = 3;
const WAIT: Duration = Duration::from_secs(30);

async fn metric(gw: &GatewayProcess, name: &str) -> f64 {
    let text = gw.get("/metrics").await.text();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_arrives_whole_and_in_order_over_every_transport() {
    let gw = GatewayProcess::start(
        GatewayOptions::new()
            .tls()
            .arg("--workers", 2)
            .arg("--quic-listen", "127.0.0.1:0"),
    );
    let mut options = ConnectOptions::default();
    options.tls = Some(gw.tls_roots());
    let quic = gw.quic_addr().expect("quic= on the ready line");
    let urls = [
        format!("ws://{}/v1/connect", gw.ws_addr()),
        format!("wss://localhost:{}/v1/connect", gw.wss_addr().port()),
        format!("quic://localhost:{}", quic.port()),
    ];
    let subscriptions: Vec<(u64, u64)> = (0..NAMESPACES).map(|ns| (ns, 0)).collect();
    let mut readers = Vec::new();
    for url in urls
        .iter()
        .flat_map(|u| std::iter::repeat_n(u, PER_TRANSPORT))
    {
        let (mut conn, _) = Connection::connect(url, &gw.token_all(), options.clone())
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        conn.send(&ClientFrame::Subscribe(subscriptions.clone()))
            .await
            .expect("subscribe");
        // The subscription is live once the barrier's PONG is back.
        conn.send(&ClientFrame::Ping(1)).await.expect("ping");
        loop {
            match tokio::time::timeout(WAIT, conn.recv()).await {
                Ok(Ok(Incoming::Frame(ServerFrame::Pong(_)))) => break,
                Ok(Ok(Incoming::Frame(ServerFrame::Changed(_)))) => {}
                other => panic!("{url}: {other:?} before the PONG"),
            }
        }
        let url = url.clone();
        readers.push(tokio::spawn(async move {
            // Every SJID of every namespace, in the order they arrived.
            let mut got: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            let mut count = 0;
            let mut done = 0;
            while done < NAMESPACES {
                match tokio::time::timeout(WAIT, conn.recv()).await {
                    Ok(Ok(Incoming::Frame(ServerFrame::Changed(pairs)))) => {
                        for (ns, sjid) in pairs {
                            got.entry(ns).or_default().push(sjid);
                            count += 1;
                            done += u64::from(sjid == PUBLISHES);
                        }
                    }
                    Ok(Ok(Incoming::Frame(ServerFrame::Ping(p)))) => {
                        conn.send(&ClientFrame::Pong(p)).await.expect("pong")
                    }
                    other => panic!("{url}: {other:?} after {count} changes"),
                }
            }
            (url, got)
        }));
    }

    // The burst: PUBLISHES waves of IN_FLIGHT concurrent calls; call j of wave w publishes SJID
    // w to the namespaces `ns % IN_FLIGHT == j`. A namespace's changes are published one wave
    // after another, so none supersedes another in the journal, and every one must arrive.
    let gw = std::sync::Arc::new(gw);
    for wave in 1..=PUBLISHES {
        let calls: Vec<_> = (0..IN_FLIGHT as u64)
            .map(|j| {
                let gw = gw.clone();
                tokio::spawn(async move {
                    let changes: Vec<(u64, u64)> = (0..NAMESPACES)
                        .filter(|ns| ns % IN_FLIGHT as u64 == j)
                        .map(|ns| (ns, wave))
                        .collect();
                    gw.publish_ok(&changes).await;
                })
            })
            .collect();
        for call in calls {
            call.await.expect("publish");
        }
    }

    let every: Vec<u64> = (1..=PUBLISHES).collect();
    for reader in readers {
        let (url, got) = tokio::time::timeout(WAIT, reader)
            .await
            .expect("every change in time")
            .expect("reader");
        assert_eq!(got.len() as u64, NAMESPACES, "{url}: namespaces");
        for (ns, sjids) in got {
            assert!(sjids == every, "{url}: ns {ns} got {sjids:?}");
        }
    }
    // The workers add their counts to the registry twice a second.
    let expected = (urls.len() * PER_TRANSPORT) as f64 * (NAMESPACES * PUBLISHES) as f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while metric(&gw, "herald_notifications_sent_total").await < expected
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = metric(&gw, "herald_notifications_sent_total").await;
    let writes = metric(&gw, "herald_fanout_writes_total").await;
    println!(
        "{} connections × {NAMESPACES} namespaces × {PUBLISHES} changes: {sent} notifications in \
         {writes} fan-out writes ({:.1} per write)",
        urls.len() * PER_TRANSPORT,
        sent / writes.max(1.0)
    );
    assert_eq!(sent, expected, "herald_notifications_sent_total");
    assert!(
        writes >= 1.0 && writes <= sent,
        "herald_fanout_writes_total {writes}: at least one write, at most one per notification"
    );
}
