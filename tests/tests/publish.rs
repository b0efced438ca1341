//! The standalone publish API (`POST /v1/publish` on the admin listener, C10).

use herald_e2e::{GatewayProcess, ServerFrame, WAIT};

#[tokio::test]
async fn accepted_batches() {
    let gw = GatewayProcess::start_default();
    let mut c = gw.client().await;
    assert!(c.subscribe(&[(0, 0), (2, 0)]).await.is_empty());

    let r = gw.publish(&[(0, 1), (0, 2), (2, 5)]).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"accepted": 3}));
    // Coalescing is allowed, so ns 0 may come as 1 then 2, or as 2 alone; ns 0 is valid.
    assert_eq!(c.changed_until(0, 2, WAIT).await.last(), Some(&2));
    assert_eq!(c.changed_until(2, 5, WAIT).await, vec![5]);

    let r = gw.publish(&[]).await;
    assert_eq!(
        (r.status, r.json()),
        (202, serde_json::json!({"accepted": 0}))
    );
    // Unknown fields are ignored; strings work for small values too.
    let r = gw
        .publish_raw(br#"{"changes":[{"ns":"2","sjid":"6","extra":true}],"note":"x"}"#)
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(c.recv_frame(WAIT).await, ServerFrame::Changed(vec![(2, 6)]));
}

#[tokio::test]
async fn malformed_batches_are_rejected_whole() {
    let gw = GatewayProcess::start_default();
    let mut c = gw.client().await;
    assert!(c.subscribe(&[(60, 0), (61, 0)]).await.is_empty());

    let cases: &[(&str, &str)] = &[
        (
            "sjid 0",
            r#"{"changes":[{"ns":60,"sjid":1},{"ns":61,"sjid":0}]}"#,
        ),
        (
            "ns -1",
            r#"{"changes":[{"ns":60,"sjid":1},{"ns":-1,"sjid":1}]}"#,
        ),
        (
            "ns 1.5",
            r#"{"changes":[{"ns":60,"sjid":1},{"ns":1.5,"sjid":1}]}"#,
        ),
        (
            "number above 2^53",
            r#"{"changes":[{"ns":60,"sjid":9007199254740993}]}"#,
        ),
        (
            "string above 2^64",
            r#"{"changes":[{"ns":60,"sjid":"18446744073709551616"}]}"#,
        ),
        (
            "string with a sign",
            r#"{"changes":[{"ns":"+60","sjid":1}]}"#,
        ),
        (
            "missing sjid",
            r#"{"changes":[{"ns":60,"sjid":1},{"ns":61}]}"#,
        ),
        ("missing ns", r#"{"changes":[{"sjid":1}]}"#),
        ("null sjid", r#"{"changes":[{"ns":60,"sjid":null}]}"#),
        ("changes not an array", r#"{"changes":{}}"#),
        ("no changes", r#"{}"#),
        ("not JSON", "changes=60:1"),
        ("truncated JSON", r#"{"changes":[{"ns":60,"#),
    ];
    for (what, body) in cases {
        let r = gw.publish_raw(body.as_bytes()).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        let v = r.json();
        assert_eq!(v["error"], "bad_request", "{what}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: a message says why: {v}"
        );
    }
    // None of those batches was applied, not even their good entries.
    assert!(c.subscribe(&[(60, 0), (61, 0)]).await.is_empty());
    let mut d = gw.client().await;
    assert_eq!(
        d.subscribe(&[(60, 1)]).await,
        vec![ServerFrame::Reset(vec![60])]
    );
}

#[tokio::test]
async fn body_over_1_mib_is_413() {
    let gw = GatewayProcess::start_default();
    let entry = r#"{"ns":1,"sjid":1},"#;
    let mut body = String::from(r#"{"changes":["#);
    while body.len() <= 1024 * 1024 {
        body.push_str(entry);
    }
    body.push_str(r#"{"ns":1,"sjid":2}]}"#);
    let r = gw.publish_raw(body.as_bytes()).await;
    assert_eq!(r.status, 413, "{}", r.text());

    // Just under the limit is fine.
    let mut body = String::from(r#"{"changes":["#);
    let mut n = 0;
    while body.len() < 1024 * 1024 - 64 {
        body.push_str(entry);
        n += 1;
    }
    body.push_str(r#"{"ns":1,"sjid":2}]}"#);
    let r = gw.publish_raw(body.as_bytes()).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["accepted"], n + 1);
}

#[tokio::test]
async fn sjids_above_2_pow_53_are_exact_end_to_end() {
    let gw = GatewayProcess::start_default();
    let big_ns = u64::MAX;
    let sjid = (1 << 53) + 1;
    let top = u64::MAX - 3;
    let mut c = gw.client().await;
    assert!(c.subscribe(&[(70, 0), (big_ns, 0)]).await.is_empty());

    // `publish` sends values above 2^53 as decimal strings.
    gw.publish_ok(&[(70, sjid)]).await;
    assert_eq!(
        c.recv_frame(WAIT).await,
        ServerFrame::Changed(vec![(70, sjid)])
    );
    gw.publish_ok(&[(big_ns, top)]).await;
    assert_eq!(
        c.recv_frame(WAIT).await,
        ServerFrame::Changed(vec![(big_ns, top)])
    );
    gw.publish_ok(&[(70, sjid + 1)]).await;
    assert_eq!(
        c.recv_frame(WAIT).await,
        ServerFrame::Changed(vec![(70, sjid + 1)])
    );

    // The cursor check is exact at that size too.
    let mut d = gw.client().await;
    assert_eq!(d.subscribe(&[(big_ns, top)]).await, vec![]);
    assert_eq!(
        d.subscribe(&[(big_ns, top - 1)]).await,
        vec![ServerFrame::Changed(vec![(big_ns, top)])]
    );
    assert_eq!(
        d.subscribe(&[(big_ns, top + 1)]).await,
        vec![ServerFrame::Reset(vec![big_ns])]
    );
}
