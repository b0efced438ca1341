//! The process around the sessions: health, readiness and metrics, the SIGTERM drain, and the
//! journal surviving kill -9.

use herald_e2e::ws::Incoming;
use herald_e2e::{Code, GatewayOptions, GatewayProcess, ServerFrame, WAIT};
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let gw = GatewayProcess::start_default();
    assert_eq!(gw.get("/healthz").await.status, 200);
    assert_eq!(gw.get("/readyz").await.status, 200);
    assert_eq!(gw.get("/nope").await.status, 404);

    // Some traffic, so counters exist.
    let mut c = gw.client().await;
    assert!(c.subscribe(&[(1, 0)]).await.is_empty());
    gw.publish_ok(&[(1, 1)]).await;
    assert_eq!(c.recv_frame(WAIT).await, ServerFrame::Changed(vec![(1, 1)]));

    let metrics = gw.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    let names: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    assert!(!names.is_empty(), "no samples in /metrics:\n{text}");
    assert!(
        names.iter().all(|n| n.starts_with("herald_")),
        "every metric is prefixed herald_: {names:?}"
    );
    assert!(
        text.contains("herald_sessions_opened_total"),
        "sessions counted:\n{text}"
    );
}

#[tokio::test]
async fn sigterm_drains_with_goaway_then_exits() {
    let mut gw = GatewayProcess::start(GatewayOptions::new().arg("--drain-s", 1));
    let mut a = gw.client().await;
    let mut b = gw.client().await;
    assert!(a.subscribe(&[(1, 0)]).await.is_empty());

    let started = Instant::now();
    gw.sigterm();
    // Readiness turns false at once and the admin listener keeps answering during the drain.
    let gw_ref = &gw;
    herald_e2e::eventually(
        Duration::from_secs(2),
        "/readyz 503 while draining",
        || async move { (gw_ref.get("/readyz").await.status == 503).then_some(()) },
    )
    .await;
    for c in [&mut a, &mut b] {
        match c.recv_frame(Duration::from_secs(4)).await {
            ServerFrame::Goaway {
                code,
                reconnect_after_ms,
            } => {
                assert_eq!(code, Code::DRAINING);
                assert!(reconnect_after_ms > 0);
            }
            other => panic!("expected GOAWAY(draining), got {other:?}"),
        }
        assert_eq!(
            c.expect_close(WAIT).await,
            Code::DRAINING.ws_close_code().unwrap()
        );
        // tungstenite answers the close; the gateway then drops the connection.
        match c.next_incoming(Duration::from_secs(3)).await {
            Incoming::Ended(_) => {}
            other => panic!("expected the end of the stream, got {other:?}"),
        }
    }
    // Spread over the drain period (1 s), plus the sweep's granularity.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let status = gw
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("the gateway did not exit within 5 s of draining");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn journal_survives_kill_9() {
    let mut gw = GatewayProcess::start_default();
    gw.publish_ok(&[(50, 7), (51, 3), (50, 5)]).await;
    gw.publish_ok(&[(52, u64::MAX - 1)]).await;
    let old_pid = gw.pid();
    gw.kill9();
    gw.restart();
    assert_ne!(gw.pid(), old_pid);

    let mut c = gw.client().await;
    assert_eq!(
        c.subscribe(&[(50, 0)]).await,
        vec![ServerFrame::Changed(vec![(50, 7)])]
    );
    assert_eq!(
        c.subscribe(&[(51, 4)]).await,
        vec![ServerFrame::Reset(vec![51])]
    );
    assert_eq!(c.subscribe(&[(51, 3)]).await, vec![]);
    assert_eq!(
        c.subscribe(&[(52, 1)]).await,
        vec![ServerFrame::Changed(vec![(52, u64::MAX - 1)])]
    );

    // Publishing goes on from there, and a second restart keeps the newer value.
    gw.publish_ok(&[(50, 8)]).await;
    assert_eq!(
        c.recv_frame(WAIT).await,
        ServerFrame::Changed(vec![(50, 8)])
    );
    gw.restart();
    let mut d = gw.client().await;
    assert_eq!(
        d.subscribe(&[(50, 7), (51, 0)]).await,
        vec![ServerFrame::Changed(vec![(50, 8), (51, 3)])]
    );
}

/// On SIGTERM with `--stop-grace-ms`, `/readyz` fails at once while the listener keeps taking
/// new clients (a load balancer between two health checks still sends some), and nobody is
/// sent away before the grace ends; then the drain begins as usual.
#[tokio::test]
async fn sigterm_grace_keeps_accepting_while_readyz_fails() {
    const GRACE: Duration = Duration::from_millis(2500);
    let mut gw = GatewayProcess::start(
        GatewayOptions::new()
            .arg("--stop-grace-ms", GRACE.as_millis())
            .arg("--drain-s", 1),
    );
    let mut old = gw.client().await;
    assert!(old.subscribe(&[(1, 0)]).await.is_empty());
    assert_eq!(gw.get("/readyz").await.status, 200);

    let started = Instant::now();
    gw.sigterm();
    // 503 "at once": within 500 ms (the signal, one admin request, a loaded machine).
    loop {
        if gw.get("/readyz").await.status == 503 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "/readyz still 200 {:?} after SIGTERM",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_failed_after = started.elapsed();
    // During the grace: new clients are accepted and served, and the old one is not moved.
    let mut accepted = 0;
    while started.elapsed() + Duration::from_millis(700) < GRACE {
        let mut c = gw.client().await;
        assert!(c.subscribe(&[(2, 0)]).await.is_empty());
        accepted += 1;
        assert_eq!(gw.get("/readyz").await.status, 503, "readiness came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        started.elapsed() < GRACE,
        "the loop overran the grace ({:?}); the machine is too slow for this test",
        started.elapsed()
    );
    gw.publish_ok(&[(1, 2)]).await;
    assert_eq!(
        old.recv_frame(WAIT).await,
        ServerFrame::Changed(vec![(1, 2)])
    );
    // Then the drain: GOAWAY(draining) to the old client, not before the grace ended.
    match old.next_incoming(GRACE + WAIT).await {
        Incoming::Frame(ServerFrame::Goaway { code, .. }) => assert_eq!(code, Code::DRAINING),
        other => panic!("expected GOAWAY(draining), got {other:?}"),
    }
    let goaway_after = started.elapsed();
    assert!(
        goaway_after >= GRACE,
        "GOAWAY came {goaway_after:?} after SIGTERM, inside the {GRACE:?} grace"
    );
    println!(
        "/readyz 503 after {ready_failed_after:?}; {accepted} clients accepted during the grace; \
         GOAWAY after {goaway_after:?}"
    );
    assert!(
        accepted >= 3,
        "only {accepted} clients tried during the grace"
    );
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway did not exit after the grace and the drain");
    assert!(status.success(), "exit status {status:?}");
}
