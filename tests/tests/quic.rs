//! The QUIC transport against a real gateway (`--quic-listen`): certificates made here with
//! rcgen, sessions through herald-client's `quic://` transport, bad input through raw quinn.

use herald_client::{
    Client, ClientConfig, ConnectOptions, Connection, Event, Incoming, ServerFrame, TlsRoots,
};
use herald_e2e::{ClientFrame, Code, GatewayOptions, GatewayProcess, NsGrant};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

type Cert = herald_e2e::gateway::TestCert;

fn cert() -> Cert {
    Cert::new()
}

fn start(cert: &Cert, quic: &str, extra: GatewayOptions) -> GatewayProcess {
    GatewayProcess::start(cert.quic_options(quic, extra))
}

fn url(addr: SocketAddr) -> String {
    format!("quic://localhost:{}", addr.port())
}

fn options(cert: &Cert) -> ConnectOptions {
    let mut options = ConnectOptions::default();
    options.tls = Some(TlsRoots::from_pem(cert.pem.as_bytes()).expect("test CA"));
    options
}

async fn session(gw: &GatewayProcess, cert: &Cert) -> Connection {
    let addr = gw.quic_addr().expect("quic= on the ready line");
    let (conn, welcome) = Connection::connect(&url(addr), &gw.token_all(), options(cert))
        .await
        .expect("QUIC session");
    assert_eq!(welcome.version, 1);
    conn
}

async fn next(conn: &mut Connection) -> Incoming {
    tokio::time::timeout(WAIT, conn.recv())
        .await
        .expect("a frame or the close in time")
        .expect("recv")
}

/// The frame's code as the application close code, reported by the client as 4000 + code.
async fn expect_close(conn: &mut Connection, code: Code) {
    loop {
        match next(conn).await {
            Incoming::Closed { code: got, reason } => {
                assert_eq!(got, code.ws_close_code(), "reason {reason:?}");
                return;
            }
            Incoming::Frame(_) => {}
        }
    }
}

#[tokio::test]
async fn hello_subscribe_changed_reset_denied() {
    let cert = cert();
    let gw = start(&cert, "127.0.0.1:0", GatewayOptions::new());
    gw.publish_ok(&[(7, 5)]).await;
    let mut c = session(&gw, &cert).await;
    // Cursor behind: CHANGED at once; cursor ahead of a never-published namespace: RESET.
    c.send(&ClientFrame::Subscribe(vec![(7, 1), (8, 3)]))
        .await
        .unwrap();
    c.send(&ClientFrame::Ping(9)).await.unwrap();
    let mut got = Vec::new();
    loop {
        match next(&mut c).await {
            Incoming::Frame(ServerFrame::Pong(9)) => break,
            Incoming::Frame(f) => got.push(f),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        got,
        vec![
            ServerFrame::Reset(vec![8]),
            ServerFrame::Changed(vec![(7, 5)])
        ]
    );
    // A change published now goes out over the stream.
    gw.publish_ok(&[(7, 6)]).await;
    assert_eq!(
        next(&mut c).await,
        Incoming::Frame(ServerFrame::Changed(vec![(7, 6)]))
    );
    // A namespace the token does not grant.
    let addr = gw.quic_addr().unwrap();
    let token = gw.token(NsGrant::list(vec![1]), 600);
    let (mut d, _) = Connection::connect(&url(addr), &token, options(&cert))
        .await
        .unwrap();
    d.send(&ClientFrame::Subscribe(vec![(2, 0)])).await.unwrap();
    assert_eq!(
        next(&mut d).await,
        Incoming::Frame(ServerFrame::Denied {
            code: Code::FORBIDDEN_NAMESPACE,
            ns: vec![2]
        })
    );
}

#[tokio::test]
async fn bad_input_gets_error_and_the_application_close_code() {
    let cert = cert();
    let gw = start(&cert, "127.0.0.1:0", GatewayOptions::new());
    // A length prefix over 10 bytes.
    let mut c = session(&gw, &cert).await;
    c.send_stream_bytes(&[0xff; 11]).await.unwrap();
    match next(&mut c).await {
        Incoming::Frame(ServerFrame::Error { code, .. }) => assert_eq!(code, Code::BAD_FRAME),
        other => panic!("{other:?}"),
    }
    expect_close(&mut c, Code::BAD_FRAME).await;
    // A frame over 4096 bytes, refused from its prefix alone.
    let mut c = session(&gw, &cert).await;
    let mut prefix = Vec::new();
    herald_proto::varint::encode(4097, &mut prefix);
    c.send_stream_bytes(&prefix).await.unwrap();
    expect_close(&mut c, Code::BAD_FRAME).await;
    // A second HELLO.
    let mut c = session(&gw, &cert).await;
    c.send(&ClientFrame::Hello {
        version: 1,
        token: gw.token_all(),
    })
    .await
    .unwrap();
    expect_close(&mut c, Code::BAD_FRAME).await;
    // A bad token: ERROR(unauthorized) in reply to HELLO, then close with 3.
    let addr = gw.quic_addr().unwrap();
    let err = Connection::connect(&url(addr), "not-a-token", options(&cert))
        .await
        .unwrap_err();
    assert_eq!(err.close_code(), Code::UNAUTHORIZED.ws_close_code());
    // The gateway is unaffected.
    let mut c = session(&gw, &cert).await;
    c.send(&ClientFrame::Ping(1)).await.unwrap();
    assert_eq!(next(&mut c).await, Incoming::Frame(ServerFrame::Pong(1)));
}

#[tokio::test]
async fn a_second_stream_is_reset_with_code_1() {
    let cert = cert();
    let gw = start(&cert, "127.0.0.1:0", GatewayOptions::new());
    let mut c = session(&gw, &cert).await;
    let quic = c.quic_connection().unwrap().clone();
    let (mut send, mut recv) = quic.open_bi().await.unwrap();
    send.write_all(&[1, 4, 0]).await.unwrap();
    let read = tokio::time::timeout(WAIT, recv.read_to_end(1024))
        .await
        .unwrap();
    match read {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code.into_inner(), 1)
        }
        other => panic!("{other:?}"),
    }
    // The session stream still works.
    c.send(&ClientFrame::Ping(2)).await.unwrap();
    assert_eq!(next(&mut c).await, Incoming::Frame(ServerFrame::Pong(2)));
}

