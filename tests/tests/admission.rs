//! Admission control: a burst of handshakes over the configured rate is answered with 503 and
//! Retry-After before any upgrade, and the gateway accepts again once the bucket refills.

use herald_e2e::{GatewayOptions, GatewayProcess, WAIT};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends an upgrade request and returns the status code and the whole response head.
async fn upgrade_status(addr: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = "GET /v1/connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
               Sec-WebSocket-Protocol: herald.v1\r\n\r\n";
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("an HTTP answer in time")
            .expect("read");
        assert!(n == 1, "closed before the response head ended");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("utf-8 head");
    let status = head[9..12].parse().expect("status code");
    (status, head)
}

#[tokio::test]
async fn handshakes_over_the_rate_get_503_then_recover() {
    // One worker so the whole rate is one bucket: 5 a second, bursting to 5.
    let gw = GatewayProcess::start(
        GatewayOptions::new()
            .arg("--workers", 1)
            .arg("--handshake-rate", 5),
    );
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(upgrade_status(gw.ws_addr()).await);
    }
    let upgraded = statuses.iter().filter(|(s, _)| *s == 101).count();
    let refused: Vec<&String> = statuses
        .iter()
        .filter(|(s, _)| *s == 503)
        .map(|(_, h)| h)
        .collect();
    assert!(
        (5..=7).contains(&upgraded),
        "about the burst is admitted, got {upgraded} of 12"
    );
    assert_eq!(upgraded + refused.len(), 12, "{statuses:?}");
    assert!(
        refused.iter().all(|h| h.contains("Retry-After: ")),
        "503s carry Retry-After: {refused:?}"
    );
    // The bucket refills at the rate.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(upgrade_status(gw.ws_addr()).await.0, 101);
}

#[tokio::test]
async fn per_source_rate_is_separate() {
    let gw = GatewayProcess::start(
        GatewayOptions::new()
            .arg("--workers", 1)
            .arg("--handshake-rate-per-source", 2),
    );
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(upgrade_status(gw.ws_addr()).await.0);
    }
    assert_eq!(codes, vec![101, 101, 503, 503]);
}
