//! Fault tests of the distributed path, against real processes: nats-server(s), `herald-relay`s
//! and `herald-gateway`s, with managed clients (`herald-client`) and a steady journal publisher.
//!
//! ```text
//!  Feed (a metaserver: Publisher, retries until acked) ──► HERALD_JOURNAL ──► relay(s)
//!                                                                               │ fan-out, latest
//!  Fleet: 20 managed clients ◄── WebSocket ── gateway(s) ◄── NATS ──────────────┘
//!    each holds a random subset of 30 namespaces (cursor 0); CHANGED → Checker::told
//! ```
//!
//! Every scenario publishes steadily, injects one fault mid-run (kill -9 a relay, restart
//! nats-server, kill a cluster node, kill a gateway, cut a gateway's NATS link), keeps publishing
//! after recovery, stops, and then the [`Checker`] must prove that no client missed a change
//! (PROTOCOL.md, "Promise"). Each prints its delay report; see them with
//! `cargo test -p herald-e2e --test faults -- --nocapture`.
//!
//! The scenarios run one at a time (a shared lock): each is a handful of processes and 20
//! clients, and on 2 cores the delay figures mean more when they do not compete.
//!
//! Build the binaries first: `cargo build -p herald-gateway -p herald-relay`.
//!
//! Scenario 7 is a two-tier chain: tier-0 relay on one NATS → tier-N relay → another NATS →
//! gateway, with the tier-N relay killed and restarted.

use herald_e2e::fleet::*;
use herald_e2e::nats::{NatsCluster, NatsServer, RelayProcess};
use herald_e2e::proxy::Proxy;
use herald_e2e::{Checker, GatewayProcess};
use std::time::{Duration, Instant};

/// 1. Two relays, active-active; one is killed with SIGKILL; the other keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_while_another_serves() {
    let name = "relay_killed_while_another_serves";
    run(name, async {
        let mut rng = seed(name);
        let nats = NatsServer::start();
        let url = nats.url();
        let (mut doomed, _survivor) = tokio::join!(
            RelayProcess::start(&url, relay_options()),
            RelayProcess::start(&url, relay_options())
        );
        let gw = GatewayProcess::start(gateway_options(&url));
        phase(name, async {
            let checker = Checker::new();
            let fleet = Fleet::start(&checker, &[ws_url(&gw)], &gw.token_all(), &mut rng).await?;
            let feed = Feed::start(&url, &checker, &mut rng).await?;
            tokio::time::sleep(STEADY).await;

            doomed.kill9();
            let at_kill = feed.acked();
            feed.acked_beyond(at_kill, 100, WAIT).await?;
            // How far behind the journal the clients are, 100 changes after the kill.
            let lag = fleet.catch_up(&checker, WAIT).await?;
            tokio::time::sleep(AFTER).await;

            let extra = format!("; 100 changes after the kill, clients caught up in {lag:.1?}");
            finish(name, &checker, feed, &fleet, &extra).await?;
            Ok(())
        })
        .await;
    })
    .await;
}

/// 2. The only relay is killed; publishing goes on (the journal is JetStream) while it is down;
/// it restarts, loads the journal and announces its new epoch; the gateway resyncs, and every
/// change published during the outage reaches the clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_relay_killed_and_restarted() {
    let name = "only_relay_killed_and_restarted";
    run(name, async {
        let mut rng = seed(name);
        let nats = NatsServer::start();
        let mut relay = RelayProcess::start(&nats.url(), relay_options()).await;
        let gw = GatewayProcess::start(gateway_options(&nats.url()));
        let what = "the only relay";
        phase(
            name,
            relay_outage(name, what, &mut relay, &gw, &nats.url(), 150, &mut rng),
        )
        .await;
    })
    .await;
}

