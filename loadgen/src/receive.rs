//! A child process of `fanout`: opens subscribed connections like `hold`, but keeps reading them
//! and measures every `CHANGED` it gets.
//!
//! The publisher uses its wall clock at publish time, in microseconds since the Unix epoch, as
//! the SJID, so the latency of a delivery is `now_us - sjid`, computable in any process on the
//! machine. Connection `i` of the whole run subscribes to namespace `i % namespaces` with cursor 0.
//!
//! The parent drives it over stdin/stdout, one line each way per command:
//!
//! | stdin | stdout |
//! |---|---|
//! | (after start) | `ready <connections>` once every subscription is live |
//! | `phase <from_us>` | `ok`: per-phase counts and histograms start again; deliveries with SJID ≥ `from_us` are "measured" |
//! | `target <json Target>` | `ok`: the last SJID and the number of publishes per namespace in this phase |
//! | `progress` | JSON [`Progress`]: deliveries so far and connections not yet at their target |
//! | `report` | JSON [`Report`]: histograms (HdrHistogram V2, base64) and counts of the phase |
//!
//! EOF on stdin ends the process.

use crate::hold::{ConnSet, Ws, open_subscribed};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use herald_proto::frame::decode_server;
use herald_proto::{ClientFrame, ServerFrame};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest latency the histograms track, µs (one hour); larger values are clamped.
pub(crate) const HIST_MAX_US: u64 = 3_600_000_000;
/// Significant figures of the histograms.
pub(crate) const HIST_SIGFIG: u8 = 3;
/// Errors a receiver keeps to report (the first ones).
const MAX_ERRORS: usize = 5;

/// Arguments of `receive`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReceiveArgs {
    /// Which connections (each subscribes to its one namespace, `index % namespaces`).
    #[command(flatten)]
    conns: ConnSet,
    /// tungstenite read buffer per connection, bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
}

/// What the parent says the phase published: per namespace (index = ns), the last SJID and the
/// number of publishes (0 for a namespace not published in the phase).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Target {
    pub(crate) last: Vec<u64>,
    pub(crate) count: Vec<u64>,
}

/// Answer to `progress`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// Deliveries (`(ns, sjid)` pairs in CHANGED frames) this phase.
    pub(crate) delivered: u64,
    /// Connections whose last SJID is below the target's (all of them before `target`).
    pub(crate) pending: u64,
    /// Connections that closed.
    pub(crate) closed: u64,
}

/// Answer to `report`: one phase of one receiver process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) connections: u64,
    /// Deliveries this phase.
    pub(crate) delivered: u64,
    /// Deliveries with SJID ≥ the phase's `from_us`.
    pub(crate) measured: u64,
    /// Latency histogram (µs) of the measured deliveries, V2-serialized, base64.
    pub(crate) hist_measured: String,
    /// Latency histogram (µs) of every delivery of the phase.
    pub(crate) hist_all: String,
    /// Wall clock of the first and last delivery of the phase, µs since the epoch (0: none).
    pub(crate) first_recv_us: u64,
    pub(crate) last_recv_us: u64,
    /// Publishes a connection was not told one by one although it got the namespace's last SJID
    /// (several SJIDs in one CHANGED: allowed).
    pub(crate) coalesced: u64,
    /// Publishes of connections that never got their namespace's last SJID (must be 0).
    pub(crate) missing: u64,
    /// Connections that ended the phase below their namespace's last SJID.
    pub(crate) stale_connections: u64,
    /// Deliveries beyond the publishes of a namespace (must be 0).
    pub(crate) extra: u64,
    /// Deliveries whose SJID was not above the connection's previous one (must be 0).
    pub(crate) non_increasing: u64,
    /// Deliveries for a namespace the connection did not subscribe to (must be 0).
    pub(crate) foreign: u64,
    /// RESET, GOAWAY and ERROR frames.
    pub(crate) resets: u64,
    pub(crate) goaways: u64,
    /// Connections that closed (must be 0).
    pub(crate) closed: u64,
    /// The first errors seen.
    pub(crate) errors: Vec<String>,
}

/// One connection's bookkeeping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conn {
    ns: u64,
    /// Highest SJID received (over the whole run).
    last: u64,
    /// Deliveries this phase.
    received: u64,
}

