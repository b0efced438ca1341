//! `herald-loadgen`: drives a Herald gateway from other processes and prints figures.
//!
//! # Layout
//! - `idle`: the idle-memory benchmark. Starts (or attaches to) a gateway, opens connections in
//!   child processes (`hold`), and reports the gateway's RSS and heap per connection at each step
//!   (`--tls`: over `wss`).
//! - `hold`: a child process that holds up to ~19k subscribed, idle connections (the open-files
//!   limit is 20000 per process), bound to its own source address.
//! - `fanout`: the fan-out benchmark. Publishes paced (and optionally burst) changes through the
//!   standalone gateway and through nats-server + relay + gateway, and reports publish→CHANGED
//!   latency, deliveries/s and server CPU per 1M deliveries. Connections live in `receive`
//!   child processes, which keep reading and measure each CHANGED.
//! - `receive`: a child process that holds subscribed connections and records latencies.
//! - `handshakes`: the TLS handshake benchmark (`tls-handshakes`): full handshakes a second on
//!   one gateway worker and the gateway's CPU per 1000 handshakes.
//! - `longpoll_idle`: the same measure for waiting HTTP long-polls (`longpoll-idle`), with its
//!   child process (`longpoll-hold`).
//! - `quic_idle`: the idle-memory benchmark of QUIC connections, next to WebSocket in one run.
//! - `procfs`: reading another process's memory and CPU time.
//! - `gateway`: starting a gateway process and talking to its admin listener.
//! - `natsproc`: starting a private nats-server and a relay for the distributed path.
//! - `reaper`: kills the children by pid when `fanout` is stopped by a signal.
//! - `peer`: Herald's peers (nats-server WebSocket, Node `ws`) as `fanout` paths and `storm`
//!   targets, and their `peer-receive` child processes.
//! - `report`: turns a `fanout` JSON report (and `storm` reports) into the comparison tables of
//!   BENCHMARKS.md.
//! - `storm`: the reconnect storm. Managed `herald_client::Client`s (or, `--target
//!   nats-ws|node-ws`, a peer's clients) in `storm-clients` child processes; every connection
//!   drops at once (server SIGKILLed and restarted, or sockets cut), and it measures how long
//!   until every client is resubscribed and caught up, and how many never were.
//! - `lean_hold`: the `lean-hold` child: up to 19k connections in one mio loop, ~24 B each.
//! - `million`: the million-connection run over the distributed path (steps, broadcast, storm).
//! - `progress`: progress bars on stderr; `chart`: SVG charts next to a JSON report;
//!   `authkey`: a key pair shared by several gateway processes.

mod authkey;
mod chart;
mod fanout;
mod gateway;
mod handshakes;
mod hold;
mod idle;
mod lean_hold;
mod lines;
mod longpoll_idle;
mod million;
mod natsproc;
mod peer;
mod procfs;
mod progress;
mod quic_idle;
mod reaper;
mod receive;
mod report;
mod storm;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "herald-loadgen",
    version,
    about = "Herald load generator and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Idle-connection memory benchmark: RSS and heap per connection at several counts.
    Idle(idle::IdleArgs),
    /// Idle memory per QUIC connection, next to plain WebSocket, at several counts.
    QuicIdle(quic_idle::QuicIdleArgs),
    /// (internal) Hold idle connections; used by `idle` as a child process.
    Hold(hold::HoldArgs),
    /// (internal) Hold up to 19k connections in a few bytes each (mio, no task per connection),
    /// count CHANGED frames, reconnect; used by `million` as a child process.
    LeanHold(lean_hold::LeanHoldArgs),
    /// Long-poll memory benchmark: RSS and heap per waiting poll at several counts.
    LongpollIdle(longpoll_idle::LongPollIdleArgs),
    /// (internal) Keep polls waiting; used by `longpoll-idle` as a child process.
    LongpollHold(longpoll_idle::LongPollHoldArgs),
    /// Fan-out benchmark: publish→CHANGED latency, deliveries/s and CPU per 1M deliveries,
    /// standalone vs distributed (NATS) in one run.
    Fanout(fanout::FanoutArgs),
    /// (internal) Hold connections and measure every CHANGED; used by `fanout`.
    Receive(receive::ReceiveArgs),
    /// TLS handshake benchmark: full handshakes/s on one gateway worker and gateway CPU per 1000.
    TlsHandshakes(handshakes::HandshakeArgs),
    /// (internal) Hold connections to a peer server and measure every delivery; used by `fanout`.
    PeerReceive(peer::receive::PeerReceiveArgs),
    /// Write the comparison tables of BENCHMARKS.md from a `fanout --json` report (and `storm
    /// --json` reports).
    Report(report::ReportArgs),
    /// Reconnect storm: drop every connection at once; time until every client (the client
    /// library's backoff and resubscription) is resubscribed and caught up, none missed
    /// (`--target nats-ws|node-ws`: the same against a peer).
    Storm(storm::StormArgs),
    /// (internal) Run managed clients (or a peer's clients); used by `storm`.
    StormClients(storm::clients::ClientsArgs),
    /// A million connections over the distributed path (nats-server, relay, N SO_REUSEPORT
    /// gateways, lean holders): memory at each step, a broadcast to all, and a reconnect storm.
    Million(million::MillionArgs),
    /// Draw the charts of JSON reports (latency CDF, memory per connection) next to them.
    Chart(chart::ChartArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Idle(args) => idle::run(&args),
        Command::QuicIdle(args) => quic_idle::run(&args),
        Command::Hold(args) => hold::run(&args),
        Command::LeanHold(args) => lean_hold::run(&args),
        Command::LongpollIdle(args) => longpoll_idle::run(&args),
        Command::LongpollHold(args) => longpoll_idle::hold(&args),
        Command::Fanout(args) => fanout::run(&args),
        Command::Receive(args) => receive::run(&args),
        Command::TlsHandshakes(args) => handshakes::run(&args),
        Command::PeerReceive(args) => peer::receive::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Storm(args) => storm::run(&args),
        Command::StormClients(args) => storm::clients::run(&args),
        Command::Chart(args) => chart::run(&args),
        Command::Million(args) => million::run(&args),
    }
}
