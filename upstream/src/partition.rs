//! What an upstream knows of one partition. Plain data, no I/O: the stream-position rules are
//! tested here.

use std::collections::HashMap;

/// Verdict on an incoming batch's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Next in its stream: apply.
    InOrder,
    /// A stream never seen, or a gap in a known one: apply, and resync the partition.
    Resync,
    /// An old or repeated batch (reordering, or a heartbeat with nothing new): apply (merge is
    /// max makes it harmless), nothing else.
    Stale,
}

/// State of one subscribed partition.
#[derive(Debug, Default)]
pub struct Partition {
    /// Bumped on every (re)subscription, so late answers for an older one are ignored.
    pub generation: u64,
    /// Namespace → how many local holders are interested.
    pub interest: HashMap<u64, u32>,
    /// Namespace → latest SJID known. Valid only while the partition stays subscribed and in
    /// sync; dropped with the subscription.
    pub latest: HashMap<u64, u64>,
    /// Relay epoch → last seq seen from it.
    pub streams: HashMap<u64, u64>,
    /// A resync is running; look-ups must not trust `latest` until it ends.
    pub resyncing: bool,
    /// Another resync was asked for while one ran.
    pub resync_again: bool,
}

impl Partition {
    /// Judges a batch `(epoch, seq)`; an empty batch is a heartbeat carrying the relay's current
    /// seq, a batch with changes carries the next one.
    pub fn position(&mut self, epoch: u64, seq: u64, heartbeat: bool) -> Position {
        let Some(last) = self.streams.get_mut(&epoch) else {
            self.streams.insert(epoch, seq);
            return Position::Resync;
        };
        let expected = if heartbeat { *last } else { *last + 1 };
        if seq == expected {
            *last = seq;
            Position::InOrder
        } else if seq > expected {
            *last = seq;
            Position::Resync
        } else {
            Position::Stale
        }
    }

    /// Merges `sjid` into `ns`; true if it raised it.
    pub fn merge(&mut self, ns: u64, sjid: u64) -> bool {
        let slot = self.latest.entry(ns).or_insert(0);
        if sjid > *slot {
            *slot = sjid;
            true
        } else {
            false
        }
    }

    /// Namespaces a resync must ask about: those with interest, plus those known (for
    /// [`crate::Scope::All`], where everything known is served downstream).
    pub fn tracked(&self) -> Vec<u64> {
        let mut ns: Vec<u64> = self
            .interest
            .keys()
            .chain(self.latest.keys())
            .copied()
            .collect();
        ns.sort_unstable();
        ns.dedup();
        ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_positions() {
        let mut p = Partition::default();
        assert_eq!(p.position(7, 1, false), Position::Resync); // new epoch
        assert_eq!(p.position(7, 2, false), Position::InOrder);
        assert_eq!(p.position(7, 2, true), Position::InOrder); // heartbeat, nothing new
        assert_eq!(p.position(7, 4, false), Position::Resync); // 3 was lost
        assert_eq!(p.position(7, 3, false), Position::Stale); // late arrival
        assert_eq!(p.position(7, 5, true), Position::Resync); // heartbeat reveals a lost tail
        assert_eq!(p.position(9, 1, false), Position::Resync); // a second relay
        assert_eq!(p.position(9, 2, false), Position::InOrder);
        assert_eq!(p.position(7, 6, false), Position::InOrder); // streams are independent
    }

    #[test]
    fn merge_and_tracked() {
        let mut p = Partition::default();
        assert!(p.merge(1, 5));
        assert!(!p.merge(1, 4));
        p.interest.insert(2, 1);
        assert_eq!(p.tracked(), vec![1, 2]);
    }
}