#[tokio::test]
async fn wrong_or_missing_alpn_is_refused() {
    let cert = cert();
    let gw = start(&cert, "127.0.0.1:0", GatewayOptions::new());
    for alpn in [vec![b"h3".to_vec()], vec![]] {
        refused_with_alpn(&gw, &cert, alpn).await;
    }
}

async fn refused_with_alpn(gw: &GatewayProcess, cert: &Cert, alpn: Vec<Vec<u8>>) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(rcgen_der(
            &cert.pem,
        )))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = alpn.clone();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let attempt = endpoint
        .connect(gw.quic_addr().unwrap(), "localhost")
        .unwrap();
    let result = tokio::time::timeout(WAIT, attempt).await.unwrap();
    let refused = match result {
        // A mismatch: refused in the TLS handshake.
        Err(quinn::ConnectionError::ConnectionClosed(_)) => true,
        // None offered: the handshake may complete, then the server closes the connection.
        Ok(c) => matches!(
            tokio::time::timeout(WAIT, c.closed()).await,
            Ok(quinn::ConnectionError::ApplicationClosed(_))
        ),
        Err(_) => false,
    };
    assert!(refused, "ALPN {alpn:?} was not refused");
}

fn rcgen_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn handshake_timeout_closes_with_104() {
    let cert = cert();
    let gw = start(
        &cert,
        "127.0.0.1:0",
        GatewayOptions::new()
            .arg("--handshake-timeout-ms", 500)
            .arg("--heartbeat-ms", 15000),
    );
    let addr = gw.quic_addr().unwrap();
    // Connected, stream open, no HELLO.
    let started = Instant::now();
    let mut c = Connection::open(&url(addr), options(&cert)).await.unwrap();
    c.send_stream_bytes(&[]).await.unwrap();
    expect_close(&mut c, Code::TIMEOUT).await;
    assert!(started.elapsed() >= Duration::from_millis(500));
    // Handshake done, no stream opened at all.
    let started = Instant::now();
    let quic = Connection::open(&url(addr), options(&cert)).await.unwrap();
    let conn = quic.quic_connection().unwrap().clone();
    let closed = tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), 104)
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn goaway_on_drain_closes_with_100() {
    let cert = cert();
    let gw = start(
        &cert,
        "127.0.0.1:0",
        GatewayOptions::new().arg("--drain-s", 1),
    );
    let mut c = session(&gw, &cert).await;
    gw.sigterm();
    match next(&mut c).await {
        Incoming::Frame(ServerFrame::Goaway { code, .. }) => assert_eq!(code, Code::DRAINING),
        other => panic!("{other:?}"),
    }
    expect_close(&mut c, Code::DRAINING).await;
}

