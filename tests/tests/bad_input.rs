//! Hostile or broken input: each bad Herald frame gets ERROR(bad_frame) and close 4001, and the
//! gateway goes on serving everyone else; the plain HTTP answers of the client listener.

use herald_e2e::http;
use herald_e2e::{ClientFrame, Code, GatewayProcess, WsClient};
use tokio_tungstenite::tungstenite::Message;

/// When the bad message is sent.
#[derive(Clone, Copy, Debug)]
enum When {
    /// As the first message, instead of HELLO.
    First,
    /// After a good HELLO.
    AfterHello,
}

fn bin(bytes: &[u8]) -> Message {
    Message::binary(bytes.to_vec())
}

fn bad_messages() -> Vec<(&'static str, When, Message)> {
    let hello = |token: &[u8]| {
        let mut f = vec![0x01, 0x01, token.len() as u8];
        f.extend_from_slice(token);
        f
    };
    let mut oversized = ClientFrame::Ping(1).to_vec();
    oversized.resize(5000, 0);
    let mut huge_count = vec![0x02];
    huge_count.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    huge_count.extend_from_slice(&[1, 0, 2, 0]);
    let mut over_10 = vec![0x04];
    over_10.extend_from_slice(&[0x80; 10]);
    over_10.push(0x01);
    let mut past_2_64 = vec![0x04];
    past_2_64.extend_from_slice(&[0xff; 9]);
    past_2_64.push(0x02);
    vec![
        (
            "garbage",
            When::AfterHello,
            bin(b"\xde\xad\xbe\xef garbage"),
        ),
        ("empty binary message", When::AfterHello, bin(b"")),
        ("empty message before HELLO", When::First, bin(b"")),
        ("unknown type", When::AfterHello, bin(&[0x40, 0x00])),
        (
            "server-only type (CHANGED)",
            When::AfterHello,
            bin(&[0x82, 0x00]),
        ),
        (
            "server-only type (WELCOME)",
            When::First,
            bin(&[0x81, 1, 1, 1, 0]),
        ),
        ("truncated varint", When::AfterHello, bin(&[0x04, 0x80])),
        ("varint over 10 bytes", When::AfterHello, bin(&over_10)),
        ("varint past 2^64", When::AfterHello, bin(&past_2_64)),
        (
            "length past frame",
            When::First,
            bin(&[0x01, 0x01, 0x10, b'a', b'b']),
        ),
        ("trailing bytes", When::AfterHello, bin(&[0x04, 0x01, 0x00])),
        (
            "invalid UTF-8 token",
            When::First,
            bin(&hello(b"\xff\xfe\xfd")),
        ),
        ("oversized (5000 bytes)", When::AfterHello, bin(&oversized)),
        ("oversized before HELLO", When::First, bin(&oversized)),
        ("text message", When::AfterHello, Message::text("hello")),
        (
            "text message before HELLO",
            When::First,
            Message::text("hello"),
        ),
        (
            "SUBSCRIBE before HELLO",
            When::First,
            bin(&ClientFrame::Subscribe(vec![(1, 0)]).to_vec()),
        ),
        (
            "PING before HELLO",
            When::First,
            bin(&ClientFrame::Ping(7).to_vec()),
        ),
        ("second HELLO", When::AfterHello, bin(&hello(b"x"))),
        (
            "SUBSCRIBE with a huge count",
            When::AfterHello,
            bin(&huge_count),
        ),
        (
            "UNSUBSCRIBE with a huge count",
            When::AfterHello,
            bin(&[0x03, 0xff, 0xff, 0x03, 1]),
        ),
    ]
}

#[tokio::test]
async fn bad_frames_get_error_and_close_4001() {
    let gw = GatewayProcess::start_default();
    // A bystander connected throughout must be unaffected.
    let mut bystander = gw.client().await;
    assert!(bystander.subscribe(&[(1, 0)]).await.is_empty());

    for (i, (what, when, msg)) in bad_messages().into_iter().enumerate() {
        let mut c = WsClient::connect(gw.ws_addr()).await;
        if let When::AfterHello = when {
            c.hello(&gw.token_all()).await;
        }
        // The server may refuse an oversized frame by its header and close before the payload
        // is all written; what matters is what it answers.
        let _ = c.try_send_raw(msg).await;
        match tokio::time::timeout(herald_e2e::WAIT * 2, c.expect_error_close(Code::BAD_FRAME))
            .await
        {
            Ok(message) => assert!(!message.is_empty(), "{what}: ERROR has a message"),
            Err(_) => panic!("{what}: no ERROR and close"),
        }

        // The process is unaffected: a fresh client is served, and so is the bystander.
        let mut fresh = gw.client().await;
        assert!(fresh.barrier().await.is_empty(), "{what}");
        let sjid = i as u64 + 1;
        gw.publish_ok(&[(1, sjid)]).await;
        assert_eq!(
            bystander.changed_until(1, sjid, herald_e2e::WAIT).await,
            vec![sjid],
            "{what}"
        );
    }
}

#[tokio::test]
async fn http_answers_of_the_client_listener() {
    let gw = GatewayProcess::start_default();
    let addr = gw.ws_addr();
    let upgrade = |path: &str, protocol: Option<&str>| {
        let mut r = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(p) = protocol {
            r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        r.push_str("\r\n");
        r.into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "plain GET /v1/connect",
            b"GET /v1/connect HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            426,
        ),
        (
            "upgrade without subprotocol",
            upgrade("/v1/connect", None),
            400,
        ),
        (
            "upgrade offering another subprotocol",
            upgrade("/v1/connect", Some("chat, mqtt")),
            400,
        ),
        (
            "upgrade on another path",
            upgrade("/v2/connect", Some("herald.v1")),
            404,
        ),
        (
            "other path",
            b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            404,
        ),
        (
            "another method on /v1/connect",
            b"DELETE /v1/connect HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            405,
        ),
        (
            "garbage request",
            b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec(),
            400,
        ),
        ("bad request line", b"HELLO THERE\r\n\r\n".to_vec(), 400),
    ];
    for (what, request, status) in cases {
        let resp = http::raw(addr, &request)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
    }
    // A head over 8 KiB is refused with 431.
    let mut big = b"GET /v1/connect HTTP/1.1\r\nX-Filler: ".to_vec();
    big.resize(9 * 1024, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(http::raw(addr, &big).await.unwrap().status, 431);

    // tungstenite sees the 400 too, and a proper client is still served afterwards.
    assert!(WsClient::connect_offering(addr, None).await.is_err());
    let mut c = gw.client().await;
    assert!(c.barrier().await.is_empty());
}
