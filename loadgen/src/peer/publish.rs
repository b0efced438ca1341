//! Publishing changes to core NATS: one `PUB ns.<n>` per change with the SJID in decimal as the
//! payload, over one plain NATS TCP connection (`async-nats`), flushed after every call so a
//! paced publish leaves at once and a burst batch leaves as one write.

use super::nats_ws::subject;
use std::time::Duration;

/// How long connecting, or one call's publishes and flush, may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A core NATS publisher.
pub(crate) struct NatsPublisher {
    client: async_nats::Client,
}

impl NatsPublisher {
    /// Connects to `url` (`nats://host:port`).
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = tokio::time::timeout(TIMEOUT, async_nats::connect(url))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {url} took over {TIMEOUT:?}"))??;
        Ok(NatsPublisher { client })
    }

    /// Publishes each `(ns, sjid)` to `ns.<ns>`, then flushes.
    pub(crate) async fn publish(&self, changes: &[(u64, u64)]) -> anyhow::Result<()> {
        tokio::time::timeout(TIMEOUT, async {
            for &(ns, sjid) in changes {
                self.client
                    .publish(subject(ns), sjid.to_string().into())
                    .await?;
            }
            self.client.flush().await?;
            Ok::<_, anyhow::Error>(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("publishing to core NATS took over {TIMEOUT:?}"))?
    }
}
