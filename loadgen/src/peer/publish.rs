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

/// What the `nats-ws-js` peer's stream and publisher keep of Herald's journal settings
/// (`fanout --peer-journal`): all of them by default; the others each drop one, to show which
/// part of the journal costs nats-server what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum PeerJournal {
    /// File storage, one message per subject, a 10 s duplicate window, `Nats-Msg-Id`, acks.
    #[default]
    Herald,
    /// As `herald`, without `Nats-Msg-Id` (no de-duplication work per publish).
    NoDedupe,
    /// As `herald`, in memory storage (no file writes).
    Memory,
    /// As `herald`, with no per-subject limit (no removal of the subject's previous message).
    NoSubjectLimit,
}

impl PeerJournal {
    /// What this variant changes, for the report.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            PeerJournal::Herald => {
                "file storage, one message per subject, Nats-Msg-Id, acks awaited"
            }
            PeerJournal::NoDedupe => {
                "file storage, one message per subject, acks awaited; no Nats-Msg-Id (--peer-journal no-dedupe)"
            }
            PeerJournal::Memory => {
                "memory storage, one message per subject, Nats-Msg-Id, acks awaited (--peer-journal memory)"
            }
            PeerJournal::NoSubjectLimit => {
                "file storage, no per-subject limit, Nats-Msg-Id, acks awaited (--peer-journal no-subject-limit)"
            }
        }
    }
}

/// Publishing changes to a JetStream stream on the `ns.<n>` subjects (the `nats-ws-js` peer):
/// what the nats-ws peer costs once it keeps the same durable journal as Herald. The stream has
/// the journal's settings (file storage, one message per subject, a 10 s duplicate window,
/// direct gets) and each publish carries a `Nats-Msg-Id` and waits for its acknowledgement,
/// as `herald_relay::Publisher` does.
pub(crate) struct JournalPublisher {
    js: async_nats::jetstream::Context,
    /// Whether each publish carries a `Nats-Msg-Id`.
    message_ids: bool,
}

impl JournalPublisher {
    /// Connects to `url` and creates the stream, with `variant`'s settings.
    pub(crate) async fn connect(url: &str, variant: PeerJournal) -> anyhow::Result<Self> {
        let js = tokio::time::timeout(TIMEOUT, async {
            let client = async_nats::connect(url).await?;
            let js = async_nats::jetstream::new(client);
            let settings = herald_relay::config::StreamSettings {
                replicas: 1,
                duplicate_window: Duration::from_secs(10),
            };
            let mut config = async_nats::jetstream::stream::Config {
                name: PEER_JOURNAL.to_owned(),
                description: Some(
                    "herald-loadgen nats-ws-js peer: Herald's journal settings".into(),
                ),
                subjects: vec!["ns.>".to_owned()],
                ..herald_relay::stream::stream_config(&settings)
            };
            match variant {
                PeerJournal::Herald | PeerJournal::NoDedupe => {}
                PeerJournal::Memory => {
                    config.storage = async_nats::jetstream::stream::StorageType::Memory;
                }
                PeerJournal::NoSubjectLimit => config.max_messages_per_subject = -1,
            }
            js.get_or_create_stream(config)
                .await
                .map_err(|e| anyhow::anyhow!("creating stream {PEER_JOURNAL}: {e}"))?;
            Ok::<_, anyhow::Error>(js)
        })
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {url} took over {TIMEOUT:?}"))??;
        Ok(JournalPublisher {
            js,
            message_ids: variant != PeerJournal::NoDedupe,
        })
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
                let mut message = async_nats::jetstream::message::PublishMessage::build()
                    .payload(sjid.to_string().into());
                if self.message_ids {
                    message = message.message_id(format!("{ns}:{sjid}"));
                }
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
