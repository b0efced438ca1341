//! The session in virtual time: every timer rule checked in ticks, with no sockets and no clock.

use super::*;
use crate::token::Refused;
use herald_proto::Claims;
use herald_proto::longpoll::ErrorName;

const UNIX_NOW: u64 = 1_900_000_000;

/// Tokens by name: `"ok"` grants everything for an hour; `"short"` expires in 10 s; `"list"`
/// grants namespaces 1 and 2; anything else is refused.
struct Tokens;

impl TokenCheck for Tokens {
    fn check(&self, token: &str) -> Result<Claims, Refused> {
        let claims = |ns: NsGrant, exp: u64| Claims {
            sub: if token == "other" {
                "someone else"
            } else {
                "user"
            }
            .to_owned(),
            ns,
            exp,
            nbf: None,
            iss: None,
            cls: None,
            iat: Some(UNIX_NOW - 60),
        };
        match token {
            "ok" => Ok(claims(NsGrant::All, UNIX_NOW + 3600)),
            "short" => Ok(claims(NsGrant::All, UNIX_NOW + 10)),
            "list" => Ok(claims(NsGrant::list(vec![1, 2]), UNIX_NOW + 3600)),
            "other" => Ok(claims(NsGrant::All, UNIX_NOW + 3600)),
            "old" => Err(Refused {
                label: "expired",
                message: "token expired".to_owned(),
            }),
            _ => Err(Refused {
                label: "signature",
                message: "bad signature".to_owned(),
            }),
        }
    }
}

/// What the session asked of its transport.
#[derive(Debug, Default)]
struct Recorded {
    sent: Vec<ServerFrame>,
    closed: Option<(Code, bool)>,
    aborted: bool,
    released: Vec<u64>,
}

impl Output for Recorded {
    fn send(&mut self, frame: &ServerFrame) {
        self.sent.push(frame.clone());
    }
    fn close(&mut self, code: Code, linger: bool) {
        assert!(self.closed.is_none(), "closed twice");
        self.closed = Some((code, linger));
    }
    fn abort(&mut self) {
        self.aborted = true;
    }
    fn released(&mut self, ns: &[u64]) {
        self.released.extend_from_slice(ns);
    }
}

fn limits() -> Limits {
    Limits {
        heartbeat: Duration::from_secs(60),
        heartbeat_classes: Vec::new(),
        handshake_timeout: Duration::from_secs(10),
        max_subscriptions: 3,
        token_leeway_s: crate::token::TOKEN_LEEWAY_S,
    }
}

/// A session, its tables, and virtual time.
struct Harness {
    session: Session,
    interest: Interest,
    latest: LatestTable,
    limits: Limits,
    distributed: bool,
    now: u32,
    out: Recorded,
}

impl Harness {
    fn new() -> Self {
        let limits = limits();
        Harness {
            session: Session::new(Mode::Framed, 0, &limits, 7),
            interest: Interest::default(),
            latest: LatestTable::new(),
            limits,
            distributed: false,
            now: 0,
            out: Recorded::default(),
        }
    }

    fn env(&mut self) -> (Env<'_>, &mut Session, &mut Recorded) {
        let env = Env {
            conn: 1,
            now: self.now,
            unix_now: UNIX_NOW + u64::from(self.now) / 10,
            interest: &mut self.interest,
            tokens: &Tokens,
            limits: &self.limits,
            latest: (!self.distributed).then_some(&self.latest),
        };
        (env, &mut self.session, &mut self.out)
    }

    fn frame(&mut self, frame: ClientFrame) {
        let now = self.now;
        let (mut env, session, out) = self.env();
        session.received(now);
        session.on_frame(&mut env, out, frame);
    }

    fn open(&mut self, token: &str) {
        self.session.upgraded();
        self.frame(ClientFrame::Hello {
            version: PROTOCOL_VERSION,
            token: token.to_owned(),
        });
        assert_eq!(self.session.phase(), Phase::Open, "{:?}", self.out);
        self.out.sent.clear();
    }

    /// Advances virtual time to `tick`, ticking once per tick; returns the first tick at which
    /// the session acted.
    fn run_until(&mut self, tick: u32) -> Option<u32> {
        let silence = self.limits.silence_ticks();
        while self.now < tick {
            self.now += 1;
            if self.session.on_tick(self.now, &silence, &mut self.out) != Tick::Idle {
                return Some(self.now);
            }
        }
        None
    }
}

