//! Any bytes as a request head on the client listener: `http::decide` never panics, under every
//! admission state; a decided head lies within the input; every refusal is a whole HTTP/1.1
//! response whose Content-Length matches its body; an upgrade answers 101.
#![no_main]

use herald_proto::cors::AllowedOrigins;
use herald_proto::http::{Admission, Decision, MAX_HEAD, decide};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, head)) = data.split_first() else {
        return;
    };
    let admission = Admission {
        full: flags & 1 != 0,
        draining: flags & 2 != 0,
        rate_limited: flags & 4 != 0,
    };
    // Bit 3 picks a policy with CORS on, so its headers are exercised too.
    let origins = if flags & 8 != 0 {
        AllowedOrigins::Any
    } else {
        AllowedOrigins::None
    };
    match decide(head, admission, &origins) {
        None => {}
        Some(Decision::Upgrade { response, head_len }) => {
            assert!(head_len <= head.len() && head_len <= MAX_HEAD);
            assert!(response.starts_with(b"HTTP/1.1 101 "));
        }
        Some(Decision::LongPoll {
            head_len, body_len, ..
        }) => {
            assert!(head_len <= head.len() && head_len <= MAX_HEAD);
            assert!(body_len <= herald_proto::longpoll::MAX_BODY);
        }
        Some(Decision::Preflight { response }) => {
            assert!(response.starts_with(b"HTTP/1.1 204 "));
        }
        Some(Decision::Refuse { status, response }) => {
            assert!((400..600).contains(&status));
            let text = std::str::from_utf8(&response).expect("responses are UTF-8");
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")));
            let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("Content-Length");
            assert_eq!(length.parse::<usize>().ok(), Some(body.len()));
        }
    }
});
