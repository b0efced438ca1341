//! The long-poll half of the shared conformance corpus (`proto/corpus/longpoll.json`): the
//! request bodies and reply parsing of `herald_proto::longpoll` (which the gateway and the Rust
//! client both use) must match it, as the TypeScript client's must.

use herald_proto::longpoll::{Reply, Request};
use serde_json::Value;

fn corpus() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/longpoll.json");
    let text = std::fs::read_to_string(path).expect("read proto/corpus/longpoll.json");
    let v: Value = serde_json::from_str(&text).expect("longpoll.json is JSON");
    assert_eq!(v["version"], 1, "corpus format version");
    v
}

fn u(v: &Value) -> u64 {
    v.as_str().expect("decimal string").parse().expect("u64")
}

#[test]
fn request_bodies_match_the_corpus() {
    let v = corpus();
    let cases = v["requests"].as_array().expect("requests");
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let cursors: Vec<(u64, u64)> = case["cursors"]
            .as_array()
            .expect("cursors")
            .iter()
            .map(|p| (u(&p[0]), u(&p[1])))
            .collect();
        let body = Request {
            token: case["token"].as_str().expect("token").to_owned(),
            cursors,
            timeout_s: case["timeout_s"].as_u64().expect("timeout_s"),
        }
        .encode();
        let got: Value = serde_json::from_slice(&body).expect("body is JSON");
        assert_eq!(got, case["json"], "{name}");
    }
}

#[test]
fn replies_parse_as_the_corpus_says() {
    let v = corpus();
    let cases = v["replies"].as_array().expect("replies");
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let got = Reply::parse(case["body"].as_str().expect("body").as_bytes());
        if case.get("error").is_some() {
            assert!(got.is_err(), "{name}: parsed {got:?}");
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = &case["reply"];
        let changes: Vec<(u64, u64)> = want["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .map(|p| (u(&p[0]), u(&p[1])))
            .collect();
        let reset: Vec<u64> = want["reset"]
            .as_array()
            .expect("reset")
            .iter()
            .map(u)
            .collect();
        assert_eq!(got.changes, changes, "{name}: changes");
        assert_eq!(got.reset, reset, "{name}: reset");
        assert_eq!(
            got.backoff_s,
            want["backoff_s"].as_u64(),
            "{name}: backoff_s"
        );
    }
}
