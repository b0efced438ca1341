//! HTTP long-poll (PROTOCOL.md "Transports", C16) against a real gateway: immediate answers,
//! held polls answered by a publish, the timeout (never early), every error status, drain and the
//! connection cap, and the managed `LongPoller` across a gateway restart with no change missed.

use herald_client::longpoll::{PollConnection, PollFailure, PollReply, poll_once};
use herald_client::{Event, LongPollConfig, LongPoller};
use herald_e2e::http::{self, HttpResponse};
use herald_e2e::{GatewayOptions, GatewayProcess, NsGrant, QUIET, WAIT};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

fn url(gw: &GatewayProcess) -> String {
    format!("http://{}/v1/longpoll", gw.ws_addr())
}

async fn post(gw: &GatewayProcess, body: &Value) -> HttpResponse {
    let bytes = body.to_string().into_bytes();
    http::request(gw.ws_addr(), "POST", "/v1/longpoll", Some(&bytes))
        .await
        .expect("an HTTP answer")
}

fn assert_error(resp: &HttpResponse, status: u16, error: &str) -> Value {
    assert_eq!(resp.status, status, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["error"], error, "{body}");
    assert!(body["message"].is_string(), "{body}");
    body
}

#[tokio::test]
async fn answers_at_once_when_behind_or_ahead() {
    let gw = GatewayProcess::start_default();
    gw.publish_ok(&[(7, 5), (8, 3)]).await;
    let token = gw.token_all();
    // 7 behind, 8 equal (nothing), 9 never published with a cursor > 0 (RESET).
    let reply = poll_once(&url(&gw), &token, &[(7, 2), (8, 3), (9, 4)], 30)
        .await
        .expect("reply");
    assert_eq!(
        reply,
        PollReply {
            changes: vec![(7, 5)],
            reset: vec![9],
            backoff_s: None
        }
    );
    // Numbers above 2^53 travel as strings, both ways.
    let big = u64::MAX;
    gw.publish_ok(&[(big, (1 << 53) + 1)]).await;
    let resp = post(
        &gw,
        &json!({"token": token, "cursors": {big.to_string(): "1", "9": "9007199254740993"}}),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.json(),
        json!({"changes": [{"ns": big.to_string(), "sjid": "9007199254740993"}], "reset": [9], "backoff_s": null})
    );
}

#[tokio::test]
async fn a_held_poll_gets_one_batch_in_one_reply_then_polls_again_on_the_same_connection() {
    let gw = GatewayProcess::start_default();
    gw.publish_ok(&[(1, 10)]).await;
    let token = gw.token_all();
    let mut conn = PollConnection::connect(&url(&gw)).await.expect("connect");
    let t = token.clone();
    let held = tokio::spawn(async move {
        let r = conn.poll(&t, &[(1, 10), (2, 0), (3, 0)], 60).await;
        (conn, r)
    });
    tokio::time::sleep(QUIET).await;
    assert!(
        !held.is_finished(),
        "a poll with every cursor current waits"
    );
    gw.publish_ok(&[(1, 11), (2, 1), (2, 2)]).await;
    let (mut conn, reply) = tokio::time::timeout(WAIT, held)
        .await
        .expect("answered after the publish")
        .expect("task");
    let reply = reply.expect("reply");
    assert_eq!(
        reply.changes,
        vec![(1, 11), (2, 2)],
        "one reply for the batch"
    );
    assert!(reply.reset.is_empty());
    // Keep-alive: the next poll goes on the same connection.
    assert!(conn.is_open(), "the connection is kept after a reply");
    let publish = async {
        tokio::time::sleep(QUIET).await;
        gw.publish_ok(&[(3, 7)]).await;
    };
    let (reply, ()) = tokio::join!(
        tokio::time::timeout(WAIT, conn.poll(&token, &[(1, 11), (2, 2), (3, 0)], 30)),
        publish
    );
    assert_eq!(
        reply.expect("in time").expect("reply").changes,
        vec![(3, 7)]
    );
}

#[tokio::test]
async fn the_timeout_answers_empty_never_early() {
    let gw = GatewayProcess::start_default();
    let started = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(40),
        poll_once(&url(&gw), &gw.token_all(), &[(5, 0)], 30),
    )
    .await
    .expect("answered by the timeout")
    .expect("reply");
    let took = started.elapsed();
    assert_eq!(reply, PollReply::default());
    assert!(took >= Duration::from_secs(30), "answered early: {took:?}");
    assert!(
        took <= Duration::from_millis(33_500),
        "later than timeout + 10%: {took:?}"
    );
    println!("timeout_s 30 answered after {took:?}");
}

