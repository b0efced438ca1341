//! Unsigned LEB128 varints, the only integer encoding on the wire.
//!
//! At most 10 bytes encode a `u64`. Non-minimal encodings (trailing `0x80 … 0x00` groups) are
//! accepted as PROTOCOL.md requires; anything over 10 bytes or past 2^64 is an error.

/// Longest valid varint, in bytes.
pub const MAX_LEN: usize = 10;

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VarintError {
    /// The input ended while the continuation bit was still set.
    #[error("truncated varint")]
    Truncated,
    /// More than 10 bytes, or a value that does not fit in 64 bits.
    #[error("varint longer than 10 bytes or past 2^64")]
    Overflow,
}

/// Appends `value` to `out`.
pub fn encode(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// How many bytes [`encode`] writes for `value`.
#[must_use]
pub fn encoded_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads one varint from the front of `buf`: the value and how many bytes it took.
pub fn decode(buf: &[u8]) -> Result<(u64, usize), VarintError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i == MAX_LEN {
            return Err(VarintError::Overflow);
        }
        let bits = u64::from(byte & 0x7f);
        if i == MAX_LEN - 1 && bits > 1 {
            // The tenth byte may only carry bit 63.
            return Err(VarintError::Overflow);
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if buf.len() >= MAX_LEN {
        Err(VarintError::Overflow)
    } else {
        Err(VarintError::Truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut out = Vec::new();
        encode(300, &mut out);
        assert_eq!(out, [0xac, 0x02]);
        assert_eq!(decode(&out), Ok((300, 2)));
        out.clear();
        encode(u64::MAX, &mut out);
        assert_eq!(out.len(), 10);
        assert_eq!(decode(&out), Ok((u64::MAX, 10)));
    }

    #[test]
    fn non_minimal_is_accepted() {
        assert_eq!(decode(&[0x81, 0x80, 0x80, 0x00]), Ok((1, 4)));
    }

    #[test]
    fn errors() {
        assert_eq!(decode(&[]), Err(VarintError::Truncated));
        assert_eq!(decode(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(decode(&[0xff; 11]), Err(VarintError::Overflow));
        assert_eq!(decode(&[0x80; 10]), Err(VarintError::Overflow));
        // Ten bytes whose last carries more than bit 63: past 2^64.
        let mut past = [0xff; 10];
        past[9] = 0x02;
        assert_eq!(decode(&past), Err(VarintError::Overflow));
    }

    proptest! {
        #[test]
        fn round_trip(v: u64, tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut out = Vec::new();
            encode(v, &mut out);
            prop_assert_eq!(out.len(), encoded_len(v));
            out.extend_from_slice(&tail);
            prop_assert_eq!(decode(&out), Ok((v, encoded_len(v))));
        }
    }
}