/// Everything the connection tasks update; one thread, so a `RefCell`. Shared with the peer
/// receivers (`crate::peer::receive`), which speak other protocols but count the same way.
pub(crate) struct State {
    conns: Vec<Conn>,
    from_us: u64,
    all: Histogram<u64>,
    measured: Histogram<u64>,
    delivered: u64,
    measured_count: u64,
    first_recv_us: u64,
    last_recv_us: u64,
    non_increasing: u64,
    foreign: u64,
    resets: u64,
    goaways: u64,
    closed: u64,
    errors: Vec<String>,
    target: Option<Target>,
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_max(HIST_MAX_US, HIST_SIGFIG).expect("valid histogram bounds")
}

/// Wall clock, µs since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) fn encode_histogram(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("serializing a histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

pub(crate) fn decode_histogram(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("deserializing a histogram: {e:?}"))
}

impl State {
    /// Bookkeeping for `count` connections, the first being connection `first` of the run
    /// (connection `i` subscribes to namespace `i % namespaces`).
    pub(crate) fn for_connections(first: u64, count: usize, namespaces: u64) -> Self {
        State::new(
            (0..count)
                .map(|i| Conn {
                    ns: (first + i as u64) % namespaces,
                    last: 0,
                    received: 0,
                })
                .collect(),
        )
    }

    fn new(conns: Vec<Conn>) -> Self {
        State {
            conns,
            from_us: 0,
            all: new_histogram(),
            measured: new_histogram(),
            delivered: 0,
            measured_count: 0,
            first_recv_us: 0,
            last_recv_us: 0,
            non_increasing: 0,
            foreign: 0,
            resets: 0,
            goaways: 0,
            closed: 0,
            errors: Vec::new(),
            target: None,
        }
    }

    pub(crate) fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        }
    }

    fn phase(&mut self, from_us: u64) {
        self.from_us = from_us;
        self.all.reset();
        self.measured.reset();
        self.delivered = 0;
        self.measured_count = 0;
        self.first_recv_us = 0;
        self.last_recv_us = 0;
        self.target = None;
        for c in &mut self.conns {
            c.received = 0;
        }
    }

    /// Connection `i` got `(ns, sjid)` pairs.
    pub(crate) fn changed(&mut self, i: usize, pairs: &[(u64, u64)]) {
        let now = now_us();
        if self.first_recv_us == 0 {
            self.first_recv_us = now;
        }
        self.last_recv_us = now;
        for &(ns, sjid) in pairs {
            let conn = &mut self.conns[i];
            if ns != conn.ns {
                self.foreign += 1;
                continue;
            }
            if sjid <= conn.last {
                self.non_increasing += 1;
            } else {
                conn.last = sjid;
            }
            conn.received += 1;
            let latency = now.saturating_sub(sjid);
            self.all.saturating_record(latency);
            self.delivered += 1;
            if sjid >= self.from_us {
                self.measured.saturating_record(latency);
                self.measured_count += 1;
            }
        }
    }

    /// A connection closed (or failed with `error`).
    pub(crate) fn closed(&mut self, error: Option<String>) {
        self.closed += 1;
        if let Some(e) = error {
            self.error(e);
        }
    }

    fn target_of(&self, ns: u64) -> (u64, u64) {
        self.target.as_ref().map_or((u64::MAX, 0), |t| {
            let i = ns as usize;
            (
                t.last.get(i).copied().unwrap_or(0),
                t.count.get(i).copied().unwrap_or(0),
            )
        })
    }

    fn progress(&self) -> Progress {
        let pending = self
            .conns
            .iter()
            .filter(|c| c.last < self.target_of(c.ns).0)
            .count() as u64;
        Progress {
            delivered: self.delivered,
            pending,
            closed: self.closed,
        }
    }

    fn report(&self) -> anyhow::Result<Report> {
        let mut r = Report {
            connections: self.conns.len() as u64,
            delivered: self.delivered,
            measured: self.measured_count,
            hist_measured: encode_histogram(&self.measured)?,
            hist_all: encode_histogram(&self.all)?,
            first_recv_us: self.first_recv_us,
            last_recv_us: self.last_recv_us,
            non_increasing: self.non_increasing,
            foreign: self.foreign,
            resets: self.resets,
            goaways: self.goaways,
            closed: self.closed,
            errors: self.errors.clone(),
            ..Report::default()
        };
        for c in &self.conns {
            let (last, count) = self.target_of(c.ns);
            if count == 0 {
                r.extra += c.received;
                continue;
            }
            r.extra += c.received.saturating_sub(count);
            let short = count.saturating_sub(c.received);
            if c.last >= last {
                r.coalesced += short;
            } else {
                r.missing += short.max(1);
                r.stale_connections += 1;
            }
        }
        Ok(r)
    }
}

