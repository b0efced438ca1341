//! The no-missed-change checker: records what was published and what each client was told, then
//! proves that every client holding a namespace learned every change to it, and reports how long
//! that took (the worst delivery delay, the figure fault tests print).
//!
//! Delay of one change `(ns, s)` published at `t` for a client that held `ns` from before `t`:
//! the time from `t` until the client was first told `ns` at `s` or higher. Coalescing is
//! allowed (a later, higher SJID covers earlier ones), so a client told `s + 3` has learned `s`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shared by the test driver and every client's event loop.
#[derive(Clone, Default)]
pub struct Checker {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// ns → (sjid, published at), in publish order.
    published: HashMap<u64, Vec<(u64, Instant)>>,
    clients: Vec<ClientLog>,
}

#[derive(Default)]
struct ClientLog {
    /// ns → (since when the client holds it, the cursor it subscribed with).
    holds: HashMap<u64, (Instant, u64)>,
    /// ns → (sjid, told at), in arrival order.
    told: HashMap<u64, Vec<(u64, Instant)>>,
    /// Anything impossible (an SJID never published, an unexpected RESET or DENIED).
    problems: Vec<String>,
}

/// What [`Checker::verify`] found.
#[derive(Debug, Clone)]
pub struct Report {
    /// (client, change) pairs checked.
    pub deliveries: usize,
    /// Worst delay from publish to the client learning it.
    pub worst_delay: Duration,
    /// 99th percentile of the same delays.
    pub p99_delay: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} deliveries checked, none missed; delay p99 {:?}, worst {:?}",
            self.deliveries, self.p99_delay, self.worst_delay
        )
    }
}

impl Checker {
    /// A new, empty checker.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a client and returns its index.
    pub fn add_client(&self) -> usize {
        let mut st = self.state();
        st.clients.push(ClientLog::default());
        st.clients.len() - 1
    }

    /// Client `c` now holds `ns` with cursor 0 (see [`Checker::holds_from`]).
    pub fn holds(&self, c: usize, ns: &[u64]) {
        let pairs: Vec<(u64, u64)> = ns.iter().map(|&n| (n, 0)).collect();
        self.holds_from(c, &pairs);
    }

    /// Client `c` now holds each `(ns, cursor)`. Call it when the subscription is known to be
    /// live (e.g. after a barrier): each change published after this must reach the client, and
    /// in the end the client must know the latest SJID of `ns` whenever that is above `cursor`.
    pub fn holds_from(&self, c: usize, pairs: &[(u64, u64)]) {
        let now = Instant::now();
        let mut st = self.state();
        for &(n, cursor) in pairs {
            st.clients[c].holds.entry(n).or_insert((now, cursor));
        }
    }

    /// Client `c` no longer holds `ns`.
    pub fn releases(&self, c: usize, ns: &[u64]) {
        let mut st = self.state();
        for n in ns {
            st.clients[c].holds.remove(n);
        }
    }

    /// Records published changes. Call it when the publish is acknowledged (a change counts as
    /// accepted from then on); clients told of it earlier are fine, as long as it is recorded
    /// before [`Checker::verify`].
    pub fn published(&self, changes: &[(u64, u64)]) {
        let now = Instant::now();
        let mut st = self.state();
        for &(ns, sjid) in changes {
            st.published.entry(ns).or_default().push((sjid, now));
        }
    }

    /// Client `c` was told `ns` changed at `sjid`.
    pub fn told(&self, c: usize, ns: u64, sjid: u64) {
        let now = Instant::now();
        let mut st = self.state();
        st.clients[c].told.entry(ns).or_default().push((sjid, now));
    }

    /// Records something that must not happen (an unexpected RESET, DENIED or fatal error).
    pub fn problem(&self, c: usize, what: String) {
        self.state().clients[c].problems.push(what);
    }

