//! Peer targets: the systems a user would run instead of Herald, driven with Herald's workload
//! by `fanout --paths nats-ws,node-ws`, `storm --target nats-ws|node-ws` (and
//! `ops/bench/compare.sh`).
//!
//! - **nats-ws**: a private `nats-server` (core NATS, no JetStream) with its WebSocket listener.
//!   Clients speak the NATS text protocol over WebSocket (`CONNECT`, `SUB ns.<n> 1`, `PING`/`PONG`,
//!   `MSG`); one subject per namespace, `ns.<n>`; the payload is the SJID in decimal. The load
//!   generator publishes with `async-nats` over a plain NATS TCP connection.
//! - **node-ws**: `ops/bench/node-ws-server.js`, a Node `ws` fan-out server (its wire format is in
//!   the script's header): text frames `{"sub":[n]}` → `{"subscribed":[n]}`, then
//!   `{"ns":n,"sjid":s}` per change; publishing is `POST /v1/publish` with Herald's body.
//!
//! SJIDs are the publisher's wall clock in µs, as on Herald's paths, so the receivers measure
//! publish→delivery latency and count missing deliveries exactly as they do for Herald.
//!
//! # Layout
//! - `server`: starting, restarting (`storm --drop restart`) and stopping the peer servers (child
//!   processes, killed by pid on drop), and the options that find their programs.
//! - `nats_ws`: the NATS text protocol over WebSocket (client side) and its parser.
//! - `node_ws`: the Node server's JSON messages (client side).
//! - `conn`: one subscribed connection of either protocol: opening it and reading its changes.
//! - `receive`: the `peer-receive` child process, the peers' twin of `receive`.
//! - `publish`: publishing changes to core NATS subjects.

pub(crate) mod conn;
pub(crate) mod nats_ws;
pub(crate) mod node_ws;
pub(crate) mod publish;
pub(crate) mod receive;
pub(crate) mod server;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// A peer's client protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Protocol {
    /// The NATS text protocol over WebSocket (nats-server's `websocket` listener).
    NatsWs,
    /// JSON text frames of `ops/bench/node-ws-server.js`.
    NodeWs,
}

impl Protocol {
    /// Its name on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::NatsWs => "nats-ws",
            Protocol::NodeWs => "node-ws",
        }
    }
}

/// How long connecting and subscribing one connection may take.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A client WebSocket to a peer.
pub(crate) type PeerWs = WebSocketStream<TcpStream>;

/// Connects from `source` to `ws://{addr}/` and completes the WebSocket handshake.
pub(crate) async fn connect_ws(
    addr: SocketAddr,
    source: IpAddr,
    config: WebSocketConfig,
) -> anyhow::Result<PeerWs> {
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = tokio::time::timeout(SETUP_TIMEOUT, socket.connect(addr)).await??;
    let (ws, _) = tokio::time::timeout(
        SETUP_TIMEOUT,
        client_async_with_config(format!("ws://{addr}/"), stream, Some(config)),
    )
    .await??;
    Ok(ws)
}
