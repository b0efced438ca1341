use super::*;
use proptest::prelude::*;

#[test]
fn hello_bytes() {
    let f = ClientFrame::Hello {
        version: 1,
        token: "ab".into(),
    };
    assert_eq!(f.to_vec(), [0x01, 0x01, 0x02, b'a', b'b']);
    assert_eq!(decode_client(&f.to_vec()), Ok(f));
}

#[test]
fn bad_frames() {
    assert_eq!(decode_client(&[]), Err(FrameError::Empty));
    assert_eq!(decode_client(&[0x7f]), Err(FrameError::UnknownType(0x7f)));
    assert_eq!(
        decode_client(&[0x82, 0]),
        Err(FrameError::WrongDirection(0x82))
    );
    assert_eq!(
        decode_server(&[0x01, 1, 0]),
        Err(FrameError::WrongDirection(0x01))
    );
    assert_eq!(decode_client(&[0x04]), Err(FrameError::TruncatedVarint));
    assert_eq!(
        decode_client(&[0x04, 0x80]),
        Err(FrameError::TruncatedVarint)
    );
    let mut long = vec![0x04];
    long.extend([0xff; 10]);
    long.push(0x01);
    assert_eq!(decode_client(&long), Err(FrameError::VarintOverflow));
    assert_eq!(decode_client(&[0x04, 1, 2]), Err(FrameError::TrailingBytes));
    // HELLO whose token length runs past the frame.
    assert_eq!(
        decode_client(&[0x01, 1, 5, b'a']),
        Err(FrameError::LengthPastFrame)
    );
    // SUBSCRIBE whose count promises more pairs than there are bytes.
    assert_eq!(
        decode_client(&[0x02, 3, 1, 1]),
        Err(FrameError::LengthPastFrame)
    );
    assert_eq!(
        decode_client(&[0x02, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        Err(FrameError::LengthPastFrame)
    );
    assert_eq!(
        decode_client(&[0x01, 1, 1, 0xff]),
        Err(FrameError::InvalidUtf8)
    );
    let big = vec![0x04; MAX_CLIENT_FRAME + 1];
    assert_eq!(
        decode_client(&big),
        Err(FrameError::Oversized {
            len: MAX_CLIENT_FRAME + 1,
            max: MAX_CLIENT_FRAME
        })
    );
}

#[test]
fn subscribe_keeps_repeats_and_zero_count() {
    assert_eq!(
        decode_client(&[0x02, 0]),
        Ok(ClientFrame::Subscribe(vec![]))
    );
    assert_eq!(
        decode_client(&[0x02, 2, 7, 1, 7, 2]),
        Ok(ClientFrame::Subscribe(vec![(7, 1), (7, 2)]))
    );
}

#[test]
fn split_frames_fit_the_limit() {
    let pairs: Vec<(u64, u64)> = (0..10_000).map(|i| (u64::MAX - i, u64::MAX)).collect();
    let frames: Vec<_> = ServerFrame::changed_frames(&pairs).collect();
    assert!(frames.len() > 1);
    let mut seen = 0;
    for f in &frames {
        let bytes = f.to_vec();
        assert!(bytes.len() <= MAX_SERVER_FRAME);
        let ServerFrame::Changed(p) = decode_server(&bytes).unwrap() else {
            panic!()
        };
        seen += p.len();
    }
    assert_eq!(seen, pairs.len());
    let ns: Vec<u64> = (0..20_000).map(|i| u64::MAX - i).collect();
    for f in ServerFrame::denied_frames(Code::FORBIDDEN_NAMESPACE, &ns)
        .chain(ServerFrame::reset_frames(&ns))
    {
        assert!(f.to_vec().len() <= MAX_SERVER_FRAME);
    }
    let sub: Vec<(u64, u64)> = (0..MAX_PAIRS_PER_CLIENT_FRAME as u64)
        .map(|i| (u64::MAX - i, u64::MAX))
        .collect();
    assert!(ClientFrame::Subscribe(sub).to_vec().len() <= MAX_CLIENT_FRAME);
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (any::<u64>(), ".{0,40}")
            .prop_map(|(version, token)| ClientFrame::Hello { version, token }),
        proptest::collection::vec(any::<(u64, u64)>(), 0..50).prop_map(ClientFrame::Subscribe),
        proptest::collection::vec(any::<u64>(), 0..50).prop_map(ClientFrame::Unsubscribe),
        any::<u64>().prop_map(ClientFrame::Ping),
        any::<u64>().prop_map(ClientFrame::Pong),
        ".{0,40}".prop_map(|token| ClientFrame::Refresh { token }),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..20)
        )
            .prop_map(|(version, heartbeat_ms, max_subscriptions, session_id)| {
                ServerFrame::Welcome {
                    version,
                    heartbeat_ms,
                    max_subscriptions,
                    session_id,
                }
            }),
        proptest::collection::vec(any::<(u64, u64)>(), 0..50).prop_map(ServerFrame::Changed),
        (any::<u64>(), proptest::collection::vec(any::<u64>(), 0..50))
            .prop_map(|(c, ns)| ServerFrame::Denied { code: Code(c), ns }),
        proptest::collection::vec(any::<u64>(), 0..50).prop_map(ServerFrame::Reset),
        (any::<u64>(), any::<u64>()).prop_map(|(c, r)| ServerFrame::Goaway {
            code: Code(c),
            reconnect_after_ms: r
        }),
        (any::<u64>(), ".{0,40}").prop_map(|(c, message)| ServerFrame::Error {
            code: Code(c),
            message
        }),
        any::<u64>().prop_map(ServerFrame::Ping),
        any::<u64>().prop_map(ServerFrame::Pong),
    ]
}

proptest! {
    #[test]
    fn client_round_trip(f in client_frame()) {
        prop_assert_eq!(decode_client(&f.to_vec()), Ok(f));
    }

    #[test]
    fn server_round_trip(f in server_frame()) {
        prop_assert_eq!(decode_server(&f.to_vec()), Ok(f));
    }

    /// Arbitrary bytes never panic the decoders, and whatever decodes re-encodes to a frame that
    /// decodes to the same value (encodings may differ: non-minimal varints are accepted).
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(f) = decode_client(&bytes) {
            prop_assert_eq!(decode_client(&f.to_vec()), Ok(f));
        }
        if let Ok(f) = decode_server(&bytes) {
            prop_assert_eq!(decode_server(&f.to_vec()), Ok(f));
        }
    }

    /// Every strict prefix of a valid frame is an error, never a different valid frame or a panic
    /// (except where a prefix is itself a complete frame, e.g. an empty list).
    #[test]
    fn truncation(f in client_frame()) {
        let bytes = f.to_vec();
        for cut in 0..bytes.len() {
            if let Ok(g) = decode_client(&bytes[..cut]) {
                prop_assert_ne!(g, f.clone());
            }
        }
    }
}
