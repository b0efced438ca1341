//! `lean-hold`: a child process that holds up to ~19k subscribed WebSocket connections in a few
//! dozen bytes of its own memory each, for the million-connection run (`million`).
//!
//! The `hold` child keeps a tokio-tungstenite stream per connection (~5.9 KB each): at a million
//! connections on one box the load generator would cost more than the gateways. This one is one
//! thread, one `mio` poll, and a `Vec` of small [`Conn`] structs (a socket, a phase, a counter,
//! the last SJID); the WebSocket client side is written by hand over `herald_proto` (the upgrade
//! request and the 101 check from `http`, masked frames and server headers from `ws`, Herald
//! frames from `frame`). Sockets are read into one scratch buffer; a frame cut between two reads
//! (rare: server frames here are a few bytes) and a write the socket did not take whole are kept
//! in side tables, not in every connection.
//!
//! Each socket is bound to this process's `--source` address **and an explicit source port**
//! (walking `--port-lo..=--port-hi`): `bind()` to port 0 makes the kernel scan the ephemeral range
//! for a free port, which stalls once most ports of a source address are in use (found at ~1M).
//!
//! On open, one write carries the upgrade request, HELLO, SUBSCRIBE `(ns, cursor)` and a PING
//! barrier (the gateway takes WebSocket data right after the request head and handles frames in
//! order); the connection counts as subscribed when the barrier's PONG arrives. A PING from the
//! server (Herald or WebSocket) is answered. Every CHANGED frame is counted, and the highest SJID
//! kept per connection.
//!
//! With `--reconnect`, a connection that closes comes back after a full-jitter exponential
//! backoff (or the server's `Retry-After` / GOAWAY delay plus jitter) and resubscribes with its
//! cursor (the highest SJID it was sent), so the gateway sends what it missed.
//!
//! # Lines
//! Commands on stdin, one a line: `target <sjid>` (from now on count the connections whose SJID
//! reached it, and the time of the last one that did), `mark` (reset the storm counters: sessions
//! opened and 503s since, time of the last resubscription), `report` (print a status line now),
//! `no-reconnect` (from now on a closed connection stays closed: sent before the parent stops the
//! servers, so the end of a run is not a reconnect storm).
//! EOF on stdin stops the process. Status lines on stdout are JSON ([`Status`]): printed every
//! 50 ms while something changed, and on `report`. Times are wall-clock µs since the Unix epoch,
//! taken when the event was handled, so the parent's view is as precise as the holder's loop,
//! whatever its polling interval.

mod lifecycle;
mod wire;

use herald_proto::ClientFrame;
use herald_proto::http::{accept_key, upgrade_request};
use mio::net::TcpStream;
use mio::{Events, Poll, Token, Waker};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Most connections one holder may hold: the open-files limit here is 20,000 per process.
pub(crate) const MAX_PER_HOLDER: usize = 19_000;
/// Token of the waker (stdin lines).
const WAKER: Token = Token(usize::MAX);
/// Bound on connect + upgrade + subscribe of one connection.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Status lines at most this often (while something changed).
const STATUS_EVERY: Duration = Duration::from_millis(50);
/// Read scratch buffer, shared by every connection.
const SCRATCH: usize = 64 * 1024;

/// Arguments of `lean-hold`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LeanHoldArgs {
    /// Gateway WebSocket address.
    #[arg(long)]
    ws: SocketAddr,
    /// Token for HELLO.
    #[arg(long)]
    token: String,
    /// Connections to hold (at most 19,000).
    #[arg(long)]
    count: usize,
    /// Index of this holder's first connection in the whole run: connection i subscribes to
    /// namespace (first + i) % namespaces.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Namespaces in the pattern.
    #[arg(long, default_value_t = 1000)]
    namespaces: u64,
    /// Cursor of the first subscription.
    #[arg(long, default_value_t = 0)]
    cursor: u64,
    /// Source address every socket binds.
    #[arg(long, default_value = "127.0.0.2")]
    source: IpAddr,
    /// Lowest source port (ports are taken in turn, wrapping, skipping ports in use).
    #[arg(long, default_value_t = 10_000)]
    port_lo: u16,
    /// Highest source port.
    #[arg(long, default_value_t = 65_000)]
    port_hi: u16,
    /// Connections opened per second (0: as fast as `--parallel` allows).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
    /// Send each open connection a PING every this many seconds, spread evenly (0: never).
    #[arg(long, default_value_t = 0)]
    ping_s: u64,
    /// Reconnect a closed connection (full-jitter exponential backoff) and resubscribe with its
    /// cursor. Without it a closed connection is counted as lost.
    #[arg(long)]
    reconnect: bool,
    /// First backoff cap, ms (doubles each failed attempt).
    #[arg(long, default_value_t = 500)]
    backoff_initial_ms: u64,
    /// Largest backoff cap, ms.
    #[arg(long, default_value_t = 15_000)]
    backoff_max_ms: u64,
    /// Exit on its own after this many seconds, whatever the parent does.
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not opened yet.
    Pending,
    /// `connect` in progress.
    Connecting,
    /// Request, HELLO, SUBSCRIBE and PING sent; waiting for the 101.
    Upgrading,
    /// Upgraded; waiting for the barrier's PONG.
    Subscribing,
    /// Subscribed and held.
    Open,
    /// Closed, waiting for its reconnect time (in the timer heap).
    Waiting,
    /// Closed for good.
    Dead,
}

