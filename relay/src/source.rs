//! Sources: where a relay's changes come from. Every source feeds an [`Intake`], which merges
//! into the [`LatestTable`] and passes raises on to the fan-out once the source has loaded.
//!
//! Two: [`journal::JournalSource`] (tier 0: the JetStream journal) and
//! [`upstream::UpstreamSource`] (tier N: another relay tier on another NATS server, through
//! `herald-upstream`). Both call the same [`Intake`]: `apply` for every change they read or
//! resync, `mark_loaded` once loaded (journal) or subscribed (upstream).

pub mod journal;
pub mod pull;
pub mod repair;
pub mod tap;
pub mod upstream;

use crate::freshness::Freshness;
use crate::metrics::SourceMetrics;
use herald_core::latest::{LatestTable, Merged};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Where changes come from.
#[derive(Debug)]
#[non_exhaustive]
pub enum Source {
    /// The JetStream journal `HERALD_JOURNAL` (a tier-0 relay).
    Journal(Box<journal::JournalSource>),
    /// Another relay tier on another NATS server (a tier-N relay).
    Upstream(upstream::UpstreamSource),
}

impl Source {
    /// Runs the source until `shutdown`. Returns an error only when retrying cannot help (the
    /// broker or the stream must be fixed by an operator); everything else is retried.
    pub async fn run(
        self,
        intake: Intake,
        shutdown: CancellationToken,
    ) -> Result<(), crate::stream::StreamError> {
        match self {
            Source::Journal(j) => j.run(intake, shutdown).await,
            Source::Upstream(u) => {
                u.run(intake, shutdown).await;
                Ok(())
            }
        }
    }
}

/// The sink side of a source: the latest table, the fan-out queue and readiness.
#[derive(Debug)]
pub struct Intake {
    /// Merge is max.
    table: Arc<LatestTable>,
    /// Raised changes for the fan-out publisher, once loaded.
    fanout: mpsc::Sender<(u64, u64)>,
    /// Set once loaded; `run` then starts the responder and declares the relay ready.
    loaded_tx: watch::Sender<bool>,
    /// True once the initial load is done. Raises before that are not fanned out: nobody could
    /// have missed them (gateways resync on a new epoch anyway).
    loaded: bool,
    /// Counters of the source.
    metrics: SourceMetrics,
    /// Whether the table may answer look-ups (the journal source marks it).
    freshness: Freshness,
}

impl Intake {
    /// An intake feeding `table` and `fanout`, reporting the end of the load on `loaded_tx`.
    #[must_use]
    pub fn new(
        table: Arc<LatestTable>,
        fanout: mpsc::Sender<(u64, u64)>,
        loaded_tx: watch::Sender<bool>,
        metrics: SourceMetrics,
        freshness: Freshness,
    ) -> Self {
        Intake {
            table,
            fanout,
            loaded_tx,
            loaded: false,
            metrics,
            freshness,
        }
    }

    /// Whether the table may answer look-ups.
    #[must_use]
    pub fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    /// Merges one change; a raise after the load goes to the fan-out (waiting if its queue is
    /// full, which slows the source down rather than dropping a change).
    pub async fn apply(&mut self, ns: u64, sjid: u64) -> Merged {
        self.metrics.applied.increment(1);
        self.apply_early(ns, sjid).await
    }

    /// As [`Intake::apply`], for a change seen before the source delivers it (the journal
    /// source's tap and reconnect catch-up): not counted as an applied message, since the
    /// source delivers and counts it later (merge is max makes the second one a no-op).
    pub async fn apply_early(&mut self, ns: u64, sjid: u64) -> Merged {
        let merged = self.table.merge(ns, sjid);
        if merged == Merged::Raised && self.loaded {
            // The fan-out only stops after the source, at shutdown.
            let _ = self.fanout.send((ns, sjid)).await;
        }
        merged
    }

    /// The initial load is done: from now on raises are fanned out (and the relay may declare
    /// itself ready).
    pub fn mark_loaded(&mut self) {
        if !self.loaded {
            self.loaded = true;
            self.loaded_tx.send_replace(true);
        }
    }

    /// True once [`Intake::mark_loaded`] was called.
    #[must_use]
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// The table.
    #[must_use]
    pub fn table(&self) -> &LatestTable {
        &self.table
    }

    /// The source's counters.
    #[must_use]
    pub fn metrics(&self) -> &SourceMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_raises_after_the_load_are_fanned_out() {
        let (tx, mut rx) = mpsc::channel(16);
        let (ready, ready_rx) = watch::channel(false);
        let mut intake = Intake::new(
            Arc::new(LatestTable::new()),
            tx,
            ready,
            SourceMetrics::new(),
            Freshness::new(Arc::default()),
        );
        intake.apply(1, 5).await;
        assert!(!*ready_rx.borrow());
        intake.mark_loaded();
        assert!(*ready_rx.borrow());
        intake.apply(1, 4).await; // lower: not a raise
        intake.apply(1, 6).await;
        intake.apply(2, 1).await;
        drop(intake);
        let mut got = Vec::new();
        while let Some(c) = rx.recv().await {
            got.push(c);
        }
        assert_eq!(got, vec![(1, 6), (2, 1)]);
    }
}
