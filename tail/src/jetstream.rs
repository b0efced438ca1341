//! The distributed sink: changes go into `HERALD_JOURNAL` exactly as a metaserver publishes
//! them (PROTOCOL.md "Publishing"), through herald-relay's [`Publisher`].

use crate::assemble::Change;
use crate::sink::JournalSink;
use herald_relay::Publisher;

/// Publishes into JetStream and waits for every acknowledgement.
#[derive(Debug, Clone)]
pub struct JetStreamSink {
    publisher: Publisher,
}

impl JetStreamSink {
    /// A sink over a connected client, with the deployment's partition count.
    #[must_use]
    pub fn new(client: async_nats::Client, partitions: u64) -> Self {
        JetStreamSink {
            publisher: Publisher::new(async_nats::jetstream::new(client), partitions),
        }
    }
}

impl JournalSink for JetStreamSink {
    async fn deliver(&self, changes: Vec<Change>) -> anyhow::Result<()> {
        // Publisher sends a namespace once per call, with its highest SJID.
        self.publisher.publish(&changes).await?;
        Ok(())
    }
}
