//! Protocol timers: the handshake timeout, the heartbeat timeout and token expiry on a live
//! connection. C8: a timeout fires between its time and its time + 1 s, never early. Elapsed
//! times are measured from just before the client's last action, so they can only over-estimate
//! the server's view; upper bounds get slack for a loaded machine.

use herald_e2e::ws::Incoming;
use herald_e2e::{
    ClientFrame, Code, GatewayOptions, GatewayProcess, NsGrant, ServerFrame, WsClient,
};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

#[tokio::test]
async fn handshake_timeout_closes_upgraded_clients_with_4104() {
    let gw = GatewayProcess::start(GatewayOptions::new().arg("--handshake-timeout-ms", 500));
    // Several clients, staggered over more than one 100 ms tick, so a deadline rounded the wrong
    // way shows up.
    let mut tasks = Vec::new();
    for i in 0..12u64 {
        let addr = gw.ws_addr();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 23)).await;
            let started = Instant::now();
            let mut c = WsClient::connect(addr).await;
            let code = c.expect_close(Duration::from_secs(5)).await;
            (code, started.elapsed())
        }));
    }
    for t in tasks {
        let (code, elapsed) = t.await.unwrap();
        assert_eq!(code, Code::TIMEOUT.ws_close_code().unwrap());
        assert!(
            elapsed >= Duration::from_millis(500),
            "closed after {elapsed:?}: before the 500 ms handshake timeout"
        );
        assert!(elapsed < Duration::from_secs(2), "closed after {elapsed:?}");
    }
}

#[tokio::test]
async fn handshake_timeout_closes_silent_tcp() {
    let gw = GatewayProcess::start(GatewayOptions::new().arg("--handshake-timeout-ms", 500));
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(gw.ws_addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the gateway kept a silent TCP connection open")
        .unwrap_or(0);
    let elapsed = started.elapsed();
    assert_eq!(n, 0, "expected EOF, got {:?}", &buf[..n]);
    assert!(
        elapsed >= Duration::from_millis(500),
        "closed after {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "closed after {elapsed:?}");

    // A half-sent request head counts the same.
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(gw.ws_addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /v1/connect HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the gateway kept a slow upgrade open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// The one slow test: 2.5 × 15 s of silence.
#[tokio::test]
async fn heartbeat_timeout_closes_silent_clients_only() {
    let gw = GatewayProcess::start(GatewayOptions::new().arg("--heartbeat-ms", 15_000));
    let limit = Duration::from_millis(37_500);

    // The live client PINGs every 5 s and must stay open past the silent ones' end.
    let mut live = gw.client().await;
    let live_task = tokio::spawn(async move {
        // PINGs at 0, 5, …, 35 s, silence checked in between: open for 40 s, past 37.5 s + 1 s.
        for nonce in 0..8 {
            live.send_frame(&ClientFrame::Ping(nonce)).await;
            assert_eq!(
                live.recv_frame(Duration::from_secs(5)).await,
                ServerFrame::Pong(nonce)
            );
            match live.next_incoming(Duration::from_secs(5)).await {
                Incoming::Timeout => {}
                other => panic!("the pinging client got {other:?}"),
            }
        }
        live
    });

    // Silent clients, staggered over a few ticks, each measured from its HELLO.
    let mut silent = Vec::new();
    for i in 0..3u64 {
        let addr = gw.ws_addr();
        let token = gw.token_all();
        silent.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 170)).await;
            let mut c = WsClient::connect(addr).await;
            let started = Instant::now();
            let w = c.hello(&token).await;
            assert_eq!(w.heartbeat_ms, 15_000);
            let code = c.expect_close(Duration::from_secs(45)).await;
            (code, started.elapsed())
        }));
    }
    for t in silent {
        let (code, elapsed) = t.await.unwrap();
        assert_eq!(code, Code::TIMEOUT.ws_close_code().unwrap(), "close code");
        assert!(
            elapsed >= limit,
            "closed after {elapsed:?}, before 2.5 × heartbeat"
        );
        assert!(
            elapsed < limit + Duration::from_millis(2500),
            "closed after {elapsed:?}"
        );
    }
    let mut live = live_task.await.unwrap();
    assert!(
        live.barrier().await.is_empty(),
        "the pinging client is still served"
    );
}

#[tokio::test]
async fn token_expiry_on_a_live_connection() {
    let gw = GatewayProcess::start_default();
    // exp 27 s ago: still inside the 30 s leeway at HELLO, past it about 3 s later.
    let token = gw.token_exp(NsGrant::All, GatewayProcess::unix_now() - 27);
    let mut c = WsClient::connect(gw.ws_addr()).await;
    let started = Instant::now();
    c.hello(&token).await;
    assert!(c.subscribe(&[(1, 0)]).await.is_empty());
    match c.recv_frame(Duration::from_secs(8)).await {
        ServerFrame::Goaway {
            code,
            reconnect_after_ms,
        } => {
            assert_eq!(code, Code::TOKEN_EXPIRED);
            assert!(reconnect_after_ms <= 60_000, "{reconnect_after_ms}");
        }
        other => panic!("expected GOAWAY(token_expired), got {other:?}"),
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(6),
        "GOAWAY after {elapsed:?}, expected about 3 s"
    );
    assert_eq!(
        c.expect_close(herald_e2e::WAIT).await,
        Code::TOKEN_EXPIRED.ws_close_code().unwrap()
    );

    // A fresh token on a new connection works.
    let mut again = gw.client().await;
    assert!(again.barrier().await.is_empty());
}