/// 3. nats-server restarts with its store (SIGKILL, ~1 s down, same port and store): the relay
/// and the gateway reconnect, the gateway resyncs, nothing is missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_with_its_store() {
    let name = "nats_server_restarted_with_its_store";
    run(name, async {
        let mut rng = seed(name);
        let mut nats = NatsServer::start();
        let url = nats.url();
        let _relay = RelayProcess::start(&url, relay_options()).await;
        let gw = GatewayProcess::start(gateway_options(&url));
        phase(name, async {
            let checker = Checker::new();
            let fleet = Fleet::start(&checker, &[ws_url(&gw)], &gw.token_all(), &mut rng).await?;
            let feed = Feed::start(&url, &checker, &mut rng).await?;
            tokio::time::sleep(STEADY).await;

            let resyncs_before = gateway_metric(&gw, "herald_upstream_resyncs_total").await;
            nats.stop();
            tokio::time::sleep(Duration::from_secs(1)).await;
            // Returns once the server accepts connections again.
            nats.resume();
            let back = Instant::now();
            let at_resume = feed.acked();
            feed.acked_beyond(at_resume, 1, WAIT).await?;
            let first_ack = back.elapsed();
            until(WAIT, "the gateway to be ready again", || async {
                gw.get("/readyz").await.status == 200
            })
            .await?;
            let gateway_ready = back.elapsed();
            // Everything acknowledged by now: before the stop, and the first ones after it.
            let caught_up = back.elapsed() + fleet.catch_up(&checker, WAIT).await?;
            tokio::time::sleep(AFTER).await;
            let resyncs =
                gateway_metric(&gw, "herald_upstream_resyncs_total").await - resyncs_before;

            let extra = format!(
                "; after the server was back: first ack {first_ack:.1?}, gateway ready \
                 {gateway_ready:.1?}, clients caught up {caught_up:.1?}; {resyncs} resyncs"
            );
            finish(name, &checker, feed, &fleet, &extra).await?;
            if resyncs < 1.0 {
                return Err("the gateway did not resync after its NATS reconnect".into());
            }
            Ok(())
        })
        .await;
    })
    .await;
}

/// How long scenario 4 waits for the clients to catch up: the JetStream API can stay unanswered
/// for tens of seconds while the cluster elects a meta leader on a loaded 2-core machine (seen in
/// CI: 15 s was not enough once).
const CLUSTER_CATCH_UP: Duration = Duration::from_secs(45);

/// The delivery bound after a JetStream leader is lost (issue #16): every change reaches the
/// clients within 1 s of its acknowledgement (goal), never more than 2 s. Asserted with 1 s of
/// margin for this shared 2-core machine, where a loaded test runner alone has delayed a
/// delivery by several hundred milliseconds.
const LEADER_LOSS_BOUND: Duration = Duration::from_secs(3);

/// What a killed cluster node held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// The JetStream meta leader (and the relay's own connection).
    MetaLeader,
    /// The journal stream's leader.
    StreamLeader,
    /// Neither leader.
    Neither,
}

/// Picks the node to kill for `role`: the meta leader, the journal's stream leader (when another
/// node leads the meta group), or a node that leads neither. `None` when the cluster's current
/// leaders leave no such node (for example one node leads both).
async fn node_holding(cluster: &NatsCluster, role: Held) -> Option<usize> {
    let meta = cluster.meta_leader().await?;
    let stream = cluster
        .stream_leader((meta + 1) % 3, herald_proto::fanout::JOURNAL_STREAM)
        .await?;
    match role {
        Held::MetaLeader => Some(meta),
        Held::StreamLeader => (stream != meta).then_some(stream),
        Held::Neither => (0..3).find(|&i| i != meta && i != stream),
    }
}

/// One leader-loss round on a running cluster: a fleet and a publisher on other nodes, the node
/// holding `role` killed, publishing on, then checked. Returns the worst delay from a change's
/// acknowledgement to a client learning it, and restarts the killed node.
async fn leader_loss_round(
    name: &str,
    cluster: &mut NatsCluster,
    gw: &GatewayProcess,
    victim: usize,
    rng: &mut rand::rngs::StdRng,
) -> Result<Duration, String> {
    let checker = Checker::new();
    let fleet = Fleet::start(&checker, &[ws_url(gw)], &gw.token_all(), rng).await?;
    let feed = Feed::start(&cluster.url((victim + 1) % 3), &checker, rng).await?;
    tokio::time::sleep(STEADY).await;
    let killed_at = Instant::now();
    cluster.node(victim).stop();
    let at_kill = feed.acked();
    feed.acked_beyond(at_kill, 100, WAIT).await?;
    let hundred_acks = killed_at.elapsed();
    fleet.catch_up(&checker, CLUSTER_CATCH_UP).await?;
    tokio::time::sleep(AFTER).await;
    let extra =
        format!("; node n{victim} killed, 100 changes acknowledged {hundred_acks:.1?} after");
    let report = finish(name, &checker, feed, &fleet, &extra).await?;
    cluster.node(victim).resume();
    Ok(report.worst_delay)
}

