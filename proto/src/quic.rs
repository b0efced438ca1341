//! QUIC stream framing (PROTOCOL.md "Transports"), sans-IO: on the session stream each Herald
//! frame is preceded by its length as a varint. The frame size limit applies to the frame
//! without its length prefix.
//!
//! Why by hand: it is a varint and a length check, and the gateway reads every stream into a
//! per-worker scratch buffer, so the deframer must work on borrowed, possibly partial bytes and
//! keep no state between calls (a length-delimited codec from a crate would own a buffer per
//! connection).

use crate::varint::{self, VarintError};

/// Why bytes on the session stream are not a well-framed sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuicFrameError {
    /// The length prefix is over 10 bytes or past 2^64.
    #[error("frame length prefix: varint longer than 10 bytes or past 2^64")]
    OverlongLength,
    /// The stream ended inside a length prefix.
    #[error("stream ended inside a frame length prefix")]
    TruncatedLength,
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    TruncatedFrame,
    /// A length of 0 (an empty message).
    #[error("empty frame")]
    Empty,
    /// A length over the frame limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooBig {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
}

/// One step of [`next_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deframed {
    /// `buf[start..end]` is one whole frame (without its prefix); the caller consumes `end` bytes.
    Frame {
        /// First byte of the frame.
        start: usize,
        /// One past its last byte: bytes consumed.
        end: usize,
    },
    /// The buffer holds only the beginning of a frame (or nothing): read more.
    NeedMore,
}

/// Reads the next frame from the front of `buf`, refusing a length over `max` (or 0) as soon as
/// the prefix is read, before its payload arrives. At the end of the stream (`fin`), a partial
/// frame is an error instead of [`Deframed::NeedMore`].
pub fn next_frame(buf: &[u8], max: usize, fin: bool) -> Result<Deframed, QuicFrameError> {
    if buf.is_empty() {
        return Ok(Deframed::NeedMore);
    }
    let (len, prefix) = match varint::decode(buf) {
        Ok(v) => v,
        Err(VarintError::Overflow) => return Err(QuicFrameError::OverlongLength),
        Err(VarintError::Truncated) if fin => return Err(QuicFrameError::TruncatedLength),
        Err(_) => return Ok(Deframed::NeedMore),
    };
    if len == 0 {
        return Err(QuicFrameError::Empty);
    }
    if len > max as u64 {
        return Err(QuicFrameError::TooBig { len, max });
    }
    let end = prefix + len as usize;
    if buf.len() < end {
        return if fin {
            Err(QuicFrameError::TruncatedFrame)
        } else {
            Ok(Deframed::NeedMore)
        };
    }
    Ok(Deframed::Frame { start: prefix, end })
}

/// Appends `frame` (one encoded Herald frame) with its length prefix to `out`.
pub fn encode_frame(frame: &[u8], out: &mut Vec<u8>) {
    varint::encode(frame.len() as u64, out);
    out.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_CLIENT_FRAME;
    use proptest::prelude::*;

    #[test]
    fn partial_whole_and_bad_prefixes() {
        let mut wire = Vec::new();
        encode_frame(&[0x04, 7], &mut wire);
        assert_eq!(
            next_frame(&wire, MAX_CLIENT_FRAME, false),
            Ok(Deframed::Frame { start: 1, end: 3 })
        );
        assert_eq!(
            next_frame(&wire[..2], MAX_CLIENT_FRAME, false),
            Ok(Deframed::NeedMore)
        );
        assert_eq!(
            next_frame(&wire[..2], MAX_CLIENT_FRAME, true),
            Err(QuicFrameError::TruncatedFrame)
        );
        // A length prefix cut short, then one over 10 bytes.
        assert_eq!(
            next_frame(&[0x80], MAX_CLIENT_FRAME, false),
            Ok(Deframed::NeedMore)
        );
        assert_eq!(
            next_frame(&[0x80], MAX_CLIENT_FRAME, true),
            Err(QuicFrameError::TruncatedLength)
        );
        assert_eq!(
            next_frame(&[0xff; 11], MAX_CLIENT_FRAME, false),
            Err(QuicFrameError::OverlongLength)
        );
        // 4097 is refused from its prefix alone; 4096 waits for its bytes.
        let mut over = Vec::new();
        varint::encode(4097, &mut over);
        assert_eq!(
            next_frame(&over, MAX_CLIENT_FRAME, false),
            Err(QuicFrameError::TooBig {
                len: 4097,
                max: MAX_CLIENT_FRAME
            })
        );
        let mut at = Vec::new();
        varint::encode(4096, &mut at);
        assert_eq!(
            next_frame(&at, MAX_CLIENT_FRAME, false),
            Ok(Deframed::NeedMore)
        );
        assert_eq!(
            next_frame(&[0], MAX_CLIENT_FRAME, false),
            Err(QuicFrameError::Empty)
        );
        // Non-minimal prefixes are accepted like every other varint.
        assert_eq!(
            next_frame(&[0x81, 0x00, 0x04], MAX_CLIENT_FRAME, false),
            Ok(Deframed::Frame { start: 2, end: 3 })
        );
    }

    proptest! {
        /// Frames encoded back to back and cut at any points come out whole and in order.
        #[test]
        fn frames_survive_any_split(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..20),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut wire = Vec::new();
            for f in &frames {
                encode_frame(f, &mut wire);
            }
            let mut cut_at: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            cut_at.push(wire.len());
            cut_at.sort_unstable();
            // Feed the stream in chunks, carrying the unconsumed tail like the gateway does.
            let mut carried: Vec<u8> = Vec::new();
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut from = 0;
            for &to in &cut_at {
                carried.extend_from_slice(&wire[from..to]);
                from = to;
                let fin = to == wire.len();
                let mut at = 0;
                loop {
                    match next_frame(&carried[at..], 300, fin) {
                        Ok(Deframed::Frame { start, end }) => {
                            got.push(carried[at + start..at + end].to_vec());
                            at += end;
                        }
                        Ok(Deframed::NeedMore) => break,
                        Err(e) => prop_assert!(false, "error {e:?}"),
                    }
                }
                carried.drain(..at);
            }
            prop_assert!(carried.is_empty());
            prop_assert_eq!(got, frames);
        }

        /// Arbitrary bytes never panic, and a frame found is within the buffer and the limit.
        #[test]
        fn arbitrary_bytes_are_safe(buf in proptest::collection::vec(any::<u8>(), 0..64), fin: bool) {
            if let Ok(Deframed::Frame { start, end }) = next_frame(&buf, 16, fin) {
                prop_assert!(start < end && end <= buf.len() && end - start <= 16);
            }
        }
    }
}
