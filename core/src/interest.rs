//! Who listens to what, per worker: namespace → subscribers, each a compact connection id and the
//! highest SJID that connection already knows for the namespace (its cursor, or the last CHANGED
//! it was sent). 16 bytes per subscription, no `Arc`s, no channels.

use std::collections::HashMap;

/// One subscription as the fan-out sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    /// Highest SJID the connection is known to have for this namespace. A change is sent only
    /// when it is higher, which keeps SJIDs going up within a subscription and drops duplicates.
    pub known: u64,
    /// The connection's slot in its worker's connection table.
    pub conn: u32,
}

/// The interest table of one worker.
#[derive(Debug, Default)]
pub struct Interest {
    by_ns: HashMap<u64, Vec<Sub>>,
    subscriptions: usize,
}

impl Interest {
    /// Adds or replaces `conn`'s subscription to `ns`.
    pub fn set(&mut self, ns: u64, conn: u32, known: u64) {
        let subs = self.by_ns.entry(ns).or_default();
        match subs.iter_mut().find(|s| s.conn == conn) {
            Some(s) => s.known = known,
            None => {
                subs.push(Sub { known, conn });
                self.subscriptions += 1;
            }
        }
    }

    /// Raises what `conn` knows of `ns` to `sjid`; true if it was lower (so a CHANGED is due).
    pub fn raise(&mut self, ns: u64, conn: u32, sjid: u64) -> bool {
        let Some(s) = self
            .by_ns
            .get_mut(&ns)
            .and_then(|subs| subs.iter_mut().find(|s| s.conn == conn))
        else {
            return false;
        };
        if sjid > s.known {
            s.known = sjid;
            true
        } else {
            false
        }
    }

    /// Drops `conn`'s subscription to `ns`, if any.
    pub fn remove(&mut self, ns: u64, conn: u32) {
        let Some(subs) = self.by_ns.get_mut(&ns) else {
            return;
        };
        if let Some(i) = subs.iter().position(|s| s.conn == conn) {
            subs.swap_remove(i);
            self.subscriptions -= 1;
            if subs.is_empty() {
                self.by_ns.remove(&ns);
            } else if subs.capacity() > 2 * subs.len() + 4 {
                subs.shrink_to_fit();
            }
        }
    }

    /// The subscribers of `ns`, for fan-out.
    pub fn subscribers_mut(&mut self, ns: u64) -> Option<&mut [Sub]> {
        self.by_ns.get_mut(&ns).map(Vec::as_mut_slice)
    }

    /// Live subscriptions in this table.
    #[must_use]
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    /// Namespaces with at least one subscriber.
    #[must_use]
    pub fn namespaces(&self) -> usize {
        self.by_ns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_raise_remove() {
        let mut t = Interest::default();
        t.set(1, 10, 5);
        t.set(1, 11, 0);
        t.set(1, 10, 2); // replace, not add
        assert_eq!(t.subscriptions(), 2);
        assert!(t.raise(1, 10, 3));
        assert!(!t.raise(1, 10, 3));
        assert!(!t.raise(2, 10, 9));
        t.remove(1, 10);
        t.remove(1, 10);
        assert_eq!(t.subscribers_mut(1).unwrap(), &[Sub { known: 0, conn: 11 }]);
        t.remove(1, 11);
        assert_eq!((t.subscriptions(), t.namespaces()), (0, 0));
    }
}
