//! Any bytes into `quic::next_frame` as a client's session stream, consumed as it says: never a
//! panic, every frame lies within the input and the limit, and the stream gives the same frames
//! and the same verdict whether it arrives whole or in reads of any size (so `NeedMore` never hides
//! an error or a frame). Each frame then goes to `decode_client`, as in the gateway.
//!
//! Input: the first byte picks the read size for the chunked pass (1–256 bytes); the rest is the
//! stream, which ends (FIN) after its last byte.
#![no_main]

use herald_proto::MAX_CLIENT_FRAME;
use herald_proto::frame::decode_client;
use herald_proto::quic::{Deframed, QuicFrameError, next_frame};
use libfuzzer_sys::fuzz_target;

/// Frames found, and the error that ended the stream (if any).
fn drain(buf: &[u8], fin: bool, frames: &mut Vec<Vec<u8>>) -> (usize, Option<QuicFrameError>) {
    let mut at = 0;
    loop {
        match next_frame(&buf[at..], MAX_CLIENT_FRAME, fin) {
            Ok(Deframed::Frame { start, end }) => {
                assert!(
                    start < end && at + end <= buf.len(),
                    "{start}..{end} of {}",
                    buf.len() - at
                );
                assert!(end - start <= MAX_CLIENT_FRAME);
                let frame = &buf[at + start..at + end];
                let _ = decode_client(frame);
                frames.push(frame.to_vec());
                at += end;
            }
            Ok(Deframed::NeedMore) => {
                assert!(!fin || at == buf.len(), "NeedMore at the end of the stream");
                return (at, None);
            }
            Err(e) => {
                let _ = e.to_string();
                return (at, Some(e));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [read, stream @ ..] = data else {
        return;
    };
    let mut whole = Vec::new();
    let whole_error = drain(stream, true, &mut whole).1;

    let mut chunked = Vec::new();
    let mut chunked_error = None;
    let mut pending = Vec::new();
    let chunks: Vec<&[u8]> = stream.chunks(usize::from(*read) + 1).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        pending.extend_from_slice(chunk);
        let (used, error) = drain(&pending, i + 1 == chunks.len(), &mut chunked);
        if error.is_some() {
            chunked_error = error;
            break;
        }
        pending.drain(..used);
    }
    if chunks.is_empty() {
        chunked_error = drain(&[], true, &mut chunked).1;
    }
    assert_eq!(whole, chunked);
    assert_eq!(whole_error, chunked_error);
});
