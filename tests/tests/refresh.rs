//! In-band token refresh (PROTOCOL.md C17) and revocation (C18) against a real gateway, over
//! WebSocket and QUIC.

use herald_client::{ConnectOptions, Connection, Incoming, TlsRoots};
use herald_e2e::{
    ClientFrame, Code, GatewayOptions, GatewayProcess, NsGrant, ServerFrame, WAIT, WsClient,
};
use std::time::Duration;

/// A token of `sub` that the gateway stops honouring about 2 s from now (its `exp` is 28 s in
/// the past; the leeway is 30 s).
fn expiring(gw: &GatewayProcess, grant: NsGrant) -> String {
    gw.token_exp(grant, GatewayProcess::unix_now() - 28)
}

#[tokio::test]
async fn refresh_keeps_a_session_past_its_token_and_the_others_get_goaway() {
    let gw = GatewayProcess::start_default();
    let mut refreshed = WsClient::connect(gw.ws_addr()).await;
    refreshed.hello(&expiring(&gw, NsGrant::All)).await;
    let mut stale = WsClient::connect(gw.ws_addr()).await;
    stale.hello(&expiring(&gw, NsGrant::All)).await;
    refreshed.subscribe(&[(5, 0)]).await;
    refreshed
        .send_frame(&ClientFrame::Refresh {
            token: gw.token_exp(NsGrant::All, GatewayProcess::unix_now() + 3600),
        })
        .await;
    assert!(
        refreshed.barrier().await.is_empty(),
        "a good REFRESH is silent"
    );
    // The stale one is told its token expired; the refreshed one is not.
    match stale.recv_frame(Duration::from_secs(6)).await {
        ServerFrame::Goaway { code, .. } => assert_eq!(code, Code::TOKEN_EXPIRED),
        other => panic!("expected GOAWAY(token_expired), got {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(refreshed.barrier().await.is_empty());
    gw.publish_ok(&[(5, 9)]).await;
    assert_eq!(
        refreshed.recv_frame(WAIT).await,
        ServerFrame::Changed(vec![(5, 9)])
    );
}

#[tokio::test]
async fn refresh_applies_the_new_grants() {
    let gw = GatewayProcess::start_default();
    let mut c = WsClient::connect(gw.ws_addr()).await;
    c.hello(&gw.token(NsGrant::list(vec![1, 2, 3]), 600)).await;
    assert!(c.subscribe(&[(1, 0), (2, 0), (3, 0)]).await.is_empty());
    c.send_frame(&ClientFrame::Refresh {
        token: gw.token(NsGrant::list(vec![1, 3]), 600),
    })
    .await;
    assert_eq!(
        c.barrier().await,
        vec![ServerFrame::Denied {
            code: Code::FORBIDDEN_NAMESPACE,
            ns: vec![2]
        }]
    );
    // 2 is gone, 1 and 3 continue untouched.
    gw.publish_ok(&[(2, 7), (1, 7), (3, 7)]).await;
    let got = c.changed_until(3, 7, WAIT).await;
    assert!(!got.is_empty());
    assert!(
        c.barrier()
            .await
            .iter()
            .all(|f| !matches!(f, ServerFrame::Changed(p) if p.iter().any(|&(ns, _)| ns == 2))),
        "no CHANGED for a namespace no longer granted"
    );
}

#[tokio::test]
async fn a_bad_refresh_or_another_subs_token_is_unauthorized() {
    let gw = GatewayProcess::start_default();
    for token in [
        "not a token".to_owned(),
        gw.token_exp(NsGrant::All, GatewayProcess::unix_now() - 3600),
        gw.token_for("someone else", NsGrant::All, 600),
    ] {
        let mut c = WsClient::connect(gw.ws_addr()).await;
        c.hello(&gw.token_all()).await;
        c.send_frame(&ClientFrame::Refresh { token }).await;
        c.expect_error_close(Code::UNAUTHORIZED).await;
    }
}

#[tokio::test]
async fn disconnect_closes_the_subs_sessions_and_refuses_its_older_tokens() {
    let gw = GatewayProcess::start_default();
    let alice_token = gw.token_for("alice", NsGrant::All, 600);
    let mut alice = WsClient::connect(gw.ws_addr()).await;
    alice.hello(&alice_token).await;
    let mut bob = WsClient::connect(gw.ws_addr()).await;
    bob.hello(&gw.token_for("bob", NsGrant::All, 600)).await;
    // Tokens issued before 1 s from now: alice's current one.
    let r = gw
        .disconnect("alice", Some(GatewayProcess::unix_now() + 1))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    alice.expect_error_close(Code::UNAUTHORIZED).await;
    assert!(bob.barrier().await.is_empty(), "another sub is untouched");
    // Her old token is refused from now on.
    let mut again = WsClient::connect(gw.ws_addr()).await;
    again
        .send_frame(&ClientFrame::Hello {
            version: 1,
            token: alice_token,
        })
        .await;
    let message = again.expect_error_close(Code::UNAUTHORIZED).await;
    assert!(message.contains("revoked"), "{message}");
    // A bad request is refused.
    let r = herald_e2e::http::request(gw.admin_addr(), "POST", "/v1/disconnect", Some(b"{}"))
        .await
        .expect("request");
    assert_eq!(r.status, 400, "{}", r.text());
    let metrics = gw.get("/metrics").await.text();
    assert!(
        metrics.contains("herald_revoked_sessions_total 1"),
        "{metrics}"
    );
}

/// A gateway with a QUIC listener, and the certificate's PEM and files.
fn quic_gateway() -> (GatewayProcess, String, herald_e2e::gateway::TestCert) {
    let cert = herald_e2e::gateway::TestCert::new();
    let gw = GatewayProcess::start(cert.quic_options("127.0.0.1:0", GatewayOptions::new()));
    (gw, cert.pem.clone(), cert)
}

async fn quic_session(gw: &GatewayProcess, pem: &str, token: &str) -> Connection {
    let mut options = ConnectOptions::default();
    options.tls = Some(TlsRoots::from_pem(pem.as_bytes()).expect("test CA"));
    let url = format!("quic://localhost:{}", gw.quic_addr().expect("quic").port());
    Connection::connect(&url, token, options)
        .await
        .expect("QUIC session")
        .0
}

async fn next(conn: &mut Connection, wait: Duration) -> Incoming {
    tokio::time::timeout(wait, conn.recv())
        .await
        .expect("a frame or the close in time")
        .expect("recv")
}

#[tokio::test]
async fn refresh_and_revocation_over_quic() {
    let (gw, pem, _dir) = quic_gateway();
    let mut c = quic_session(&gw, &pem, &expiring(&gw, NsGrant::list(vec![1, 2]))).await;
    c.send(&ClientFrame::Subscribe(vec![(1, 0), (2, 0)]))
        .await
        .unwrap();
    c.send(&ClientFrame::Refresh {
        token: gw.token(NsGrant::list(vec![1]), 600),
    })
    .await
    .unwrap();
    assert_eq!(
        next(&mut c, WAIT).await,
        Incoming::Frame(ServerFrame::Denied {
            code: Code::FORBIDDEN_NAMESPACE,
            ns: vec![2]
        })
    );
    // Past the old token's expiry the session lives on.
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.send(&ClientFrame::Ping(1)).await.unwrap();
    assert_eq!(
        next(&mut c, WAIT).await,
        Incoming::Frame(ServerFrame::Pong(1))
    );
    // Revoked: ERROR(unauthorized), then the application close 4003.
    assert_eq!(gw.disconnect("e2e", None).await.status, 202);
    match next(&mut c, WAIT).await {
        Incoming::Frame(ServerFrame::Error { code, .. }) => assert_eq!(code, Code::UNAUTHORIZED),
        other => panic!("expected ERROR(unauthorized), got {other:?}"),
    }
    match next(&mut c, WAIT).await {
        Incoming::Closed { code, .. } => assert_eq!(code, Code::UNAUTHORIZED.ws_close_code()),
        other => panic!("expected the close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_revocation_reaches_every_gateway_of_the_fleet_over_nats() {
    let nats = herald_e2e::nats::NatsServer::start();
    let _relay =
        herald_e2e::nats::RelayProcess::start(&nats.url(), herald_e2e::fleet::relay_options())
            .await;
    let a = GatewayProcess::start(herald_e2e::fleet::gateway_options(&nats.url()));
    let b = GatewayProcess::start(herald_e2e::fleet::gateway_options(&nats.url()));
    // Ready means following the relays over NATS, so the revocation subscription is live too.
    for gw in [&a, &b] {
        herald_e2e::eventually(Duration::from_secs(20), "gateway ready", || async {
            (gw.get("/readyz").await.status == 200).then_some(())
        })
        .await;
    }
    // Each test gateway has its own signing key: the client uses b's.
    let token = b.token_for("mallory", NsGrant::All, 600);
    let mut on_b = WsClient::connect(b.ws_addr()).await;
    on_b.hello(&token).await;
    let r = a.disconnect("mallory", None).await;
    assert_eq!(r.status, 202, "{}", r.text());
    on_b.expect_error_close(Code::UNAUTHORIZED).await;
    let mut again = WsClient::connect(b.ws_addr()).await;
    again
        .send_frame(&ClientFrame::Hello { version: 1, token })
        .await;
    assert!(
        again
            .expect_error_close(Code::UNAUTHORIZED)
            .await
            .contains("revoked")
    );
}
