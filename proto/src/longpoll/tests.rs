use super::*;
use proptest::prelude::*;

#[test]
fn parses_requests_and_refuses_bad_ones() {
    let r = Request::parse(
        br#"{"token":"t","cursors":{"7":42,"9007199254740993":"18446744073709551615"}}"#,
    )
    .expect("valid");
    assert_eq!(r.timeout_s, MIN_TIMEOUT_S);
    let mut c = r.cursors.clone();
    c.sort_unstable();
    assert_eq!(c, vec![(7, 42), (9_007_199_254_740_993, u64::MAX)]);
    for bad in [
        &br#"{"token":"t","cursors":{}}"#[..],
        br#"{"token":"t"}"#,
        br#"{"cursors":{"1":1}}"#,
        br#"{"token":"t","cursors":{"1":1},"timeout_s":29}"#,
        br#"{"token":"t","cursors":{"1":1},"timeout_s":481}"#,
        br#"{"token":"t","cursors":{"1":1},"timeout_s":30.5}"#,
        br#"{"token":"t","cursors":{"1":1},"timeout_s":"30"}"#,
        br#"{"token":"t","cursors":{"1":9007199254740993}}"#,
        br#"{"token":"t","cursors":{"x":1}}"#,
        br#"{"token":"t","cursors":{"1":-1}}"#,
        br#"[1,2]"#,
        b"not json",
    ] {
        assert!(
            Request::parse(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn reply_merges_changes_and_quotes_big_numbers() {
    let reply = Reply {
        changes: vec![(7, 3), (2, 1), (7, 5), (u64::MAX, 1 << 60)],
        reset: vec![9],
        backoff_s: Some(4),
    };
    assert_eq!(
        reply.encode(),
        r#"{"changes":[{"ns":2,"sjid":1},{"ns":7,"sjid":5},{"ns":"18446744073709551615","sjid":"1152921504606846976"}],"reset":[9],"backoff_s":4}"#
    );
    assert_eq!(
        Reply::default().encode(),
        r#"{"changes":[],"reset":[],"backoff_s":null}"#
    );
    let back = Reply::parse(reply.encode().as_bytes()).expect("own reply");
    assert_eq!(back.changes, vec![(2, 1), (7, 5), (u64::MAX, 1 << 60)]);
    assert_eq!(back.backoff_s, Some(4));
}

#[test]
fn replies_without_their_arrays_are_refused() {
    for bad in [
        &br#"{"reset":[],"backoff_s":null}"#[..],
        br#"{"changes":[],"backoff_s":null}"#,
        br#"{"changes":[{"ns":1}],"reset":[]}"#,
        br#"{"changes":[],"reset":["x"]}"#,
    ] {
        assert!(
            Reply::parse(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        Reply::parse(br#"{"changes":[],"reset":[]}"#),
        Ok(Reply::default())
    );
}

#[test]
fn error_names_round_trip_and_bodies_read_leniently() {
    for name in ErrorName::ALL {
        assert_eq!(ErrorName::from_wire(name.as_str()), Some(name));
    }
    assert_eq!(ErrorName::from_wire("nope"), None);
    let body = ErrorBody::encode(ErrorName::ForbiddenNamespace, "no", &[3, u64::MAX]);
    assert_eq!(
        body,
        r#"{"error":"forbidden_namespace","message":"no","namespaces":[3,"18446744073709551615"]}"#
    );
    let parsed = ErrorBody::parse_lenient(body.as_bytes());
    assert_eq!(parsed.name(), Some(ErrorName::ForbiddenNamespace));
    assert_eq!(parsed.namespaces, vec![3, u64::MAX]);
    let proxy = ErrorBody::parse_lenient(b"<html>502 Bad Gateway</html>\n");
    assert_eq!(proxy.error, "");
    assert_eq!(proxy.message, "<html>502 Bad Gateway</html>");
    assert_eq!(proxy.name(), None);
}

fn cursors() -> impl Strategy<Value = Vec<(u64, u64)>> {
    // Distinct namespaces: a JSON object keeps one value per key.
    proptest::collection::btree_map(any::<u64>(), any::<u64>(), 1..20)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #[test]
    fn requests_round_trip(token in "[ -~]{0,64}", cursors in cursors(),
                           timeout_s in MIN_TIMEOUT_S..=MAX_TIMEOUT_S) {
        let req = Request { token, cursors, timeout_s };
        let mut back = Request::parse(&req.encode()).expect("own encoding parses");
        back.cursors.sort_unstable();
        prop_assert_eq!(back, req);
    }

    #[test]
    fn replies_round_trip(changes in cursors(),
                          reset in proptest::collection::vec(any::<u64>(), 0..8),
                          backoff_s in proptest::option::of(0u64..3600)) {
        let reply = Reply { changes, reset, backoff_s };
        prop_assert_eq!(Reply::parse(reply.encode().as_bytes()), Ok(reply));
    }

    /// Arbitrary bytes never panic a parser (the fuzz targets run the same calls longer).
    #[test]
    fn parsers_take_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Request::parse(&body);
        let _ = Reply::parse(&body);
        let _ = ErrorBody::parse_lenient(&body);
    }
}
