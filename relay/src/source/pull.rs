//! A vouching relay's journal reader: no-wait pulls of a no-ack pull consumer, one per
//! `--vouch-ms`, so the broker hands the relay a period's changes in one reply and the relay
//! wakes per pull, not per change ([`super::journal`] runs it; the push consumer is the other
//! way to read the journal).

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, Message};
use futures_util::StreamExt;
use std::time::Duration;

/// Most messages one pull asks for. A pull this full is followed by another at once (the load,
/// or a burst); a paced relay's pull carries a period's changes.
const PULL_MAX: usize = 10_000;
/// Longest wait for one pull's reply (the broker answers a no-wait pull at once).
const PULL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the broker keeps the relay's pull consumer when nobody pulls (a relay that died).
const PULL_CONSUMER_INACTIVE: Duration = Duration::from_secs(30);

/// A vouching relay's reader: a pull consumer with no acks, started after the last stream
/// sequence applied, read with no-wait pulls. The consumer sequence of its messages must count
/// up by one; anything else (a gap, an error, a timeout, a lost consumer) drops the consumer
/// and the next pull creates one from the last sequence applied, which is what an ordered
/// consumer does for itself.
pub(crate) struct Puller {
    stream: jetstream::stream::Stream,
    consumer: Option<jetstream::consumer::PullConsumer>,
    /// The consumer sequence the next message must have.
    next: u64,
}

/// What one pull read.
pub(crate) struct Pulled {
    /// Messages in order, up to the first one out of order.
    pub(crate) messages: Vec<Message>,
    /// It returned [`PULL_MAX`] messages: more may be waiting.
    pub(crate) full: bool,
    /// The consumer was dropped (see [`Puller`]); the next pull starts a new one.
    pub(crate) failed: bool,
}

impl Puller {
    pub(crate) fn new(stream: jetstream::stream::Stream) -> Self {
        Puller {
            stream,
            consumer: None,
            next: 1,
        }
    }

    /// One no-wait pull of the messages after stream sequence `after`.
    pub(crate) async fn pull(&mut self, after: u64) -> Pulled {
        let mut pulled = Pulled {
            messages: Vec::new(),
            full: false,
            failed: false,
        };
        match tokio::time::timeout(PULL_TIMEOUT, self.read(after, &mut pulled.messages)).await {
            Ok(Ok(())) => pulled.full = pulled.messages.len() >= PULL_MAX,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, after, "journal pull failed; the next one starts a new consumer");
                pulled.failed = true;
            }
            Err(_) => {
                tracing::warn!(
                    after,
                    "journal pull timed out; the next one starts a new consumer"
                );
                pulled.failed = true;
            }
        }
        if pulled.failed {
            metrics::counter!("herald_relay_journal_pull_restarts_total").increment(1);
            self.consumer = None;
        }
        pulled
    }

    async fn read(&mut self, after: u64, into: &mut Vec<Message>) -> Result<(), String> {
        if self.consumer.is_none() {
            let deliver_policy = if after == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                }
            };
            let consumer = self
                .stream
                .create_consumer(jetstream::consumer::pull::Config {
                    deliver_policy,
                    ack_policy: AckPolicy::None,
                    inactive_threshold: PULL_CONSUMER_INACTIVE,
                    memory_storage: true,
                    num_replicas: 1,
                    description: Some("herald-relay journal puller".into()),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("creating the pull consumer: {e}"))?;
            self.consumer = Some(consumer);
            self.next = 1;
        }
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        let mut batch = consumer
            .fetch()
            .max_messages(PULL_MAX)
            .messages()
            .await
            .map_err(|e| format!("pulling: {e}"))?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| format!("pulling: {e}"))?;
            let seq = message
                .info()
                .map_err(|e| format!("a pulled message without its sequences: {e}"))?
                .consumer_sequence;
            if seq != self.next {
                return Err(format!(
                    "consumer sequence {seq} where {} was next (messages lost on the way)",
                    self.next
                ));
            }
            self.next += 1;
            into.push(message);
        }
        Ok(())
    }
}
