//! The managed client against a tiny in-process fake gateway: subprotocol, HELLO/WELCOME,
//! resubscription with the advanced cursor after the server drops the socket, and barriers
//! (including one issued while disconnected).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_client::{Client, ClientConfig, ClientError, ClientFrame, Event, ServerFrame};
use herald_proto::WS_SUBPROTOCOL;
use herald_proto::frame::decode_client;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;
use tokio_tungstenite::accept_hdr_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

const STEP: Duration = Duration::from_secs(3);

/// The upgrade callback: refuse (400) a request that does not offer `herald.v1`, select it
/// otherwise, as the real gateway does.
#[allow(
    clippy::result_large_err,
    reason = "the signature is tungstenite's upgrade Callback"
)]
fn check_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !offered.split(',').any(|p| p.trim() == WS_SUBPROTOCOL) {
        let mut err = ErrorResponse::new(Some("subprotocol herald.v1 required".into()));
        *err.status_mut() = StatusCode::BAD_REQUEST;
        return Err(err);
    }
    resp.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(WS_SUBPROTOCOL),
    );
    Ok(resp)
}

fn binary(frame: &ServerFrame) -> Message {
    Message::binary(frame.to_vec())
}

/// One fake session. Connection `i` gets session id `[i]`; connection 0 answers its first
/// SUBSCRIBE with CHANGED(7, 42) and drops the socket when `drop_first` is notified.
async fn serve_conn(
    i: usize,
    tcp: TcpStream,
    seen: mpsc::UnboundedSender<(usize, ClientFrame)>,
    drop_first: Arc<Notify>,
) {
    let mut ws = accept_hdr_async(tcp, check_subprotocol)
        .await
        .expect("upgrade");
    let Some(Ok(Message::Binary(hello))) = ws.next().await else {
        panic!("no HELLO")
    };
    assert_eq!(
        decode_client(&hello).unwrap(),
        ClientFrame::Hello {
            version: 1,
            token: "tok".into()
        }
    );
    let welcome = ServerFrame::Welcome {
        version: 1,
        heartbeat_ms: 15_000,
        max_subscriptions: 100,
        session_id: vec![i as u8],
    };
    ws.send(binary(&welcome)).await.unwrap();
    let mut changed_sent = false;
    loop {
        let msg = tokio::select! {
            () = drop_first.notified(), if i == 0 => return, // no close frame: a network cut
            m = ws.next() => m,
        };
        let Some(Ok(Message::Binary(bytes))) = msg else {
            return;
        };
        let frame = decode_client(&bytes).expect("client frame");
        let _ = seen.send((i, frame.clone()));
        match frame {
            ClientFrame::Subscribe(_) if i == 0 && !changed_sent => {
                changed_sent = true;
                let changed = ServerFrame::Changed(vec![(7, 42)]);
                ws.send(binary(&changed)).await.unwrap();
            }
            ClientFrame::Ping(n) => ws.send(binary(&ServerFrame::Pong(n))).await.unwrap(),
            _ => {}
        }
    }
}

async fn fake_gateway(
    listener: TcpListener,
    seen: mpsc::UnboundedSender<(usize, ClientFrame)>,
    drop_first: Arc<Notify>,
) {
    for i in 0.. {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::spawn(serve_conn(i, tcp, seen.clone(), drop_first.clone()));
    }
}

/// The next event matching `pred`, skipping others (e.g. `Disconnected` between sessions).
async fn event(events: &mut herald_client::EventStream, pred: impl Fn(&Event) -> bool) -> Event {
    timeout(STEP, async {
        loop {
            let ev = events.recv().await.expect("event stream ended");
            if pred(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

/// The next frame the fake gateway received.
async fn seen(rx: &mut mpsc::UnboundedReceiver<(usize, ClientFrame)>) -> (usize, ClientFrame) {
    timeout(STEP, rx.recv())
        .await
        .expect("timed out waiting for a client frame")
        .unwrap()
}

fn connected(id: u8) -> impl Fn(&Event) -> bool {
    move |ev| matches!(ev, Event::Connected { session_id, .. } if *session_id == [id])
}

#[tokio::test]
async fn reconnects_and_resubscribes_with_the_advanced_cursor() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/connect", listener.local_addr().unwrap());
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let drop_first = Arc::new(Notify::new());
    let gateway = tokio::spawn(fake_gateway(listener, seen_tx, drop_first.clone()));

    let mut config = ClientConfig::new(url, "tok");
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config.rng_seed = Some(1);
    let (client, mut events) = Client::spawn(config);

    // Session 0: subscribe, barrier; the CHANGED arrives before the barrier resolves.
    let ev = event(&mut events, connected(0)).await;
    assert_eq!(
        ev,
        Event::Connected {
            session_id: vec![0],
            heartbeat_ms: 15_000,
            max_subscriptions: 100
        }
    );
    client.subscribe(&[(7, 5)]);
    timeout(STEP, client.barrier()).await.unwrap().unwrap();
    assert_eq!(
        seen(&mut seen_rx).await,
        (0, ClientFrame::Subscribe(vec![(7, 5)]))
    );
    assert!(matches!(
        seen(&mut seen_rx).await,
        (0, ClientFrame::Ping(_))
    ));
    let ev = event(&mut events, |_| true).await;
    assert_eq!(ev, Event::Changed { ns: 7, sjid: 42 });
    assert_eq!(client.cursors().get(&7), Some(&42));

    // The server drops the socket: the client reconnects and resubscribes from 42.
    drop_first.notify_one();
    let ev = event(&mut events, |_| true).await;
    assert!(matches!(ev, Event::Disconnected { .. }), "{ev:?}");
    event(&mut events, connected(1)).await;
    assert_eq!(
        seen(&mut seen_rx).await,
        (1, ClientFrame::Subscribe(vec![(7, 42)]))
    );
    timeout(STEP, client.barrier()).await.unwrap().unwrap();
    assert!(matches!(
        seen(&mut seen_rx).await,
        (1, ClientFrame::Ping(_))
    ));

    // A barrier issued across a cut resolves on the next session, after its resubscription.
    client.disconnect_now();
    timeout(STEP, client.barrier()).await.unwrap().unwrap();
    assert_eq!(
        seen(&mut seen_rx).await,
        (2, ClientFrame::Subscribe(vec![(7, 42)]))
    );
    assert!(matches!(
        seen(&mut seen_rx).await,
        (2, ClientFrame::Ping(_))
    ));
    event(&mut events, connected(2)).await;

    // close() stops the task: the stream ends and later barriers fail.
    timeout(STEP, client.close()).await.unwrap();
    assert!(client.is_closed());
    timeout(STEP, async { while events.recv().await.is_some() {} })
        .await
        .unwrap();
    assert_eq!(client.barrier().await, Err(ClientError::ClientClosed));
    gateway.abort();
}

/// `ClientConfig::local_addr` binds every connection to that source address (the load generator
/// spreads clients over 127.0.0.2, 127.0.0.3, … so that they do not run out of ports).
#[tokio::test]
async fn connects_from_the_configured_source_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut config = ClientConfig::new(format!("ws://{addr}/v1/connect"), "tok");
    config.local_addr = Some("127.0.0.3".parse().unwrap());
    let (client, mut events) = Client::spawn(config);
    let (tcp, peer) = timeout(STEP, listener.accept()).await.unwrap().unwrap();
    assert_eq!(peer.ip().to_string(), "127.0.0.3");
    tokio::spawn(serve_conn(5, tcp, tx, Arc::new(Notify::new())));
    event(&mut events, connected(5)).await;
    client.close().await;
}
