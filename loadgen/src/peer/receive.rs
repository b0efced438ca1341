//! `peer-receive`: a child process of `fanout` for the peer paths. It opens its share of the
//! connections to a peer server (nats-server WebSocket or the Node `ws` server), subscribes
//! connection `i` of the run to namespace `i % namespaces`, and then measures every delivery
//! with the same bookkeeping and the same stdin/stdout commands as `receive`
//! ([`crate::receive::serve`]), so the parent drives both alike.

use super::Protocol;
use super::conn::{PeerConn, PeerSink, open, read_changes};
use crate::receive::{State, serve};
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Arguments of `peer-receive`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PeerReceiveArgs {
    /// The peer's client protocol.
    #[arg(long, value_enum)]
    protocol: Protocol,
    /// The peer's WebSocket address.
    #[arg(long)]
    addr: SocketAddr,
    /// Connections to open.
    #[arg(long)]
    count: usize,
    /// Source address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    source: IpAddr,
    /// Namespaces in the pattern (connection i of the run subscribes to i modulo this).
    #[arg(long, default_value_t = 1000)]
    namespaces: u64,
    /// Index of this process's first connection in the whole run.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    parallel: usize,
    /// tungstenite read buffer per connection, bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
}

pub(crate) fn run(args: &PeerReceiveArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.namespaces > 0, "--namespaces must be at least 1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, receive(args.clone()))
}

/// What `fanout` counts of a peer connection, as it counts Herald's.
impl PeerSink for State {
    fn change(&mut self, i: usize, ns: u64, sjid: u64) {
        self.changed(i, &[(ns, sjid)]);
    }

    fn error(&mut self, i: usize, message: String) {
        State::error(self, format!("connection {i}: {message}"));
    }

    fn closed(&mut self, i: usize, error: Option<String>) {
        State::closed(self, error.map(|e| format!("connection {i}: {e}")));
    }
}

async fn receive(args: PeerReceiveArgs) -> anyhow::Result<()> {
    let config = WebSocketConfig::default()
        .read_buffer_size(args.read_buffer)
        .write_buffer_size(0);
    // Open in `parallel` lanes; lane k opens connections k, k + parallel, …
    let lanes = args.parallel.min(args.count).max(1);
    let mut opening = Vec::with_capacity(lanes);
    for lane in 0..lanes {
        let args = args.clone();
        opening.push(tokio::task::spawn_local(async move {
            let mut out = Vec::new();
            for i in (lane..args.count).step_by(lanes) {
                let index = args.first + i as u64;
                let ns = index % args.namespaces;
                let conn = open(args.protocol, args.addr, args.source, ns, config)
                    .await
                    .map_err(|e| anyhow::anyhow!("connection {index}: {e}"))?;
                out.push((i, conn));
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut conns: Vec<Option<PeerConn>> = (0..args.count).map(|_| None).collect();
    for lane in opening {
        for (i, conn) in lane.await?? {
            conns[i] = Some(conn);
        }
    }
    let state = Rc::new(RefCell::new(State::for_connections(
        args.first,
        args.count,
        args.namespaces,
    )));
    for (i, conn) in conns.into_iter().enumerate() {
        let conn = conn.ok_or_else(|| anyhow::anyhow!("connection {i} was not opened"))?;
        let state = state.clone();
        tokio::task::spawn_local(async move { read_changes(i, conn, &state).await });
    }
    serve(&state).await
}