/// One connection: 24 bytes in a release build (a debug build's mio socket also carries a
/// selector id; checked in a test).
#[derive(Debug)]
struct Conn {
    sock: Option<TcpStream>,
    /// Milliseconds since the holder started, when the current phase began (setup timeout).
    since_ms: u32,
    /// CHANGED frames received.
    changed: u32,
    phase: Phase,
    /// Failed attempts in a row (backoff exponent).
    attempts: u8,
    /// Highest SJID received: the cursor of a resubscription.
    last_sjid: u64,
}

/// A status line.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub(crate) struct Status {
    /// Connections this holder is to hold.
    pub(crate) count: usize,
    /// Subscribed right now.
    pub(crate) open: u64,
    /// Sessions subscribed since the start (first subscriptions and resubscriptions).
    pub(crate) sessions: u64,
    /// Closed for good (no `--reconnect`, or a fatal ERROR).
    pub(crate) dead: u64,
    /// Connections that closed after being subscribed.
    pub(crate) dropped: u64,
    /// Attempts that failed before subscribing (connect error, refused upgrade, timeout).
    pub(crate) failed_attempts: u64,
    /// Upgrades refused with HTTP 503 (admission control).
    pub(crate) http_503: u64,
    /// Since the last `mark`: sessions subscribed, 503s, and the time of the last subscription.
    pub(crate) sessions_since_mark: u64,
    pub(crate) http_503_since_mark: u64,
    pub(crate) last_session_us: u64,
    /// CHANGED frames received, all connections.
    pub(crate) changed_frames: u64,
    /// The current target SJID, and connections whose SJID reached it.
    pub(crate) target: u64,
    pub(crate) reached: u64,
    /// When the last connection reached the target.
    pub(crate) last_reach_us: u64,
    pub(crate) resets: u64,
    pub(crate) denied: u64,
    pub(crate) goaways: u64,
    pub(crate) errors: u64,
    /// The first error seen, for the parent's report.
    pub(crate) first_error: Option<String>,
    /// Bytes of the per-connection table (`count` × `size_of::<Conn>()`).
    pub(crate) table_bytes: usize,
}

/// Wall clock, µs since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What a connection needs next.
enum Outcome {
    Keep,
    /// Close it; `Some(ms)`: the server asked for this delay before a reconnect.
    Close(Option<u64>),
    /// Close it for good.
    Fatal,
}

struct Holder {
    args: LeanHoldArgs,
    poll: Poll,
    conns: Vec<Conn>,
    started: Instant,
    /// Bytes the socket did not take yet, by connection.
    outbox: HashMap<usize, Vec<u8>>,
    /// A frame (or response head) cut by the end of a read, by connection.
    partial: HashMap<usize, Vec<u8>>,
    /// Reconnect times (ms since start), earliest first.
    timers: BinaryHeap<Reverse<(u32, usize)>>,
    scratch: Vec<u8>,
    request: Vec<u8>,
    accept: String,
    hello: Vec<u8>,
    rng: u64,
    next_port: u16,
    /// Connections not opened yet are `next_open..count`.
    next_open: usize,
    in_setup: usize,
    status: Status,
    dirty: bool,
}

pub(crate) fn run(args: &LeanHoldArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.count <= MAX_PER_HOLDER,
        "--count {} is over {MAX_PER_HOLDER} (20,000 open files per process)",
        args.count
    );
    anyhow::ensure!(args.port_lo <= args.port_hi, "--port-lo above --port-hi");
    let poll = Poll::new()?;
    let waker = std::sync::Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = mpsc::channel::<Option<String>>();
    {
        let waker = waker.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(Some(line)).is_err() {
                    return;
                }
                let _ = waker.wake();
            }
            let _ = tx.send(None);
            let _ = waker.wake();
        });
    }
    let mut key = [0u8; 16];
    let mut rng = seed();
    for b in &mut key {
        *b = xorshift(&mut rng) as u8;
    }
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let hello = ClientFrame::Hello {
        version: herald_proto::PROTOCOL_VERSION,
        token: args.token.clone(),
    }
    .to_vec();
    let mut holder = Holder {
        poll,
        conns: (0..args.count)
            .map(|_| Conn {
                sock: None,
                since_ms: 0,
                changed: 0,
                phase: Phase::Pending,
                attempts: 0,
                last_sjid: args.cursor,
            })
            .collect(),
        started: Instant::now(),
        outbox: HashMap::new(),
        partial: HashMap::new(),
        timers: BinaryHeap::new(),
        scratch: vec![0; SCRATCH],
        request: upgrade_request(&args.ws.to_string(), &key),
        accept: accept_key(key.as_bytes()),
        hello,
        rng,
        next_port: args.port_lo,
        next_open: 0,
        in_setup: 0,
        status: Status {
            count: args.count,
            table_bytes: args.count * std::mem::size_of::<Conn>(),
            ..Status::default()
        },
        dirty: true,
        args: args.clone(),
    };
    holder.run(&rx)
}

