//! The no-missed-change property, checked by a randomized model test.
//!
//! Many managed clients (`herald-client`, with its reconnect and resubscribe logic) hold random
//! subsets of a set of namespaces. A seeded random schedule publishes changes, cuts client
//! connections, has clients subscribe to more namespaces or drop some, and kill -9s and restarts
//! the gateway (its journal must keep every acknowledged change). The model knows what was
//! published. At the end every client must have been told the final latest SJID of every namespace
//! it holds, and along the way no client may be told an SJID that was never published.
//!
//! The clients are spread over every transport (PROTOCOL.md "Transports"): WebSocket, WebSocket
//! over TLS, QUIC and HTTP long-poll, all on the one gateway, so the property is checked for each
//! adapter around the shared session core, across the same restarts.
//!
//! A second scenario runs the same clients with tokens that expire every few seconds (the gateway
//! with no leeway): the socket clients refresh them in-band (REFRESH, PROTOCOL.md C17) and must
//! never be disconnected or sent GOAWAY, and still miss no change.
//!
//! The seed is printed; `HERALD_MODEL_SEED=<seed> cargo test -p herald-e2e --test model` replays it.

use herald_client::{Client, ClientConfig, Event, LongPollConfig, LongPoller, TlsRoots};
use herald_e2e::{Checker, GatewayOptions, GatewayProcess, NsGrant};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const CLIENTS: usize = 24;
const NAMESPACES: u64 = 40;
const STEPS: usize = 400;
const RESTARTS: usize = 2;

/// The transports, in the order clients take them (client `i` uses `TRANSPORTS[i % 4]`).
const TRANSPORTS: [&str; 4] = ["ws", "wss", "quic", "longpoll"];

/// A managed client on one transport: a socket session (`Client`: ws, wss, quic) or a poller.
enum Handle {
    Session(Client),
    Poll(LongPoller),
}

impl Handle {
    fn subscribe(&self, pairs: &[(u64, u64)]) {
        match self {
            Handle::Session(c) => c.subscribe(pairs),
            Handle::Poll(p) => p.subscribe(pairs),
        }
    }

    fn unsubscribe(&self, ns: &[u64]) {
        match self {
            Handle::Session(c) => c.unsubscribe(ns),
            Handle::Poll(p) => p.unsubscribe(ns),
        }
    }

    /// Cuts the connection (a poller has none between polls to cut: it just polls again).
    fn disconnect_now(&self) {
        match self {
            Handle::Session(c) => c.disconnect_now(),
            Handle::Poll(p) => p.subscribe(&[]),
        }
    }

    async fn close(&self) {
        match self {
            Handle::Session(c) => c.close().await,
            Handle::Poll(p) => p.close().await,
        }
    }
}

struct ModelClient {
    client: Handle,
    /// Index in the checker.
    id: usize,
    holds: BTreeSet<u64>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free UDP port")
}

/// What the schedule does besides publishing and (un)subscribing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Cuts client connections and kill -9s and restarts the gateway.
    Faults,
    /// Tokens live [`SHORT_TOKEN_S`] seconds, with no leeway; socket clients refresh them in-band
    /// and must never be disconnected. Paced so that every client refreshes several times.
    ExpiringTokens,
}