#[tokio::test]
async fn every_error_status() {
    let gw = GatewayProcess::start(GatewayOptions::new().arg("--max-subscriptions", 3));
    let token = gw.token_all();
    for (body, why) in [
        (json!({"token": token, "cursors": {}}), "empty cursors"),
        (json!({"token": token}), "no cursors"),
        (json!({"cursors": {"1": 0}}), "no token"),
        (
            json!({"token": token, "cursors": {"1": 0}, "timeout_s": 29}),
            "timeout_s below 30",
        ),
        (
            json!({"token": token, "cursors": {"1": 0}, "timeout_s": 481}),
            "timeout_s above 480",
        ),
        (
            json!({"token": token, "cursors": {"1": 0}, "timeout_s": 30.5}),
            "timeout_s not an integer",
        ),
        (
            json!({"token": token, "cursors": {"1": 0}, "timeout_s": "30"}),
            "timeout_s a string",
        ),
        (
            json!({"token": token, "cursors": {"1": 9_007_199_254_740_993_u64}}),
            "a number above 2^53",
        ),
        (
            json!({"token": token, "cursors": {"x": 0}}),
            "a key that is not a namespace",
        ),
        (
            json!({"token": token, "cursors": {"1": 0, "2": 0, "3": 0, "4": 0}}),
            "over max_subscriptions",
        ),
    ] {
        let resp = post(&gw, &body).await;
        assert_eq!(resp.status, 400, "{why}: {}", resp.text());
        assert_eq!(resp.json()["error"], "bad_request", "{why}");
    }
    let resp = http::request(gw.ws_addr(), "POST", "/v1/longpoll", Some(b"{not json"))
        .await
        .expect("answer");
    assert_error(&resp, 400, "bad_request");
    let chunked =
        b"POST /v1/longpoll HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_error(
        &http::raw(gw.ws_addr(), chunked).await.expect("answer"),
        400,
        "bad_request",
    );
    let no_length = b"POST /v1/longpoll HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_error(
        &http::raw(gw.ws_addr(), no_length).await.expect("answer"),
        400,
        "bad_request",
    );

    let resp = post(&gw, &json!({"token": "not.a.jwt", "cursors": {"1": 0}})).await;
    assert_error(&resp, 401, "unauthorized");
    let expired = gw.token_exp(NsGrant::All, GatewayProcess::unix_now() - 120);
    let resp = post(&gw, &json!({"token": expired, "cursors": {"1": 0}})).await;
    assert_error(&resp, 401, "token_expired");

    let some = gw.token(NsGrant::list(vec![1, 2]), 3600);
    let resp = post(
        &gw,
        &json!({"token": some, "cursors": {"1": 0, "6": 0, "5": 0}}),
    )
    .await;
    let body = assert_error(&resp, 403, "forbidden_namespace");
    assert_eq!(body["namespaces"], json!([5, 6]));

    let resp = http::request(gw.ws_addr(), "GET", "/v1/connect", None)
        .await
        .expect("answer");
    assert_eq!(resp.status, 426, "{}", resp.text());
    let resp = http::request(gw.ws_addr(), "GET", "/v1/longpoll", None)
        .await
        .expect("answer");
    assert_eq!(resp.status, 405, "{}", resp.text());
}

#[tokio::test]
async fn over_the_cap_503_and_backoff_near_it() {
    let gw = GatewayProcess::start(GatewayOptions::new().arg("--max-connections", 2));
    let token = gw.token_all();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = PollConnection::connect(&url(&gw)).await.expect("connect");
        let t = token.clone();
        // The task gives the connection back with the reply: closing it would lower the count
        // before the other poll's reply is made (the two may be on different workers).
        held.push(tokio::spawn(async move {
            let reply = conn.poll(&t, &[(4, 0)], 30).await;
            (reply, conn)
        }));
    }
    tokio::time::sleep(QUIET).await;
    let resp = post(&gw, &json!({"token": token, "cursors": {"4": 0}})).await;
    let body = assert_error(&resp, 503, "overloaded");
    assert!(resp.header("retry-after").is_some(), "{body}");
    // At the cap, replies ask for a pause before the next poll.
    gw.publish_ok(&[(4, 1)]).await;
    let mut open = Vec::new();
    for h in held {
        let (reply, conn) = tokio::time::timeout(WAIT, h)
            .await
            .expect("in time")
            .expect("task");
        open.push(conn);
        let reply = reply.expect("reply");
        assert_eq!(reply.changes, vec![(4, 1)]);
        let backoff = reply.backoff_s.expect("backoff_s near the cap");
        assert!((5..=10).contains(&backoff), "{backoff}");
    }
}

