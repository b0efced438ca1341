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
use crate::peer::Protocol;
use crate::peer::conn::PeerSink;
use crate::receive::{encode_histogram, new_histogram, now_us};
use herald_client::{Client, ClientConfig, Event};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

/// Errors a child keeps to report (the first ones).
const MAX_ERRORS: usize = 5;
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

/// Answer to `progress`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StormProgress {
    pub(crate) clients: u64,
    /// Clients with a live session now.
    pub(crate) live: u64,
    /// Clients whose barrier resolved since `mark`.
    pub(crate) resubscribed: u64,
    /// Clients whose cursor reached the target (0 before `target`).
    pub(crate) caught_up: u64,
    /// Sessions that ended since `mark`.
    pub(crate) disconnects: u64,
    /// Connection attempts that failed since `mark` (refused, timed out, HTTP 503, …).
    pub(crate) failed_attempts: u64,
    /// Of those, refused with HTTP 503 (the gateway's admission control).
    pub(crate) http_503: u64,
    /// Clients stopped for good (`Event::Fatal`; must be 0).
    pub(crate) fatal: u64,
}

/// Answer to `report`: the storm as this process saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StormReport {
    pub(crate) progress: StormProgress,
    /// Sessions started (`Connected`) since `mark`.
    pub(crate) reconnects: u64,
    /// Wall clock of the first and last `Connected` since `mark`, µs since the epoch (0: none).
    pub(crate) first_connect_us: u64,
    pub(crate) last_connect_us: u64,
    /// Per client, `mark` → resubscribed (barrier resolved), µs; HdrHistogram V2, base64.
    pub(crate) hist_resubscribed: String,
    /// Per client, `mark` → its cursor reached the target, µs.
    pub(crate) hist_caught_up: String,
    /// Clients whose cursor is below the target (must be 0 once the storm settled).
    pub(crate) missing: u64,
    /// `Changed` events whose SJID was not above the client's cursor (must be 0: the library
    /// filters them).
    pub(crate) non_increasing: u64,
    /// `Changed` for a namespace the client did not subscribe to (must be 0).
    pub(crate) foreign: u64,
    pub(crate) resets: u64,
    pub(crate) denied: u64,
    pub(crate) goaways: u64,
    pub(crate) errors: Vec<String>,
}

/// What happened to one client, from either kind of client: Herald's [`Event`]s map into it, and
/// so does what a peer client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Happening {
    /// A session started (Herald: `Connected`, after WELCOME; a peer: its connection is open and
    /// subscribed).
    Connected,
    /// This session's subscription is live on the server (Herald: the barrier resolved; a peer:
    /// the server confirmed it).
    Resubscribed,
    /// A change arrived.
    Changed { ns: u64, sjid: u64 },
    /// The session ended, or a connection attempt failed (the client was not live).
    Ended { reason: String },
    /// Herald only: `RESET` of a namespace (its cursor was ahead of the journal).
    Reset { ns: u64 },
    /// Herald only: a subscription refused.
    Denied { what: String },
    /// Herald only: `GOAWAY`.
    Goaway,
    /// Herald only: the client stopped for good.
    Fatal { what: String },
    /// Anything else: an error to report.
    Unexpected(String),
}

impl From<Event> for Happening {
    fn from(ev: Event) -> Self {
        match ev {
            Event::Connected { .. } => Happening::Connected,
            Event::Changed { ns, sjid } => Happening::Changed { ns, sjid },
            Event::Disconnected { reason, .. } => Happening::Ended { reason },
            Event::Reset { ns } => Happening::Reset { ns },
            Event::Denied { code, ns } => Happening::Denied {
                what: format!("{code} {ns}"),
            },
            Event::Goaway { .. } => Happening::Goaway,
            Event::Fatal { code, message } => Happening::Fatal {
                what: format!("{code} {message}"),
            },
            other => Happening::Unexpected(format!("unexpected {other:?}")),
        }
    }
}

