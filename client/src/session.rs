//! One live session inside the client task: resubscribe, then a loop over "command", "frame
//! arrived" and "timer due" (heartbeat PING, missing PONG, server silence, GOAWAY departure).

use std::collections::HashMap;
use std::time::Duration;

use herald_proto::{ClientFrame, ServerFrame};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::debug;

use crate::client::lock;
use crate::connection::{Connection, Incoming, Welcome};
use crate::cursors::{subscribe_frames, unsubscribe_frames};
use crate::event::Event;
use crate::task::{BarrierTx, Command, Next, Task, after_close, after_code, closed};

/// How long a closing client waits for the server to answer its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The server closes within 5 s of GOAWAY; past that the client leaves on its own.
const GOAWAY_GRACE: Duration = Duration::from_secs(5);
/// How soon to ask the token source again when it had nothing fresher.
const REFRESH_RETRY: Duration = Duration::from_secs(5);
/// Longest a single send may block before the connection is declared dead.
const MAX_SEND_WAIT: Duration = Duration::from_secs(10);

/// How a session ended.
struct End {
    /// What the task does next.
    next: Next,
    /// For [`Event::Disconnected`].
    reason: String,
    /// For [`Event::Disconnected`].
    close_code: Option<u16>,
}

/// The per-connection state: timers and barriers in flight.
struct Session {
    /// Heartbeat period (WELCOME's, unless overridden).
    hb: Duration,
    /// When the next heartbeat PING is due.
    next_ping: Instant,
    /// Nonce and deadline of the heartbeat PING awaiting its PONG.
    hb_pending: Option<(u64, Instant)>,
    /// When the last frame arrived; 2.5 × `hb` of silence means the connection is dead.
    last_rx: Instant,
    /// After GOAWAY: when to reconnect, and when to stop waiting for the server's close.
    goaway: Option<(Instant, Instant)>,
    /// Barriers by the nonce of the PING whose PONG resolves them.
    barriers: HashMap<u64, Vec<BarrierTx>>,
    /// When to refresh the token in-band (`refresh_tokens`).
    refresh_at: Option<Instant>,
}

impl Session {
    fn new(hb: Duration, now: Instant) -> Self {
        Session {
            hb,
            next_ping: now + hb,
            hb_pending: None,
            last_rx: now,
            goaway: None,
            barriers: HashMap::new(),
            refresh_at: None,
        }
    }

    /// The earliest timer.
    fn next_wake(&self) -> Instant {
        let mut wake = self.next_ping.min(self.last_rx + self.hb.mul_f64(2.5));
        if let Some((_, deadline)) = self.hb_pending {
            wake = wake.min(deadline);
        }
        if let Some((_, leave)) = self.goaway {
            wake = wake.min(leave);
        }
        if let Some(at) = self.refresh_at {
            wake = wake.min(at);
        }
        wake
    }

    /// The connection was lost without a usable close code: reconnect with backoff, or at the
    /// time GOAWAY asked for.
    fn lost(&self, reason: String, close_code: Option<u16>) -> End {
        let next = match self.goaway {
            Some((reconnect_at, _)) => {
                Next::Exactly(reconnect_at.saturating_duration_since(Instant::now()))
            }
            None => Next::Backoff,
        };
        End {
            next,
            reason,
            close_code,
        }
    }

    /// The server closed with `code`.
    fn closed(&self, code: Option<u16>, reason: String) -> End {
        let text = format!("closed by server (code {code:?}, reason {reason:?})");
        if self.goaway.is_some() {
            return self.lost(text, code);
        }
        End {
            next: after_close(code, reason),
            reason: text,
            close_code: code,
        }
    }

    /// A PONG arrived: it answers the heartbeat (or a later PING) and resolves its barriers.
    fn pong(&mut self, nonce: u64) {
        if self.hb_pending.is_some_and(|(n, _)| n <= nonce) {
            self.hb_pending = None;
        }
        for tx in self.barriers.remove(&nonce).into_iter().flatten() {
            let _ = tx.send(Ok(()));
        }
    }

    /// Sends one frame, bounded so that a stalled socket counts as a dead one.
    async fn send(&self, conn: &mut Connection, frame: &ClientFrame) -> Result<(), End> {
        let wait = self.hb.min(MAX_SEND_WAIT);
        match timeout(wait, conn.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.lost(format!("send failed: {e}"), e.close_code())),
            Err(_) => Err(self.lost(format!("send blocked for {wait:?}"), None)),
        }
    }
}

