//! The session as a well-behaved client sees it: HELLO/WELCOME, the cursor check on SUBSCRIBE,
//! fan-out of published changes, UNSUBSCRIBE, DENIED, PING/PONG, and refused HELLOs.
//!
//! "Nothing arrives" is always checked with a barrier, never a sleep: a PING after a SUBSCRIBE (the
//! PONG comes after everything the SUBSCRIBE caused), or a later publish to a *witness* namespace
//! the same connection subscribes to (a worker fans batches out in order, so once the witness's
//! CHANGED arrives, the earlier change has been handled for this connection too).

use herald_e2e::ws::Incoming;
use herald_e2e::{ClientFrame, Code, GatewayOptions, GatewayProcess, NsGrant, ServerFrame, WAIT};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn changed(ns: u64, sjid: u64) -> ServerFrame {
    ServerFrame::Changed(vec![(ns, sjid)])
}

#[tokio::test]
async fn hello_gets_welcome_with_configured_values() {
    let gw = GatewayProcess::start(
        GatewayOptions::new()
            .arg("--heartbeat-ms", 20_000)
            .arg("--max-subscriptions", 7),
    );
    let mut a = herald_e2e::WsClient::connect(gw.ws_addr()).await;
    let wa = a.hello(&gw.token_all()).await;
    assert_eq!(wa.version, 1);
    assert_eq!(wa.heartbeat_ms, 20_000);
    assert_eq!(wa.max_subscriptions, 7);
    assert_eq!(wa.session_id.len(), 8, "session_id is 8 bytes (C7)");

    let mut b = herald_e2e::WsClient::connect(gw.ws_addr()).await;
    let wb = b.hello(&gw.token_all()).await;
    assert_ne!(wa.session_id, wb.session_id, "session ids are random");
    // Both sessions are live.
    assert!(a.barrier().await.is_empty());
    assert!(b.barrier().await.is_empty());
}

#[tokio::test]
async fn heartbeat_follows_the_client_class() {
    let gw = GatewayProcess::start(
        GatewayOptions::new()
            .arg("--heartbeat-ms", 20_000)
            .arg("--heartbeat-class", "mobile=300000"),
    );
    let mut phone = herald_e2e::WsClient::connect(gw.ws_addr()).await;
    assert_eq!(
        phone.hello(&gw.token_class("mobile")).await.heartbeat_ms,
        300_000
    );
    // An unknown class, or none, gets the default.
    let mut tv = herald_e2e::WsClient::connect(gw.ws_addr()).await;
    assert_eq!(tv.hello(&gw.token_class("tv")).await.heartbeat_ms, 20_000);
    let mut plain = herald_e2e::WsClient::connect(gw.ws_addr()).await;
    assert_eq!(plain.hello(&gw.token_all()).await.heartbeat_ms, 20_000);
}

#[tokio::test]
async fn default_welcome() {
    let gw = GatewayProcess::start_default();
    let mut c = herald_e2e::WsClient::connect(gw.ws_addr()).await;
    let w = c.hello(&gw.token_all()).await;
    assert_eq!(
        (w.version, w.heartbeat_ms, w.max_subscriptions),
        (1, 60_000, 1024)
    );
}

#[tokio::test]
async fn subscribe_cursor_check() {
    let gw = GatewayProcess::start_default();
    gw.publish_ok(&[(10, 5), (11, 3)]).await;
    let mut c = gw.client().await;

    // Behind: CHANGED(ns, latest).
    assert_eq!(c.subscribe(&[(10, 2)]).await, vec![changed(10, 5)]);
    // Equal: nothing.
    assert_eq!(c.subscribe(&[(11, 3)]).await, vec![]);
    // Ahead: RESET, and the subscription ends.
    assert_eq!(
        c.subscribe(&[(11, 4)]).await,
        vec![ServerFrame::Reset(vec![11])]
    );
    // Never published: cursor 0 is fine, anything above is RESET.
    assert_eq!(c.subscribe(&[(12, 0)]).await, vec![]);
    assert_eq!(
        c.subscribe(&[(13, 1)]).await,
        vec![ServerFrame::Reset(vec![13])]
    );

    // One SUBSCRIBE: RESET entries in one frame, then CHANGED entries in one frame (C5).
    let mut d = gw.client().await;
    assert_eq!(
        d.subscribe(&[(10, 1), (14, 9), (11, 0), (15, 2), (12, 0)])
            .await,
        vec![
            ServerFrame::Reset(vec![14, 15]),
            ServerFrame::Changed(vec![(10, 5), (11, 3)]),
        ]
    );

    // A repeated namespace counts once, with its last cursor.
    let mut e = gw.client().await;
    assert_eq!(e.subscribe(&[(10, 9), (10, 5)]).await, vec![]);
    // count 0 is a no-op.
    assert_eq!(e.subscribe(&[]).await, vec![]);

    // The RESET ended subscription 11 on `c`, but 10 and 12 are live: only they are notified.
    gw.publish_ok(&[(11, 4), (10, 6), (12, 1)]).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        match c.recv_frame(WAIT).await {
            ServerFrame::Changed(pairs) => got.extend(pairs),
            other => panic!("unexpected {other:?}"),
        }
    }
    got.sort_unstable();
    assert_eq!(got, vec![(10, 6), (12, 1)]);
    assert!(c.barrier().await.is_empty());
}

