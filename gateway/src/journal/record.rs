//! The record format shared by segments and snapshots.
//!
//! Record batch: `count: u32 LE`, `crc32(entries): u32 LE`, then `count` × (`ns: u64 LE`,
//! `sjid: u64 LE`). A torn batch at the end (crash mid-write) fails its length or checksum and
//! ends the replay of its file; everything acknowledged before it was written whole.

/// Bytes of one `(ns, sjid)` entry.
pub(super) const ENTRY: usize = 16;
/// Bytes of a batch header.
pub(super) const HEADER: usize = 8;

/// Appends `changes` to `out` as one checksummed batch.
pub(super) fn encode_batch(changes: &[(u64, u64)], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&(changes.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for &(ns, sjid) in changes {
        out.extend_from_slice(&ns.to_le_bytes());
        out.extend_from_slice(&sjid.to_le_bytes());
    }
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// What a decode found.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Decoded {
    /// Bytes of whole, valid batches from the start (where a torn tail is cut).
    pub(super) good_len: usize,
    /// True when bytes past `good_len` did not form a valid batch.
    pub(super) torn: bool,
}

/// Calls `each` for every entry of the whole batches at the start of `bytes`.
pub(super) fn decode_batches(bytes: &[u8], mut each: impl FnMut(u64, u64)) -> Decoded {
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let Some((head, body)) = rest.split_first_chunk::<HEADER>() else {
            return Decoded {
                good_len: at,
                torn: true,
            };
        };
        let count = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(body) = count.checked_mul(ENTRY).and_then(|n| body.get(..n)) else {
            return Decoded {
                good_len: at,
                torn: true,
            };
        };
        if crc32fast::hash(body) != crc {
            return Decoded {
                good_len: at,
                torn: true,
            };
        }
        for rec in body.chunks_exact(ENTRY) {
            let (ns, sjid) = rec.split_at(8);
            each(
                u64::from_le_bytes(ns.try_into().unwrap_or_default()),
                u64::from_le_bytes(sjid.try_into().unwrap_or_default()),
            );
        }
        at += HEADER + body.len();
    }
    Decoded {
        good_len: at,
        torn: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> (Vec<(u64, u64)>, Decoded) {
        let mut v = Vec::new();
        let d = decode_batches(bytes, |ns, sjid| v.push((ns, sjid)));
        (v, d)
    }

    #[test]
    fn corrupt_checksum_stops_replay() {
        let mut bytes = Vec::new();
        encode_batch(&[(1, 1)], &mut bytes);
        let first = bytes.len();
        encode_batch(&[(2, 2)], &mut bytes);
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        assert_eq!(
            all(&bytes),
            (
                vec![(1, 1)],
                Decoded {
                    good_len: first,
                    torn: true
                }
            )
        );
    }

    #[test]
    fn every_truncation_keeps_the_whole_batches() {
        let mut bytes = Vec::new();
        encode_batch(&[(1, 1), (2, 2)], &mut bytes);
        let first = bytes.len();
        encode_batch(&[(3, 3)], &mut bytes);
        for cut in 0..bytes.len() {
            let (v, d) = all(&bytes[..cut]);
            let expect = if cut >= first { 2 } else { 0 };
            assert_eq!(v.len(), expect, "cut {cut}");
            assert_eq!(d.torn, cut != first && cut != 0, "cut {cut}");
        }
        assert_eq!(all(&bytes).0.len(), 3);
    }
}