impl Task {
    /// Runs one session from WELCOME to its end; returns what to do next.
    pub(crate) async fn session(&mut self, mut conn: Connection, welcome: Welcome) -> Next {
        let hb = self
            .config
            .heartbeat
            .unwrap_or(Duration::from_millis(welcome.heartbeat_ms.max(1)));
        let mut s = Session::new(hb, Instant::now());
        if self.config.refresh_tokens {
            s.refresh_at = self
                .refresh_delay(&self.token.clone())
                .map(|d| Instant::now() + d);
        }
        debug!(url = %self.config.url, session_id = ?welcome.session_id, ?hb, "herald connected");
        self.emit(Event::Connected {
            session_id: welcome.session_id,
            heartbeat_ms: welcome.heartbeat_ms,
            max_subscriptions: welcome.max_subscriptions,
        })
        .await;
        let end = match self.start(&mut conn, &mut s).await {
            Ok(()) => self.serve(&mut conn, &mut s).await,
            Err(end) => end,
        };
        // Barriers whose PONG did not come back wait for the next connection.
        self.waiting.extend(s.barriers.into_values().flatten());
        let End {
            next,
            reason,
            close_code,
        } = end;
        debug!(url = %self.config.url, %reason, ?next, "herald session ended");
        match next {
            Next::Stop => {
                let _ = timeout(CLOSE_GRACE, conn.close()).await;
            }
            Next::Fatal { .. } => {}
            _ => self.emit(Event::Disconnected { reason, close_code }).await,
        }
        next
    }

    /// Restores every subscription, then pings for the barriers left waiting.
    async fn start(&mut self, conn: &mut Connection, s: &mut Session) -> Result<(), End> {
        let frames = lock(&self.cursors).resubscribe_frames();
        for frame in &frames {
            s.send(conn, frame).await?;
        }
        if !self.waiting.is_empty() {
            let nonce = self.nonce();
            s.barriers.insert(nonce, std::mem::take(&mut self.waiting));
            s.send(conn, &ClientFrame::Ping(nonce)).await?;
        }
        Ok(())
    }

