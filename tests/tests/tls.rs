//! WebSocket over TLS (`wss`, `--tls-listen`): the same session as plain WebSocket through rustls'
//! unbuffered API in the gateway: handshake, HELLO/WELCOME, SUBSCRIBE → CHANGED, RESET, DENIED,
//! bad input, certificate reload on SIGHUP, the handshake timeout, and a managed client.

use herald_e2e::ws::WsClient;
use herald_e2e::{Code, GatewayOptions, GatewayProcess, NsGrant, ServerFrame, WAIT};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn changed(ns: u64, sjid: u64) -> ServerFrame {
    ServerFrame::Changed(vec![(ns, sjid)])
}

async fn metric(gw: &GatewayProcess, line_start: &str) -> f64 {
    let text = gw.get("/metrics").await.text();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn wss_session_subscribe_changed_reset_denied() {
    let gw = GatewayProcess::start(GatewayOptions::new().tls());
    let roots = gw.tls_roots();
    gw.publish_ok(&[(10, 5)]).await;

    let mut c = WsClient::connect_tls(gw.wss_addr(), &roots).await;
    let w = c
        .hello(&gw.token(NsGrant::list(vec![10, 11, 12]), 3600))
        .await;
    assert_eq!((w.version, w.session_id.len()), (1, 8));

    // Behind: CHANGED at once. Ahead of a namespace never published: RESET. Not granted: DENIED.
    assert_eq!(c.subscribe(&[(10, 2)]).await, vec![changed(10, 5)]);
    assert_eq!(
        c.subscribe(&[(11, 4)]).await,
        vec![ServerFrame::Reset(vec![11])]
    );
    assert_eq!(
        c.subscribe(&[(13, 0)]).await,
        vec![ServerFrame::Denied {
            code: Code::FORBIDDEN_NAMESPACE,
            ns: vec![13]
        }]
    );
    // A publish reaches the subscriber through the fan-out (the shared frame, encrypted here).
    gw.publish_ok(&[(10, 6)]).await;
    assert_eq!(c.recv_frame(WAIT).await, changed(10, 6));

    // Many changes at once: frames coalesced into records, several records per write.
    let mut big = WsClient::connect_tls(gw.wss_addr(), &roots).await;
    big.hello(&gw.token_all()).await;
    let pairs: Vec<(u64, u64)> = (1000..1800).map(|ns| (ns, 0)).collect();
    assert!(big.subscribe(&pairs).await.is_empty());
    let changes: Vec<(u64, u64)> = (1000..1800).map(|ns| (ns, 7)).collect();
    gw.publish_ok(&changes).await;
    let mut got = Vec::new();
    while got.len() < changes.len() {
        match big.recv_frame(WAIT).await {
            ServerFrame::Changed(p) => got.extend(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    got.sort_unstable();
    assert_eq!(got, changes);
    assert!(big.barrier().await.is_empty());

    // Plain WebSocket still works next to it.
    let mut plain = gw.client().await;
    assert_eq!(plain.subscribe(&[(10, 0)]).await, vec![changed(10, 6)]);
}

/// A client that stops reading: the gateway's encrypted records back up (kept per connection
/// below the outbox), and once the client reads again every change arrives, in order.
#[tokio::test]
async fn encrypted_writes_back_up_and_resume_in_order() {
    let gw = GatewayProcess::start(
        GatewayOptions::new()
            .tls()
            .arg("--outbox-limit-bytes", 4 * 1024 * 1024),
    );
    let small = herald_e2e::RawSocket {
        recv_buf: Some(4096),
        mss: Some(536),
    };
    let mut c = WsClient::connect_tls_on(gw.wss_addr(), &gw.tls_roots(), small)
        .await
        .expect("wss");
    c.hello(&gw.token_all()).await;
    let namespaces = 500;
    let pairs: Vec<(u64, u64)> = (0..namespaces).map(|ns| (ns, 0)).collect();
    assert!(c.subscribe(&pairs).await.is_empty());
    // Not reading now: 20 rounds of one change per namespace (10000 frames, ~200 KB).
    let rounds = 20;
    for round in 1..=rounds {
        let changes: Vec<(u64, u64)> = (0..namespaces).map(|ns| (ns, round)).collect();
        gw.publish_ok(&changes).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut last = vec![0u64; namespaces as usize];
    let mut got = 0;
    while got < namespaces * rounds {
        match c.recv_frame(WAIT).await {
            ServerFrame::Changed(p) => {
                for (ns, sjid) in p {
                    assert_eq!(sjid, last[ns as usize] + 1, "namespace {ns} out of order");
                    last[ns as usize] = sjid;
                    got += 1;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(c.barrier().await.is_empty());
}

#[tokio::test]
async fn bad_input_over_tls() {
    let gw = GatewayProcess::start(GatewayOptions::new().tls());
    let roots = gw.tls_roots();

    // A text message is a bad frame: ERROR(bad_frame), then close 4001.
    let mut c = WsClient::connect_tls(gw.wss_addr(), &roots).await;
    c.hello(&gw.token_all()).await;
    c.send_raw(Message::text("hello?")).await;
    c.expect_error_close(Code::BAD_FRAME).await;

    // Garbage instead of HELLO: the same.
    let mut d = WsClient::connect_tls(gw.wss_addr(), &roots).await;
    d.send_raw(Message::binary(vec![0xff, 0x00, 0x13])).await;
    d.expect_error_close(Code::BAD_FRAME).await;

    // Plain HTTP to the TLS port: refused (a TLS alert at most, then EOF), nothing else.
    let mut raw = tokio::net::TcpStream::connect(gw.wss_addr())
        .await
        .expect("connect");
    raw.write_all(b"GET /v1/connect HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut answer))
        .await
        .expect("the gateway closes the connection")
        .ok();
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP must not be answered on the TLS port: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        answer.len() < 16,
        "at most a TLS alert: {} bytes",
        answer.len()
    );
    // A TLS client that does not trust the certificate fails its handshake.
    let other = {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) =
            herald_gateway::tls::self_signed(&["127.0.0.1".into()], false).expect("cert");
        let path = dir.path().join("other.pem");
        std::fs::write(&path, cert).expect("write");
        herald_e2e::ws::TlsRoots::from_pem_file(&path).expect("trust anchors")
    };
    assert!(
        WsClient::try_connect_tls(gw.wss_addr(), &other)
            .await
            .is_err()
    );

    // The gateway is fine: new sessions on both listeners, health, and the errors counted.
    let mut e = WsClient::connect_tls(gw.wss_addr(), &roots).await;
    e.hello(&gw.token_all()).await;
    assert!(e.barrier().await.is_empty());
    let mut p = gw.client().await;
    assert!(p.barrier().await.is_empty());
    assert_eq!(gw.get("/healthz").await.status, 200);
    assert!(metric(&gw, "herald_tls_errors_total").await >= 1.0);
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let gw = GatewayProcess::start(GatewayOptions::new().tls());
    let old_roots = gw.tls_roots();
    let mut before = WsClient::connect_tls(gw.wss_addr(), &old_roots).await;
    before.hello(&gw.token_all()).await;
    assert!(before.subscribe(&[(5, 0)]).await.is_empty());

    gw.write_new_cert();
    let new_roots = gw.tls_roots();
    gw.sighup();
    // New handshakes get the new certificate (the reload is asynchronous: retry a little).
    let mut after = herald_e2e::eventually(WAIT, "a handshake with the new certificate", || {
        let roots = new_roots.clone();
        let addr = gw.wss_addr();
        async move { WsClient::try_connect_tls(addr, &roots).await.ok() }
    })
    .await;
    after.hello(&gw.token_all()).await;
    assert!(
        WsClient::try_connect_tls(gw.wss_addr(), &old_roots)
            .await
            .is_err(),
        "the old certificate is no longer offered"
    );
    assert_eq!(
        metric(&gw, "herald_tls_reloads_total{result=\"ok\"}").await,
        1.0
    );

    // The connection made before the reload keeps working and is notified.
    gw.publish_ok(&[(5, 1)]).await;
    assert_eq!(before.recv_frame(WAIT).await, changed(5, 1));
    assert!(before.barrier().await.is_empty());

    // A bad file: logged, counted, and the current certificate kept.
    std::fs::write(gw.cert_path(), "-----BEGIN CERTIFICATE-----\nnope\n").expect("write");
    gw.sighup();
    herald_e2e::eventually(WAIT, "the failed reload counted", || async {
        (metric(&gw, "herald_tls_reloads_total{result=\"failed\"}").await >= 1.0).then_some(())
    })
    .await;
    let mut still = WsClient::connect_tls(gw.wss_addr(), &new_roots).await;
    still.hello(&gw.token_all()).await;
    assert!(gw.log_tail(50).contains("certificate not reloaded"));
    assert!(before.barrier().await.is_empty());
    assert!(after.barrier().await.is_empty());
}

#[tokio::test]
async fn a_client_that_never_finishes_the_tls_handshake_is_dropped() {
    let gw = GatewayProcess::start(
        GatewayOptions::new()
            .tls()
            .arg("--handshake-timeout-ms", 1000),
    );
    // One that sends nothing, and one that sends half a ClientHello record.
    let mut silent = tokio::net::TcpStream::connect(gw.wss_addr())
        .await
        .expect("connect");
    let mut partial = tokio::net::TcpStream::connect(gw.wss_addr())
        .await
        .expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .expect("write");
    let started = Instant::now();
    for s in [&mut silent, &mut partial] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed by the handshake timeout")
            .unwrap_or(0);
        assert_eq!(n, 0, "no bytes, just the end");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}, expected about 1 s"
    );
}

/// The TLS listener serves the plain listener's HTTP requests too: a long-poll over HTTPS.
#[tokio::test]
async fn longpoll_over_https() {
    let gw = GatewayProcess::start(GatewayOptions::new().tls());
    gw.publish_ok(&[(4, 2)]).await;
    let body = serde_json::json!({
        "token": gw.token_all(),
        "cursors": {"4": 0},
        "timeout_s": 30
    })
    .to_string();
    let request = format!(
        "POST /v1/longpoll HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(gw.wss_addr()).await?;
        let connector = tokio_rustls::TlsConnector::from(gw.tls_roots().config());
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(request.as_bytes()).await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("HTTPS long-poll answered")
        .expect("HTTPS exchange");
    let resp = herald_e2e::http::parse(&out).expect("HTTP response");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["changes"],
        serde_json::json!([{"ns": 4, "sjid": 2}])
    );
}

#[tokio::test]
async fn managed_client_over_wss() {
    let gw = GatewayProcess::start(GatewayOptions::new().tls());
    let roots = herald_client::TlsRoots::from_pem_file(&gw.cert_path()).expect("roots");
    let mut config = herald_client::ClientConfig::new(
        format!("wss://{}/v1/connect", gw.wss_addr()),
        gw.token_all(),
    );
    config.tls = Some(roots);
    let (client, mut events) = herald_client::Client::spawn(config);
    client.subscribe(&[(3, 0)]);
    let connected = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(herald_client::Event::Connected { .. }) => return,
                Some(_) => {}
                None => panic!("client stopped"),
            }
        }
    })
    .await;
    assert!(connected.is_ok(), "no Connected event over wss");
    client.barrier().await.expect("barrier over wss");
    gw.publish_ok(&[(3, 9)]).await;
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(herald_client::Event::Changed { ns, sjid }) => return (ns, sjid),
                Some(_) => {}
                None => panic!("client stopped"),
            }
        }
    })
    .await
    .expect("CHANGED over wss");
    assert_eq!(got, (3, 9));

    // Without the gateway's certificate among its roots, a client cannot connect.
    let opts = herald_client::ConnectOptions::default();
    let err = herald_client::Connection::connect(
        &format!("wss://{}/v1/connect", gw.wss_addr()),
        &gw.token_all(),
        opts,
    )
    .await
    .expect_err("untrusted certificate");
    assert!(
        matches!(
            err,
            herald_client::ClientError::Transport(_) | herald_client::ClientError::Tls(_)
        ),
        "{err:?}"
    );
    client.close().await;
}