impl Holder {
    fn ms(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    fn run(&mut self, rx: &mpsc::Receiver<Option<String>>) -> anyhow::Result<()> {
        let mut events = Events::with_capacity(1024);
        let deadline = self.started + Duration::from_secs(self.args.max_seconds);
        let mut last_status = Instant::now() - STATUS_EVERY;
        let mut last_sweep = Instant::now();
        let mut ping_cursor = 0usize;
        let mut ping_round_start = Instant::now();
        let mut nonce = 1u64 << 40;
        loop {
            let now = Instant::now();
            if now >= deadline {
                eprintln!("lean-hold: --max-seconds reached, exiting");
                return Ok(());
            }
            // Commands.
            while let Ok(cmd) = rx.try_recv() {
                let Some(line) = cmd else {
                    return Ok(());
                };
                self.command(line.trim());
            }
            self.open_due();
            self.reconnect_due();
            if now.duration_since(last_sweep) >= Duration::from_secs(1) {
                last_sweep = now;
                self.sweep_timeouts();
            }
            if self.args.ping_s > 0 && self.next_open >= self.conns.len() {
                // Connection i is pinged at i/count of each period.
                let period = Duration::from_secs(self.args.ping_s);
                let elapsed = now.duration_since(ping_round_start);
                let due = ((elapsed.as_secs_f64() / period.as_secs_f64()) * self.conns.len() as f64)
                    as usize;
                while ping_cursor < due.min(self.conns.len()) {
                    if self.conns[ping_cursor].phase == Phase::Open {
                        nonce += 1;
                        let mut out = Vec::with_capacity(16);
                        self.frame(&ClientFrame::Ping(nonce).to_vec(), &mut out);
                        if !self.send(ping_cursor, &out) {
                            self.close(ping_cursor, None);
                        }
                    }
                    ping_cursor += 1;
                }
                if elapsed >= period {
                    ping_cursor = 0;
                    ping_round_start = now;
                }
            }
            if self.dirty && now.duration_since(last_status) >= STATUS_EVERY {
                self.print_status();
                last_status = now;
            }
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            for event in &events {
                let Token(i) = event.token();
                if event.token() == WAKER || i >= self.conns.len() {
                    continue;
                }
                self.ready(
                    i,
                    event.is_writable(),
                    event.is_readable() || event.is_read_closed(),
                );
            }
        }
    }

    fn poll_timeout(&self) -> Duration {
        let mut t = Duration::from_millis(50);
        if self.args.rate > 0 && self.next_open < self.conns.len() {
            t = t.min(Duration::from_millis(2));
        }
        if let Some(Reverse((due, _))) = self.timers.peek() {
            let left = u64::from(due.saturating_sub(self.ms()));
            t = t.min(Duration::from_millis(left));
        }
        t
    }

    fn command(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|w| w.parse::<u64>().ok()),
        ) {
            (Some("target"), Some(sjid)) => {
                self.status.target = sjid;
                self.status.reached =
                    self.conns.iter().filter(|c| c.last_sjid >= sjid).count() as u64;
                self.status.last_reach_us = 0;
                self.dirty = true;
            }
            (Some("mark"), _) => {
                self.status.sessions_since_mark = 0;
                self.status.http_503_since_mark = 0;
                self.status.last_session_us = 0;
                self.dirty = true;
            }
            (Some("report"), _) => self.print_status(),
            (Some("no-reconnect"), _) => self.args.reconnect = false,
            _ => eprintln!("lean-hold: unknown command {line:?}"),
        }
    }

    fn print_status(&mut self) {
        self.dirty = false;
        if let Ok(line) = serde_json::to_string(&self.status) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

fn seed() -> u64 {
    let t = now_us();
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_small() {
        let limit = if cfg!(debug_assertions) { 40 } else { 24 };
        assert!(
            std::mem::size_of::<Conn>() <= limit,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
