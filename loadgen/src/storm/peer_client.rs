//! A peer's client in the storm: what a careful client of nats-server's WebSocket listener or of
//! the Node `ws` server would do, given that neither server has a client library that keeps
//! cursors. Each client is one task that loops:
//!
//! 1. connect and subscribe to its namespace ([`crate::peer::conn::open`]); it counts as
//!    *resubscribed* once the server confirmed the subscription (nats: the `PONG` after `SUB`;
//!    Node: `{"subscribed":[n]}`);
//! 2. read changes, raising its cursor to the highest SJID seen (older or foreign ones are counted,
//!    as for Herald's clients);
//! 3. when the connection closes or fails (or a connection attempt fails), wait and go to 1. The
//!    wait is herald_client's policy ([`herald_client::Backoff`]): full jitter under a cap that
//!    starts at `--backoff-initial-ms` and doubles per attempt up to `--backoff-max-ms`, reset
//!    after a session that lived long enough (`Backoff::session_ended`).
//!
//! What it cannot do is ask for what it missed: these peers have no replay, so a change published
//! while a client is away is lost to it, unless a later change of its namespace arrives after it
//! resubscribed. A client whose namespace's last change came while it was away stays behind for
//! good: `storm` counts it as *missing*.

use super::state::{Happening, State};
use crate::peer::Protocol;
use crate::peer::conn::{open, read_changes};
use herald_client::Backoff;
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// tungstenite's read buffer per connection (`fanout`'s peer receivers use the same).
const READ_BUFFER: usize = 4096;

/// One peer client's settings.
#[derive(Debug, Clone)]
pub(super) struct PeerClient {
    pub(super) protocol: Protocol,
    pub(super) addr: SocketAddr,
    pub(super) source: IpAddr,
    pub(super) ns: u64,
    pub(super) backoff_initial: Duration,
    pub(super) backoff_max: Duration,
}

/// Runs client `i` for good, reporting into `state`. A new value in `cut` drops its live
/// connection at once, as a network cut would (one that is still connecting is left alone, like
/// `herald_client::Client::disconnect_now` does).
pub(super) async fn run(
    i: usize,
    client: PeerClient,
    state: Rc<RefCell<State>>,
    mut cut: watch::Receiver<u64>,
) {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0);
    let mut backoff = Backoff::new(client.backoff_initial, client.backoff_max, None);
    loop {
        let opened = open(
            client.protocol,
            client.addr,
            client.source,
            client.ns,
            config,
        )
        .await;
        match opened {
            Ok(conn) => {
                {
                    let mut st = state.borrow_mut();
                    st.event(i, Happening::Connected);
                    st.event(i, Happening::Resubscribed);
                }
                let started = Instant::now();
                cut.borrow_and_update();
                tokio::select! {
                    () = read_changes(i, conn, &state) => {}
                    Ok(()) = cut.changed() => {
                        // Dropping the reader dropped the socket.
                        let reason = "cut".to_owned();
                        state.borrow_mut().event(i, Happening::Ended { reason });
                    }
                }
                backoff.session_ended(started.elapsed());
            }
            Err(e) => {
                let reason = e.to_string();
                state.borrow_mut().event(i, Happening::Ended { reason });
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
