//! The tier-N source: another relay tier, on another NATS server, instead of the journal
//! (DESIGN.md: "a hierarchy, as in a fleet spread over regions and PoPs"). It is the same code a
//! gateway uses to follow its relays (`herald-upstream`), in [`Scope::All`]: every partition,
//! every change, resyncs on gaps, new epochs and reconnects. What it learns goes through the
//! [`Intake`] like journal messages do, so this relay fans it out downstream with its own epoch
//! and seq, and answers downstream look-ups (see [`crate::responder`]), asking upstream only for
//! namespaces it does not track yet. A reconnect storm on this side stays on this side.

use crate::source::Intake;
use herald_upstream::{Changes, Scope, Upstream, UpstreamConfig};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A relay tier upstream.
pub struct UpstreamSource {
    upstream: Upstream,
    changes: mpsc::Receiver<Changes>,
}

impl std::fmt::Debug for UpstreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSource").finish_non_exhaustive()
    }
}

impl UpstreamSource {
    /// Connects to the upstream tier's NATS at `url` (retrying in the background until it is
    /// reachable) and subscribes to all `partitions`.
    pub async fn connect(
        url: &str,
        partitions: u64,
        request_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut config = UpstreamConfig::new(url);
        config.partitions = partitions;
        config.scope = Scope::All;
        config.request_timeout = request_timeout;
        config.name = format!("herald-relay tier-N {}", std::process::id());
        let (upstream, changes) = Upstream::connect(config)
            .await
            .map_err(|e| anyhow::anyhow!("upstream NATS {url}: {e}"))?;
        Ok(UpstreamSource { upstream, changes })
    }

    /// The handle, for the responder's look-ups.
    #[must_use]
    pub fn upstream(&self) -> Upstream {
        self.upstream.clone()
    }

    /// Feeds upstream changes into `intake` until `shutdown`. Loaded (ready) as soon as every
    /// partition is subscribed upstream: from then on nothing upstream publishes is missed, and
    /// look-ups of namespaces not yet tracked go upstream.
    pub async fn run(mut self, mut intake: Intake, shutdown: CancellationToken) {
        tokio::select! {
            () = self.upstream.ready() => intake.mark_loaded(),
            () = shutdown.cancelled() => return,
        }
        tracing::info!("following the upstream relay tier");
        loop {
            let changes = tokio::select! {
                c = self.changes.recv() => match c {
                    Some(c) => c,
                    None => return,
                },
                () = shutdown.cancelled() => return,
            };
            for (ns, sjid) in changes {
                intake.apply(ns, sjid).await;
            }
        }
    }
}
