//! The lean distributed path (issue 15, item 5): gateways read each change straight from the
//! journal's subjects (the default; `--no-journal-direct` turns it off), and tier-0 relays only vouch for it
//! with a coalesced numbered fan-out (`--vouch-ms`, default 500).
//!
//! ```text
//!  Publisher ──► nats-server ──► gateway     (direct: the publish itself, one hop)
//!                    │  JetStream
//!                    └─► relay ──► nats-server ──► gateway   (vouch: every change, ≤ 500 ms later, numbered)
//! ```
//!
//! What must hold: a change reaches the client without the relay (the direct path is real), and
//! a change the direct path never carried still reaches it (the vouch is real).

use async_nats::jetstream;
use herald_e2e::GatewayProcess;
use herald_e2e::fleet::{PARTITIONS, gateway_options};
use herald_e2e::nats::{NatsServer, RelayOptions, RelayProcess};
use herald_proto::fanout::{journal_body, msg_id, partition};
use herald_relay::Publisher;
use std::time::Duration;

/// Bound on one expected delivery.
const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for a delivery that must not come.
const QUIET: Duration = Duration::from_millis(1500);

fn relay_options() -> RelayOptions {
    RelayOptions::new().arg("--partitions", PARTITIONS)
}

/// With the only relay killed, a change published to the journal still reaches a subscribed
/// client: it came from the journal subject, not from a relay. A gateway that does not read the
/// journal (`--no-journal-direct`) gets nothing until a relay is back, which shows the test
/// would fail without the direct path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_the_client_from_the_journal_while_no_relay_runs() {
    let nats = NatsServer::start();
    let url = nats.url();
    let mut relay = RelayProcess::start(&url, relay_options()).await;
    let direct = GatewayProcess::start(gateway_options(&url));
    let fanout_only = GatewayProcess::start(gateway_options(&url).flag("--no-journal-direct"));
    let ns = 7;
    let mut via_direct = direct.client().await;
    let mut via_fanout = fanout_only.client().await;
    assert!(via_direct.subscribe(&[(ns, 0)]).await.is_empty());
    assert!(via_fanout.subscribe(&[(ns, 0)]).await.is_empty());

    relay.kill9();
    let publisher = Publisher::new(jetstream::new(nats.client().await), PARTITIONS);
    publisher.publish(&[(ns, 1)]).await.expect("publish");
    via_direct.changed_until(ns, 1, WAIT).await;
    assert!(
        via_fanout.try_recv_frame(QUIET).await.is_none(),
        "a gateway with --no-journal-direct heard of the change with no relay running"
    );

    // The restarted relay announces a new epoch; the fan-out-only gateway resyncs and catches
    // up, the direct one was never behind.
    relay.restart().await;
    via_fanout.changed_until(ns, 1, WAIT).await;
    publisher.publish(&[(ns, 2)]).await.expect("publish");
    via_direct.changed_until(ns, 2, WAIT).await;
    via_fanout.changed_until(ns, 2, WAIT).await;
}

/// A change the gateways never see on its journal subject (published under the wrong
/// partition, which the relay still applies and counts) reaches the client through the
/// relay's vouching batch, within the vouching delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vouch_delivers_what_the_direct_path_did_not_carry() {
    let nats = NatsServer::start();
    let url = nats.url();
    let _relay = RelayProcess::start(&url, relay_options().arg("--vouch-ms", 300)).await;
    let gw = GatewayProcess::start(gateway_options(&url));
    let ns = 9;
    let mut client = gw.client().await;
    assert!(client.subscribe(&[(ns, 0)]).await.is_empty());

    let wrong = (partition(ns, PARTITIONS) + 1) % PARTITIONS;
    let js = jetstream::new(nats.client().await);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id(ns, 4).as_str());
    js.publish_with_headers(
        format!("herald.journal.{wrong}.{ns}"),
        headers,
        journal_body(4).to_vec().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("acked");
    let started = std::time::Instant::now();
    client.changed_until(ns, 4, WAIT).await;
    println!(
        "misrouted change delivered by the vouch after {:?}",
        started.elapsed()
    );

    // The next, well-routed change comes the direct way, long before a vouch could.
    let publisher = Publisher::new(js, PARTITIONS);
    publisher.publish(&[(ns, 5)]).await.expect("publish");
    client.changed_until(ns, 5, WAIT).await;
    let direct =
        herald_e2e::fleet::gateway_metric(&gw, "herald_upstream_direct_changes_total").await;
    assert!(
        direct >= 1.0,
        "no change was raised from the journal subject: {direct}"
    );
}
