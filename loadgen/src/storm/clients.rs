//! A child process of `storm`: holds clients, one subscription each, and follows what happens to
//! them when every connection drops at once.
//!
//! - Herald (`--url`, `--token`): managed [`herald_client::Client`]s (the client library's
//!   reconnect, backoff, cursors and resubscription). Client `i` of the whole run subscribes to
//!   namespace `i % namespaces` with cursor 0. After each `Connected` event it asks the client for
//!   a barrier (`Client::barrier`: resolves once the resubscription of that session is live on the
//!   server), which is when it counts as *resubscribed*.
//! - A peer (`--protocol nats-ws|node-ws --addr host:port`): the careful peer clients of
//!   [`super::peer_client`], with the same backoff; *resubscribed* once the server confirmed the
//!   subscription of the new connection.
//!
//! Both kinds report what happens to them as [`Happening`]s into one [`State`]. A client is
//! *caught up* once its cursor (the highest SJID it got) reached the last SJID the parent
//! published to its namespace.
//!
//! The parent drives it over stdin/stdout, one line each way per command:
//!
//! | stdin | stdout |
//! |---|---|
//! | (after start) | `ready <clients>` once every client is connected and resubscribed |
//! | `mark <t_us>` | `ok`: the storm starts at `t_us`; per-storm times and counters start again |
//! | `cut` | `ok`: every client drops its socket as a network cut would (`Client::disconnect_now`) |
//! | `target <json [u64]>` | `ok`: the last SJID published to each namespace (index = ns) |
//! | `progress` | JSON [`StormProgress`] |
//! | `report` | JSON [`StormReport`] |
//!
//! EOF on stdin ends the process.

use super::peer_client::{self, PeerClient};
use super::state::{Happening, State};
use crate::peer::Protocol;
use herald_client::{Client, ClientConfig, Event};
use std::cell::RefCell;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

/// Errors a child keeps to report (the first ones).
pub(super) const MAX_ERRORS: usize = 5;
/// Longest wait for one barrier (the client library's barrier has no timeout of its own).
const BARRIER_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for every client to be connected and resubscribed at the start.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// Arguments of `storm-clients`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientsArgs {
    /// Gateway WebSocket URL, `ws://host:port/v1/connect` (Herald's clients).
    #[arg(
        long,
        required_unless_present = "protocol",
        conflicts_with = "protocol"
    )]
    url: Option<String>,
    /// Token for HELLO (Herald's clients).
    #[arg(long, required_unless_present = "protocol")]
    token: Option<String>,
    /// Run peer clients of this protocol instead of Herald's.
    #[arg(long, value_enum, requires = "addr")]
    protocol: Option<Protocol>,
    /// The peer's WebSocket address (with `--protocol`).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Clients to run.
    #[arg(long)]
    count: usize,
    /// Source address every connection of this process binds.
    #[arg(long, default_value = "127.0.0.1")]
    source: IpAddr,
    /// Namespaces in the pattern (client i of the run subscribes to namespace i % this).
    #[arg(long, default_value_t = 1000)]
    namespaces: u64,
    /// Index of this process's first client in the whole run.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// How the clients start and come back.
    #[command(flatten)]
    policy: ClientPolicy,
}

/// How the storm's clients start and reconnect: given to `storm`, handed on to every
/// `storm-clients` child as the same flags.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct ClientPolicy {
    /// The client library's first backoff cap, ms (its default).
    #[arg(long, default_value_t = 100)]
    pub(crate) backoff_initial_ms: u64,
    /// The client library's largest backoff cap, ms (its default).
    #[arg(long, default_value_t = 30_000)]
    pub(crate) backoff_max_ms: u64,
    /// Clients each child starts per second at the beginning (keeps the first connects under
    /// the gateway's handshake rate; the storm itself is not paced).
    #[arg(long, default_value_t = 4000)]
    pub(crate) start_rate: u64,
}

impl ClientPolicy {
    /// The same settings as `storm-clients` flags.
    pub(crate) fn flags(&self) -> [String; 6] {
        [
            "--backoff-initial-ms".into(),
            self.backoff_initial_ms.to_string(),
            "--backoff-max-ms".into(),
            self.backoff_max_ms.to_string(),
            "--start-rate".into(),
            self.start_rate.to_string(),
        ]
    }

    fn backoff_initial(&self) -> Duration {
        Duration::from_millis(self.backoff_initial_ms)
    }

    fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }
}