#[tokio::test]
async fn fan_out() {
    let gw = GatewayProcess::start_default();
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    let mut other = gw.client().await;
    const NS: u64 = 20;
    const WITNESS: u64 = 21;
    assert_eq!(a.subscribe(&[(NS, 0), (WITNESS, 0)]).await, vec![]);
    assert_eq!(b.subscribe(&[(NS, 0)]).await, vec![]);
    assert_eq!(other.subscribe(&[(WITNESS, 0)]).await, vec![]);

    // One publish reaches both subscribers.
    gw.publish_ok(&[(NS, 1)]).await;
    assert_eq!(a.recv_frame(WAIT).await, changed(NS, 1));
    assert_eq!(b.recv_frame(WAIT).await, changed(NS, 1));

    // Many publishes: SJIDs only go up (coalescing allowed) and end at the latest.
    for sjid in 2..=60 {
        gw.publish_ok(&[(NS, sjid)]).await;
    }
    for client in [&mut a, &mut b] {
        let seen = client.changed_until(NS, 60, WAIT).await;
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "not increasing: {seen:?}"
        );
        assert_eq!(seen.last(), Some(&60));
    }

    // A late lower SJID, or a duplicate, never moves a namespace backwards: nothing is sent.
    gw.publish_ok(&[(NS, 30), (NS, 60)]).await;
    // The client not subscribed to NS got nothing: its first frame is the witness's.
    gw.publish_ok(&[(WITNESS, 1)]).await;
    assert_eq!(other.recv_frame(WAIT).await, changed(WITNESS, 1));
    assert_eq!(a.recv_frame(WAIT).await, changed(WITNESS, 1));
    assert!(b.barrier().await.is_empty());

    // A namespace repeated in a batch counts with its highest SJID.
    gw.publish_ok(&[(NS, 70), (NS, 65)]).await;
    assert_eq!(b.changed_until(NS, 70, WAIT).await.last(), Some(&70));
}

#[tokio::test]
async fn unsubscribe_and_resubscribe() {
    let gw = GatewayProcess::start_default();
    let mut c = gw.client().await;
    const NS: u64 = 30;
    const WITNESS: u64 = 31;
    assert_eq!(c.subscribe(&[(NS, 0), (WITNESS, 0)]).await, vec![]);
    assert_eq!(c.unsubscribe(&[NS]).await, vec![]);
    // Unsubscribing what is not subscribed, and count 0, are no-ops.
    assert_eq!(c.unsubscribe(&[999, NS]).await, vec![]);
    assert_eq!(c.unsubscribe(&[]).await, vec![]);

    gw.publish_ok(&[(NS, 1)]).await;
    gw.publish_ok(&[(WITNESS, 1)]).await;
    assert_eq!(
        c.recv_frame(WAIT).await,
        changed(WITNESS, 1),
        "NS was unsubscribed"
    );

    // Subscribing again with a lower cursor asks for a fresh CHANGED...
    assert_eq!(c.subscribe(&[(NS, 0)]).await, vec![changed(NS, 1)]);
    // ...every time: resubscribing forgets what was sent.
    assert_eq!(c.subscribe(&[(NS, 0)]).await, vec![changed(NS, 1)]);
    assert_eq!(c.subscribe(&[(NS, 1)]).await, vec![]);
    gw.publish_ok(&[(NS, 2)]).await;
    assert_eq!(c.recv_frame(WAIT).await, changed(NS, 2));
}

