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

/// The stream of the `nats-ws-js` peer: Herald's journal settings on the peer's subjects.
const PEER_JOURNAL: &str = "PEER_JOURNAL";

/// Publishing changes to a JetStream stream on the `ns.<n>` subjects (the `nats-ws-js` peer):
/// what the nats-ws peer costs once it keeps the same durable journal as Herald. The stream has
/// the journal's settings (file storage, one message per subject, a 10 s duplicate window,
/// direct gets) and each publish carries a `Nats-Msg-Id` and waits for its acknowledgement,
/// as `herald_relay::Publisher` does.
pub(crate) struct JournalPublisher {
    js: async_nats::jetstream::Context,
}

impl JournalPublisher {
    /// Connects to `url` and creates the stream.
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Self> {
        let js = tokio::time::timeout(TIMEOUT, async {
            let client = async_nats::connect(url).await?;
            let js = async_nats::jetstream::new(client);
            let settings = herald_relay::config::StreamSettings {
                replicas: 1,
                duplicate_window: Duration::from_secs(10),
            };
            let config = async_nats::jetstream::stream::Config {
                name: PEER_JOURNAL.to_owned(),
                description: Some(
                    "herald-loadgen nats-ws-js peer: Herald's journal settings".into(),
                ),
                subjects: vec!["ns.>".to_owned()],
                ..herald_relay::stream::stream_config(&settings)
            };
            js.get_or_create_stream(config)
                .await
                .map_err(|e| anyhow::anyhow!("creating stream {PEER_JOURNAL}: {e}"))?;
            Ok::<_, anyhow::Error>(js)
        })
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {url} took over {TIMEOUT:?}"))??;
        Ok(JournalPublisher { js })
    }

    /// Publishes each `(ns, sjid)` to `ns.<ns>` through JetStream and waits for every ack.
    pub(crate) async fn publish(&self, changes: &[(u64, u64)]) -> anyhow::Result<()> {
        use futures_util::StreamExt;
        /// Acks awaited at once (as `herald_relay::Publisher`).
        const ACK_WINDOW: usize = 1024;
        tokio::time::timeout(TIMEOUT, async {
            let mut acks = futures_util::stream::FuturesOrdered::new();
            for &(ns, sjid) in changes {
                if acks.len() >= ACK_WINDOW
                    && let Some(ack) = acks.next().await
                {
                    check_ack(ack)?;
                }
                let message = async_nats::jetstream::message::PublishMessage::build()
                    .payload(sjid.to_string().into())
                    .message_id(format!("{ns}:{sjid}"));
                let ack = self.js.send_publish(subject(ns), message).await?;
                acks.push_back(std::future::IntoFuture::into_future(ack));
            }
            while let Some(ack) = acks.next().await {
                check_ack(ack)?;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("JetStream acks took over {TIMEOUT:?}"))?
    }
}

/// An ack that says the message was stored in the peer's stream.
fn check_ack(
    ack: Result<
        async_nats::jetstream::publish::PublishAck,
        async_nats::jetstream::context::PublishError,
    >,
) -> anyhow::Result<()> {
    let ack = ack?;
    anyhow::ensure!(
        ack.stream == PEER_JOURNAL,
        "stored in stream {}, not {PEER_JOURNAL}",
        ack.stream
    );
    Ok(())
}
