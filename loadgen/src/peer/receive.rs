//! `peer-receive`: a child process of `fanout` for the peer paths. It opens its share of the
//! connections to a peer server (nats-server WebSocket or the Node `ws` server), subscribes
//! connection `i` of the run to namespace `i % namespaces`, and then measures every delivery
//! with the same bookkeeping and the same stdin/stdout commands as `receive`
//! ([`crate::receive::serve`]), so the parent drives both alike.

use super::{PeerWs, Protocol, nats_ws, node_ws};
use crate::receive::{State, serve};
use futures_util::{SinkExt, StreamExt};
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use tokio_tungstenite::tungstenite::Message;
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

/// One subscribed connection.
enum PeerConn {
    Nats(PeerWs, nats_ws::Parser),
    Node(PeerWs),
}

pub(crate) fn run(args: &PeerReceiveArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.namespaces > 0, "--namespaces must be at least 1");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, receive(args.clone()))
}

async fn open(
    args: &PeerReceiveArgs,
    index: u64,
    config: WebSocketConfig,
) -> anyhow::Result<PeerConn> {
    let ns = index % args.namespaces;
    Ok(match args.protocol {
        Protocol::NatsWs => {
            let (ws, parser) = nats_ws::open_subscribed(args.addr, args.source, ns, config).await?;
            PeerConn::Nats(ws, parser)
        }
        Protocol::NodeWs => {
            PeerConn::Node(node_ws::open_subscribed(args.addr, args.source, ns, config).await?)
        }
    })
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
                let conn = open(&args, index, config)
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
        match conn.ok_or_else(|| anyhow::anyhow!("connection {i} was not opened"))? {
            PeerConn::Nats(ws, parser) => {
                tokio::task::spawn_local(nats_read_loop(i, ws, parser, state.clone()));
            }
            PeerConn::Node(ws) => {
                tokio::task::spawn_local(node_read_loop(i, ws, state.clone()));
            }
        }
    }
    serve(&state).await
}

/// Reads a NATS connection: `MSG` is a delivery, `PING` gets its `PONG`.
async fn nats_read_loop(
    i: usize,
    mut ws: PeerWs,
    mut parser: nats_ws::Parser,
    state: Rc<RefCell<State>>,
) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => parser.push(&b),
            Some(Ok(Message::Text(t))) => parser.push(t.as_bytes()),
            Some(Ok(Message::Close(_))) | None => {
                state.borrow_mut().closed(None);
                return;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                state
                    .borrow_mut()
                    .closed(Some(format!("connection {i}: {e}")));
                return;
            }
        }
        loop {
            match parser.next_op() {
                Ok(None) => break,
                Ok(Some(nats_ws::ServerOp::Msg { subject, payload })) => {
                    match nats_ws::change_of(&subject, &payload) {
                        Ok(change) => state.borrow_mut().changed(i, &[change]),
                        Err(e) => state.borrow_mut().error(format!("connection {i}: {e}")),
                    }
                }
                Ok(Some(nats_ws::ServerOp::Ping)) => {
                    if let Err(e) = ws.send(Message::binary(&b"PONG\r\n"[..])).await {
                        state
                            .borrow_mut()
                            .error(format!("connection {i}: sending PONG: {e}"));
                    }
                }
                Ok(Some(nats_ws::ServerOp::Err(e))) => {
                    state
                        .borrow_mut()
                        .error(format!("connection {i}: -ERR {e}"));
                }
                Ok(Some(_)) => {}
                Err(e) => {
                    state
                        .borrow_mut()
                        .closed(Some(format!("connection {i}: {e}")));
                    return;
                }
            }
        }
    }
}

/// Reads a Node `ws` connection: each text frame is one change.
async fn node_read_loop(i: usize, mut ws: PeerWs, state: Rc<RefCell<State>>) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match node_ws::change_of(t.as_str()) {
                Ok(change) => state.borrow_mut().changed(i, &[change]),
                Err(e) => state.borrow_mut().error(format!("connection {i}: {e}")),
            },
            Some(Ok(Message::Close(_))) | None => {
                state.borrow_mut().closed(None);
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                state
                    .borrow_mut()
                    .closed(Some(format!("connection {i}: {e}")));
                return;
            }
        }
    }
}
