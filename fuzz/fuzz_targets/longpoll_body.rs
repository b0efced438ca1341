//! Any bytes as a long-poll body: `Request::parse`, `Reply::parse` and `ErrorBody::parse_lenient`
//! never panic; a request or reply that parses re-encodes to one that parses to the same value
//! (cursors compared as sets: a JSON object keeps one value per namespace).
#![no_main]

use herald_proto::longpoll::{ErrorBody, MAX_TIMEOUT_S, MIN_TIMEOUT_S, Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::parse(data) {
        assert!(!req.cursors.is_empty());
        assert!((MIN_TIMEOUT_S..=MAX_TIMEOUT_S).contains(&req.timeout_s));
        let again = Request::parse(&req.encode()).expect("own encoding parses");
        let (mut a, mut b) = (req.cursors.clone(), again.cursors.clone());
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        assert_eq!((again.token, again.timeout_s), (req.token, req.timeout_s));
    }
    if let Ok(reply) = Reply::parse(data) {
        let again = Reply::parse(reply.encode().as_bytes()).expect("own encoding parses");
        assert_eq!(again.reset, reply.reset);
        assert_eq!(again.backoff_s, reply.backoff_s);
        // Encoding merges changes per namespace (highest SJID).
        for &(ns, sjid) in &again.changes {
            let max = reply
                .changes
                .iter()
                .filter(|c| c.0 == ns)
                .map(|c| c.1)
                .max();
            assert_eq!(max, Some(sjid));
        }
    }
    let _ = ErrorBody::parse_lenient(data);
});