pub(crate) fn run(args: &ClientsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, clients(args.clone()))
}

async fn clients(args: ClientsArgs) -> anyhow::Result<()> {
    let state = Rc::new(RefCell::new(State::new(
        (0..args.count as u64).map(|i| (args.first + i) % args.namespaces),
    )));
    // Herald's clients are cut through their handles, the peer clients through `cut`.
    let mut handles = Vec::with_capacity(args.count);
    let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
    let gap =
        Duration::from_secs(1) / u32::try_from(args.policy.start_rate.max(1)).unwrap_or(u32::MAX);
    let mut pace = tokio::time::interval(gap.max(Duration::from_micros(10)));
    for i in 0..args.count {
        pace.tick().await;
        let ns = state.borrow().clients[i].ns;
        if let (Some(protocol), Some(addr)) = (args.protocol, args.addr) {
            let client = PeerClient {
                protocol,
                addr,
                source: args.source,
                ns,
                backoff_initial: args.policy.backoff_initial(),
                backoff_max: args.policy.backoff_max(),
            };
            tokio::task::spawn_local(peer_client::run(i, client, state.clone(), cut_rx.clone()));
            continue;
        }
        let (Some(url), Some(token)) = (&args.url, &args.token) else {
            anyhow::bail!("give --url and --token, or --protocol and --addr");
        };
        let mut config = ClientConfig::new(url.clone(), token.clone());
        config.backoff_initial = args.policy.backoff_initial();
        config.backoff_max = args.policy.backoff_max();
        config.local_addr = Some(args.source);
        // Small: one subscription, and this task reads the events at once.
        config.event_capacity = 16;
        let (client, mut events) = Client::spawn(config);
        client.subscribe(&[(ns, 0)]);
        let (st, c) = (state.clone(), client.clone());
        tokio::task::spawn_local(async move {
            while let Some(ev) = events.recv().await {
                if matches!(ev, Event::Connected { .. }) {
                    tokio::task::spawn_local(barrier(i, c.clone(), st.clone()));
                }
                st.borrow_mut().event(i, ev.into());
            }
        });
        handles.push(client);
    }
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let p = state.borrow().progress();
        if p.resubscribed == p.clients {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} clients subscribed within {READY_TIMEOUT:?} (errors: {:?})",
            p.resubscribed,
            p.clients,
            state.borrow().errors
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    say(&format!("ready {}", args.count))?;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let (cmd, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match cmd {
            "mark" => {
                state.borrow_mut().mark(rest.trim().parse()?);
                say("ok")?;
            }
            "cut" => {
                for c in &handles {
                    c.disconnect_now();
                }
                cut.send_modify(|generation| *generation += 1);
                say("ok")?;
            }
            "target" => {
                state.borrow_mut().target = Some(serde_json::from_str(rest)?);
                say("ok")?;
            }
            "progress" => say(&serde_json::to_string(&state.borrow().progress())?)?,
            "report" => say(&serde_json::to_string(&state.borrow().report()?)?)?,
            other => anyhow::bail!("unknown command {other:?}"),
        }
    }
    // The parent closed stdin: leave at once (the sockets close with the process).
    std::process::exit(0)
}

/// Waits until the session that just started has resubscribed (`Client::barrier`), and notes when.
async fn barrier(i: usize, client: Client, state: Rc<RefCell<State>>) {
    match tokio::time::timeout(BARRIER_TIMEOUT, client.barrier()).await {
        Ok(Ok(())) => state.borrow_mut().event(i, Happening::Resubscribed),
        Ok(Err(e)) => state
            .borrow_mut()
            .error(format!("client {i}: barrier: {e}")),
        Err(_) => state
            .borrow_mut()
            .error(format!("client {i}: barrier took over {BARRIER_TIMEOUT:?}")),
    }
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// What `storm` hands on to its children is what they read back.
    #[test]
    fn the_client_policy_reaches_the_children_unchanged() {
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            policy: ClientPolicy,
        }
        let policy = ClientPolicy {
            backoff_initial_ms: 7,
            backoff_max_ms: 900,
            start_rate: 123,
        };
        let read = Flags::try_parse_from(
            std::iter::once("storm-clients".to_owned()).chain(policy.flags()),
        )
        .expect("flags")
        .policy;
        assert_eq!(
            (
                read.backoff_initial_ms,
                read.backoff_max_ms,
                read.start_rate
            ),
            (7, 900, 123)
        );
        assert_eq!(read.backoff_max(), Duration::from_millis(900));
    }
}
