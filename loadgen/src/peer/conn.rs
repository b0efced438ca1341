//! One subscribed connection to a peer, either protocol: opening it ([`open`]) and reading the
//! changes it delivers ([`read_changes`]) into whatever keeps the books ([`PeerSink`]): the
//! `peer-receive` children of `fanout`, and the peer clients of `storm`.

use super::{PeerWs, Protocol, nats_ws, node_ws};
use futures_util::{SinkExt, StreamExt};
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Where a connection's reader puts what it reads.
pub(crate) trait PeerSink {
    /// Connection `i` delivered `(ns, sjid)`.
    fn change(&mut self, i: usize, ns: u64, sjid: u64);
    /// Something wrong on connection `i` that does not end it (an unreadable frame, `-ERR`).
    fn error(&mut self, i: usize, message: String);
    /// Connection `i` ended: `None` when the server closed it or at EOF, else the error.
    fn closed(&mut self, i: usize, error: Option<String>);
}

/// One connection whose subscription the server confirmed.
pub(crate) enum PeerConn {
    Nats(PeerWs, nats_ws::Parser),
    Node(PeerWs),
}

/// Connects from `source` to the peer at `addr` and subscribes to `ns`; returns once the server
/// confirmed the subscription (nats: the `PONG` after the `SUB`; Node: `{"subscribed":[ns]}`).
pub(crate) async fn open(
    protocol: Protocol,
    addr: SocketAddr,
    source: IpAddr,
    ns: u64,
    config: WebSocketConfig,
) -> anyhow::Result<PeerConn> {
    Ok(match protocol {
        Protocol::NatsWs => {
            let (ws, parser) = nats_ws::open_subscribed(addr, source, ns, config).await?;
            PeerConn::Nats(ws, parser)
        }
        Protocol::NodeWs => {
            PeerConn::Node(node_ws::open_subscribed(addr, source, ns, config).await?)
        }
    })
}

/// Reads connection `i` until it ends, handing each change to `sink` and, at the end, telling
/// `sink` it closed. NATS `PING`s get their `PONG`.
pub(crate) async fn read_changes<S: PeerSink>(i: usize, conn: PeerConn, sink: &RefCell<S>) {
    match conn {
        PeerConn::Nats(ws, parser) => nats_read_loop(i, ws, parser, sink).await,
        PeerConn::Node(ws) => node_read_loop(i, ws, sink).await,
    }
}

/// Reads a NATS connection: `MSG` is a delivery, `PING` gets its `PONG`.
async fn nats_read_loop<S: PeerSink>(
    i: usize,
    mut ws: PeerWs,
    mut parser: nats_ws::Parser,
    sink: &RefCell<S>,
) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => parser.push(&b),
            Some(Ok(Message::Text(t))) => parser.push(t.as_bytes()),
            Some(Ok(Message::Close(_))) | None => {
                sink.borrow_mut().closed(i, None);
                return;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                sink.borrow_mut().closed(i, Some(e.to_string()));
                return;
            }
        }
        loop {
            match parser.next_op() {
                Ok(None) => break,
                Ok(Some(nats_ws::ServerOp::Msg { subject, payload })) => {
                    match nats_ws::change_of(&subject, &payload) {
                        Ok((ns, sjid)) => sink.borrow_mut().change(i, ns, sjid),
                        Err(e) => sink.borrow_mut().error(i, e.to_string()),
                    }
                }
                Ok(Some(nats_ws::ServerOp::Ping)) => {
                    if let Err(e) = ws.send(Message::binary(&b"PONG\r\n"[..])).await {
                        sink.borrow_mut().error(i, format!("sending PONG: {e}"));
                    }
                }
                Ok(Some(nats_ws::ServerOp::Err(e))) => {
                    sink.borrow_mut().error(i, format!("-ERR {e}"));
                }
                Ok(Some(_)) => {}
                Err(e) => {
                    sink.borrow_mut().closed(i, Some(e.to_string()));
                    return;
                }
            }
        }
    }
}

/// Reads a Node `ws` connection: each text frame is one change.
async fn node_read_loop<S: PeerSink>(i: usize, mut ws: PeerWs, sink: &RefCell<S>) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match node_ws::change_of(t.as_str()) {
                Ok((ns, sjid)) => sink.borrow_mut().change(i, ns, sjid),
                Err(e) => sink.borrow_mut().error(i, e.to_string()),
            },
            Some(Ok(Message::Close(_))) | None => {
                sink.borrow_mut().closed(i, None);
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                sink.borrow_mut().closed(i, Some(e.to_string()));
                return;
            }
        }
    }
}