#[test]
fn handshake_timeout_closes_silently_after_the_limit_never_before() {
    let mut h = Harness::new();
    h.session.upgraded();
    // 10 s = 100 ticks, plus one for the floored clock.
    assert_eq!(h.run_until(1000), Some(101));
    assert_eq!(h.out.closed, Some((Code::TIMEOUT, false)));
    assert!(h.out.sent.is_empty());
    assert_eq!(h.session.phase(), Phase::Closing);
    // The grace deadline then drops it.
    assert_eq!(h.run_until(1000), Some(101 + CLOSE_GRACE_TICKS));
    assert!(h.out.aborted);
}

#[test]
fn handshake_timeout_before_the_upgrade_aborts() {
    let mut h = Harness::new();
    assert_eq!(h.run_until(1000), Some(101));
    assert!(h.out.aborted && h.out.closed.is_none());
}

#[test]
fn hello_opens_with_welcome_and_refusals_close() {
    let mut h = Harness::new();
    h.session.upgraded();
    h.frame(ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        token: "ok".to_owned(),
    });
    assert!(matches!(
        h.out.sent[..],
        [ServerFrame::Welcome {
            heartbeat_ms: 60_000,
            max_subscriptions: 3,
            ..
        }]
    ));
    // A second HELLO is a protocol error.
    h.frame(ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        token: "ok".to_owned(),
    });
    assert_eq!(h.out.closed, Some((Code::BAD_FRAME, true)));

    for (version, token, code) in [
        (PROTOCOL_VERSION, "forged", Code::UNAUTHORIZED),
        (PROTOCOL_VERSION + 1, "ok", Code::UNSUPPORTED_VERSION),
    ] {
        let mut h = Harness::new();
        h.session.upgraded();
        h.frame(ClientFrame::Hello {
            version,
            token: token.to_owned(),
        });
        assert!(matches!(&h.out.sent[..], [ServerFrame::Error { code: c, .. }] if *c == code));
        assert_eq!(h.out.closed, Some((code, true)));
        assert_eq!(h.session.close_code(), code.0 as u16);
    }
    let mut h = Harness::new();
    h.session.upgraded();
    h.frame(ClientFrame::Ping(1));
    assert_eq!(h.out.closed, Some((Code::BAD_FRAME, true)));
}

#[test]
fn heartbeat_silence_closes_after_two_and_a_half_heartbeats() {
    let mut h = Harness::new();
    h.open("ok");
    h.now = 10;
    h.frame(ClientFrame::Ping(0));
    assert_eq!(h.out.sent, vec![ServerFrame::Pong(0)]);
    // 150 s of silence allowed (1500 ticks), strictly more closes.
    assert_eq!(h.run_until(5000), Some(10 + 1501));
    assert_eq!(h.out.closed, Some((Code::TIMEOUT, false)));
}

