//! The shared conformance corpus (`proto/corpus/frames.json`, see its README): every case must
//! decode as the corpus says with this crate's codec, and every valid canonical case must encode
//! back to the same bytes. The TypeScript client checks the same file, so the codecs cannot drift.

use herald_proto::frame::{decode_client, decode_server};
use herald_proto::{ClientFrame, Code, FrameError, ServerFrame};
use serde_json::Value;

fn corpus() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/frames.json");
    let text = std::fs::read_to_string(path).expect("read proto/corpus/frames.json");
    let v: Value = serde_json::from_str(&text).expect("frames.json is JSON");
    assert_eq!(v["version"], 1, "corpus format version");
    v["cases"].as_array().expect("cases array").clone()
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// The case's bytes: `hex`, then `fill.count` copies of `fill.byte`.
fn bytes(case: &Value) -> Vec<u8> {
    let mut b = hex(case["hex"].as_str().expect("hex"));
    if let Some(fill) = case.get("fill") {
        let byte = hex(fill["byte"].as_str().expect("fill.byte"))[0];
        let count = fill["count"].as_u64().expect("fill.count");
        b.extend(std::iter::repeat_n(
            byte,
            usize::try_from(count).expect("count"),
        ));
    }
    b
}

fn u(v: &Value) -> u64 {
    v.as_str().expect("decimal string").parse().expect("u64")
}

fn list(v: &Value) -> Vec<u64> {
    v.as_array().expect("array").iter().map(u).collect()
}

fn pairs(v: &Value) -> Vec<(u64, u64)> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|p| (u(&p[0]), u(&p[1])))
        .collect()
}

fn text(v: &Value) -> String {
    v.as_str().expect("string").to_owned()
}

fn client_frame(f: &Value) -> ClientFrame {
    match f["type"].as_str().expect("type") {
        "hello" => ClientFrame::Hello {
            version: u(&f["version"]),
            token: text(&f["token"]),
        },
        "subscribe" => ClientFrame::Subscribe(pairs(&f["pairs"])),
        "unsubscribe" => ClientFrame::Unsubscribe(list(&f["ns"])),
        "ping" => ClientFrame::Ping(u(&f["nonce"])),
        "pong" => ClientFrame::Pong(u(&f["nonce"])),
        "refresh" => ClientFrame::Refresh {
            token: text(&f["token"]),
        },
        other => panic!("not a client frame type: {other}"),
    }
}

fn server_frame(f: &Value) -> ServerFrame {
    match f["type"].as_str().expect("type") {
        "welcome" => ServerFrame::Welcome {
            version: u(&f["version"]),
            heartbeat_ms: u(&f["heartbeat_ms"]),
            max_subscriptions: u(&f["max_subscriptions"]),
            session_id: hex(f["session_id"].as_str().expect("session_id")),
        },
        "changed" => ServerFrame::Changed(pairs(&f["pairs"])),
        "denied" => ServerFrame::Denied {
            code: Code(u(&f["code"])),
            ns: list(&f["ns"]),
        },
        "reset" => ServerFrame::Reset(list(&f["ns"])),
        "goaway" => ServerFrame::Goaway {
            code: Code(u(&f["code"])),
            reconnect_after_ms: u(&f["reconnect_after_ms"]),
        },
        "error" => ServerFrame::Error {
            code: Code(u(&f["code"])),
            message: text(&f["message"]),
        },
        "ping" => ServerFrame::Ping(u(&f["nonce"])),
        "pong" => ServerFrame::Pong(u(&f["nonce"])),
        other => panic!("not a server frame type: {other}"),
    }
}

/// The corpus name of a decoding error.
fn error_name(e: FrameError) -> &'static str {
    match e {
        FrameError::Empty => "empty",
        FrameError::UnknownType(_) => "unknown_type",
        FrameError::WrongDirection(_) => "wrong_direction",
        FrameError::TruncatedVarint => "truncated_varint",
        FrameError::VarintOverflow => "varint_overflow",
        FrameError::LengthPastFrame => "length_past_frame",
        FrameError::InvalidUtf8 => "invalid_utf8",
        FrameError::TrailingBytes => "trailing_bytes",
        FrameError::Oversized { .. } => "oversized",
        _ => "unnamed",
    }
}

#[test]
fn every_corpus_case_decodes_and_encodes_as_written() {
    let cases = corpus();
    assert!(cases.len() >= 100, "corpus shrank to {} cases", cases.len());
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let b = bytes(case);
        let encode = case.get("encode").and_then(Value::as_bool).unwrap_or(true);
        match (case["dir"].as_str().expect("dir"), case.get("frame")) {
            ("client", Some(f)) => {
                let want = client_frame(f);
                assert_eq!(decode_client(&b).as_ref(), Ok(&want), "{name}");
                if encode {
                    assert_eq!(want.to_vec(), b, "{name}: encoding");
                }
            }
            ("server", Some(f)) => {
                let want = server_frame(f);
                assert_eq!(decode_server(&b).as_ref(), Ok(&want), "{name}");
                if encode {
                    assert_eq!(want.to_vec(), b, "{name}: encoding");
                }
            }
            (dir, None) => {
                let want = case["error"].as_str().expect("frame or error");
                let got = if dir == "client" {
                    decode_client(&b).map(|_| ())
                } else {
                    decode_server(&b).map(|_| ())
                };
                assert_eq!(got.map_err(error_name), Err(want), "{name}");
            }
            (dir, _) => panic!("{name}: unknown dir {dir}"),
        }
    }
}
