//! The client side of the NATS text protocol over WebSocket, as much of it as a subscriber needs:
//! read `INFO`, send `CONNECT`, `SUB <subject> <sid>` and `PING`, wait for `PONG` (the
//! subscription is then live on the server), and afterwards parse `MSG` and answer `PING`.
//!
//! Written by hand rather than with `async-nats` (which can speak WebSocket): a receiver process
//! holds up to 19k of these connections, and a full client per connection (its own tasks,
//! channels, and buffers) would cost the receivers far more memory and CPU than the connections
//! under test, on the same two cores as the servers; it would also use another WebSocket library
//! than the Herald and Node receivers. The subset needed is six one-line operations.

use super::{PeerWs, SETUP_TIMEOUT, connect_ws};
use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The subject of namespace `ns`.
pub(crate) fn subject(ns: u64) -> String {
    format!("ns.{ns}")
}

/// The namespace of a subject made by [`subject`].
fn namespace_of(subject: &str) -> Option<u64> {
    subject.strip_prefix("ns.")?.parse().ok()
}

/// One operation from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerOp {
    Info,
    Msg { subject: String, payload: Vec<u8> },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// Splits the server's byte stream into operations. WebSocket messages need not align with
/// operations, so bytes wait here until an operation is complete.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    buf: Vec<u8>,
}

/// Longest control line accepted (nats-server's own limit is 4 KiB; `INFO` can be long).
const MAX_CONTROL_LINE: usize = 64 * 1024;

impl Parser {
    /// Appends received bytes.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete operation, if there is one.
    pub(crate) fn next_op(&mut self) -> anyhow::Result<Option<ServerOp>> {
        let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
            anyhow::ensure!(
                self.buf.len() <= MAX_CONTROL_LINE,
                "control line longer than {MAX_CONTROL_LINE} bytes"
            );
            return Ok(None);
        };
        let line = std::str::from_utf8(&self.buf[..eol])?;
        let (verb, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        let verb = verb.to_ascii_uppercase();
        let (op, used) = match verb.as_str() {
            "MSG" => {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let fields: Vec<&str> = rest.split_whitespace().collect();
                anyhow::ensure!(
                    (3..=4).contains(&fields.len()),
                    "malformed MSG line {line:?}"
                );
                let size: usize = fields[fields.len() - 1].parse()?;
                let start = eol + 2;
                let end = start + size;
                if self.buf.len() < end + 2 {
                    return Ok(None);
                }
                anyhow::ensure!(
                    &self.buf[end..end + 2] == b"\r\n",
                    "MSG payload not followed by CRLF"
                );
                let op = ServerOp::Msg {
                    subject: fields[0].to_owned(),
                    payload: self.buf[start..end].to_vec(),
                };
                (op, end + 2)
            }
            "PING" => (ServerOp::Ping, eol + 2),
            "PONG" => (ServerOp::Pong, eol + 2),
            "+OK" => (ServerOp::Ok, eol + 2),
            "-ERR" => (ServerOp::Err(rest.trim().to_owned()), eol + 2),
            "INFO" => (ServerOp::Info, eol + 2),
            _ => anyhow::bail!("unexpected server operation {line:?}"),
        };
        self.buf.drain(..used);
        Ok(Some(op))
    }
}

/// The `(ns, sjid)` a `MSG` carries: namespace from the subject, SJID from the decimal payload.
pub(crate) fn change_of(subject: &str, payload: &[u8]) -> anyhow::Result<(u64, u64)> {
    let ns = namespace_of(subject)
        .ok_or_else(|| anyhow::anyhow!("MSG on unexpected subject {subject:?}"))?;
    let sjid = std::str::from_utf8(payload)?.trim().parse()?;
    Ok((ns, sjid))
}

