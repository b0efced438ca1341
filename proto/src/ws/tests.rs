use super::*;
use proptest::prelude::*;

/// A masked client frame, as a browser would send it (`fin` false: a fragment).
fn client_frame(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client_frame(op, payload, mask, &mut out);
    if !fin {
        out[0] &= 0x7f;
    }
    out
}

fn events(mut bytes: Vec<u8>) -> Result<Vec<String>, WsError> {
    let mut a = Assembler::default();
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        match a.next(&mut bytes[at..], 4096)? {
            Step::Event(e, n) => {
                out.push(format!("{e:?}"));
                at += n;
            }
            Step::Consumed(n) => at += n,
            Step::NeedMore => return Ok(out),
        }
    }
}

#[test]
fn binary_message_unmasked() {
    let f = client_frame(true, opcode::BINARY, b"\x04\x07", [1, 2, 3, 4]);
    let mut a = Assembler::default();
    let mut buf = f.clone();
    assert_eq!(
        a.next(&mut buf, 4096),
        Ok(Step::Event(
            Event::Message(Cow::Borrowed(&b"\x04\x07"[..])),
            f.len()
        ))
    );
}

#[test]
fn partial_input_needs_more() {
    let f = client_frame(true, opcode::BINARY, &[9; 300], [7, 7, 7, 7]);
    for cut in 0..f.len() {
        let mut buf = f[..cut].to_vec();
        assert_eq!(
            Assembler::default().next(&mut buf, 4096),
            Ok(Step::NeedMore)
        );
    }
}

#[test]
fn fragments_with_interleaved_ping() {
    let mut bytes = client_frame(false, opcode::BINARY, b"ab", [1, 1, 1, 1]);
    bytes.extend(client_frame(true, opcode::PING, b"p", [2, 2, 2, 2]));
    bytes.extend(client_frame(
        false,
        opcode::CONTINUATION,
        b"cd",
        [3, 3, 3, 3],
    ));
    bytes.extend(client_frame(true, opcode::CONTINUATION, b"e", [4, 4, 4, 4]));
    let ev = events(bytes).unwrap();
    assert_eq!(ev, ["Ping([112])", "Message([97, 98, 99, 100, 101])"]);
}

#[test]
fn protocol_violations() {
    let mut unmasked = client_frame(true, opcode::BINARY, b"x", [0; 4]);
    unmasked[1] &= 0x7f;
    unmasked.truncate(2);
    assert_eq!(events(unmasked), Err(WsError::Unmasked));
    assert_eq!(
        events(client_frame(true, opcode::TEXT, b"hi", [1; 4])),
        Err(WsError::Text)
    );
    assert_eq!(
        events(client_frame(true, 0x3, b"", [1; 4])),
        Err(WsError::ReservedOpcode(3))
    );
    let mut rsv = client_frame(true, opcode::BINARY, b"", [1; 4]);
    rsv[0] |= 0x40;
    assert_eq!(events(rsv), Err(WsError::ReservedBits));
    assert_eq!(
        events(client_frame(false, opcode::PING, b"", [1; 4])),
        Err(WsError::BadControl)
    );
    assert_eq!(
        events(client_frame(true, opcode::PING, &[0; 126], [1; 4])),
        Err(WsError::BadControl)
    );
    assert_eq!(
        events(client_frame(true, opcode::CONTINUATION, b"x", [1; 4])),
        Err(WsError::BadFragmentation)
    );
    let mut two_starts = client_frame(false, opcode::BINARY, b"x", [1; 4]);
    two_starts.extend(client_frame(true, opcode::BINARY, b"y", [1; 4]));
    assert_eq!(events(two_starts), Err(WsError::BadFragmentation));
    assert_eq!(
        events(client_frame(true, opcode::CLOSE, b"x", [1; 4])),
        Err(WsError::BadClose)
    );
    assert_eq!(
        events(client_frame(
            true,
            opcode::CLOSE,
            &[0x03, 0xe8, 0xff],
            [1; 4]
        )),
        Err(WsError::BadClose)
    );
    assert_eq!(
        events(client_frame(true, opcode::CLOSE, &[0x03, 0xec], [1; 4])),
        Err(WsError::BadClose)
    );
}

#[test]
fn size_limits() {
    // Refused at the header, before the payload arrives.
    let f = client_frame(true, opcode::BINARY, &[0; 5000], [1; 4]);
    assert_eq!(
        Assembler::default().next(&mut f[..14].to_vec(), 4096),
        Err(WsError::TooBig {
            len: 5000,
            max: 4096
        })
    );
    let mut huge = vec![0x82, 0xff];
    huge.extend(u64::MAX.to_be_bytes());
    assert!(matches!(events(huge), Err(WsError::TooBig { .. })));
    // Fragments that add up past the limit.
    let mut frags = client_frame(false, opcode::BINARY, &[0; 3000], [1; 4]);
    frags.extend(client_frame(true, opcode::CONTINUATION, &[0; 3000], [1; 4]));
    assert!(matches!(events(frags), Err(WsError::TooBig { .. })));
}

