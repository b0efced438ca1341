//! Where a worker gets latest SJIDs: the embedded table (standalone mode) or the upstream relays
//! over NATS (distributed mode). Past this point both modes run the same code.

use herald_core::latest::LatestTable;
use herald_upstream::{LookupError, Upstream};
use std::collections::HashMap;
use std::sync::Arc;

/// Where latest SJIDs are looked up and where interest is registered (named apart from a
/// relay's `Source`, which is where its changes come from).
#[derive(Clone)]
pub enum Lookup {
    /// In-process journal and table: look-ups are a map read.
    Embedded(Arc<LatestTable>),
    /// Relays over NATS: look-ups are requests, and interest decides which partitions to follow.
    Upstream(Upstream),
}

impl Lookup {
    /// The table, when look-ups need no waiting.
    #[must_use]
    pub fn local(&self) -> Option<&LatestTable> {
        match self {
            Lookup::Embedded(t) => Some(t),
            Lookup::Upstream(_) => None,
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
            Lookup::Embedded(t) => Ok(ns.iter().map(|&n| (n, t.get(n))).collect()),
            Lookup::Upstream(up) => {
                if !added.is_empty() {
                    up.add_interest(added).await?;
                }
                Ok(up.lookup(ns).await?.into_iter().collect())
            }
        }
    }

    /// As [`Lookup::resolve`] for `(ns, cursor)` pairs, with a cursor above its looked-up value
    /// confirmed before the caller acts on it (RESET). In distributed mode the answer comes
    /// from one relay (or this gateway's table), which may not hold yet a change the client was
    /// already told of through another path (another relay's journal tap sees a publish before
    /// the journal stores it; a relay may lag). So the namespaces whose cursor is above the
    /// answer are asked again, with backoff, until their value reaches the cursor or the
    /// look-up deadline passes; values only ever rise (merge is max). A RESET that is real (the
    /// journal lost what the client saw) is then up to the deadline late, which is harmless; a
    /// false one would end a subscription that was fine.
    pub async fn resolve_confirmed(
        &self,
        added: &[u64],
        pairs: &[(u64, u64)],
    ) -> Result<HashMap<u64, u64>, LookupError> {
        let ns: Vec<u64> = pairs.iter().map(|&(n, _)| n).collect();
        let mut latest = self.resolve(added, &ns).await?;
        let Lookup::Upstream(up) = self else {
            return Ok(latest);
        };
        let deadline = tokio::time::Instant::now() + up.lookup_deadline();
        let mut backoff = std::time::Duration::from_millis(50);
        loop {
            let mut ahead: Vec<u64> = pairs
                .iter()
                .filter(|&&(n, cursor)| cursor > latest.get(&n).copied().unwrap_or(0))
                .map(|&(n, _)| n)
                .collect();
            if ahead.is_empty() || tokio::time::Instant::now() + backoff >= deadline {
                return Ok(latest);
            }
            ahead.sort_unstable();
            ahead.dedup();
            metrics::counter!("herald_upstream_reset_confirmations_total").increment(1);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_millis(500));
            // A failed re-ask keeps what is known: the first answer stands.
            if let Ok(again) = up.lookup(&ahead).await {
                for (n, sjid) in again {
                    let v = latest.entry(n).or_insert(0);
                    *v = (*v).max(sjid);
                }
            }
        }
    }

    /// Drops interest in `ns` (subscriptions that ended).
    pub fn drop_interest(&self, ns: &[u64]) {
        if let Lookup::Upstream(up) = self
            && !ns.is_empty()
        {
            up.remove_interest(ns);
        }
    }

    /// False while the upstream is unreachable.
    #[must_use]
    pub fn ready(&self) -> bool {
        match self {
            Lookup::Embedded(_) => true,
            Lookup::Upstream(up) => up.is_connected(),
        }
    }
}