#[tokio::test]
async fn denied_forbidden_and_too_many() {
    let gw = GatewayProcess::start(GatewayOptions::new().arg("--max-subscriptions", 3));
    let mut c = herald_e2e::WsClient::connect(gw.ws_addr()).await;
    let w = c
        .hello(&gw.token(NsGrant::list(vec![1, 2, 3, 4, 5, 6]), 3600))
        .await;
    assert_eq!(w.max_subscriptions, 3);

    // Forbidden first, then too many; namespaces taken in frame order up to the limit.
    assert_eq!(
        c.subscribe(&[(1, 0), (2, 0), (7, 0), (3, 0), (4, 0), (8, 0), (5, 0)])
            .await,
        vec![
            ServerFrame::Denied {
                code: Code::FORBIDDEN_NAMESPACE,
                ns: vec![7, 8]
            },
            ServerFrame::Denied {
                code: Code::TOO_MANY_SUBSCRIPTIONS,
                ns: vec![4, 5]
            },
        ]
    );
    // Resubscribing a live namespace does not count twice.
    assert_eq!(c.subscribe(&[(1, 0)]).await, vec![]);
    assert_eq!(
        c.subscribe(&[(4, 0)]).await,
        vec![ServerFrame::Denied {
            code: Code::TOO_MANY_SUBSCRIPTIONS,
            ns: vec![4]
        }]
    );
    // Freeing one makes room.
    assert_eq!(c.unsubscribe(&[2]).await, vec![]);
    assert_eq!(c.subscribe(&[(4, 0)]).await, vec![]);
    // A RESET subscription does not count either.
    assert_eq!(
        c.subscribe(&[(4, 9)]).await,
        vec![ServerFrame::Reset(vec![4])]
    );
    assert_eq!(c.subscribe(&[(5, 0)]).await, vec![]);

    // The connection stayed usable throughout: live subscriptions are notified.
    gw.publish_ok(&[(7, 1), (2, 1), (5, 1)]).await;
    assert_eq!(c.recv_frame(WAIT).await, changed(5, 1));

    // A token that grants nothing: everything is forbidden.
    let mut none = herald_e2e::WsClient::connect(gw.ws_addr()).await;
    none.hello(&gw.token(NsGrant::list(vec![]), 3600)).await;
    assert_eq!(
        none.subscribe(&[(1, 0)]).await,
        vec![ServerFrame::Denied {
            code: Code::FORBIDDEN_NAMESPACE,
            ns: vec![1]
        }]
    );
}

#[tokio::test]
async fn ping_pong() {
    let gw = GatewayProcess::start_default();
    let mut c = gw.client().await;
    for nonce in [0, 42, u64::MAX] {
        c.send_frame(&ClientFrame::Ping(nonce)).await;
        assert_eq!(c.recv_frame(WAIT).await, ServerFrame::Pong(nonce));
    }
    // A WebSocket-level ping gets a pong with the same payload, before and after HELLO.
    c.send_raw(Message::Ping(b"herald".to_vec().into())).await;
    match c.next_incoming(WAIT).await {
        Incoming::Pong(p) => assert_eq!(p, b"herald"),
        other => panic!("expected a pong, got {other:?}"),
    }
    let mut fresh = herald_e2e::WsClient::connect(gw.ws_addr()).await;
    fresh
        .send_raw(Message::Ping(b"early".to_vec().into()))
        .await;
    match fresh.next_incoming(WAIT).await {
        Incoming::Pong(p) => assert_eq!(p, b"early"),
        other => panic!("expected a pong, got {other:?}"),
    }
    fresh.hello(&gw.token_all()).await;
}

#[tokio::test]
async fn refused_hellos() {
    let gw = GatewayProcess::start_default();
    let now = GatewayProcess::unix_now();
    let claims = herald_gateway::keys::claims_for("e2e", NsGrant::All, 3600);

    // Same kid, different key: bad signature.
    let impostor = herald_gateway::keys::SigningKey::generate(Some("test".into())).unwrap();
    // A kid the gateway does not know.
    let stranger = herald_gateway::keys::SigningKey::generate(Some("other".into())).unwrap();
    let cases = [
        ("bad signature", impostor.mint(&claims, None).unwrap()),
        ("unknown kid", stranger.mint(&claims, None).unwrap()),
        (
            "expired (past the 30 s leeway)",
            gw.token_exp(NsGrant::All, now - 60),
        ),
        ("not a JWT", "not-a-token".to_owned()),
    ];
    for (what, token) in cases {
        let mut c = herald_e2e::WsClient::connect(gw.ws_addr()).await;
        c.send_frame(&ClientFrame::Hello { version: 1, token })
            .await;
        let message = c.expect_error_close(Code::UNAUTHORIZED).await;
        assert!(!message.is_empty(), "{what}: ERROR carries a message");
    }

    let mut c = herald_e2e::WsClient::connect(gw.ws_addr()).await;
    c.send_frame(&ClientFrame::Hello {
        version: 2,
        token: gw.token_all(),
    })
    .await;
    c.expect_error_close(Code::UNSUPPORTED_VERSION).await;

    // Inside the leeway is still fine.
    let mut ok = herald_e2e::WsClient::connect(gw.ws_addr()).await;
    ok.hello(&gw.token_exp(NsGrant::All, now - 10)).await;
    assert!(ok.barrier().await.is_empty());
}

#[tokio::test]
async fn client_close_is_echoed() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let gw = GatewayProcess::start_default();
    let mut c = gw.client().await;
    c.send_raw(Message::Close(Some(CloseFrame {
        code: 4321.into(),
        reason: "bye".into(),
    })))
    .await;
    assert_eq!(c.expect_close(WAIT).await, 4321, "close code echoed (C3)");
    // The gateway then drops the connection.
    match c.next_incoming(Duration::from_secs(2)).await {
        Incoming::Ended(_) => {}
        other => panic!("expected the end of the stream, got {other:?}"),
    }
}