/// `CONNECT` (no echo, no headers, no +OK), `SUB` to namespace `ns`'s subject as sid 1, and the
/// `PING` whose `PONG` proves the server has processed the `SUB`.
fn subscribe_ops(ns: u64) -> String {
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\
         \"name\":\"herald-loadgen\",\"lang\":\"rust\",\"version\":\"{}\",\"protocol\":1,\
         \"echo\":false,\"headers\":false,\"no_responders\":false}}\r\n\
         SUB {} 1\r\nPING\r\n",
        env!("CARGO_PKG_VERSION"),
        subject(ns)
    )
}

/// Connects from `source` to a nats-server WebSocket listener and subscribes to `ns`; returns
/// once the server answered the `PING` after the `SUB`.
pub(crate) async fn open_subscribed(
    addr: SocketAddr,
    source: IpAddr,
    ns: u64,
    config: WebSocketConfig,
) -> anyhow::Result<(PeerWs, Parser)> {
    let mut ws = connect_ws(addr, source, config).await?;
    let mut parser = Parser::default();
    let mut sent = false;
    loop {
        while let Some(op) = parser.next_op()? {
            match op {
                ServerOp::Info if !sent => {
                    ws.send(Message::binary(subscribe_ops(ns).into_bytes()))
                        .await?;
                    sent = true;
                }
                ServerOp::Pong if sent => return Ok((ws, parser)),
                ServerOp::Ping => ws.send(Message::binary(&b"PONG\r\n"[..])).await?,
                ServerOp::Err(e) => anyhow::bail!("nats-server refused: {e}"),
                _ => {}
            }
        }
        let msg = tokio::time::timeout(SETUP_TIMEOUT, ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("connection closed during setup"))??;
        match msg {
            Message::Binary(b) => parser.push(&b),
            Message::Text(t) => parser.push(t.as_bytes()),
            Message::Close(c) => anyhow::bail!("closed during setup: {c:?}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_operations_split_anywhere() {
        let stream =
            b"INFO {\"server_id\":\"x\"}\r\nPONG\r\nMSG ns.7 1 16\r\n1764000000000001\r\nPING\r\n\
                       MSG ns.12 1 _INBOX.a 2\r\n42\r\n-ERR 'Slow Consumer'\r\n";
        // Every split point: the same operations come out.
        for cut in 0..stream.len() {
            let mut p = Parser::default();
            let mut ops = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                p.push(part);
                while let Some(op) = p.next_op().unwrap() {
                    ops.push(op);
                }
            }
            assert_eq!(
                ops,
                vec![
                    ServerOp::Info,
                    ServerOp::Pong,
                    ServerOp::Msg {
                        subject: "ns.7".into(),
                        payload: b"1764000000000001".to_vec()
                    },
                    ServerOp::Ping,
                    ServerOp::Msg {
                        subject: "ns.12".into(),
                        payload: b"42".to_vec()
                    },
                    ServerOp::Err("'Slow Consumer'".into()),
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_msg_waits_for_its_payload() {
        let mut p = Parser::default();
        p.push(b"MSG ns.1 1 5\r\nab");
        assert_eq!(p.next_op().unwrap(), None);
        p.push(b"cde\r\n");
        assert!(matches!(p.next_op().unwrap(), Some(ServerOp::Msg { .. })));
        assert_eq!(p.next_op().unwrap(), None);
    }

    #[test]
    fn rejects_garbage() {
        let mut p = Parser::default();
        p.push(b"HELLO\r\n");
        assert!(p.next_op().is_err());
        let mut p = Parser::default();
        p.push(b"MSG ns.1 1 2\r\nabcd\r\n");
        assert!(p.next_op().is_err(), "payload longer than announced");
    }

    #[test]
    fn changes_come_from_subject_and_payload() {
        assert_eq!(change_of("ns.42", b"1234").unwrap(), (42, 1234));
        assert!(change_of("other.42", b"1").is_err());
        assert!(change_of("ns.1", b"x").is_err());
        assert!(subscribe_ops(9).contains("\r\nSUB ns.9 1\r\nPING\r\n"));
    }
}
