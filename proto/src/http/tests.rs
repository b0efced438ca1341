use super::*;

/// `decide` with no CORS origins allowed (the CORS cases call `super::decide`).
fn decide(buf: &[u8], admission: Admission) -> Option<Decision> {
    super::decide(buf, admission, &AllowedOrigins::None)
}

const OPEN: Admission = Admission {
    full: false,
    draining: false,
    rate_limited: false,
};

fn req(lines: &[&str]) -> Vec<u8> {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn good() -> Vec<u8> {
    req(&[
        "GET /v1/connect HTTP/1.1",
        "Host: x",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: chat, herald.v1",
    ])
}

fn status(d: Option<Decision>) -> u16 {
    match d.unwrap() {
        Decision::Upgrade { .. } => 101,
        Decision::LongPoll { .. } => 200,
        Decision::Refuse { status, .. } => status,
        Decision::Preflight { .. } => 204,
    }
}

#[test]
fn upgrade_accept_key_from_rfc() {
    let mut bytes = good();
    let head = bytes.len();
    bytes.extend_from_slice(b"\x82\x80");
    let Some(Decision::Upgrade { response, head_len }) = decide(&bytes, OPEN) else {
        panic!()
    };
    assert_eq!(head_len, head);
    let text = String::from_utf8(response).unwrap();
    // The RFC 6455 section 1.3 example.
    assert!(
        text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{text}"
    );
    assert!(text.contains("Sec-WebSocket-Protocol: herald.v1\r\n"));
}

#[test]
fn refusals() {
    assert_eq!(decide(&good()[..20], OPEN), None);
    assert_eq!(
        status(decide(&req(&["GET /v1/connect HTTP/1.1", "Host: x"]), OPEN)),
        426
    );
    let no_proto: Vec<u8> = String::from_utf8(good())
        .unwrap()
        .replace("chat, herald.v1", "chat")
        .into_bytes();
    assert_eq!(status(decide(&no_proto, OPEN)), 400);
    let bad_key = String::from_utf8(good())
        .unwrap()
        .replace("dGhlIHNhbXBsZSBub25jZQ==", "short")
        .into_bytes();
    assert_eq!(status(decide(&bad_key, OPEN)), 400);
    let v8 = String::from_utf8(good())
        .unwrap()
        .replace("Version: 13", "Version: 8")
        .into_bytes();
    assert_eq!(status(decide(&v8, OPEN)), 426);
    assert_eq!(status(decide(&req(&["GET /other HTTP/1.1"]), OPEN)), 404);
    assert_eq!(
        status(decide(&req(&["POST /v1/connect HTTP/1.1"]), OPEN)),
        405
    );
    assert_eq!(status(decide(b"\x00\x01garbage\r\n\r\n", OPEN)), 400);
    let full = Admission {
        full: true,
        draining: false,
        rate_limited: false,
    };
    let Some(Decision::Refuse {
        status: 503,
        response,
    }) = decide(&good(), full)
    else {
        panic!()
    };
    assert!(
        String::from_utf8(response)
            .unwrap()
            .contains("Retry-After: 5\r\n")
    );
}

#[test]
fn whole_head_over_the_limit_is_431() {
    let filler = format!("X-Filler: {}", "a".repeat(MAX_HEAD));
    let big = req(&["GET /v1/connect HTTP/1.1", "Host: x", &filler]);
    assert_eq!(status(decide(&big, OPEN)), 431);
}

#[test]
fn longpoll_heads() {
    let head = |extra: &str| format!("POST /v1/longpoll HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    let d = decide(head("Content-Length: 12\r\n").as_bytes(), OPEN);
    let Some(Decision::LongPoll {
        body_len: 12,
        keep_alive: true,
        ..
    }) = d
    else {
        panic!("{d:?}")
    };
    let d = decide(
        head("Content-Length: 5\r\nConnection: close\r\n").as_bytes(),
        OPEN,
    );
    assert!(
        matches!(
            d,
            Some(Decision::LongPoll {
                keep_alive: false,
                ..
            })
        ),
        "{d:?}"
    );
    assert_eq!(status(decide(head("").as_bytes(), OPEN)), 400);
    assert_eq!(
        status(decide(
            head("Transfer-Encoding: chunked\r\n").as_bytes(),
            OPEN
        )),
        400
    );
    assert_eq!(
        status(decide(head("Content-Length: 70000\r\n").as_bytes(), OPEN)),
        400
    );
    let draining = Admission {
        full: false,
        draining: true,
        rate_limited: false,
    };
    assert_eq!(
        status(decide(head("Content-Length: 5\r\n").as_bytes(), draining)),
        503
    );
    let rate = Admission {
        full: false,
        draining: false,
        rate_limited: true,
    };
    assert_eq!(
        status(decide(head("Content-Length: 5\r\n").as_bytes(), rate)),
        429
    );
    assert_eq!(
        status(decide(b"GET /v1/longpoll HTTP/1.1\r\n\r\n", OPEN)),
        405
    );
}

#[test]
fn longpoll_refusals_carry_a_json_error_body() {
    let Some(Decision::Refuse { status, response }) = decide(
        b"POST /v1/longpoll HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
        OPEN,
    ) else {
        panic!()
    };
    assert_eq!(status, 400);
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("Content-Type: application/json"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    let parsed = ErrorBody::parse_lenient(body.as_bytes());
    assert_eq!(parsed.name(), Some(ErrorName::BadRequest));
}

#[test]
fn ok_responses_are_never_cached() {
    let text = String::from_utf8(ok_response("{}", false, &[])).unwrap();
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    );
    assert!(
        String::from_utf8(ok_response("{}", true, &[]))
            .unwrap()
            .contains("Connection: keep-alive\r\n")
    );
}

proptest::proptest! {
    /// Any bytes: a decision or "read more", never a panic (the fuzz target runs this longer).
    #[test]
    fn any_head_is_decided_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        for admission in [OPEN, Admission { full: true, draining: false, rate_limited: true }] {
            if let Some(Decision::Refuse { response, .. }) = decide(&bytes, admission) {
                proptest::prop_assert!(response.starts_with(b"HTTP/1.1 "));
            }
        }
    }
}

#[test]
fn cors_reaches_listed_origins_only() {
    let origins = AllowedOrigins::parse(&["https://app.example".to_owned()]).unwrap();
    let poll = |origin: &str| {
        format!("POST /v1/longpoll HTTP/1.1\r\nHost: x\r\n{origin}Content-Length: 5\r\n\r\n")
    };
    let Some(Decision::LongPoll { cors, .. }) = super::decide(
        poll("Origin: https://app.example\r\n").as_bytes(),
        OPEN,
        &origins,
    ) else {
        panic!()
    };
    assert_eq!(origins.headers(cors)[0].1, "https://app.example");
    let Some(Decision::LongPoll { cors, .. }) = super::decide(
        poll("Origin: https://other.example\r\n").as_bytes(),
        OPEN,
        &origins,
    ) else {
        panic!()
    };
    assert_eq!(cors, crate::cors::Grant::NONE);
    // A refusal decided from the head carries the headers too, so the page can read why.
    let draining = Admission {
        full: false,
        draining: true,
        rate_limited: false,
    };
    let Some(Decision::Refuse { response, .. }) = super::decide(
        poll("Origin: https://app.example\r\n").as_bytes(),
        draining,
        &origins,
    ) else {
        panic!()
    };
    let text = String::from_utf8(response).unwrap();
    assert!(
        text.contains("Access-Control-Allow-Origin: https://app.example\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Access-Control-Expose-Headers: Retry-After\r\n"),
        "{text}"
    );
    // The preflight of a listed origin, and of another one.
    let preflight = |origin: &str| {
        let head = format!(
            "OPTIONS /v1/longpoll HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\n\r\n"
        );
        match super::decide(head.as_bytes(), OPEN, &origins) {
            Some(Decision::Preflight { response }) => String::from_utf8(response).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    let ok = preflight("https://app.example");
    assert!(ok.starts_with("HTTP/1.1 204 "), "{ok}");
    assert!(
        ok.contains("Access-Control-Allow-Methods: POST\r\n"),
        "{ok}"
    );
    assert!(!preflight("https://other.example").contains("Access-Control"));
}

#[test]
fn accept_key_is_the_rfc_example() {
    assert_eq!(
        accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn a_client_upgrade_round_trips_through_decide() {
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let request = upgrade_request("127.0.0.1:8080", key);
    let Some(Decision::Upgrade { response, head_len }) = decide(&request, OPEN) else {
        panic!("the gateway's own decision refuses the client's request")
    };
    assert_eq!(head_len, request.len());
    let accept = accept_key(key.as_bytes());
    let mut bytes = response.clone();
    bytes.extend_from_slice(b"\x82\x01\x81");
    assert_eq!(
        parse_upgrade_response(&bytes, &accept),
        Ok(Some(UpgradeResponse::Switched {
            head_len: response.len()
        }))
    );
    assert_eq!(parse_upgrade_response(&response[..10], &accept), Ok(None));
    assert_eq!(
        parse_upgrade_response(&response, "wrong"),
        Err(UpgradeError::BadAccept)
    );
}

#[test]
fn a_refused_upgrade_gives_status_and_retry_after() {
    let closed = Admission { full: true, ..OPEN };
    let request = upgrade_request("x", "dGhlIHNhbXBsZSBub25jZQ==");
    let Some(Decision::Refuse { response, .. }) = decide(&request, closed) else {
        panic!()
    };
    assert_eq!(
        parse_upgrade_response(&response, "unused"),
        Ok(Some(UpgradeResponse::Refused {
            status: 503,
            retry_after: Some(5)
        }))
    );
    assert_eq!(
        parse_upgrade_response(b"garbage\r\n\r\n", "x"),
        Err(UpgradeError::Malformed)
    );
}