/// One client's bookkeeping.
#[derive(Debug, Clone, Copy, Default)]
struct One {
    ns: u64,
    /// Highest SJID reported by `Changed`.
    cursor: u64,
    /// When the cursor last advanced, µs since the epoch.
    cursor_at_us: u64,
    live: bool,
    /// When its barrier last resolved (0: not since `mark`).
    resubscribed_at_us: u64,
}

/// Everything the client tasks update; one thread, so a `RefCell`.
#[derive(Default)]
pub(super) struct State {
    clients: Vec<One>,
    mark_us: u64,
    target: Option<Vec<u64>>,
    reconnects: u64,
    first_connect_us: u64,
    last_connect_us: u64,
    disconnects: u64,
    failed_attempts: u64,
    http_503: u64,
    fatal: u64,
    non_increasing: u64,
    foreign: u64,
    resets: u64,
    denied: u64,
    goaways: u64,
    errors: Vec<String>,
}

impl State {
    fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        }
    }

    fn mark(&mut self, t_us: u64) {
        let clients = std::mem::take(&mut self.clients);
        *self = State {
            clients,
            mark_us: t_us,
            ..State::default()
        };
        for c in &mut self.clients {
            c.resubscribed_at_us = 0;
        }
    }

    pub(super) fn event(&mut self, i: usize, happening: Happening) {
        let now = now_us();
        match happening {
            Happening::Connected => {
                self.clients[i].live = true;
                self.reconnects += 1;
                if self.first_connect_us == 0 {
                    self.first_connect_us = now;
                }
                self.last_connect_us = now;
            }
            Happening::Resubscribed => self.clients[i].resubscribed_at_us = now,
            Happening::Changed { ns, sjid } => {
                let c = &mut self.clients[i];
                if ns != c.ns {
                    self.foreign += 1;
                } else if sjid <= c.cursor {
                    self.non_increasing += 1;
                } else {
                    c.cursor = sjid;
                    c.cursor_at_us = now;
                }
            }
            Happening::Ended { reason } => {
                let c = &mut self.clients[i];
                if c.live {
                    c.live = false;
                    self.disconnects += 1;
                } else {
                    self.failed_attempts += 1;
                    if reason.contains("HTTP 503") {
                        self.http_503 += 1;
                    }
                }
            }
            Happening::Reset { ns } => {
                self.resets += 1;
                self.error(format!("client {i}: RESET {ns}"));
            }
            Happening::Denied { what } => {
                self.denied += 1;
                self.error(format!("client {i}: DENIED {what}"));
            }
            Happening::Goaway => self.goaways += 1,
            Happening::Fatal { what } => {
                self.fatal += 1;
                self.clients[i].live = false;
                self.error(format!("client {i}: FATAL {what}"));
            }
            Happening::Unexpected(what) => self.error(format!("client {i}: {what}")),
        }
    }

    /// The target SJID of namespace `ns` (`u64::MAX` before `target`, so nobody is caught up).
    fn target_of(&self, ns: u64) -> u64 {
        self.target
            .as_ref()
            .map_or(u64::MAX, |t| t.get(ns as usize).copied().unwrap_or(0))
    }

    fn progress(&self) -> StormProgress {
        let mut p = StormProgress {
            clients: self.clients.len() as u64,
            disconnects: self.disconnects,
            failed_attempts: self.failed_attempts,
            http_503: self.http_503,
            fatal: self.fatal,
            ..StormProgress::default()
        };
        for c in &self.clients {
            p.live += u64::from(c.live);
            p.resubscribed += u64::from(c.resubscribed_at_us != 0);
            p.caught_up += u64::from(c.cursor >= self.target_of(c.ns));
        }
        p
    }

    fn report(&self) -> anyhow::Result<StormReport> {
        let mut resubscribed = new_histogram();
        let mut caught_up = new_histogram();
        let mut missing = 0;
        for c in &self.clients {
            if c.resubscribed_at_us != 0 {
                resubscribed.saturating_record(c.resubscribed_at_us.saturating_sub(self.mark_us));
            }
            if c.cursor >= self.target_of(c.ns) {
                caught_up.saturating_record(c.cursor_at_us.saturating_sub(self.mark_us));
            } else {
                missing += 1;
            }
        }
        Ok(StormReport {
            progress: self.progress(),
            reconnects: self.reconnects,
            first_connect_us: self.first_connect_us,
            last_connect_us: self.last_connect_us,
            hist_resubscribed: encode_histogram(&resubscribed)?,
            hist_caught_up: encode_histogram(&caught_up)?,
            missing,
            non_increasing: self.non_increasing,
            foreign: self.foreign,
            resets: self.resets,
            denied: self.denied,
            goaways: self.goaways,
            errors: self.errors.clone(),
        })
    }
}