#[tokio::test]
async fn managed_client_over_quic_survives_a_gateway_restart() {
    let cert = cert();
    // A fixed port, so the restarted gateway is where the client looks.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut gw = start(&cert, &format!("127.0.0.1:{port}"), GatewayOptions::new());
    let mut config = ClientConfig::new(
        format!("quic://localhost:{port}"),
        gw.token(NsGrant::All, 3600),
    );
    config.tls = Some(TlsRoots::from_pem(cert.pem.as_bytes()).expect("test CA"));
    config.backoff_max = Duration::from_millis(500);
    // A packet soon after the restart: the new process answers it with a stateless reset (same
    // TLS key, same reset key), so the client learns at once that its connection is gone.
    config.heartbeat = Some(Duration::from_secs(1));
    let (client, mut events) = Client::spawn(config);
    client.subscribe(&[(42, 0)]);
    wait_for(&mut events, |e| matches!(e, Event::Connected { .. })).await;
    client.barrier().await.unwrap();
    gw.publish_ok(&[(42, 1)]).await;
    wait_for(&mut events, |e| {
        matches!(e, Event::Changed { ns: 42, sjid: 1 })
    })
    .await;
    gw.restart();
    wait_for(&mut events, |e| matches!(e, Event::Connected { .. })).await;
    client.barrier().await.unwrap();
    gw.publish_ok(&[(42, 2)]).await;
    wait_for(&mut events, |e| {
        matches!(e, Event::Changed { ns: 42, sjid: 2 })
    })
    .await;
    client.close().await;
}

async fn wait_for(events: &mut herald_client::EventStream, want: fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("event in time")
            .expect("client alive");
        if want(&e) {
            return e;
        }
    }
}

#[tokio::test]
async fn heartbeat_timeout_closes_silent_sessions_with_104() {
    let cert = cert();
    let gw = start(
        &cert,
        "127.0.0.1:0",
        GatewayOptions::new().arg("--heartbeat-ms", 15000),
    );
    let mut c = session(&gw, &cert).await;
    let last = Instant::now();
    // Silent from here (no Herald PING; QUIC keep-alives from the client do not count, C15).
    let incoming = tokio::time::timeout(Duration::from_secs(45), c.recv())
        .await
        .expect("closed within 45 s")
        .expect("recv");
    let elapsed = last.elapsed();
    assert_eq!(
        incoming,
        Incoming::Closed {
            code: Code::TIMEOUT.ws_close_code(),
            reason: "timeout".into()
        }
    );
    assert!(
        elapsed >= Duration::from_millis(37_500),
        "closed after {elapsed:?}: before 2.5 x heartbeat"
    );
}

/// Issue 16: with the Rust client's default settings (QUIC keep-alive every 15 s, no heartbeat
/// override: WELCOME's 60 s), a client notices a restarted gateway from the stateless reset its
/// next keep-alive draws, within one keep-alive interval, far inside one heartbeat interval and
/// the 60 s idle timeout it waited for before (the restarted gateway dropped the keep-alives as
/// carrying an unknown connection ID). Bound: 15 s + 5 s of margin for this machine.
#[tokio::test]
async fn a_restarted_gateway_is_noticed_within_one_keep_alive() {
    const BOUND: Duration = Duration::from_secs(15 + 5);
    let cert = cert();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut gw = start(&cert, &format!("127.0.0.1:{port}"), GatewayOptions::new());
    let mut config = ClientConfig::new(
        format!("quic://localhost:{port}"),
        gw.token(NsGrant::All, 3600),
    );
    config.tls = Some(TlsRoots::from_pem(cert.pem.as_bytes()).expect("test CA"));
    let (client, mut events) = Client::spawn(config);
    client.subscribe(&[(42, 0)]);
    wait_for(&mut events, |e| matches!(e, Event::Connected { .. })).await;
    client.barrier().await.unwrap();
    // Quiet first (every ACK sent), so that only a keep-alive can reach the new process.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = tokio::time::Instant::now();
    gw.restart();
    let deadline = killed + Duration::from_secs(75);
    let reason = loop {
        let e = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the client never noticed the restart")
            .expect("client alive");
        if let Event::Disconnected { reason, .. } = e {
            break reason;
        }
    };
    let noticed = killed.elapsed();
    println!("restarted gateway noticed after {noticed:?} (bound {BOUND:?}): {reason}");
    assert!(
        reason.contains("reset"),
        "the client did not learn it from a stateless reset: {reason}"
    );
    assert!(
        noticed <= BOUND,
        "the client noticed the restart after {noticed:?} (bound {BOUND:?})"
    );
    // And it is back, served by the new process.
    wait_for(&mut events, |e| matches!(e, Event::Connected { .. })).await;
    client.barrier().await.unwrap();
    gw.publish_ok(&[(42, 2)]).await;
    wait_for(&mut events, |e| {
        matches!(e, Event::Changed { ns: 42, sjid: 2 })
    })
    .await;
    client.close().await;
}
