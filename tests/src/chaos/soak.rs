//! The soak's checker ([`Soak`]): every acknowledged change and every client's CHANGED events as
//! they come, a delay histogram per fault kind, and what each client still does not know at the end.

use super::{AFTER_FAULT, CATEGORIES, Fault, LATE};
use crate::fleet::NAMESPACES;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A log-linear histogram of microseconds (exact below 128 µs, then 64 buckets per power of
/// two: at most 1.6 % low), with the exact maximum.
#[derive(Clone)]
pub struct Histogram {
    pub(super) buckets: Vec<u64>,
    pub(super) count: u64,
    pub(super) max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; 128 + 64 * 40],
            count: 0,
            max_us: 0,
        }
    }
}

impl Histogram {
    pub(super) fn index(us: u64) -> usize {
        if us < 128 {
            return us as usize;
        }
        let e = 63 - u64::from(us.leading_zeros());
        let mantissa = us >> (e - 6);
        (128 + (e - 7) * 64 + (mantissa - 64)) as usize
    }

    pub(super) fn lower_bound(i: usize) -> u64 {
        if i < 128 {
            return i as u64;
        }
        let e = (i as u64 - 128) / 64 + 7;
        let mantissa = (i as u64 - 128) % 64 + 64;
        mantissa << (e - 6)
    }

    /// Adds one sample.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = Self::index(us).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Samples recorded.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (bucket lower bound; the maximum for `q = 1`).
    #[must_use]
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        if q >= 1.0 {
            return Duration::from_micros(self.max_us);
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_micros(Self::lower_bound(i).min(self.max_us));
            }
        }
        Duration::from_micros(self.max_us)
    }
}

/// One client's view, as the checker sees it.
#[derive(Default)]
pub(super) struct ClientView {
    /// Transport and home gateway, for the report.
    pub(super) label: &'static str,
    /// ns → highest SJID the client was told.
    pub(super) holds: HashMap<u64, u64>,
}

#[derive(Default)]
pub(super) struct SoakState {
    /// ns → ack time and delay category of SJID `i + 1`.
    pub(super) published: Vec<Vec<(Instant, u8)>>,
    pub(super) clients: Vec<ClientView>,
    pub(super) delays: Vec<Histogram>,
    /// Deliveries of a change the client learned before its ack was recorded (delay 0).
    pub(super) before_ack: u64,
    pub(super) problems: Vec<String>,
    pub(super) problem_count: usize,
    /// Most (client, ns) pairs seen at once owing a change acknowledged over [`LATE`] before.
    pub(super) late_peak: usize,
}

/// The continuous checker of the soak. Cheap to clone (shared).
#[derive(Clone)]
pub struct Soak {
    pub(super) inner: Arc<Mutex<SoakState>>,
    /// The fault whose window is open: (category, window end once recovered).
    pub(super) window: Arc<Mutex<(usize, Option<Instant>)>>,
}

impl Default for Soak {
    fn default() -> Self {
        Self::new()
    }
}