/// Token lifetime of [`Scenario::ExpiringTokens`].
const SHORT_TOKEN_S: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_misses_a_change() {
    model(Scenario::Faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_misses_a_change_or_reconnects_while_tokens_expire_and_refresh() {
    model(Scenario::ExpiringTokens).await;
}

async fn model(scenario: Scenario) {
    let seed: u64 = std::env::var("HERALD_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("model {scenario:?} seed: {seed} (replay with HERALD_MODEL_SEED={seed})");
    let result = tokio::time::timeout(Duration::from_secs(120), run(seed, scenario)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => panic!("seed {seed}: {msg}"),
        Err(_) => panic!("seed {seed}: the model test did not finish in 120 s"),
    }
}

async fn run(seed: u64, scenario: Scenario) -> Result<(), String> {
    let expiring = scenario == Scenario::ExpiringTokens;
    let mut rng = StdRng::seed_from_u64(seed);
    // Fixed ports, so that clients find the gateway again after a restart.
    let (port, tls_port, quic_port) = (free_port(), free_port(), free_udp_port());
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let (cert, key) = herald_gateway::tls::self_signed(&names, false).expect("certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &cert).expect("write cert");
    std::fs::write(&key_path, &key).expect("write key");
    let roots = TlsRoots::from_pem(cert.as_bytes()).expect("roots");
    let mut gw = GatewayProcess::start(
        GatewayOptions::new()
            .arg("--listen", format!("127.0.0.1:{port}"))
            .arg("--tls-listen", format!("127.0.0.1:{tls_port}"))
            .arg("--quic-listen", format!("127.0.0.1:{quic_port}"))
            .arg("--tls-cert", cert_path.display())
            .arg("--tls-key", key_path.display())
            .arg("--token-leeway-s", if expiring { 0 } else { 30 }),
    );
    let key = gw.key().clone();
    let token_ttl = if expiring { SHORT_TOKEN_S } else { 3600 };
    let tokens: herald_client::TokenSource = std::sync::Arc::new(move || {
        key.mint(
            &herald_gateway::keys::claims_for("e2e", NsGrant::All, token_ttl),
            None,
        )
        .expect("mint")
    });
    let checker = Checker::new();
    let mut latest: BTreeMap<u64, u64> = BTreeMap::new();

    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let (client, mut events) = match TRANSPORTS[i % TRANSPORTS.len()] {
            "longpoll" => {
                let url = format!("http://127.0.0.1:{port}/v1/longpoll");
                let mut config = LongPollConfig::new(url, "");
                config.token = tokens.clone();
                config.backoff_initial = Duration::from_millis(20);
                config.backoff_max = Duration::from_millis(500);
                config.rng_seed = Some(seed ^ i as u64);
                let (poller, events) = LongPoller::spawn(config);
                (Handle::Poll(poller), events)
            }
            transport => {
                let url = match transport {
                    "ws" => format!("ws://127.0.0.1:{port}/v1/connect"),
                    "wss" => format!("wss://localhost:{tls_port}/v1/connect"),
                    _ => format!("quic://localhost:{quic_port}"),
                };
                let source = tokens.clone();
                let mut config = ClientConfig::with_token_source(url, move || source());
                config.tls = Some(roots.clone());
                config.refresh_tokens = expiring;
                if transport == "quic" {
                    // A QUIC client learns that a restarted gateway lost its connection from the
                    // stateless reset its next data packet provokes (TCP clients get a RST at
                    // once); in our runs quinn's keep-alives did not provoke one, so without
                    // frequent PINGs it would wait out the 60 s idle timeout (see C15).
                    config.heartbeat = Some(Duration::from_secs(2));
                }
                config.backoff_initial = Duration::from_millis(20);
                config.backoff_max = Duration::from_millis(500);
                config.rng_seed = Some(seed ^ i as u64);
                let (client, events) = Client::spawn(config);
                (Handle::Session(client), events)
            }
        };
        let id = checker.add_client();
        let ck = checker.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Changed { ns, sjid } => ck.told(id, ns, sjid),
                    Event::Reset { ns } => ck.problem(id, format!("unexpected RESET of ns {ns}")),
                    Event::Denied { code, ns } => {
                        ck.problem(id, format!("unexpected DENIED {code} of ns {ns}"))
                    }
                    Event::Fatal { code, message } => {
                        ck.problem(id, format!("fatal {code}: {message}"))
                    }
                    Event::Disconnected { reason, .. } if expiring => {
                        ck.problem(id, format!("disconnected while refreshing: {reason}"))
                    }
                    Event::Goaway { code, .. } if expiring => {
                        ck.problem(id, format!("GOAWAY {code} while refreshing"))
                    }
                    other => {
                        if std::env::var("HERALD_MODEL_DEBUG").is_ok() {
                            eprintln!(
                                "[{:?}] client {id}: {other:?}",
                                std::time::SystemTime::now()
                            )
                        }
                    }
                }
            }
        });
        let holds: BTreeSet<u64> = (0..rng.random_range(1..=6))
            .map(|_| rng.random_range(0..NAMESPACES))
            .collect();
        let ns: Vec<u64> = holds.iter().copied().collect();
        // Held from now: the subscription may be processed later (the client may be between
        // connections), but then its cursor check covers whatever was published meanwhile.
        checker.holds(id, &ns);
        client.subscribe(&ns.iter().map(|&n| (n, 0)).collect::<Vec<_>>());
        clients.push(ModelClient { client, id, holds });
    }

    let restart_at: BTreeSet<usize> = (0..RESTARTS)
        .map(|_| rng.random_range(STEPS / 4..STEPS))
        .collect();
    for step in 0..STEPS {
        match rng.random_range(0..100) {
            // Publish a batch; some namespaces repeat, some SJIDs jump.
            0..=59 => {
                let mut batch = Vec::new();
                for _ in 0..rng.random_range(1..=5) {
                    let ns = rng.random_range(0..NAMESPACES);
                    let sjid = latest.get(&ns).copied().unwrap_or(0) + rng.random_range(1..=3);
                    latest.insert(ns, sjid);
                    batch.push((ns, sjid));
                }
                checker.published(&batch);
                gw.publish_ok(&batch).await;
            }
            // Cut a client's connection; it must reconnect and resubscribe with its cursors.
            60..=74 if !expiring => clients[rng.random_range(0..CLIENTS)]
                .client
                .disconnect_now(),
            60..=74 => {}
            // Subscribe to one more namespace, with a cursor at most the latest (or 0).
            75..=87 => {
                let c = &mut clients[rng.random_range(0..CLIENTS)];
                let ns = rng.random_range(0..NAMESPACES);
                let cursor = rng.random_range(0..=latest.get(&ns).copied().unwrap_or(0));
                if c.holds.insert(ns) {
                    checker.holds_from(c.id, &[(ns, cursor)]);
                    c.client.subscribe(&[(ns, cursor)]);
                }
            }
            // Drop one namespace.
            _ => {
                let c = &mut clients[rng.random_range(0..CLIENTS)];
                let pick = rng.random_range(0..c.holds.len().max(1));
                if let Some(&ns) = c.holds.iter().nth(pick)
                    && c.holds.len() > 1
                {
                    c.holds.remove(&ns);
                    checker.releases(c.id, &[ns]);
                    c.client.unsubscribe(&[ns]);
                }
            }
        }
        if restart_at.contains(&step) && !expiring {
            gw.restart();
        }
        if expiring {
            // 400 steps over about 12 s: every token is refreshed two or three times.
            tokio::time::sleep(Duration::from_millis(30)).await;
        } else if rng.random_range(0..10) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
        }
    }

    // Every client must end knowing the final latest SJID of every namespace it holds, and must
    // have learned every change published while it held a namespace.
    let report = checker.verify(Duration::from_secs(15)).await?;
    for c in &clients {
        c.client.close().await;
    }
    println!(
        "model {scenario:?}: {CLIENTS} clients over ws, wss, quic and long-poll, {} namespaces \
         published, {} gateway restarts, tokens of {token_ttl} s: {report}",
        latest.len(),
        if expiring { 0 } else { restart_at.len() }
    );
    Ok(())
}