    /// The session loop. Close first, then timers (so a busy socket cannot starve the
    /// heartbeat), then commands, then the socket.
    async fn serve(&mut self, conn: &mut Connection, s: &mut Session) -> End {
        let mut close = self.close.clone();
        loop {
            let wake = s.next_wake();
            let step = tokio::select! {
                biased;
                () = closed(&mut close) => Err(stop()),
                () = sleep_until(wake) => self.tick(conn, s).await,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(conn, s, cmd).await,
                    None => Err(stop()),
                },
                msg = conn.recv() => match msg {
                    Ok(Incoming::Frame(frame)) => {
                        s.last_rx = Instant::now();
                        self.frame(conn, s, frame).await
                    }
                    Ok(Incoming::Closed { code, reason }) => Err(s.closed(code, reason)),
                    Err(e) => Err(s.lost(e.to_string(), None)),
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// A timer is due.
    async fn tick(&mut self, conn: &mut Connection, s: &mut Session) -> Result<(), End> {
        let now = Instant::now();
        if s.goaway.is_some_and(|(_, leave)| now >= leave) {
            return Err(s.lost("left after GOAWAY".into(), None));
        }
        if s.hb_pending.is_some_and(|(_, deadline)| now >= deadline) {
            return Err(s.lost(format!("no PONG within {:?}", s.hb), None));
        }
        if now >= s.last_rx + s.hb.mul_f64(2.5) {
            return Err(s.lost("server silent for 2.5 x heartbeat".into(), None));
        }
        if s.refresh_at.is_some_and(|at| now >= at) {
            self.refresh(conn, s).await?;
        }
        if now >= s.next_ping {
            let nonce = self.nonce();
            s.send(conn, &ClientFrame::Ping(nonce)).await?;
            if s.hb_pending.is_none() {
                s.hb_pending = Some((nonce, now + s.hb));
            }
            s.next_ping = now + s.hb;
        }
        Ok(())
    }

    /// When to refresh `token`, from now.
    fn refresh_delay(&mut self, token: &str) -> Option<Duration> {
        crate::refresh::delay(token, unix_now(), &mut self.refresh_rng)
    }

    /// Refreshes the session's token in-band, if the token source has a fresher one (else tries
    /// again a little later).
    async fn refresh(&mut self, conn: &mut Connection, s: &mut Session) -> Result<(), End> {
        let token = (self.config.token)();
        let exp = |t: &str| crate::refresh::lifetime(t).map(|(_, exp)| exp);
        if exp(&token) <= exp(&self.token) {
            s.refresh_at = Some(Instant::now() + REFRESH_RETRY);
            return Ok(());
        }
        s.send(
            conn,
            &ClientFrame::Refresh {
                token: token.clone(),
            },
        )
        .await?;
        debug!(url = %self.config.url, "herald token refreshed");
        s.refresh_at = self.refresh_delay(&token).map(|d| Instant::now() + d);
        self.token = token;
        Ok(())
    }

    /// A command from a handle, while connected.
    async fn command(
        &mut self,
        conn: &mut Connection,
        s: &mut Session,
        cmd: Command,
    ) -> Result<(), End> {
        match cmd {
            Command::Subscribe(pairs) => {
                for frame in subscribe_frames(&pairs) {
                    s.send(conn, &frame).await?;
                }
            }
            Command::Unsubscribe(ns) => {
                for frame in unsubscribe_frames(&ns) {
                    s.send(conn, &frame).await?;
                }
            }
            Command::Barrier(tx) => {
                let nonce = self.nonce();
                s.barriers.insert(nonce, vec![tx]);
                s.send(conn, &ClientFrame::Ping(nonce)).await?;
            }
            Command::DisconnectNow => {
                return Err(End {
                    next: Next::Backoff,
                    reason: "disconnect_now".into(),
                    close_code: None,
                });
            }
        }
        Ok(())
    }

    /// A frame from the server.
    async fn frame(
        &mut self,
        conn: &mut Connection,
        s: &mut Session,
        frame: ServerFrame,
    ) -> Result<(), End> {
        let events: Vec<Event> = match frame {
            ServerFrame::Changed(pairs) => {
                let mut cursors = lock(&self.cursors);
                pairs
                    .into_iter()
                    .filter(|&(ns, sjid)| cursors.changed(ns, sjid))
                    .map(|(ns, sjid)| Event::Changed { ns, sjid })
                    .collect()
            }
            ServerFrame::Reset(ns) => {
                let mut cursors = lock(&self.cursors);
                ns.into_iter()
                    .filter(|&ns| cursors.remove(ns))
                    .map(|ns| Event::Reset { ns })
                    .collect()
            }
            ServerFrame::Denied { code, ns } => {
                let mut cursors = lock(&self.cursors);
                ns.into_iter()
                    .filter(|&ns| cursors.remove(ns))
                    .map(|ns| Event::Denied { code, ns })
                    .collect()
            }
            ServerFrame::Goaway {
                code,
                reconnect_after_ms,
            } => {
                let now = Instant::now();
                let reconnect_at = now + Duration::from_millis(reconnect_after_ms);
                s.goaway = Some((reconnect_at, reconnect_at.min(now + GOAWAY_GRACE)));
                vec![Event::Goaway {
                    code,
                    reconnect_after_ms,
                }]
            }
            ServerFrame::Error { code, message } => {
                return Err(End {
                    reason: format!("server error {code}: {message}"),
                    next: after_code(code, message),
                    close_code: code.ws_close_code(),
                });
            }
            ServerFrame::Ping(nonce) => {
                s.send(conn, &ClientFrame::Pong(nonce)).await?;
                Vec::new()
            }
            ServerFrame::Pong(nonce) => {
                s.pong(nonce);
                Vec::new()
            }
            ServerFrame::Welcome { .. } => {
                debug!("ignoring a second WELCOME");
                Vec::new()
            }
        };
        for ev in events {
            self.emit(ev).await;
        }
        Ok(())
    }
}

/// The session ends because the client is closing.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn stop() -> End {
    End {
        next: Next::Stop,
        reason: "client closed".into(),
        close_code: None,
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    const HB: Duration = Duration::from_secs(10);

    #[test]
    fn next_wake_is_the_earliest_timer() {
        let now = Instant::now();
        let mut s = Session::new(HB, now);
        assert_eq!(s.next_wake(), now + HB);
        s.hb_pending = Some((1, now + HB / 2));
        assert_eq!(s.next_wake(), now + HB / 2);
        s.goaway = Some((now + HB, now + HB / 4));
        assert_eq!(s.next_wake(), now + HB / 4);
        // Silence: 2.5 x heartbeat after the last frame, earlier than a far-off ping.
        let mut s = Session::new(HB, now);
        s.next_ping = now + 10 * HB;
        assert_eq!(s.next_wake(), now + HB.mul_f64(2.5));
    }

    #[test]
    fn pong_clears_the_heartbeat_and_resolves_its_barriers() {
        let mut s = Session::new(HB, Instant::now());
        let (tx, mut rx) = oneshot::channel();
        s.barriers.insert(5, vec![tx]);
        s.hb_pending = Some((3, Instant::now() + HB));
        s.pong(4); // a later PING's PONG also proves the heartbeat's was handled
        assert!(s.hb_pending.is_none());
        assert!(rx.try_recv().is_err());
        s.pong(5);
        assert_eq!(rx.try_recv().unwrap(), Ok(()));
        assert!(s.barriers.is_empty());
    }

    #[test]
    fn after_goaway_any_end_reconnects_at_the_asked_time() {
        let mut s = Session::new(HB, Instant::now());
        assert_eq!(s.lost("cut".into(), None).next, Next::Backoff);
        assert_eq!(
            s.closed(Some(4001), "bad".into()).next,
            Next::Fatal {
                code: herald_proto::Code::BAD_FRAME,
                message: "bad".into()
            }
        );
        let at = Instant::now() + Duration::from_secs(60);
        s.goaway = Some((at, at));
        let Next::Exactly(d) = s.closed(Some(4100), String::new()).next else {
            panic!("GOAWAY delay not honoured")
        };
        assert!(d > Duration::from_secs(59) && d <= Duration::from_secs(60));
    }
}