/// 4. A 3-node cluster with the journal at 3 replicas. The relay talks to the node that is the
/// JetStream meta leader, the gateway is given every node's URL, the publisher talks to another
/// node. The meta leader's node is killed: the relay loses its connection and the JetStream API
/// its leader at once (the worst case: an ordered consumer cannot be recreated until a new meta
/// leader is elected, seconds later). The relay's journal tap and its catch-up after the
/// reconnect (relay `source::journal`) must keep every delivery inside [`LEADER_LOSS_BOUND`]
/// of its acknowledgement, and nothing may be missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_killed() {
    let name = "cluster_node_killed";
    run(name, async {
        let mut rng = seed(name);
        let mut cluster = NatsCluster::start(3).await;
        let leader = cluster.meta_leader().await.unwrap_or(0);
        let _relay =
            RelayProcess::start(&cluster.url(leader), relay_options().arg("--replicas", 3)).await;
        let gw = GatewayProcess::start(gateway_options(&cluster.urls()));
        phase(name, async {
            let victim = node_holding(&cluster, Held::MetaLeader)
                .await
                .unwrap_or(leader);
            let worst = leader_loss_round(name, &mut cluster, &gw, victim, &mut rng).await?;
            if worst > LEADER_LOSS_BOUND {
                return Err(format!(
                    "a change reached the clients {worst:?} after its acknowledgement when the \
                     meta leader's node was killed, over {LEADER_LOSS_BOUND:?}"
                ));
            }
            Ok(())
        })
        .await;
    })
    .await;
}

