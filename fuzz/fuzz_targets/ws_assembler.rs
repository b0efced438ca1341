//! Any bytes into `ws::Assembler::next` as a client byte stream, consumed as it says: never a
//! panic, every step that consumes makes progress within the input, events respect the RFC 6455
//! and Herald limits, and
//! - the stream gives the same events whether it arrives whole or in reads of any size (so
//!   `NeedMore` never hides an error or an event that more bytes would not change);
//! - the message limit only ever refuses an oversized data message: with a far larger limit the
//!   stream gives the same events up to that point, and the refused spot is not a control frame
//!   or a message within the limit.
//!
//! Input: the first byte picks the read size for the chunked pass (1–256 bytes), the second a small
//! message limit (0–255 bytes) for the limit check; the rest is the stream.
#![no_main]

use herald_proto::MAX_CLIENT_FRAME;
use herald_proto::frame::decode_client;
use herald_proto::ws::{Assembler, Event, Step, WsError, parse_header};
use libfuzzer_sys::fuzz_target;

/// What the stream produced: its steps (events owned, and non-final fragments) and how it ended.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    events: Vec<Owned>,
    error: Option<WsError>,
    /// Payload bytes of the fragmented message in progress.
    partial: u64,
}

/// A step that consumed a frame: an [`Event`] detached from the input buffer, or a fragment.
#[derive(Debug, PartialEq, Eq)]
enum Owned {
    /// A non-final fragment (`Step::Consumed`), with the message's payload bytes so far.
    Fragment(u64),
    Message(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

impl From<&Event<'_>> for Owned {
    fn from(e: &Event<'_>) -> Self {
        match e {
            Event::Message(m) => Owned::Message(m.to_vec()),
            Event::Ping(p) => Owned::Ping(p.to_vec()),
            Event::Pong => Owned::Pong,
            Event::Close(c) => Owned::Close(*c),
        }
    }
}

/// Runs steps over `buf` until it needs more bytes or fails; returns how many bytes were consumed
/// and whether the stream failed (after which the connection is closed and nothing more is read).
fn drain(a: &mut Assembler, buf: &mut [u8], max: usize, out: &mut Outcome) -> (usize, bool) {
    let mut at = 0;
    loop {
        let rest = &mut buf[at..];
        let len = rest.len();
        let payload = parse_header(rest, usize::MAX)
            .ok()
            .flatten()
            .map(|h| h.payload_len);
        match a.next(rest, max) {
            Ok(Step::Event(event, n)) => {
                assert!(n > 0 && n <= len, "consumed {n} of {len}");
                check(&event, max);
                if let Event::Message(_) = event {
                    assert!(!a.in_progress());
                    out.partial = 0;
                }
                out.events.push(Owned::from(&event));
                at += n;
            }
            Ok(Step::Consumed(n)) => {
                assert!(n > 0 && n <= len, "consumed {n} of {len}");
                assert!(a.in_progress(), "Consumed without a message in progress");
                out.partial += payload.expect("a consumed frame has a header");
                out.events.push(Owned::Fragment(out.partial));
                at += n;
            }
            Ok(Step::NeedMore) => return (at, false),
            Err(e) => {
                let _ = e.to_string();
                out.error = Some(e);
                return (at, true);
            }
        }
    }
}

fn check(event: &Event<'_>, max: usize) {
    match event {
        Event::Message(m) => {
            assert!(m.len() <= max, "message of {} bytes", m.len());
            // What the gateway does next with it.
            let _ = decode_client(m);
        }
        Event::Ping(p) => assert!(p.len() <= 125, "ping of {} bytes", p.len()),
        Event::Pong => {}
        Event::Close(code) => {
            if let Some(c) = code {
                assert!(*c >= 1000 && *c < 5000, "close code {c}");
            }
        }
    }
}

/// Runs the whole stream at once with message limit `max`.
fn run(stream: &[u8], max: usize) -> Outcome {
    let mut out = Outcome::default();
    let mut buf = stream.to_vec();
    drain(&mut Assembler::default(), &mut buf, max, &mut out);
    out
}

/// Checks that limit `max` refused nothing but an oversized data message: `limited` is the run
/// with `max`, `roomy` the run with a limit the input cannot reach.
fn check_limit(limited: &Outcome, roomy: &Outcome, max: usize) {
    let Some(WsError::TooBig { .. }) = limited.error else {
        assert_eq!(limited, roomy);
        return;
    };
    let k = limited.events.len();
    assert!(roomy.events.len() >= k, "{limited:?} / {roomy:?}");
    assert_eq!(limited.events[..], roomy.events[..k]);
    // At the refused frame the roomy run may stall (NeedMore), fail, or take a data frame that
    // takes the message past the limit; never a control frame or a message within the limit.
    match roomy.events.get(k) {
        None => {}
        Some(Owned::Message(m)) => {
            assert!(
                m.len() > max,
                "limit {max} refused a {}-byte message",
                m.len()
            )
        }
        Some(Owned::Fragment(so_far)) => {
            assert!(
                *so_far > max as u64,
                "limit {max} refused a fragment at {so_far} bytes"
            )
        }
        Some(other) => panic!("limit {max} refused a control frame: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let [read, small, stream @ ..] = data else {
        return;
    };

    // The whole stream at once, with Herald's limit.
    let whole = run(stream, MAX_CLIENT_FRAME);

    // The same stream in reads of `read + 1` bytes, keeping the unconsumed tail like the gateway.
    let mut chunked = Outcome::default();
    let mut a = Assembler::default();
    let mut pending = Vec::new();
    for chunk in stream.chunks(usize::from(*read) + 1) {
        pending.extend_from_slice(chunk);
        let (used, failed) = drain(&mut a, &mut pending, MAX_CLIENT_FRAME, &mut chunked);
        if failed {
            break;
        }
        pending.drain(..used);
    }
    assert_eq!(whole, chunked);

    // The limit refuses only oversized data messages: at Herald's limit, and at a small one (0–255
    // bytes) that short inputs can cross in every way (fragments, control frames between them).
    let roomy = run(stream, ROOMY);
    check_limit(&whole, &roomy, MAX_CLIENT_FRAME);
    let small = usize::from(*small);
    check_limit(&run(stream, small), &roomy, small);
});

/// A message limit larger than any fuzz input.
const ROOMY: usize = 1 << 24;