#[tokio::test]
async fn draining_answers_waiting_polls_with_backoff_and_refuses_new_ones() {
    let mut gw = GatewayProcess::start(GatewayOptions::new().arg("--drain-s", 3));
    let token = gw.token_all();
    let t = token.clone();
    let u = url(&gw);
    let waiting = tokio::spawn(async move { poll_once(&u, &t, &[(3, 0)], 60).await });
    // Connected before the drain; its request arrives during it.
    let mut late = TcpStream::connect(gw.ws_addr()).await.expect("connect");
    tokio::time::sleep(QUIET).await;
    gw.sigterm();
    let started = Instant::now();
    let reply = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("answered at once when draining")
        .expect("task")
        .expect("reply");
    assert_eq!(reply.changes, vec![]);
    let backoff = reply.backoff_s.expect("backoff_s while draining");
    assert!((1..=5).contains(&backoff), "{backoff}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let body = json!({"token": token, "cursors": {"3": 0}}).to_string();
    let req = format!(
        "POST /v1/longpoll HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    late.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, late.read_to_end(&mut out))
        .await
        .expect("answered")
        .expect("read");
    let resp = http::parse(&out).expect("HTTP");
    assert_error(&resp, 503, "overloaded");
    assert!(resp.header("retry-after").is_some());
    assert!(gw.wait_exit(Duration::from_secs(15)).await.is_some());
}

/// A TCP forwarder whose target can change, so a client keeps one URL across gateway restarts
/// (a restarted gateway gets new ports).
struct Forwarder {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = Arc::new(Mutex::new(target));
        let t = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let to = *t.lock().expect("lock");
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Forwarder { addr, target, task }
    }

    fn retarget(&self, to: SocketAddr) {
        *self.target.lock().expect("lock") = to;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_long_poller_misses_nothing_across_restarts() {
    let mut gw = GatewayProcess::start_default();
    let fwd = Forwarder::start(gw.ws_addr()).await;
    let mut config =
        LongPollConfig::new(format!("http://{}/v1/longpoll", fwd.addr), gw.token_all());
    config.backoff_max = Duration::from_secs(1);
    let (poller, mut events) = LongPoller::spawn(config);
    let namespaces = [11_u64, 12, 13];
    poller.subscribe(&namespaces.map(|n| (n, 0)));
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut disconnects = 0;
    let mut sjid = 0;
    for round in 0..3 {
        for _ in 0..5 {
            sjid += 1;
            let batch: Vec<(u64, u64)> = namespaces
                .iter()
                .filter(|&&n| (n + sjid) % 2 == 0 || n == 13)
                .map(|&n| (n, sjid))
                .collect();
            gw.publish_ok(&batch).await;
            for (n, s) in batch {
                last.insert(n, s);
            }
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        if round < 2 {
            gw.restart();
            fwd.retarget(gw.ws_addr());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen != last {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(Event::Changed { ns, sjid })) => {
                let before = seen.insert(ns, sjid).unwrap_or(0);
                assert!(sjid > before, "SJIDs go up: {ns} {before} → {sjid}");
            }
            Ok(Some(Event::Disconnected { .. })) => disconnects += 1,
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
            Ok(None) | Err(_) => panic!("missed changes: seen {seen:?}, published {last:?}"),
        }
    }
    assert_eq!(poller.cursors(), last);
    assert!(disconnects >= 1, "the restarts were crossed");
    poller.close().await;
    assert!(poller.is_closed());
}

#[tokio::test]
async fn a_forbidden_namespace_is_denied_and_the_rest_keeps_polling() {
    let gw = GatewayProcess::start_default();
    gw.publish_ok(&[(1, 3)]).await;
    let config = LongPollConfig::new(url(&gw), gw.token(NsGrant::list(vec![1]), 3600));
    let (poller, mut events) = LongPoller::spawn(config);
    poller.subscribe(&[(1, 0), (2, 0)]);
    let mut got = Vec::new();
    while got.len() < 2 {
        let e = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("event in time")
            .expect("event");
        got.push(e);
    }
    assert!(matches!(got[0], Event::Denied { ns: 2, .. }), "{got:?}");
    assert_eq!(got[1], Event::Changed { ns: 1, sjid: 3 });
    let failure = poll_once(&url(&gw), "bad", &[(1, 0)], 30).await;
    assert!(
        matches!(failure, Err(PollFailure::Refused(ref e)) if e.status == 401),
        "{failure:?}"
    );
    poller.close().await;
}

/// Distributed mode: the cursor check waits for the relays' look-up (the task finishes it), a
/// cursor above the answer is RESET only once the look-up deadline confirms it, and a held
/// poll is answered by a change fanned out from NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_mode_looks_up_then_holds() {
    use herald_e2e::fleet::{PARTITIONS, gateway_options, relay_options};
    use herald_e2e::nats::{NatsServer, RelayProcess};
    let nats = NatsServer::start();
    let _relay = RelayProcess::start(&nats.url(), relay_options()).await;
    // A short look-up deadline: the RESET of ns 22 below waits for it.
    let gw = GatewayProcess::start(gateway_options(&nats.url()).arg("--lookup-deadline-ms", 2000));
    let publisher =
        herald_relay::Publisher::new(async_nats::jetstream::new(nats.client().await), PARTITIONS);
    publisher.publish(&[(21, 4)]).await.expect("publish");
    let token = gw.token_all();
    let reply = herald_e2e::eventually(WAIT, "the relay to know ns 21", || {
        let (u, t) = (url(&gw), token.clone());
        async move {
            let r = poll_once(&u, &t, &[(21, 1), (22, 3)], 30).await.ok()?;
            (!r.changes.is_empty()).then_some(r)
        }
    })
    .await;
    assert_eq!(reply.changes, vec![(21, 4)]);
    assert_eq!(reply.reset, vec![22]);
    // The RESET is confirmed for the look-up deadline before it is sent.
    let started = std::time::Instant::now();
    let reply = poll_once(&url(&gw), &token, &[(22, 3)], 30)
        .await
        .expect("reply");
    assert_eq!(reply.reset, vec![22]);
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "RESET after {:?}, not confirmed first",
        started.elapsed()
    );
    let (u, t) = (url(&gw), token.clone());
    let held = tokio::spawn(async move { poll_once(&u, &t, &[(21, 4)], 30).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "a current cursor waits");
    publisher.publish(&[(21, 5)]).await.expect("publish");
    let reply = tokio::time::timeout(WAIT, held)
        .await
        .expect("answered by the fan-out")
        .expect("task")
        .expect("reply");
    assert_eq!(reply.changes, vec![(21, 5)]);
}

/// CORS (`--longpoll-allow-origin`): a page on a listed origin can read answers and refusals
/// (and `Retry-After`), its preflight is answered; any other origin gets no CORS header, so the
/// browser keeps the answer from that page.
#[tokio::test]
async fn cors_lets_listed_origins_read_answers() {
    let gw = GatewayProcess::start(
        GatewayOptions::new().arg("--longpoll-allow-origin", "https://app.example"),
    );
    gw.publish_ok(&[(7, 5)]).await;
    let body = json!({"token": gw.token_all(), "cursors": {"7": 1}}).to_string();
    let poll = |origin: &str| {
        format!(
            "POST /v1/longpoll HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\
             Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let listed = http::raw(gw.ws_addr(), poll("https://app.example").as_bytes())
        .await
        .expect("answer");
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(
        listed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(listed.header("vary"), Some("Origin"));
    assert_eq!(listed.json()["changes"][0]["sjid"], 5);
    let other = http::raw(gw.ws_addr(), poll("https://evil.example").as_bytes())
        .await
        .expect("answer");
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);

    // A refusal after the body is read (a bad token) carries the headers too.
    let bad = "{\"token\":\"x\",\"cursors\":{\"7\":1}}";
    let refused = http::raw(
        gw.ws_addr(),
        format!(
            "POST /v1/longpoll HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\
             Content-Length: {}\r\n\r\n{bad}",
            bad.len()
        )
        .as_bytes(),
    )
    .await
    .expect("answer");
    assert_error(&refused, 401, "unauthorized");
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        refused.header("access-control-expose-headers"),
        Some("Retry-After")
    );

    let preflight = http::raw(
        gw.ws_addr(),
        b"OPTIONS /v1/longpoll HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\
          Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n",
    )
    .await
    .expect("answer");
    assert_eq!(preflight.status, 204, "{}", preflight.text());
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        Some("POST")
    );
    assert_eq!(
        preflight.header("access-control-allow-headers"),
        Some("content-type")
    );

    // Without the flag, nothing.
    let plain = GatewayProcess::start_default();
    let resp = http::raw(plain.ws_addr(), poll("https://app.example").as_bytes())
        .await
        .expect("answer");
    assert_eq!(resp.header("access-control-allow-origin"), None);
}
