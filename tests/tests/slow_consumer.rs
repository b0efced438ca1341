//! A client that stops reading must not hold the gateway's memory or other clients hostage (C11):
//! past `--outbox-limit-bytes` it is sent GOAWAY(slow_consumer) and cut off, while a client that
//! reads keeps up to the last change.

use herald_e2e::ws::{self, RawFrame, RawSocket};
use herald_e2e::{ClientFrame, Code, GatewayOptions, GatewayProcess, ServerFrame, WsClient};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Namespace and SJIDs above 2^63 encode as 10-byte varints: each CHANGED is 24 bytes on the
/// wire, so 20 000 of them (480 KB) overflow the kernel's buffers (a few hundred KB with the
/// small MSS below) plus the 64 KiB outbox by a wide margin.
const NS: u64 = (1 << 63) + 80;
const BASE: u64 = 1 << 63;
const BATCHES: u64 = 40;
const PER_BATCH: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_cut_off_and_memory_stays_bounded() {
    let gw = GatewayProcess::start(GatewayOptions::new().arg("--outbox-limit-bytes", 65_536));

    // The slow client: a small receive buffer and a small MSS, so that the kernel buffers on both
    // sides stay small and the gateway's own queue is what fills.
    let mut slow = ws::raw_upgrade(
        gw.ws_addr(),
        RawSocket {
            recv_buf: Some(4096),
            mss: Some(536),
        },
    )
    .await;
    let mut out = ws::masked(
        &ClientFrame::Hello {
            version: 1,
            token: gw.token_all(),
        }
        .to_vec(),
    );
    out.extend(ws::masked(&ClientFrame::Subscribe(vec![(NS, 0)]).to_vec()));
    out.extend(ws::masked(&ClientFrame::Ping(7).to_vec()));
    slow.write_all(&out).await.unwrap();
    let setup = ws::read_raw_until(&mut slow, herald_e2e::WAIT, |f| {
        *f == RawFrame::Herald(ServerFrame::Pong(7))
    })
    .await;
    assert!(
        matches!(setup[0], RawFrame::Herald(ServerFrame::Welcome { .. })),
        "{setup:?}"
    );
    // From here on the slow client reads nothing until every change is published.

    // The normal client reads everything in its own task.
    let mut fast = gw.client().await;
    assert!(fast.subscribe(&[(NS, 0)]).await.is_empty());
    let last = BASE + BATCHES * PER_BATCH;
    let reader =
        tokio::spawn(async move { fast.changed_until(NS, last, Duration::from_secs(60)).await });

    let rss_before = gw.rss_kib();
    for b in 0..BATCHES {
        let batch: Vec<(u64, u64)> = (1..=PER_BATCH)
            .map(|i| (NS, BASE + b * PER_BATCH + i))
            .collect();
        gw.publish_ok(&batch).await;
    }
    let published = Instant::now();
    let rss_after = gw.rss_kib();

    let seen = reader.await.expect("the reading client kept up");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "SJIDs only go up");
    assert_eq!(seen.last(), Some(&last));
    assert!(
        rss_after.saturating_sub(rss_before) < 30 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // Now read the slow client: what the kernel held, maybe GOAWAY(slow_consumer) and its close,
    // then the end of the stream, which the gateway brings about within its close grace.
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let ended = loop {
        let mut chunk = vec![0u8; 64 * 1024];
        let read =
            tokio::time::timeout_at(published + Duration::from_secs(10), slow.read(&mut chunk))
                .await;
        match read {
            Err(_) => break None,
            Ok(Ok(0)) => break Some("EOF".to_owned()),
            Ok(Err(e)) => break Some(e.to_string()),
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                let (got, used) = ws::parse_server_frames(&buf);
                buf.drain(..used);
                frames.extend(got);
            }
        }
    };
    let highest = frames
        .iter()
        .filter_map(|f| match f {
            RawFrame::Herald(ServerFrame::Changed(p)) => p.iter().map(|x| x.1).max(),
            _ => None,
        })
        .max();
    println!(
        "slow client: {} frames read, highest SJID {:?}, then {ended:?}; RSS {rss_before} -> \
         {rss_after} KiB",
        frames.len(),
        highest.map(|h| h - BASE),
    );
    assert!(
        ended.is_some(),
        "the slow client's socket was still open 10 s after the last publish \
         ({} frames read, highest SJID {highest:?})",
        frames.len()
    );
    assert!(
        highest.is_some_and(|h| h < last),
        "the slow client was cut off before the end (highest SJID {highest:?})"
    );
    // If the gateway managed to send its GOAWAY, it is slow_consumer, followed by close 4102.
    if let Some(i) = frames
        .iter()
        .position(|f| matches!(f, RawFrame::Herald(ServerFrame::Goaway { .. })))
    {
        let RawFrame::Herald(ServerFrame::Goaway {
            code,
            reconnect_after_ms,
        }) = &frames[i]
        else {
            unreachable!()
        };
        assert_eq!(*code, Code::SLOW_CONSUMER);
        assert!((1000..=5000).contains(reconnect_after_ms));
        assert_eq!(
            frames.get(i + 1),
            Some(&RawFrame::Close(Code::SLOW_CONSUMER.ws_close_code()))
        );
    }

    // The gateway counted it, and serves newcomers.
    herald_e2e::eventually(
        Duration::from_secs(3),
        "herald_slow_consumers_total 1",
        || {
            let gw = &gw;
            async move {
                let text = gw.get("/metrics").await.text();
                text.lines()
                    .find(|l| l.starts_with("herald_slow_consumers_total"))
                    .and_then(|l| l.split_whitespace().last())
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|&v| v >= 1.0)
            }
        },
    )
    .await;
    let mut c = WsClient::connect(gw.ws_addr()).await;
    c.hello(&gw.token_all()).await;
    assert_eq!(
        c.subscribe(&[(NS, 0)]).await,
        vec![ServerFrame::Changed(vec![(NS, last)])]
    );
}
