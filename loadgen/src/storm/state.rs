//! What the storm clients of one child process saw: each client's [`Happening`]s, tallied in one
//! [`State`], and the [`StormProgress`] and [`StormReport`] the parent reads back.

use super::clients::MAX_ERRORS;
use crate::peer::conn::PeerSink;
use crate::receive::{encode_histogram, new_histogram, now_us};
use herald_client::Event;
use serde::{Deserialize, Serialize};

/// Answer to `progress`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StormProgress {
    pub(crate) clients: u64,
    /// Clients with a live session now.
    pub(crate) live: u64,
    /// Clients whose barrier resolved since `mark`.
    pub(crate) resubscribed: u64,
    /// Clients whose cursor reached the target (0 before `target`).
    pub(crate) caught_up: u64,
    /// Sessions that ended since `mark`.
    pub(crate) disconnects: u64,
    /// Connection attempts that failed since `mark` (refused, timed out, HTTP 503, …).
    pub(crate) failed_attempts: u64,
    /// Of those, refused with HTTP 503 (the gateway's admission control).
    pub(crate) http_503: u64,
    /// Clients stopped for good (`Event::Fatal`; must be 0).
    pub(crate) fatal: u64,
}

/// Answer to `report`: the storm as this process saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StormReport {
    pub(crate) progress: StormProgress,
    /// Sessions started (`Connected`) since `mark`.
    pub(crate) reconnects: u64,
    /// Wall clock of the first and last `Connected` since `mark`, µs since the epoch (0: none).
    pub(crate) first_connect_us: u64,
    pub(crate) last_connect_us: u64,
    /// Per client, `mark` → resubscribed (barrier resolved), µs; HdrHistogram V2, base64.
    pub(crate) hist_resubscribed: String,
    /// Per client, `mark` → its cursor reached the target, µs.
    pub(crate) hist_caught_up: String,
    /// Clients whose cursor is below the target (must be 0 once the storm settled).
    pub(crate) missing: u64,
    /// `Changed` events whose SJID was not above the client's cursor (must be 0: the library
    /// filters them).
    pub(crate) non_increasing: u64,
    /// `Changed` for a namespace the client did not subscribe to (must be 0).
    pub(crate) foreign: u64,
    pub(crate) resets: u64,
    pub(crate) denied: u64,
    pub(crate) goaways: u64,
    pub(crate) errors: Vec<String>,
}

/// What happened to one client, from either kind of client: Herald's [`Event`]s map into it, and
/// so does what a peer client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Happening {
    /// A session started (Herald: `Connected`, after WELCOME; a peer: its connection is open and
    /// subscribed).
    Connected,
    /// This session's subscription is live on the server (Herald: the barrier resolved; a peer:
    /// the server confirmed it).
    Resubscribed,
    /// A change arrived.
    Changed { ns: u64, sjid: u64 },
    /// The session ended, or a connection attempt failed (the client was not live).
    Ended { reason: String },
    /// Herald only: `RESET` of a namespace (its cursor was ahead of the journal).
    Reset { ns: u64 },
    /// Herald only: a subscription refused.
    Denied { what: String },
    /// Herald only: `GOAWAY`.
    Goaway,
    /// Herald only: the client stopped for good.
    Fatal { what: String },
    /// Anything else: an error to report.
    Unexpected(String),
}

impl From<Event> for Happening {
    fn from(ev: Event) -> Self {
        match ev {
            Event::Connected { .. } => Happening::Connected,
            Event::Changed { ns, sjid } => Happening::Changed { ns, sjid },
            Event::Disconnected { reason, .. } => Happening::Ended { reason },
            Event::Reset { ns } => Happening::Reset { ns },
            Event::Denied { code, ns } => Happening::Denied {
                what: format!("{code} {ns}"),
            },
            Event::Goaway { .. } => Happening::Goaway,
            Event::Fatal { code, message } => Happening::Fatal {
                what: format!("{code} {message}"),
            },
            other => Happening::Unexpected(format!("unexpected {other:?}")),
        }
    }
}