impl Soak {
    /// An empty checker for [`NAMESPACES`] namespaces.
    #[must_use]
    pub fn new() -> Self {
        let state = SoakState {
            published: vec![Vec::new(); NAMESPACES as usize],
            delays: vec![Histogram::default(); CATEGORIES],
            ..SoakState::default()
        };
        Soak {
            inner: Arc::new(Mutex::new(state)),
            window: Arc::new(Mutex::new((0, None))),
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, SoakState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn category_now(&self) -> usize {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        match *w {
            (c, None) => c,
            (c, Some(until)) if Instant::now() <= until => c,
            _ => 0,
        }
    }

    pub(super) fn fault_started(&self, f: Fault) {
        *self.window.lock().unwrap_or_else(|e| e.into_inner()) = (f.category(), None);
    }

    pub(super) fn fault_recovered(&self) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.1 = Some(Instant::now() + AFTER_FAULT);
    }

    /// A client holding `ns` (each with cursor 0); returns its index.
    pub fn add_client(&self, label: &'static str, ns: &[u64]) -> usize {
        let mut st = self.state();
        st.clients.push(ClientView {
            label,
            holds: ns.iter().map(|&n| (n, 0)).collect(),
        });
        st.clients.len() - 1
    }

    /// `(ns, sjid)` was acknowledged to the publisher now; SJIDs of a namespace come in order
    /// 1, 2, 3, ….
    pub fn published(&self, ns: u64, sjid: u64) {
        let cat = self.category_now() as u8;
        let mut st = self.state();
        let list = &mut st.published[ns as usize];
        debug_assert_eq!(list.len() as u64 + 1, sjid);
        list.push((Instant::now(), cat));
    }

    /// Client `c` was told `ns` changed at `sjid`: every change of `ns` up to `sjid` it had not
    /// learned yet is delivered now.
    pub fn told(&self, c: usize, ns: u64, sjid: u64) {
        let now = Instant::now();
        let cat_now = self.category_now();
        let mut guard = self.state();
        let st = &mut *guard;
        let Some(highest) = st.clients[c].holds.get_mut(&ns) else {
            return;
        };
        if sjid <= *highest {
            return;
        }
        let published = &st.published[ns as usize];
        for s in *highest + 1..=sjid {
            match published.get(s as usize - 1) {
                Some(&(at, cat)) => {
                    st.delays[cat as usize].record(now.saturating_duration_since(at));
                }
                None => {
                    st.before_ack += 1;
                    st.delays[cat_now].record(Duration::ZERO);
                }
            }
        }
        *highest = sjid;
    }

    /// Something that must not happen (unexpected RESET, DENIED, fatal error).
    pub fn problem(&self, c: usize, what: String) {
        let mut st = self.state();
        st.problem_count += 1;
        if st.problems.len() < 20 {
            st.problems.push(format!("client {c}: {what}"));
        }
    }

    /// The continuous check: (client, ns) pairs now owing a change acknowledged over [`LATE`]
    /// ago (the peak is kept for the report).
    pub fn late_now(&self) -> usize {
        let now = Instant::now();
        let mut st = self.state();
        let mut late = 0;
        for client in &st.clients {
            for (&ns, &highest) in &client.holds {
                if let Some(&(at, _)) = st.published[ns as usize].get(highest as usize)
                    && now.saturating_duration_since(at) > LATE
                {
                    late += 1;
                }
            }
        }
        st.late_peak = st.late_peak.max(late);
        late
    }

    /// (client, change) pairs not delivered, with a few examples; and SJIDs told that were
    /// never published (problems).
    pub(super) fn missed(&self) -> (u64, Vec<String>) {
        let mut st = self.state();
        let mut missed = 0;
        let mut examples = Vec::new();
        let mut impossible = Vec::new();
        let mut by_label = BTreeMap::new();
        for (c, client) in st.clients.iter().enumerate() {
            for (&ns, &highest) in &client.holds {
                let latest = st.published[ns as usize].len() as u64;
                if highest < latest {
                    missed += latest - highest;
                    if examples.len() < 5 {
                        examples.push(format!(
                            "client {c} ({}) ns {ns}: knows {highest}, latest {latest}",
                            client.label
                        ));
                    }
                    *by_label.entry(client.label).or_insert(0u64) += 1;
                } else if highest > latest {
                    impossible.push(format!(
                        "client {c}: told ns {ns} at SJID {highest}, never published (latest {latest})"
                    ));
                }
            }
        }
        if !by_label.is_empty() {
            examples.push(format!(
                "(client, ns) pairs behind by transport: {by_label:?}"
            ));
        }
        for p in impossible {
            st.problem_count += 1;
            if st.problems.len() < 20 {
                st.problems.push(p);
            }
        }
        (missed, examples)
    }

    /// Waits up to `limit` for nothing to be missed; the final count.
    pub(super) async fn verify(&self, limit: Duration) -> (u64, Vec<String>) {
        let deadline = Instant::now() + limit;
        loop {
            let (missed, examples) = self.missed();
            if missed == 0 || Instant::now() >= deadline {
                return (missed, examples);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
