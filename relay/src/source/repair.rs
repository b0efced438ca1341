//! Journal repair. The journal keeps only the *last* message of each namespace, so a publisher
//! that sends a lower SJID after a higher one (against PROTOCOL.md's "in SJID order") replaces
//! the higher one there: running relays ignore it (merge is max), but a relay started later
//! would load the lower value. When the journal source sees such a late change, it writes the
//! table's maximum back on the same subject, on condition that the subject's last message is
//! still the late one (`Nats-Expected-Last-Subject-Sequence`): a newer publish, or another relay
//! repairing first, wins, and nothing can move backwards.

use crate::metrics::{JOURNAL_REPAIRS, LogLimiter};
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use bytes::Bytes;
use herald_proto::fanout::journal_body;
use tokio::sync::mpsc;

/// Repairs queued before new ones are dropped (logged): a flood of late changes must not grow
/// memory or slow the source.
const QUEUE: usize = 1024;

/// One late change to overwrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The subject the late change came on.
    pub subject: String,
    /// Its stream sequence (the condition of the overwrite).
    pub stream_seq: u64,
    /// The namespace.
    pub ns: u64,
    /// The table's maximum, to write back.
    pub latest: u64,
}

/// Hands repairs to a background task.
#[derive(Debug)]
pub struct Repairer {
    /// To the task; dropping it ends the task.
    tx: mpsc::Sender<Repair>,
    /// Repairs dropped because the queue was full.
    dropped: LogLimiter,
}

impl Repairer {
    /// Starts the repair task on `js`.
    #[must_use]
    pub fn spawn(js: jetstream::Context) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(js, rx));
        Repairer {
            tx,
            dropped: LogLimiter::default(),
        }
    }

    /// Queues a repair; drops it (logged) when the queue is full.
    pub fn request(&mut self, repair: Repair) {
        if self.tx.try_send(repair).is_err() && self.dropped.allow() {
            tracing::warn!(
                dropped = self.dropped.seen(),
                "journal repair queue full: a late lower SJID stays in the journal"
            );
        }
    }
}

async fn run(js: jetstream::Context, mut rx: mpsc::Receiver<Repair>) {
    let repaired = metrics::counter!(JOURNAL_REPAIRS);
    while let Some(r) = rx.recv().await {
        let message = PublishMessage::build()
            .payload(Bytes::copy_from_slice(&journal_body(r.latest)))
            .expected_last_subject_sequence(r.stream_seq);
        let result = match js.send_publish(r.subject.clone(), message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => {
                repaired.increment(1);
                tracing::info!(
                    ns = r.ns,
                    latest = r.latest,
                    subject = r.subject,
                    "journal repaired: a late lower SJID was replaced by the latest"
                );
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => tracing::debug!(
                ns = r.ns,
                "journal repair not needed: the subject moved on (a newer publish or another relay)"
            ),
            Err(e) => tracing::warn!(ns = r.ns, error = %e, "journal repair failed"),
        }
    }
}
