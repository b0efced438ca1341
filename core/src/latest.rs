//! The latest-SJID table: namespace → highest SJID seen. Merge is max (DESIGN.md), so duplicates,
//! redeliveries, reordering and several relays on one journal can never move a namespace back.
//! One table type for every stage: a relay's (journal → fan-out and look-ups) and a standalone
//! gateway's (embedded journal → workers).

use dashmap::DashMap;

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// The namespace moved up to the new SJID.
    Raised,
    /// The table already had this SJID (a duplicate or redelivery).
    Equal,
    /// The table has a higher SJID, given here: the change came late.
    Behind(u64),
}

/// Shards of the table. Many, so that a [`LatestTable::snapshot`] of a million namespaces
/// (the gateway's journal compaction) read-locks ~1/64 of them at a time and a merge waits at
/// most for that copy (well under a millisecond), not for the whole table.
pub const SHARDS: usize = 64;

/// Written by one source, read concurrently by many (look-ups, SUBSCRIBEs).
#[derive(Debug)]
pub struct LatestTable {
    /// Sharded, so a look-up never waits for the whole table.
    map: DashMap<u64, u64>,
}

impl Default for LatestTable {
    fn default() -> Self {
        Self {
            map: DashMap::with_shard_amount(SHARDS),
        }
    }
}

impl LatestTable {
    /// An empty table.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises `ns` to `sjid` if that is higher. Only raises go on to the sinks.
    pub fn merge(&self, ns: u64, sjid: u64) -> Merged {
        let mut entry = self.map.entry(ns).or_insert(0);
        match sjid.cmp(&*entry) {
            std::cmp::Ordering::Greater => {
                *entry = sjid;
                Merged::Raised
            }
            std::cmp::Ordering::Equal => Merged::Equal,
            std::cmp::Ordering::Less => Merged::Behind(*entry),
        }
    }

    /// The latest SJID of `ns` (0 when never published).
    #[must_use]
    pub fn get(&self, ns: u64) -> u64 {
        self.map.get(&ns).map_or(0, |v| *v)
    }

    /// Namespaces known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing was ever seen.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every `(ns, sjid)`, for compaction: one shard locked at a time, so concurrent merges
    /// may or may not be in it (each entry is whole, and merge is max).
    #[must_use]
    pub fn snapshot(&self) -> Vec<(u64, u64)> {
        self.map.iter().map(|e| (*e.key(), *e.value())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_max() {
        let t = LatestTable::new();
        assert_eq!(t.get(7), 0);
        assert_eq!(t.merge(7, 5), Merged::Raised);
        assert_eq!(t.merge(7, 3), Merged::Behind(5));
        assert_eq!(t.merge(7, 5), Merged::Equal);
        assert_eq!(t.merge(7, 6), Merged::Raised);
        assert_eq!(t.get(7), 6);
        assert_eq!(t.len(), 1);
    }
}