    /// The highest SJID published for `ns` (0 if none).
    #[must_use]
    pub fn latest(&self, ns: u64) -> u64 {
        self.state()
            .published
            .get(&ns)
            .and_then(|p| p.iter().map(|&(s, _)| s).max())
            .unwrap_or(0)
    }

    /// Waits up to `limit` for every client to have learned every change to what it holds, then
    /// reports the delays; on failure, says who missed what.
    pub async fn verify(&self, limit: Duration) -> Result<Report, String> {
        let deadline = Instant::now() + limit;
        loop {
            match self.check() {
                Ok(report) => return Ok(report),
                Err(e) if e.starts_with("problem") || Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn check(&self) -> Result<Report, String> {
        let st = self.state();
        let mut delays = Vec::new();
        let mut missing = Vec::new();
        for (c, client) in st.clients.iter().enumerate() {
            if let Some(p) = client.problems.first() {
                return Err(format!("problem: client {c}: {p}"));
            }
            for (&ns, told) in &client.told {
                let published = st.published.get(&ns).map_or(&[][..], Vec::as_slice);
                if let Some(&(sjid, _)) = told
                    .iter()
                    .find(|&&(s, _)| !published.iter().any(|&(p, _)| p == s))
                {
                    return Err(format!(
                        "problem: client {c}: told ns {ns} at SJID {sjid}, which was never published"
                    ));
                }
            }
            for (&ns, &(since, cursor)) in &client.holds {
                let told = client.told.get(&ns).map_or(&[][..], Vec::as_slice);
                let published = st.published.get(&ns).map_or(&[][..], Vec::as_slice);
                let latest = published.iter().map(|&(s, _)| s).max().unwrap_or(0);
                let highest = told.iter().map(|&(s, _)| s).max().unwrap_or(0);
                if latest > cursor && highest < latest {
                    missing.push(format!(
                        "client {c} ns {ns}: knows {highest}, latest is {latest}"
                    ));
                }
                for &(sjid, at) in published {
                    if at < since {
                        continue;
                    }
                    match told.iter().find(|&&(s, _)| s >= sjid) {
                        Some(&(_, when)) => delays.push(when.saturating_duration_since(at)),
                        None => missing.push(format!("client {c} ns {ns} SJID {sjid}")),
                    }
                }
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "{} changes not delivered, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
        delays.sort_unstable();
        let pick = |q: f64| {
            delays
                .get(((delays.len() as f64 * q) as usize).min(delays.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Ok(Report {
            deliveries: delays.len(),
            worst_delay: delays.last().copied().unwrap_or_default(),
            p99_delay: pick(0.99),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_missed_and_impossible_changes() {
        let ck = Checker::new();
        let a = ck.add_client();
        ck.holds(a, &[1, 2]);
        ck.published(&[(1, 5), (2, 1)]);
        ck.published(&[(1, 6)]);
        ck.told(a, 1, 6); // covers 5 and 6
        let err = ck.verify(Duration::from_millis(100)).await.unwrap_err();
        assert!(err.contains("ns 2 SJID 1"), "{err}");
        ck.told(a, 2, 1);
        let report = ck.verify(Duration::from_millis(100)).await.unwrap();
        assert_eq!(report.deliveries, 3);
        ck.told(a, 2, 9);
        let err = ck.verify(Duration::from_millis(100)).await.unwrap_err();
        assert!(err.contains("never published"), "{err}");
    }

    #[tokio::test]
    async fn changes_before_holding_are_owed_once() {
        let ck = Checker::new();
        let a = ck.add_client();
        ck.published(&[(1, 1), (1, 2)]);
        ck.holds_from(a, &[(1, 1)]);
        // The cursor (1) is behind the latest (2): the client is owed a CHANGED at 2.
        assert!(ck.verify(Duration::from_millis(10)).await.is_err());
        ck.told(a, 1, 2);
        assert_eq!(
            ck.verify(Duration::from_millis(10))
                .await
                .unwrap()
                .deliveries,
            0
        );
        assert_eq!(ck.latest(1), 2);
    }
}