/// The figures of issue #16: ten or more leader-loss rounds, cycling through killing the meta
/// leader, the stream leader and a node holding neither, each on a fresh cluster, two relays (on
/// n0 and n1) and a gateway (the clients' cursors and the journal start empty every round);
/// prints each round's worst delay from acknowledgement to client. Minutes long: run by hand with
/// `cargo test -p herald-e2e --test faults leader_loss_rounds -- --ignored --nocapture`
/// (rounds from `HERALD_LEADER_LOSS_ROUNDS`, default 12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: the leader-loss figures for RELIABILITY.md"]
async fn leader_loss_rounds() {
    let name = "leader_loss_rounds";
    let rounds: usize = std::env::var("HERALD_LEADER_LOSS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(12);
    let _turn = herald_e2e::fleet::SERIAL.lock().await;
    let mut rng = seed(name);
    let roles = [Held::MetaLeader, Held::StreamLeader, Held::Neither];
    let mut results = Vec::new();
    for round in 0..rounds {
        let mut cluster = NatsCluster::start(3).await;
        // Two relays on different nodes, as a fleet runs them (ops/RUNBOOK.md): when a node
        // dies, the relay on another node still sees every publish.
        let relays = [
            RelayProcess::start(&cluster.url(0), relay_options().arg("--replicas", 3)).await,
            RelayProcess::start(&cluster.url(1), relay_options().arg("--replicas", 3)).await,
        ];
        let gw = GatewayProcess::start(gateway_options(&cluster.urls()));
        let wanted = roles[round % roles.len()];
        // The stream leader may be the meta leader too; then that node is killed as such.
        let mut role = wanted;
        let mut victim = node_holding(&cluster, wanted).await;
        if victim.is_none() {
            role = Held::MetaLeader;
            victim = node_holding(&cluster, role).await;
        }
        let Some(victim) = victim else {
            println!("{name}: round {round}: no JetStream leader found; skipped");
            continue;
        };
        let worst = tokio::time::timeout(
            PHASE_LIMIT,
            leader_loss_round(name, &mut cluster, &gw, victim, &mut rng),
        )
        .await
        .unwrap_or_else(|_| Err("round timed out".into()))
        .unwrap_or_else(|e| panic!("{name}: round {round} ({role:?}): {e}"));
        let relay_node = if victim < 2 { " (a relay's node)" } else { "" };
        println!(
            "{name}: round {round}: killed n{victim}{relay_node} holding {role:?}: worst delay \
             {worst:?}"
        );
        results.push((role, victim < 2, worst));
        drop(gw);
        drop(relays);
    }
    println!("{name}: role | a relay's node | worst delay from acknowledgement to client");
    for (role, relays, worst) in &results {
        println!("{name}: {role:?} | {relays} | {worst:.1?}");
    }
    let overall = results.iter().map(|r| r.2).max().unwrap_or_default();
    assert!(
        overall <= LEADER_LOSS_BOUND,
        "worst delay {overall:?} over {LEADER_LOSS_BOUND:?}"
    );
}

/// 5. Two gateways on one NATS; clients use gateway A with B as fallback. A is killed with
/// SIGKILL; clients reconnect to B with their cursors and miss nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_clients_fail_over() {
    let name = "gateway_killed_clients_fail_over";
    run(name, async {
        let mut rng = seed(name);
        let nats = NatsServer::start();
        let url = nats.url();
        let _relay = RelayProcess::start(&url, relay_options()).await;
        // Each harness gateway trusts its own key; both also trust this one, so one token
        // works on either.
        let fleet_key = FleetKey::new();
        let options = gateway_options(&url).arg("--auth-key", fleet_key.flag());
        let mut a = GatewayProcess::start(options.clone());
        let b = GatewayProcess::start(options);
        phase(name, async {
            let checker = Checker::new();
            let urls = [ws_url(&a), ws_url(&b)];
            let fleet = Fleet::start(&checker, &urls, &fleet_key.token(), &mut rng).await?;
            let feed = Feed::start(&url, &checker, &mut rng).await?;
            tokio::time::sleep(STEADY).await;

            let killed_at = Instant::now();
            a.kill9();
            fleet.sessions_at_least(2, WAIT).await?;
            let failed_over = killed_at.elapsed();
            let caught_up = killed_at.elapsed() + fleet.catch_up(&checker, WAIT).await?;
            let on_b = gateway_metric(&b, "herald_connections{transport=\"websocket\"}").await;
            tokio::time::sleep(AFTER).await;

            let extra = format!(
                "; every client reconnected {failed_over:.1?} after the kill ({on_b} on B), \
                 caught up {caught_up:.1?} after it"
            );
            finish(name, &checker, feed, &fleet, &extra).await?;
            if on_b < CLIENTS as f64 {
                return Err(format!(
                    "{on_b} connections on gateway B, expected {CLIENTS}"
                ));
            }
            if caught_up > DELIVERY_BOUND {
                return Err(format!(
                    "clients caught up {caught_up:?} after gateway A died, over the \
                     {DELIVERY_BOUND:?} delivery bound"
                ));
            }
            Ok(())
        })
        .await;
    })
    .await;
}

/// 6. The gateway's NATS link goes through a proxy that is cut while publishing goes on; once
/// restored, the gateway reconnects, resyncs, and nothing is missed. The clients must catch up
/// within the delivery bound of the restore (PROTOCOL.md: within 1 s of the failed part being
/// replaced). The cut lasts 4.5 s: long enough that a reconnect backoff growing past the bound
/// (as async-nats' default does, doubling to 4 s) would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_nats_link_cut() {
    let name = "gateway_nats_link_cut";
    run(name, async {
        let mut rng = seed(name);
        let nats = NatsServer::start();
        let url = nats.url();
        let _relay = RelayProcess::start(&url, relay_options()).await;
        let nats_addr = url
            .trim_start_matches("nats://")
            .parse()
            .expect("nats-server address");
        let proxy = Proxy::start(nats_addr).await;
        let gw = GatewayProcess::start(gateway_options(&proxy.nats_url()));
        phase(name, async {
            let checker = Checker::new();
            let fleet = Fleet::start(&checker, &[ws_url(&gw)], &gw.token_all(), &mut rng).await?;
            let feed = Feed::start(&url, &checker, &mut rng).await?;
            tokio::time::sleep(STEADY).await;

            let resyncs_before = gateway_metric(&gw, "herald_upstream_resyncs_total").await;
            proxy.cut();
            let at_cut = feed.acked();
            until(
                WAIT,
                "the gateway to notice the cut (not ready)",
                || async { gw.get("/readyz").await.status == 503 },
            )
            .await?;
            tokio::time::sleep(CUT).await;
            let restored_at = Instant::now();
            proxy.restore();
            let during = feed.acked() - at_cut;
            let caught_up = fleet.catch_up(&checker, WAIT).await?;
            until(WAIT, "the gateway to be ready", || async {
                gw.get("/readyz").await.status == 200
            })
            .await?;
            let ready = restored_at.elapsed();
            tokio::time::sleep(AFTER).await;
            let resyncs =
                gateway_metric(&gw, "herald_upstream_resyncs_total").await - resyncs_before;

            let extra = format!(
                "; {during} changes published during the cut; caught up {caught_up:.1?} after \
                 the restore (ready by {ready:.1?}); {resyncs} resyncs"
            );
            finish(name, &checker, feed, &fleet, &extra).await?;
            if resyncs < 1.0 {
                return Err("the gateway did not resync after its NATS reconnect".into());
            }
            if caught_up > DELIVERY_BOUND {
                return Err(format!(
                    "clients caught up {caught_up:?} after the link was restored, over the \
                     {DELIVERY_BOUND:?} delivery bound"
                ));
            }
            Ok(())
        })
        .await;
    })
    .await;
}