#[test]
fn token_expiry_sends_goaway_after_the_leeway() {
    let mut h = Harness::new();
    h.open("short");
    // Keep the heartbeat alive, so only the token can close it.
    let mut acted = None;
    for t in (0..2000).step_by(100) {
        h.frame(ClientFrame::Pong(0));
        acted = h.run_until(t + 100);
        if acted.is_some() {
            break;
        }
    }
    // exp in 10 s plus 30 s leeway: 400 ticks, +1.
    assert_eq!(acted, Some(401));
    match &h.out.sent[..] {
        [
            ServerFrame::Goaway {
                code,
                reconnect_after_ms,
            },
        ] => {
            assert_eq!(*code, Code::TOKEN_EXPIRED);
            assert!(*reconnect_after_ms <= 1000);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.out.closed, Some((Code::TOKEN_EXPIRED, true)));
}

#[test]
fn subscribe_checks_cursors_grants_and_limits() {
    let mut h = Harness::new();
    h.latest.merge(1, 10);
    h.latest.merge(2, 5);
    h.open("list");
    h.frame(ClientFrame::Subscribe(vec![(1, 4), (2, 9), (3, 0)]));
    assert_eq!(
        h.out.sent,
        vec![
            ServerFrame::Denied {
                code: Code::FORBIDDEN_NAMESPACE,
                ns: vec![3]
            },
            ServerFrame::Reset(vec![2]),
            ServerFrame::Changed(vec![(1, 10)]),
        ]
    );
    // RESET ended the subscription to 2: its interest is released upstream.
    assert_eq!(h.out.released, vec![2]);
    assert_eq!(h.session.subscriptions(), 1);
    h.frame(ClientFrame::Unsubscribe(vec![1, 2]));
    assert_eq!(h.out.released, vec![2, 1]);
    assert_eq!(h.interest.subscriptions(), 0);
}

#[test]
fn a_subscribe_waiting_for_its_look_up_holds_the_frames_behind_it() {
    let mut h = Harness::new();
    h.distributed = true;
    h.open("ok");
    h.frame(ClientFrame::Subscribe(vec![(1, 3), (2, 0)]));
    assert!(h.session.awaiting_lookup());
    assert!(h.out.sent.is_empty(), "nothing before the look-up");
    // Interest is registered first: the fan-out racing the look-up reaches the connection.
    assert_eq!(h.interest.subscriptions(), 2);
    let reg = h.session.take_lookup().expect("a look-up");
    let latest: HashMap<u64, u64> = [(1, 8)].into_iter().collect();
    let (mut env, session, out) = h.env();
    assert!(
        session
            .on_lookup(&mut env, out, *reg, Some(&latest))
            .is_none()
    );
    assert_eq!(h.out.sent, vec![ServerFrame::Changed(vec![(1, 8)])]);
    assert!(!h.session.awaiting_lookup());

    // A failed look-up sends the client elsewhere.
    h.frame(ClientFrame::Subscribe(vec![(5, 0)]));
    let reg = h.session.take_lookup().expect("a look-up");
    let (mut env, session, out) = h.env();
    session.on_lookup(&mut env, out, *reg, None);
    assert!(matches!(
        h.out.sent.last(),
        Some(ServerFrame::Goaway { code, reconnect_after_ms: 1000..=5000 }) if *code == Code::OVERLOADED
    ));
    assert_eq!(h.out.closed, Some((Code::OVERLOADED, true)));
}

#[test]
fn drain_sends_goaway_once_and_closing_ignores_frames() {
    let mut h = Harness::new();
    h.open("ok");
    assert_eq!(h.session.drain(h.now, &mut h.out), Tick::Acted);
    assert!(matches!(
        h.out.sent[..],
        [ServerFrame::Goaway { code, reconnect_after_ms: 100..=1000 }] if code == Code::DRAINING
    ));
    assert_eq!(h.session.drain(h.now, &mut h.out), Tick::Idle);
    h.frame(ClientFrame::Subscribe(vec![(1, 0)]));
    assert_eq!(h.out.sent.len(), 1, "nothing is processed while closing");
}

#[test]
fn slow_consumer_closes_with_goaway() {
    let mut h = Harness::new();
    h.open("ok");
    h.session.slow_consumer(h.now, &mut h.out);
    assert!(matches!(
        h.out.sent[..],
        [ServerFrame::Goaway { code, reconnect_after_ms: 1000..=5000 }] if code == Code::SLOW_CONSUMER
    ));
    assert_eq!(h.out.closed, Some((Code::SLOW_CONSUMER, true)));
}

#[test]
fn a_poll_waits_until_its_deadline_then_keeps_alive() {
    let mut h = Harness::new();
    h.latest.merge(1, 4);
    let (mut env, session, _) = h.env();
    let started = session.poll(&mut env, "ok", &[(1, 4)], 300, 5);
    assert_eq!(started, Ok(PollStarted::Wait));
    assert!(h.session.is_open());
    assert_eq!(h.run_until(1000), Some(306));
    let (mut env, session, out) = h.env();
    session.poll_answered(&mut env, out, true);
    assert_eq!(h.session.phase(), Phase::Connecting);
    assert_eq!(h.out.released, vec![1]);
    // Idle between polls: the handshake timeout bounds it.
    assert_eq!(h.run_until(2000), Some(306 + 101));
    assert!(h.out.aborted);
}

#[test]
fn a_poll_answers_at_once_or_is_refused() {
    let mut h = Harness::new();
    h.latest.merge(1, 9);
    let (mut env, session, _) = h.env();
    assert_eq!(
        session.poll(&mut env, "ok", &[(1, 4), (2, 3)], 300, 0),
        Ok(PollStarted::Answer {
            changed: vec![(1, 9)],
            reset: vec![2]
        })
    );
    for (token, cursors, status, error) in [
        ("old", vec![(1, 0)], 401, ErrorName::TokenExpired),
        ("forged", vec![(1, 0)], 401, ErrorName::Unauthorized),
        (
            "list",
            vec![(9, 0), (1, 0)],
            403,
            ErrorName::ForbiddenNamespace,
        ),
        (
            "ok",
            vec![(1, 0), (2, 0), (3, 0), (4, 0)],
            400,
            ErrorName::BadRequest,
        ),
    ] {
        let mut h = Harness::new();
        let (mut env, session, _) = h.env();
        let refused = session.poll(&mut env, token, &cursors, 300, 0).unwrap_err();
        assert_eq!((refused.status, refused.error), (status, error), "{token}");
        assert_eq!(h.interest.subscriptions(), 0, "nothing registered");
    }
}

#[test]
fn draining_answers_a_waiting_poll_and_ends_an_idle_one() {
    let mut h = Harness::new();
    let (mut env, session, _) = h.env();
    session.poll(&mut env, "ok", &[(1, 0)], 300, 0).unwrap();
    assert_eq!(h.session.drain(0, &mut h.out), Tick::AnswerPoll);
    let (mut env, session, out) = h.env();
    session.poll_answered(&mut env, out, true);
    assert_eq!(h.session.drain(0, &mut h.out), Tick::Acted);
    assert!(h.out.aborted);
}

/// Every connection carries one session for its whole life: memory is the product.
#[test]
fn an_idle_session_stays_small() {
    let size = std::mem::size_of::<Session>();
    println!("Session {size} B");
    assert!(size <= 64, "Session grew to {size} B");
    // What an open session allocates for its token: one 32-byte box.
    let authorized = std::mem::size_of::<Authorized>();
    assert!(authorized <= 32, "Authorized grew to {authorized} B");
}

#[test]
fn refresh_moves_the_expiry_so_goaway_never_comes() {
    let mut h = Harness::new();
    h.open("short");
    h.frame(ClientFrame::Refresh {
        token: "ok".to_owned(),
    });
    assert!(
        h.out.sent.is_empty() && h.out.closed.is_none(),
        "{:?}",
        h.out
    );
    for t in (0..3000).step_by(100) {
        h.frame(ClientFrame::Pong(0));
        assert_eq!(h.run_until(t + 100), None, "closed at {t}: {:?}", h.out);
    }
}

#[test]
fn refresh_applies_the_new_grants_with_denied_for_the_dropped_ones() {
    let mut h = Harness::new();
    h.open("ok");
    h.frame(ClientFrame::Subscribe(vec![(1, 0), (2, 0), (3, 0)]));
    h.out.sent.clear();
    h.frame(ClientFrame::Refresh {
        token: "list".to_owned(),
    });
    assert_eq!(
        h.out.sent,
        vec![ServerFrame::Denied {
            code: Code::FORBIDDEN_NAMESPACE,
            ns: vec![3]
        }]
    );
    assert_eq!(h.out.released, vec![3]);
    assert_eq!(
        (h.session.subscriptions(), h.interest.subscriptions()),
        (2, 2)
    );
    // The new grant holds for later SUBSCRIBEs too.
    h.frame(ClientFrame::Subscribe(vec![(3, 0)]));
    assert!(matches!(h.out.sent.last(), Some(ServerFrame::Denied { ns, .. }) if ns == &[3]));
    assert!(h.out.closed.is_none());
}

#[test]
fn a_bad_refresh_or_another_sub_closes_with_unauthorized() {
    for token in ["forged", "old", "other"] {
        let mut h = Harness::new();
        h.open("ok");
        h.frame(ClientFrame::Refresh {
            token: token.to_owned(),
        });
        assert!(
            matches!(&h.out.sent[..], [ServerFrame::Error { code, .. }] if *code == Code::UNAUTHORIZED),
            "{token}: {:?}",
            h.out
        );
        assert_eq!(h.out.closed, Some((Code::UNAUTHORIZED, true)), "{token}");
    }
    // Before HELLO it is a protocol error like any other first frame.
    let mut h = Harness::new();
    h.session.upgraded();
    h.frame(ClientFrame::Refresh {
        token: "ok".to_owned(),
    });
    assert_eq!(h.out.closed, Some((Code::BAD_FRAME, true)));
}

#[test]
fn revocation_matches_the_sub_and_the_issue_time() {
    let mut h = Harness::new();
    h.open("ok");
    let user = crate::token::sub_hash("user");
    // The token was issued at UNIX_NOW - 60.
    assert!(
        !h.session
            .is_revoked_by(crate::token::sub_hash("someone else"), UNIX_NOW)
    );
    assert!(!h.session.is_revoked_by(user, UNIX_NOW - 60));
    assert!(h.session.is_revoked_by(user, UNIX_NOW - 59));
    h.session.revoke(h.now, &mut h.out);
    assert!(
        matches!(&h.out.sent[..], [ServerFrame::Error { code, .. }] if *code == Code::UNAUTHORIZED)
    );
    assert_eq!(h.out.closed, Some((Code::UNAUTHORIZED, true)));
    assert!(
        !h.session.is_revoked_by(user, u64::MAX),
        "a closing session is not revoked again"
    );
}
