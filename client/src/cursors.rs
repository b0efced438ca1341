//! [`Cursors`]: the namespaces a client follows and how far each is known to have changed, plus
//! the splitting of long lists into frames that fit `MAX_CLIENT_FRAME`.

use std::collections::HashMap;

use herald_proto::frame::MAX_PAIRS_PER_CLIENT_FRAME;
use herald_proto::{ClientFrame, MAX_CLIENT_FRAME};

/// Most namespaces one UNSUBSCRIBE can hold in the worst case (10 bytes each, plus the type byte
/// and a 10-byte count).
pub const MAX_NS_PER_CLIENT_FRAME: usize = (MAX_CLIENT_FRAME - 11) / 10;

/// `ns -> cursor` for every namespace the client is subscribed to.
///
/// A cursor is `max(cursor the app subscribed with, highest SJID a CHANGED delivered)`, so that
/// after a reconnect the client resubscribes from where it is known to be and is not told again
/// about changes it has already been told about. RESET and DENIED end a subscription, so they
/// remove the namespace; the app subscribes again once it has resynced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursors {
    /// The live subscriptions.
    map: HashMap<u64, u64>,
}

impl Cursors {
    /// No subscriptions.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records subscriptions. Like the server, a namespace already present gets the new cursor
    /// even if it is lower, and a namespace repeated in `pairs` keeps its last cursor.
    pub fn subscribe(&mut self, pairs: &[(u64, u64)]) {
        self.map.extend(pairs.iter().copied());
    }

    /// Forgets namespaces.
    pub fn unsubscribe(&mut self, ns: &[u64]) {
        for n in ns {
            self.map.remove(n);
        }
    }

    /// Applies one CHANGED pair: the cursor becomes `max(cursor, sjid)`. Returns false (and
    /// changes nothing) for a namespace not subscribed, e.g. one unsubscribed while the CHANGED
    /// was in flight.
    pub fn changed(&mut self, ns: u64, sjid: u64) -> bool {
        match self.map.get_mut(&ns) {
            Some(c) => {
                *c = (*c).max(sjid);
                true
            }
            None => false,
        }
    }

    /// Ends a subscription (RESET, DENIED). Returns whether it existed.
    pub fn remove(&mut self, ns: u64) -> bool {
        self.map.remove(&ns).is_some()
    }

    /// The cursor of `ns`, if subscribed.
    #[must_use]
    pub fn get(&self, ns: u64) -> Option<u64> {
        self.map.get(&ns).copied()
    }

    /// Number of subscriptions.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is subscribed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A copy of `ns -> cursor`.
    #[must_use]
    pub fn snapshot(&self) -> HashMap<u64, u64> {
        self.map.clone()
    }

    /// The SUBSCRIBE frames that restore every subscription on a new connection, in namespace
    /// order (so that, against `max_subscriptions`, the server keeps the same ones each time).
    #[must_use]
    pub fn resubscribe_frames(&self) -> Vec<ClientFrame> {
        let mut pairs: Vec<(u64, u64)> = self.map.iter().map(|(&n, &c)| (n, c)).collect();
        pairs.sort_unstable();
        subscribe_frames(&pairs).collect()
    }
}

/// SUBSCRIBE frames for `pairs`, at most [`MAX_PAIRS_PER_CLIENT_FRAME`] pairs each.
pub fn subscribe_frames(pairs: &[(u64, u64)]) -> impl Iterator<Item = ClientFrame> + '_ {
    pairs
        .chunks(MAX_PAIRS_PER_CLIENT_FRAME)
        .map(|c| ClientFrame::Subscribe(c.to_vec()))
}

/// UNSUBSCRIBE frames for `ns`, at most [`MAX_NS_PER_CLIENT_FRAME`] namespaces each.
pub fn unsubscribe_frames(ns: &[u64]) -> impl Iterator<Item = ClientFrame> + '_ {
    ns.chunks(MAX_NS_PER_CLIENT_FRAME)
        .map(|c| ClientFrame::Unsubscribe(c.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_is_max_of_subscribed_and_changed() {
        let mut c = Cursors::new();
        c.subscribe(&[(7, 10)]);
        assert!(c.changed(7, 15));
        assert_eq!(c.get(7), Some(15));
        // A lower (late or duplicate) SJID never moves a cursor back.
        assert!(c.changed(7, 12));
        assert_eq!(c.get(7), Some(15));
        // A CHANGED for a namespace not followed is ignored.
        assert!(!c.changed(8, 1));
        assert_eq!(c.get(8), None);
    }

    #[test]
    fn resubscribe_replaces_even_with_a_lower_cursor() {
        let mut c = Cursors::new();
        c.subscribe(&[(7, 10), (8, 3)]);
        assert!(c.changed(7, 20));
        c.subscribe(&[(7, 5)]);
        assert_eq!(c.get(7), Some(5));
        // Repeated in one call: the last cursor wins.
        c.subscribe(&[(9, 1), (9, 4)]);
        assert_eq!(c.get(9), Some(4));
        assert_eq!(c.snapshot(), HashMap::from([(7, 5), (8, 3), (9, 4)]));
    }

    #[test]
    fn reset_denied_and_unsubscribe_remove() {
        let mut c = Cursors::new();
        c.subscribe(&[(1, 1), (2, 2), (3, 3)]);
        assert!(c.remove(1)); // RESET
        assert!(!c.remove(1));
        assert!(c.remove(2)); // DENIED
        c.unsubscribe(&[3, 4]);
        assert!(c.is_empty());
        assert!(c.resubscribe_frames().is_empty());
    }

    #[test]
    fn resubscribe_frames_are_sorted_chunked_and_fit() {
        let mut c = Cursors::new();
        let n = 2 * MAX_PAIRS_PER_CLIENT_FRAME + 3;
        let pairs: Vec<(u64, u64)> = (0..n as u64)
            .rev()
            .map(|i| (u64::MAX - i, u64::MAX))
            .collect();
        c.subscribe(&pairs);
        let frames = c.resubscribe_frames();
        assert_eq!(frames.len(), 3);
        let mut all = Vec::new();
        for f in &frames {
            // Worst-case varints (10 bytes each) still fit the client frame limit.
            assert!(f.to_vec().len() <= MAX_CLIENT_FRAME);
            let ClientFrame::Subscribe(p) = f else {
                panic!("not a SUBSCRIBE: {f:?}")
            };
            assert!(p.len() <= MAX_PAIRS_PER_CLIENT_FRAME);
            all.extend_from_slice(p);
        }
        let mut expected = pairs.clone();
        expected.sort_unstable();
        assert_eq!(all, expected);
    }

    #[test]
    fn unsubscribe_frames_fit() {
        let ns: Vec<u64> = (0..(MAX_NS_PER_CLIENT_FRAME as u64 + 1))
            .map(|i| u64::MAX - i)
            .collect();
        let frames: Vec<_> = unsubscribe_frames(&ns).collect();
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|f| f.to_vec().len() <= MAX_CLIENT_FRAME));
        assert_eq!(subscribe_frames(&[]).count(), 0);
    }
}