/// What a peer client's connection reads (see [`crate::peer::conn::read_changes`]).
impl PeerSink for State {
    fn change(&mut self, i: usize, ns: u64, sjid: u64) {
        self.event(i, Happening::Changed { ns, sjid });
    }

    fn error(&mut self, i: usize, message: String) {
        self.event(i, Happening::Unexpected(message));
    }

    fn closed(&mut self, i: usize, error: Option<String>) {
        let reason = error.unwrap_or_else(|| "closed".to_owned());
        self.event(i, Happening::Ended { reason });
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
    let state = Rc::new(RefCell::new(State::default()));
    state.borrow_mut().clients = (0..args.count)
        .map(|i| One {
            ns: (args.first + i as u64) % args.namespaces,
            ..One::default()
        })
        .collect();
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
    use crate::receive::decode_histogram;

    fn state(nss: &[u64]) -> State {
        State {
            clients: nss
                .iter()
                .map(|&ns| One {
                    ns,
                    ..One::default()
                })
                .collect(),
            ..State::default()
        }
    }

    fn connected() -> Event {
        Event::Connected {
            session_id: vec![1],
            heartbeat_ms: 60_000,
            max_subscriptions: 1024,
        }
    }

    #[test]
    fn a_client_below_its_namespace_target_is_missing() {
        let mut st = state(&[0, 1]);
        st.mark(now_us());
        for i in 0..2 {
            st.event(i, connected().into());
            st.event(i, Happening::Resubscribed);
        }
        st.event(0, Event::Changed { ns: 0, sjid: 10 }.into());
        st.event(1, Event::Changed { ns: 1, sjid: 5 }.into());
        // Nobody is caught up before the target is known.
        assert_eq!(st.progress().caught_up, 0);
        st.target = Some(vec![10, 7]);
        let p = st.progress();
        assert_eq!((p.resubscribed, p.caught_up, p.live), (2, 1, 2));
        let r = st.report().unwrap();
        assert_eq!(r.missing, 1);
        assert_eq!(r.reconnects, 2);
        assert_eq!(decode_histogram(&r.hist_caught_up).unwrap().len(), 1);
        // A later CHANGED catches client 1 up; an old SJID counts as non-increasing.
        st.event(1, Event::Changed { ns: 1, sjid: 7 }.into());
        st.event(1, Event::Changed { ns: 1, sjid: 6 }.into());
        let r = st.report().unwrap();
        assert_eq!((r.missing, r.non_increasing), (0, 1));
    }

    #[test]
    fn failed_attempts_and_503s_are_told_apart_from_dropped_sessions() {
        let mut st = state(&[0]);
        st.event(0, connected().into());
        st.mark(now_us());
        let gone = |reason: &str| Event::Disconnected {
            reason: reason.into(),
            close_code: None,
        };
        st.event(0, gone("connection reset").into());
        st.event(0, gone("upgrade refused with HTTP 503").into());
        st.event(0, gone("transport: connection refused").into());
        let p = st.progress();
        assert_eq!(
            (p.disconnects, p.failed_attempts, p.http_503, p.live),
            (1, 2, 1, 0)
        );
        // `mark` started the storm's counters and resubscription times over.
        assert_eq!(p.resubscribed, 0);
    }

    #[test]
    fn a_peer_client_away_at_its_namespaces_last_change_is_missing_until_a_later_one() {
        let mut st = state(&[0, 0]);
        for i in 0..2 {
            st.event(i, Happening::Connected);
            st.event(i, Happening::Resubscribed);
            st.change(i, 0, 100);
        }
        st.mark(now_us());
        // The drop: both connections end.
        for i in 0..2 {
            PeerSink::closed(&mut st, i, Some("connection reset".into()));
        }
        // Client 0 is back when change 200 is published; client 1 is still away (one failed
        // attempt) and resubscribes after it: no replay, so it never gets 200.
        st.event(0, Happening::Connected);
        st.event(0, Happening::Resubscribed);
        st.change(0, 0, 200);
        PeerSink::closed(&mut st, 1, Some("connection refused".into()));
        st.event(1, Happening::Connected);
        st.event(1, Happening::Resubscribed);
        st.target = Some(vec![200]);
        let p = st.progress();
        assert_eq!(
            (
                p.resubscribed,
                p.caught_up,
                p.disconnects,
                p.failed_attempts
            ),
            (2, 1, 2, 1)
        );
        assert_eq!(st.report().unwrap().missing, 1);
        // A later change of its namespace, after it resubscribed, catches it up.
        st.change(0, 0, 300);
        st.change(1, 0, 300);
        st.target = Some(vec![300]);
        let r = st.report().unwrap();
        assert_eq!((r.missing, r.reconnects, r.foreign), (0, 2, 0));
        // An old SJID and another namespace's change are counted, not taken.
        st.change(1, 0, 250);
        st.change(1, 5, 400);
        let r = st.report().unwrap();
        assert_eq!((r.non_increasing, r.foreign, r.missing), (1, 1, 0));
    }

    /// A stand-in for the Node server: accepts `sessions.len()` connections one after another,
    /// confirms each one's subscription to namespace 3, sends it the change `sessions[k].0`, and
    /// then closes it (`true`) or waits until the client goes away.
    async fn fake_node_server(listener: tokio::net::TcpListener, sessions: Vec<(u64, bool)>) {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        for (sjid, server_closes) in sessions {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let sub = ws.next().await.unwrap().unwrap();
            assert_eq!(sub.to_text().unwrap(), r#"{"sub":[3]}"#);
            ws.send(Message::text(r#"{"subscribed":[3]}"#))
                .await
                .unwrap();
            ws.send(Message::text(format!(r#"{{"ns":3,"sjid":{sjid}}}"#)))
                .await
                .unwrap();
            if !server_closes {
                while let Some(Ok(_)) = ws.next().await {}
            }
        }
        std::future::pending::<()>().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_peer_client_reconnects_and_resubscribes_after_a_close_and_a_cut() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Rc::new(RefCell::new(state(&[3])));
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let client = PeerClient {
            protocol: Protocol::NodeWs,
            addr,
            source: "127.0.0.1".parse().unwrap(),
            ns: 3,
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(50),
        };
        let local = tokio::task::LocalSet::new();
        local.spawn_local(fake_node_server(
            listener,
            vec![(10, true), (11, false), (12, false)],
        ));
        local.spawn_local(peer_client::run(0, client, state.clone(), cut_rx));
        let wait = |want: u64| {
            let state = state.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(10), async {
                    while state.borrow().clients[0].cursor < want {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await
                .expect("the client got the change in time");
            }
        };
        local
            .run_until(async {
                // The server closes the first session; the client comes back for the second.
                wait(11).await;
                cut.send_modify(|g| *g += 1);
                wait(12).await;
            })
            .await;
        let st = state.borrow();
        let p = st.progress();
        assert_eq!(st.reconnects, 3);
        assert_eq!((p.disconnects, p.failed_attempts, p.live), (2, 0, 1));
        assert_ne!(st.clients[0].resubscribed_at_us, 0);
        assert_eq!((st.non_increasing, st.foreign), (0, 0));
    }
}