/// One client's bookkeeping.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct One {
    pub(super) ns: u64,
    /// Highest SJID reported by `Changed`.
    cursor: u64,
    /// When the cursor last advanced, µs since the epoch.
    cursor_at_us: u64,
    live: bool,
    /// When its barrier last resolved (0: not since `mark`).
    resubscribed_at_us: u64,
}

/// Everything the client tasks update; one thread, so a `RefCell`.
#[derive(Default)]
pub(super) struct State {
    pub(super) clients: Vec<One>,
    mark_us: u64,
    pub(super) target: Option<Vec<u64>>,
    reconnects: u64,
    first_connect_us: u64,
    last_connect_us: u64,
    disconnects: u64,
    failed_attempts: u64,
    http_503: u64,
    fatal: u64,
    non_increasing: u64,
    foreign: u64,
    resets: u64,
    denied: u64,
    goaways: u64,
    pub(super) errors: Vec<String>,
}

impl State {
    /// One client per namespace given, in order (client `i` holds the `i`-th).
    pub(super) fn new(namespaces: impl Iterator<Item = u64>) -> Self {
        State {
            clients: namespaces
                .map(|ns| One {
                    ns,
                    ..One::default()
                })
                .collect(),
            ..State::default()
        }
    }

    pub(super) fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        }
    }

    pub(super) fn mark(&mut self, t_us: u64) {
        let clients = std::mem::take(&mut self.clients);
        *self = State {
            clients,
            mark_us: t_us,
            ..State::default()
        };
        for c in &mut self.clients {
            c.resubscribed_at_us = 0;
        }
    }

    pub(super) fn event(&mut self, i: usize, happening: Happening) {
        let now = now_us();
        match happening {
            Happening::Connected => {
                self.clients[i].live = true;
                self.reconnects += 1;
                if self.first_connect_us == 0 {
                    self.first_connect_us = now;
                }
                self.last_connect_us = now;
            }
            Happening::Resubscribed => self.clients[i].resubscribed_at_us = now,
            Happening::Changed { ns, sjid } => {
                let c = &mut self.clients[i];
                if ns != c.ns {
                    self.foreign += 1;
                } else if sjid <= c.cursor {
                    self.non_increasing += 1;
                } else {
                    c.cursor = sjid;
                    c.cursor_at_us = now;
                }
            }
            Happening::Ended { reason } => {
                let c = &mut self.clients[i];
                if c.live {
                    c.live = false;
                    self.disconnects += 1;
                } else {
                    self.failed_attempts += 1;
                    if reason.contains("HTTP 503") {
                        self.http_503 += 1;
                    }
                }
            }
            Happening::Reset { ns } => {
                self.resets += 1;
                self.error(format!("client {i}: RESET {ns}"));
            }
            Happening::Denied { what } => {
                self.denied += 1;
                self.error(format!("client {i}: DENIED {what}"));
            }
            Happening::Goaway => self.goaways += 1,
            Happening::Fatal { what } => {
                self.fatal += 1;
                self.clients[i].live = false;
                self.error(format!("client {i}: FATAL {what}"));
            }
            Happening::Unexpected(what) => self.error(format!("client {i}: {what}")),
        }
    }

    /// The target SJID of namespace `ns` (`u64::MAX` before `target`, so nobody is caught up).
    pub(super) fn target_of(&self, ns: u64) -> u64 {
        self.target
            .as_ref()
            .map_or(u64::MAX, |t| t.get(ns as usize).copied().unwrap_or(0))
    }

    pub(super) fn progress(&self) -> StormProgress {
        let mut p = StormProgress {
            clients: self.clients.len() as u64,
            disconnects: self.disconnects,
            failed_attempts: self.failed_attempts,
            http_503: self.http_503,
            fatal: self.fatal,
            ..StormProgress::default()
        };
        for c in &self.clients {
            p.live += u64::from(c.live);
            p.resubscribed += u64::from(c.resubscribed_at_us != 0);
            p.caught_up += u64::from(c.cursor >= self.target_of(c.ns));
        }
        p
    }

    pub(super) fn report(&self) -> anyhow::Result<StormReport> {
        let mut resubscribed = new_histogram();
        let mut caught_up = new_histogram();
        let mut missing = 0;
        for c in &self.clients {
            if c.resubscribed_at_us != 0 {
                resubscribed.saturating_record(c.resubscribed_at_us.saturating_sub(self.mark_us));
            }
            if c.cursor >= self.target_of(c.ns) {
                caught_up.saturating_record(c.cursor_at_us.saturating_sub(self.mark_us));
            } else {
                missing += 1;
            }
        }
        Ok(StormReport {
            progress: self.progress(),
            reconnects: self.reconnects,
            first_connect_us: self.first_connect_us,
            last_connect_us: self.last_connect_us,
            hist_resubscribed: encode_histogram(&resubscribed)?,
            hist_caught_up: encode_histogram(&caught_up)?,
            missing,
            non_increasing: self.non_increasing,
            foreign: self.foreign,
            resets: self.resets,
            denied: self.denied,
            goaways: self.goaways,
            errors: self.errors.clone(),
        })
    }
}