#[test]
fn close_frames() {
    assert_eq!(
        events(client_frame(true, opcode::CLOSE, b"", [1; 4])).unwrap(),
        ["Close(None)"]
    );
    assert_eq!(
        events(client_frame(
            true,
            opcode::CLOSE,
            &[0x0f, 0xa1, b'o', b'k'],
            [1; 4]
        ))
        .unwrap(),
        ["Close(Some(4001))"]
    );
    let mut out = Vec::new();
    encode_close(4001, &"é".repeat(100), &mut out);
    assert_eq!(out[1] as usize, out.len() - 2);
    assert!(out.len() - 2 <= 125);
    assert!(std::str::from_utf8(&out[4..]).is_ok());
}

#[test]
fn server_frame_lengths() {
    for len in [0usize, 125, 126, 65535, 65536] {
        let mut out = Vec::new();
        encode_frame(opcode::BINARY, &vec![1; len], &mut out);
        let header = out.len() - len;
        assert_eq!(
            header,
            if len < 126 {
                2
            } else if len <= 65535 {
                4
            } else {
                10
            }
        );
    }
}

proptest! {
    /// Any bytes: never a panic, and consumed counts stay within the input.
    #[test]
    fn arbitrary_bytes(mut bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut a = Assembler::default();
        let mut at = 0;
        while at < bytes.len() {
            match a.next(&mut bytes[at..], 4096) {
                Ok(Step::Event(_, n)) | Ok(Step::Consumed(n)) => { prop_assert!(n > 0); at += n; }
                Ok(Step::NeedMore) | Err(_) => break,
            }
            prop_assert!(at <= bytes.len());
        }
    }

    /// A message split into random fragments reassembles to itself.
    #[test]
    fn fragmentation(msg in proptest::collection::vec(any::<u8>(), 1..2000), cuts in proptest::collection::vec(1usize..500, 0..6)) {
        let mut bytes = Vec::new();
        let mut rest = &msg[..];
        let mut first = true;
        for c in cuts {
            if c >= rest.len() { break; }
            let (head, tail) = rest.split_at(c);
            bytes.extend(client_frame(false, if first { opcode::BINARY } else { opcode::CONTINUATION }, head, [9, 8, 7, 6]));
            first = false;
            rest = tail;
        }
        bytes.extend(client_frame(true, if first { opcode::BINARY } else { opcode::CONTINUATION }, rest, [5, 4, 3, 2]));
        let ev = events(bytes).unwrap();
        prop_assert_eq!(ev, vec![format!("{:?}", Event::Message(Cow::Borrowed(&msg[..])))]);
    }
}

#[test]
fn control_frames_do_not_count_against_the_message_limit() {
    // Regression: a ping between fragments was checked against the room left in the message
    // (here 6 bytes), so a valid 10-byte ping near the limit was refused as TooBig.
    let mut bytes = client_frame(false, opcode::BINARY, &[7; 4090], [1; 4]);
    bytes.extend(client_frame(true, opcode::PING, &[1; 10], [2; 4]));
    bytes.extend(client_frame(true, opcode::CLOSE, &[0x03, 0xe8], [3; 4]));
    bytes.extend(client_frame(true, opcode::CONTINUATION, &[7; 6], [4; 4]));
    let ev = events(bytes).unwrap();
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[0], "Ping([1, 1, 1, 1, 1, 1, 1, 1, 1, 1])");
    assert_eq!(ev[1], "Close(Some(1000))");
    assert_eq!(
        ev[2],
        format!("{:?}", Event::Message(Cow::Borrowed(&[7u8; 4096][..])))
    );
}

#[test]
fn client_frames_encode_as_the_server_reads_them() {
    for len in [0usize, 5, 125, 126, 300, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut out = Vec::new();
        encode_client_frame(opcode::BINARY, &payload, [1, 2, 3, 4], &mut out);
        assert_eq!(
            out,
            client_frame(true, opcode::BINARY, &payload, [1, 2, 3, 4])
        );
        let mut a = Assembler::default();
        match a.next(&mut out, 100_000).unwrap() {
            Step::Event(Event::Message(m), n) => {
                assert_eq!(&*m, &payload[..]);
                assert_eq!(n, out.len());
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn server_headers_parse_on_the_client() {
    for len in [0usize, 125, 126, 65_535, 65_536] {
        let mut out = Vec::new();
        encode_frame(opcode::BINARY, &vec![7; len], &mut out);
        let h = parse_server_header(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(h.payload_len, len as u64);
        assert_eq!(h.header_len + len, out.len());
        assert!(h.fin);
        assert_eq!(h.opcode, opcode::BINARY);
        assert_eq!(parse_server_header(&out[..1], 1 << 20), Ok(None));
        if h.header_len > 2 {
            assert_eq!(parse_server_header(&out[..3], 1 << 20), Ok(None));
        }
    }
    let mut masked = Vec::new();
    encode_client_frame(opcode::BINARY, b"x", [9, 9, 9, 9], &mut masked);
    assert_eq!(parse_server_header(&masked, 100), Err(WsError::Masked));
    assert_eq!(
        parse_server_header(&[0xc2, 0], 100),
        Err(WsError::ReservedBits)
    );
    assert_eq!(
        parse_server_header(&[0x09, 0], 100),
        Err(WsError::BadControl),
        "a fragmented ping"
    );
    assert!(matches!(
        parse_server_header(&[0x82, 126, 1, 0], 100),
        Err(WsError::TooBig { len: 256, .. })
    ));
}
