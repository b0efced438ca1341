//! The gateway as a library: `server::run` on listeners bound beforehand (port 0, addresses
//! known before it starts), stopped through `Shutdown` instead of a signal, as a program that
//! embeds Herald (or a test) runs it.

use clap::Parser;
use herald_e2e::{Code, NsGrant, ServerFrame, WAIT, WsClient};
use herald_gateway::config::Cli;
use herald_gateway::keys::{SigningKey, claims_for};
use herald_gateway::server::{Listeners, Shutdown, install_metrics, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_on_bound_listeners_and_stops_when_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::generate(None).expect("key");
    let public = dir.path().join("key.pub.pem");
    std::fs::write(&public, key.public_pem()).expect("write key");
    let args = Cli::try_parse_from([
        "herald-gateway",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir.path().join("data").display().to_string(),
        "--auth-key",
        &public.display().to_string(),
        "--stop-grace-ms",
        "0",
        "--drain-s",
        "1",
    ])
    .expect("arguments")
    .serve;
    let listeners = Listeners::bind(&args).expect("bind");
    let ws = listeners.ws[0].local_addr().expect("ws address");
    let shutdown = Shutdown::default();
    let gateway = tokio::spawn(run(
        args,
        install_metrics().expect("metrics"),
        listeners,
        shutdown.clone(),
    ));

    // The address was known before the gateway started; the kernel queued the connection.
    let mut client = WsClient::connect(ws).await;
    let token = key
        .mint(&claims_for("embedder", NsGrant::All, 600), None)
        .expect("mint");
    client.hello(&token).await;
    assert!(client.subscribe(&[(1, 0)]).await.is_empty());

    shutdown.stop.cancel();
    match client.recv_frame(WAIT).await {
        ServerFrame::Goaway { code, .. } => assert_eq!(code, Code::DRAINING),
        other => panic!("expected GOAWAY(draining), got {other:?}"),
    }
    let stopped = tokio::time::timeout(Duration::from_secs(15), gateway)
        .await
        .expect("run returns after the drain")
        .expect("task");
    stopped.expect("run ends cleanly");
}