/// What a peer client's connection reads (see [`crate::peer::conn::read_changes`]).
impl PeerSink for State {
    fn change(&mut self, i: usize, ns: u64, sjid: u64) {
        self.event(i, Happening::Changed { ns, sjid });
    }

    fn error(&mut self, i: usize, message: String) {
        self.event(i, Happening::Unexpected(message));
    }

    fn closed(&mut self, i: usize, error: Option<String>) {
        let reason = error.unwrap_or_else(|| "closed".to_owned());
        self.event(i, Happening::Ended { reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Protocol;
    use crate::receive::decode_histogram;
    use crate::storm::peer_client::{self, PeerClient};
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    fn state(nss: &[u64]) -> State {
        State::new(nss.iter().copied())
    }

    fn connected() -> Event {
        Event::Connected {
            session_id: vec![1],
            heartbeat_ms: 60_000,
            max_subscriptions: 1024,
        }
    }

    #[test]
    fn a_client_below_its_namespace_target_is_missing() {
        let mut st = state(&[0, 1]);
        st.mark(now_us());
        for i in 0..2 {
            st.event(i, connected().into());
            st.event(i, Happening::Resubscribed);
        }
        st.event(0, Event::Changed { ns: 0, sjid: 10 }.into());
        st.event(1, Event::Changed { ns: 1, sjid: 5 }.into());
        // Nobody is caught up before the target is known.
        assert_eq!(st.progress().caught_up, 0);
        st.target = Some(vec![10, 7]);
        let p = st.progress();
        assert_eq!((p.resubscribed, p.caught_up, p.live), (2, 1, 2));
        let r = st.report().unwrap();
        assert_eq!(r.missing, 1);
        assert_eq!(r.reconnects, 2);
        assert_eq!(decode_histogram(&r.hist_caught_up).unwrap().len(), 1);
        // A later CHANGED catches client 1 up; an old SJID counts as non-increasing.
        st.event(1, Event::Changed { ns: 1, sjid: 7 }.into());
        st.event(1, Event::Changed { ns: 1, sjid: 6 }.into());
        let r = st.report().unwrap();
        assert_eq!((r.missing, r.non_increasing), (0, 1));
    }

    #[test]
    fn failed_attempts_and_503s_are_told_apart_from_dropped_sessions() {
        let mut st = state(&[0]);
        st.event(0, connected().into());
        st.mark(now_us());
        let gone = |reason: &str| Event::Disconnected {
            reason: reason.into(),
            close_code: None,
        };
        st.event(0, gone("connection reset").into());
        st.event(0, gone("upgrade refused with HTTP 503").into());
        st.event(0, gone("transport: connection refused").into());
        let p = st.progress();
        assert_eq!(
            (p.disconnects, p.failed_attempts, p.http_503, p.live),
            (1, 2, 1, 0)
        );
        // `mark` started the storm's counters and resubscription times over.
        assert_eq!(p.resubscribed, 0);
    }

    #[test]
    fn a_peer_client_away_at_its_namespaces_last_change_is_missing_until_a_later_one() {
        let mut st = state(&[0, 0]);
        for i in 0..2 {
            st.event(i, Happening::Connected);
            st.event(i, Happening::Resubscribed);
            st.change(i, 0, 100);
        }
        st.mark(now_us());
        // The drop: both connections end.
        for i in 0..2 {
            PeerSink::closed(&mut st, i, Some("connection reset".into()));
        }
        // Client 0 is back when change 200 is published; client 1 is still away (one failed
        // attempt) and resubscribes after it: no replay, so it never gets 200.
        st.event(0, Happening::Connected);
        st.event(0, Happening::Resubscribed);
        st.change(0, 0, 200);
        PeerSink::closed(&mut st, 1, Some("connection refused".into()));
        st.event(1, Happening::Connected);
        st.event(1, Happening::Resubscribed);
        st.target = Some(vec![200]);
        let p = st.progress();
        assert_eq!(
            (
                p.resubscribed,
                p.caught_up,
                p.disconnects,
                p.failed_attempts
            ),
            (2, 1, 2, 1)
        );
        assert_eq!(st.report().unwrap().missing, 1);
        // A later change of its namespace, after it resubscribed, catches it up.
        st.change(0, 0, 300);
        st.change(1, 0, 300);
        st.target = Some(vec![300]);
        let r = st.report().unwrap();
        assert_eq!((r.missing, r.reconnects, r.foreign), (0, 2, 0));
        // An old SJID and another namespace's change are counted, not taken.
        st.change(1, 0, 250);
        st.change(1, 5, 400);
        let r = st.report().unwrap();
        assert_eq!((r.non_increasing, r.foreign, r.missing), (1, 1, 0));
    }

    /// A stand-in for the Node server: accepts `sessions.len()` connections one after another,
    /// confirms each one's subscription to namespace 3, sends it the change `sessions[k].0`, and
    /// then closes it (`true`) or waits until the client goes away.
    async fn fake_node_server(listener: tokio::net::TcpListener, sessions: Vec<(u64, bool)>) {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        for (sjid, server_closes) in sessions {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let sub = ws.next().await.unwrap().unwrap();
            assert_eq!(sub.to_text().unwrap(), r#"{"sub":[3]}"#);
            ws.send(Message::text(r#"{"subscribed":[3]}"#))
                .await
                .unwrap();
            ws.send(Message::text(format!(r#"{{"ns":3,"sjid":{sjid}}}"#)))
                .await
                .unwrap();
            if !server_closes {
                while let Some(Ok(_)) = ws.next().await {}
            }
        }
        std::future::pending::<()>().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_peer_client_reconnects_and_resubscribes_after_a_close_and_a_cut() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Rc::new(RefCell::new(state(&[3])));
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let client = PeerClient {
            protocol: Protocol::NodeWs,
            addr,
            source: "127.0.0.1".parse().unwrap(),
            ns: 3,
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(50),
        };
        let local = tokio::task::LocalSet::new();
        local.spawn_local(fake_node_server(
            listener,
            vec![(10, true), (11, false), (12, false)],
        ));
        local.spawn_local(peer_client::run(0, client, state.clone(), cut_rx));
        let wait = |want: u64| {
            let state = state.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(10), async {
                    while state.borrow().clients[0].cursor < want {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await
                .expect("the client got the change in time");
            }
        };
        local
            .run_until(async {
                // The server closes the first session; the client comes back for the second.
                wait(11).await;
                cut.send_modify(|g| *g += 1);
                wait(12).await;
            })
            .await;
        let st = state.borrow();
        let p = st.progress();
        assert_eq!(st.reconnects, 3);
        assert_eq!((p.disconnects, p.failed_attempts, p.live), (2, 0, 1));
        assert_ne!(st.clients[0].resubscribed_at_us, 0);
        assert_eq!((st.non_increasing, st.foreign), (0, 0));
    }
}
