//! A place in the binlog: file name and byte offset, ordered as the server writes them.

use std::cmp::Ordering;
use std::fmt;

/// A binlog position: `file` (for example `mariadb-bin.000042`) and the byte offset `pos` in it.
/// The offset of a boundary is the end of the event that closed a transaction (the next event's
/// start), so streaming from it never re-reads half a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BinlogPosition {
    /// Binlog file name, without directory.
    pub file: String,
    /// Byte offset in that file.
    pub pos: u64,
}

impl BinlogPosition {
    /// The position `pos` in `file`.
    #[must_use]
    pub fn new(file: impl Into<String>, pos: u64) -> Self {
        BinlogPosition {
            file: file.into(),
            pos,
        }
    }

    /// The numeric suffix of the file name (`.000042` → 42), which orders files across the
    /// six-digit roll-over; `None` for a name without one.
    fn sequence(&self) -> Option<u64> {
        self.file.rsplit_once('.').and_then(|(_, n)| n.parse().ok())
    }
}

impl Ord for BinlogPosition {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sequence()
            .cmp(&other.sequence())
            .then_with(|| self.file.cmp(&other.file))
            .then(self.pos.cmp(&other.pos))
    }
}

impl PartialOrd for BinlogPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_order_by_sequence_then_offset() {
        let a = BinlogPosition::new("mb.000009", 900);
        let b = BinlogPosition::new("mb.000010", 4);
        let c = BinlogPosition::new("mb.1000000", 4);
        assert!(a < b && b < c);
        assert!(BinlogPosition::new("mb.000010", 5) > b);
        assert_eq!(b.to_string(), "mb.000010:4");
    }
}
