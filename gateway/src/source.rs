//! Where a worker gets latest SJIDs: the embedded table (standalone mode) or the upstream relays
//! over NATS (distributed mode). Past this point both modes run the same code.

use crate::latest::LatestTable;
use herald_upstream::{LookupError, Upstream};
use std::collections::HashMap;
use std::sync::Arc;

/// The source of latest SJIDs and of interest bookkeeping.
#[derive(Clone)]
pub enum Source {
    /// In-process journal and table: look-ups are a map read.
    Embedded(Arc<LatestTable>),
    /// Relays over NATS: look-ups are requests, and interest decides which partitions to follow.
    Upstream(Upstream),
}

impl Source {
    /// The table, when look-ups need no waiting.
    #[must_use]
    pub fn local(&self) -> Option<&LatestTable> {
        match self {
            Source::Embedded(t) => Some(t),
            Source::Upstream(_) => None,
        }
    }

    /// Registers interest in `added` (waiting until its partitions are subscribed), then looks up
    /// the latest SJIDs of `ns`.
    pub async fn resolve(
        &self,
        added: &[u64],
        ns: &[u64],
    ) -> Result<HashMap<u64, u64>, LookupError> {
        match self {
            Source::Embedded(t) => Ok(ns.iter().map(|&n| (n, t.get(n))).collect()),
            Source::Upstream(up) => {
                if !added.is_empty() {
                    up.add_interest(added).await?;
                }
                Ok(up.lookup(ns).await?.into_iter().collect())
            }
        }
    }

    /// Drops interest in `ns` (subscriptions that ended).
    pub fn drop_interest(&self, ns: &[u64]) {
        if let Source::Upstream(up) = self
            && !ns.is_empty()
        {
            up.remove_interest(ns);
        }
    }

    /// False while the upstream is unreachable.
    #[must_use]
    pub fn ready(&self) -> bool {
        match self {
            Source::Embedded(_) => true,
            Source::Upstream(up) => up.is_connected(),
        }
    }
}
