//! Where a tailer resumes: a place in the MySQL binlog (file name and byte offset, ordered as the
//! server writes them) or a PostgreSQL WAL position (LSN), as [`ResumePoint`].

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

/// A resume point of either database.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResumePoint {
    /// MySQL / MariaDB: a binlog position.
    Binlog(BinlogPosition),
    /// PostgreSQL: the end LSN of the last acknowledged commit (or a keepalive's WAL end with
    /// no transaction in between), the same value the tailer confirms to its replication slot.
    Lsn(u64),
}

impl fmt::Display for ResumePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResumePoint::Binlog(p) => p.fmt(f),
            ResumePoint::Lsn(lsn) => f.write_str(&format_lsn(*lsn)),
        }
    }
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
#[must_use]
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses an LSN written as PostgreSQL writes it.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= 0xFFFF_FFFF && lo <= 0xFFFF_FFFF).then_some((hi << 32) | lo)
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

    #[test]
    fn lsn_text_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(ResumePoint::Lsn(0x1_0000_0010).to_string(), "1/10");
    }
}
