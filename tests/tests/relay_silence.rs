//! The gateway's relay-silence watchdog: a NATS server that hangs (SIGSTOP: it keeps its sockets
//! open and delivers nothing) is left for another server of `--nats` within `--relay-silence-ms`,
//! and the resync after it delivers what was published meanwhile.
//!
//! Topology: three routed JetStream nodes; the journal stream is R1 on n0 (created until placed
//! there) and the relay is connected to n0, so stopping n1 or n2 cannot stop the journal (a
//! JetStream leader loss is another fault, issue 16 item 2). The gateway is given n1 and n2 only;
//! each round SIGSTOPs whichever it is connected to.

use herald_e2e::GatewayProcess;
use herald_e2e::fleet::{PARTITIONS, gateway_options, relay_options};
use herald_e2e::nats::{NatsCluster, RelayProcess, relay_command};
use herald_e2e::process::{signal, tcp_peer_ports};
use herald_proto::fanout::JOURNAL_STREAM;
use herald_relay::Publisher;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// `--relay-silence-ms` of the test gateway (the default).
const SILENCE: Duration = Duration::from_millis(2000);
/// Bound on the delay of a change published just after the gateway's server hangs: the
/// silence, a quarter of it for the watchdog's check interval, then reconnect and resync (tens
/// of ms), plus 2 s of margin for this shared 2-core machine. Without the watchdog the client
/// library's pings notice after ~10 s, far past it.
const BOUND: Duration = Duration::from_millis(2000 + 500 + 2000);
const ROUNDS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_nats_server_is_left_within_the_relay_silence() {
    let mut cluster = NatsCluster::start(3).await;
    place_journal_on_n0(&mut cluster).await;
    let _relay = RelayProcess::start(&cluster.url(0), relay_options().arg("--replicas", 1)).await;
    let gw_urls = format!("{},{}", cluster.url(1), cluster.url(2));
    let gw = GatewayProcess::start(
        gateway_options(&gw_urls).arg("--relay-silence-ms", SILENCE.as_millis()),
    );
    let publisher = Publisher::new(
        async_nats::jetstream::new(cluster.node(0).client().await),
        PARTITIONS,
    );
    let mut client = gw.client().await;
    let ns = 7;
    assert!(client.subscribe(&[(ns, 0)]).await.is_empty());
    let mut sjid = 1;
    publisher.publish(&[(ns, sjid)]).await.expect("publish");
    client
        .changed_until(ns, sjid, Duration::from_secs(10))
        .await;

    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        // The node the gateway is connected to now: the only one of n1 and n2 it has a socket
        // to (just after a switch, the socket to the node it left can linger for a moment).
        let node_ports = [cluster.node(1).port(), cluster.node(2).port()];
        let gw_pid = gw.pid();
        let node = herald_e2e::eventually(
            Duration::from_secs(5),
            &format!("round {round}: the gateway connected to exactly one of n1, n2"),
            || async move {
                let ports = tcp_peer_ports(gw_pid);
                let on: Vec<usize> = (1..3)
                    .filter(|&i| ports.contains(&node_ports[i - 1]))
                    .collect();
                (on.len() == 1).then(|| on[0])
            },
        )
        .await;
        let pid = cluster.node(node).pid();
        signal(pid, Signal::SIGSTOP);
        // SIGSTOP takes effect as each thread next enters the kernel: publishing before then can
        // still be routed through the node (seen: a change delivered 1 ms after the signal).
        herald_e2e::eventually(
            Duration::from_secs(5),
            &format!("round {round}: n{node} stopped"),
            || async move { all_threads_stopped(pid).then_some(()) },
        )
        .await;
        sjid += 1;
        let published = Instant::now();
        publisher.publish(&[(ns, sjid)]).await.expect("publish");
        // Panics (and the drop of the cluster kills the stopped node) if it never comes.
        client
            .changed_until(ns, sjid, BOUND + Duration::from_secs(10))
            .await;
        let delay = published.elapsed();
        signal(pid, Signal::SIGCONT);
        println!("round {round}: n{node} SIGSTOPped, change delivered after {delay:?}");
        delays.push(delay);
        // Let the resumed node catch up with its routes before the next round.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Still served normally afterwards.
        sjid += 1;
        publisher.publish(&[(ns, sjid)]).await.expect("publish");
        client.changed_until(ns, sjid, Duration::from_secs(5)).await;
    }
    let worst = delays.iter().max().copied().unwrap_or_default();
    println!("worst delay over {ROUNDS} hung servers: {worst:?} (bound {BOUND:?})");
    assert!(
        worst <= BOUND,
        "a change waited {worst:?} behind a hung NATS server (bound {BOUND:?}): {delays:?}"
    );
    let switches =
        herald_e2e::fleet::gateway_metric(&gw, "herald_upstream_silence_reconnects_total").await;
    assert!(
        switches >= ROUNDS as f64,
        "{switches} watchdog switches for {ROUNDS} hung servers"
    );
}

/// Whether every thread of `pid` is in the stopped state (`T` in `/proc/<pid>/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
                .is_some_and(|state| state == 'T')
        })
    })
}

/// Creates the journal stream (R1) until JetStream places it on n0 (placement is random among
/// the nodes: a few tries).
async fn place_journal_on_n0(cluster: &mut NatsCluster) {
    let url = cluster.url(0);
    let js = async_nats::jetstream::new(cluster.node(0).client().await);
    for _ in 0..30 {
        let (ok, _, err) = relay_command(&["create-stream", "--nats", &url, "--replicas", "1"]);
        assert!(ok, "create-stream failed: {err}");
        let mut stream = js.get_stream(JOURNAL_STREAM).await.expect("journal stream");
        let info = stream.info().await.expect("stream info");
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .unwrap_or_default();
        if leader == "n0" {
            return;
        }
        js.delete_stream(JOURNAL_STREAM)
            .await
            .expect("delete stream");
    }
    panic!("the journal stream was never placed on n0 in 30 tries");
}
