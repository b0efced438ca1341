//! The client side of `ops/bench/node-ws-server.js` (its header documents the wire format):
//! `{"sub":[n]}` → `{"subscribed":[n]}`, then one `{"ns":n,"sjid":s}` text frame per change.

use super::{PeerWs, SETUP_TIMEOUT, connect_ws};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A change as the Node server sends it.
#[derive(Debug, Deserialize)]
struct Change {
    ns: u64,
    sjid: u64,
}

/// The server's answer to a subscription.
#[derive(Debug, Deserialize)]
struct Subscribed {
    subscribed: Vec<u64>,
}

/// The `(ns, sjid)` of a change frame.
pub(crate) fn change_of(text: &str) -> anyhow::Result<(u64, u64)> {
    let c: Change = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("unexpected frame {text:?}: {e}"))?;
    Ok((c.ns, c.sjid))
}

/// Connects from `source`, subscribes to `ns`, and returns once the server confirmed it.
pub(crate) async fn open_subscribed(
    addr: SocketAddr,
    source: IpAddr,
    ns: u64,
    config: WebSocketConfig,
) -> anyhow::Result<PeerWs> {
    let mut ws = connect_ws(addr, source, config).await?;
    ws.send(Message::text(format!("{{\"sub\":[{ns}]}}")))
        .await?;
    loop {
        let msg = tokio::time::timeout(SETUP_TIMEOUT, ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("connection closed during setup"))??;
        match msg {
            Message::Text(t) => {
                if let Ok(s) = serde_json::from_str::<Subscribed>(t.as_str()) {
                    anyhow::ensure!(
                        s.subscribed == [ns],
                        "subscribed to {:?}, not [{ns}]",
                        s.subscribed
                    );
                    return Ok(ws);
                }
            }
            Message::Close(c) => anyhow::bail!("closed during setup: {c:?}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_servers_change_frames() {
        assert_eq!(
            change_of(r#"{"ns":7,"sjid":1764000000000001}"#).unwrap(),
            (7, 1_764_000_000_000_001)
        );
        assert!(change_of(r#"{"subscribed":[7]}"#).is_err());
    }
}
