//! The latest-SJID table: namespace → highest SJID ever accepted. Merge is max, so duplicates,
//! redeliveries and reordering can never move a namespace backwards.

use dashmap::DashMap;

/// Shared by the journal (writer) and every worker (readers, on SUBSCRIBE).
#[derive(Debug, Default)]
pub struct LatestTable {
    map: DashMap<u64, u64>,
}

impl LatestTable {
    /// An empty table.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises `ns` to `sjid` if that is higher. Returns true when it moved.
    pub fn merge(&self, ns: u64, sjid: u64) -> bool {
        let mut entry = self.map.entry(ns).or_insert(0);
        if sjid > *entry {
            *entry = sjid;
            true
        } else {
            false
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

    /// True when nothing was ever published.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every `(ns, sjid)`, for compaction.
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
        assert!(t.merge(7, 5));
        assert!(!t.merge(7, 3));
        assert!(!t.merge(7, 5));
        assert!(t.merge(7, 6));
        assert_eq!(t.get(7), 6);
    }
}