pub(crate) fn run(args: &ReceiveArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, receive(args.clone()))
}

async fn receive(args: ReceiveArgs) -> anyhow::Result<()> {
    let config = WebSocketConfig::default()
        .read_buffer_size(args.read_buffer)
        .write_buffer_size(0);
    // Open in `parallel` lanes; lane k opens connections k, k + parallel, …
    let lanes = args.conns.parallel.min(args.conns.count).max(1);
    let mut opening = Vec::with_capacity(lanes);
    for lane in 0..lanes {
        let args = args.clone();
        opening.push(tokio::task::spawn_local(async move {
            let mut out = Vec::new();
            for i in (lane..args.conns.count).step_by(lanes) {
                let index = args.conns.first + i as u64;
                let pairs = vec![(index % args.conns.namespaces, 0)];
                let ws = open_subscribed(
                    args.conns.ws,
                    &args.conns.token,
                    args.conns.source,
                    pairs,
                    index,
                    config,
                )
                .await
                .map_err(|e| anyhow::anyhow!("connection {index}: {e}"))?;
                out.push((i, ws));
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut sockets: Vec<Option<Ws>> = (0..args.conns.count).map(|_| None).collect();
    for lane in opening {
        for (i, ws) in lane.await?? {
            sockets[i] = Some(ws);
        }
    }
    let state = Rc::new(RefCell::new(State::for_connections(
        args.conns.first,
        args.conns.count,
        args.conns.namespaces,
    )));
    for (i, ws) in sockets.into_iter().enumerate() {
        let ws = ws.ok_or_else(|| anyhow::anyhow!("connection {i} was not opened"))?;
        tokio::task::spawn_local(read_loop(i, ws, state.clone()));
    }
    serve(&state).await
}

/// Says `ready <connections>`, then answers the parent's commands (module docs) until it closes
/// stdin, and exits the process. The connections' read loops update `state` meanwhile.
pub(crate) async fn serve(state: &Rc<RefCell<State>>) -> anyhow::Result<()> {
    say(&format!("ready {}", state.borrow().conns.len()))?;

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
            "phase" => {
                let from_us = rest.trim().parse().unwrap_or(0);
                state.borrow_mut().phase(from_us);
                say("ok")?;
            }
            "target" => {
                let target: Target = serde_json::from_str(rest)?;
                state.borrow_mut().target = Some(target);
                say("ok")?;
            }
            "progress" => say(&serde_json::to_string(&state.borrow().progress())?)?,
            "report" => say(&serde_json::to_string(&state.borrow().report()?)?)?,
            other => anyhow::bail!("unknown command {other:?}"),
        }
    }
    // The parent closed stdin: leave at once (the connections close with the process).
    std::process::exit(0)
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

async fn read_loop(i: usize, mut ws: Ws, state: Rc<RefCell<State>>) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => match decode_server(&bytes) {
                Ok(ServerFrame::Changed(pairs)) => state.borrow_mut().changed(i, &pairs),
                Ok(ServerFrame::Ping(nonce)) => {
                    let pong = Message::binary(ClientFrame::Pong(nonce).to_vec());
                    if let Err(e) = ws.send(pong).await {
                        let mut s = state.borrow_mut();
                        s.error(format!("connection {i}: sending PONG: {e}"));
                    }
                }
                Ok(ServerFrame::Reset(ns)) => {
                    let mut s = state.borrow_mut();
                    s.resets += 1;
                    s.error(format!("connection {i}: RESET {ns:?}"));
                }
                Ok(ServerFrame::Goaway { code, .. }) => {
                    let mut s = state.borrow_mut();
                    s.goaways += 1;
                    s.error(format!("connection {i}: GOAWAY {code}"));
                }
                Ok(ServerFrame::Error { code, message }) => {
                    let mut s = state.borrow_mut();
                    s.error(format!("connection {i}: ERROR {code} {message}"));
                }
                Ok(_) => {}
                Err(e) => state
                    .borrow_mut()
                    .error(format!("connection {i}: undecodable frame: {e}")),
            },
            Some(Ok(Message::Close(_))) | None => {
                state.borrow_mut().closed += 1;
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let mut s = state.borrow_mut();
                s.closed += 1;
                s.error(format!("connection {i}: {e}"));
                return;
            }
        }
    }
}