/// 7. A two-tier chain, as a fleet spread over PoPs runs it: NATS "core" (journal, tier-0 relay)
/// → tier-1 relay (`--upstream-nats core`) → NATS "pop" → gateway. The tier-1 relay is killed
/// with SIGKILL while publishing goes on, then restarts with a new epoch and an empty table
/// (it learns what it is asked from upstream): the gateway resyncs through it, nothing is missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_n_relay_killed_and_restarted() {
    let name = "tier_n_relay_killed_and_restarted";
    run(name, async {
        let mut rng = seed(name);
        let core = NatsServer::start();
        let pop = NatsServer::start();
        let _tier0 = RelayProcess::start(&core.url(), relay_options()).await;
        let tier1_options = relay_options().arg("--upstream-nats", core.url());
        let mut tier1 = RelayProcess::start(&pop.url(), tier1_options).await;
        let gw = GatewayProcess::start(gateway_options(&pop.url()));
        let what = "the tier-1 relay";
        phase(
            name,
            relay_outage(name, what, &mut tier1, &gw, &core.url(), 100, &mut rng),
        )
        .await;
    })
    .await;
}

/// Scenarios 2 and 7: with a fleet and a journal feed running, `relay` is killed with SIGKILL,
/// `while_down` changes are acknowledged while it is gone, and it restarts. It must come back with
/// a new epoch, the gateway must resync, and the clients must catch up within the delivery bound;
/// then the Checker proves nothing was missed.
async fn relay_outage(
    name: &str,
    what: &str,
    relay: &mut RelayProcess,
    gw: &GatewayProcess,
    feed_url: &str,
    while_down: usize,
    rng: &mut rand::rngs::StdRng,
) -> Result<(), String> {
    let old_epoch = relay.epoch();
    let checker = Checker::new();
    let fleet = Fleet::start(&checker, &[ws_url(gw)], &gw.token_all(), rng).await?;
    let feed = Feed::start(feed_url, &checker, rng).await?;
    tokio::time::sleep(STEADY).await;

    relay.kill9();
    let at_kill = feed.acked();
    // Publishes still ack while the relay is down: the journal is JetStream.
    feed.acked_beyond(at_kill, while_down, WAIT).await?;
    let resyncs_before = gateway_metric(gw, "herald_upstream_resyncs_total").await;
    relay.restart().await;
    let during = feed.acked() - at_kill;
    if relay.epoch() == old_epoch {
        return Err(format!("{what} kept its epoch across the restart"));
    }
    let caught_up = fleet.catch_up(&checker, WAIT).await?;
    tokio::time::sleep(AFTER).await;
    let resyncs = gateway_metric(gw, "herald_upstream_resyncs_total").await - resyncs_before;

    let extra = format!(
        "; {during} changes published while {what} was down; caught up {caught_up:.1?} after it \
         was ready again; {resyncs} resyncs"
    );
    finish(name, &checker, feed, &fleet, &extra).await?;
    if resyncs < 1.0 {
        return Err(format!(
            "the gateway did not resync after {what}'s new epoch"
        ));
    }
    if caught_up > DELIVERY_BOUND {
        return Err(format!(
            "clients caught up {caught_up:?} after {what} was back, over the {DELIVERY_BOUND:?} \
             delivery bound"
        ));
    }
    Ok(())
}
