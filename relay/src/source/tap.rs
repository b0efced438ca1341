//! The journal source's tap: a plain NATS subscription on the journal's subjects that sees each
//! publish as it happens, and the catch-up that reads back, with direct gets from any replica,
//! what the relay's connection missed while it was away (see [`super::journal`]).

use super::journal::{JournalEntry, read_journal_message};
use async_nats::jetstream;
use async_nats::jetstream::stream::DirectGetErrorKind;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the relay's NATS connection counter is read, to notice a reconnect (an atomic load).
const RECONNECT_CHECK_EVERY: Duration = Duration::from_millis(50);
/// When catch-up passes run after a reconnect. More than one: the replica that answers first may
/// not hold the newest messages yet, and the reconnect may race a leader election.
/// The later passes cover a lost stream leader: replicas answer direct gets again once a new
/// leader is elected, which can be sooner than the consumer recovers.
const CATCH_UP_PASSES: [Duration; 6] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_millis(750),
    Duration::from_millis(1500),
    Duration::from_millis(2500),
    Duration::from_millis(4000),
];
/// Longest wait for one direct get.
const DIRECT_GET_TIMEOUT: Duration = Duration::from_millis(500);
/// Most messages one catch-up pass reads (the journal keeps one message per namespace, so a
/// pass starting far behind would otherwise read the whole table; the consumer covers that).
const CATCH_UP_MAX_MESSAGES: usize = 50_000;

/// The tap (a core NATS subscription on the journal's subjects) and the reconnect catch-up.
pub(crate) struct Tap {
    /// `None` when the subscription could not be made (the consumer alone then delivers).
    subscriber: Option<async_nats::Subscriber>,
    /// The client's connection counter, to notice a reconnect.
    statistics: std::sync::Arc<async_nats::Statistics>,
    /// Connections seen so far.
    connects: u64,
    /// Changes read by catch-up passes.
    caught_up: mpsc::Receiver<(u64, u64)>,
    caught_up_tx: mpsc::Sender<(u64, u64)>,
    /// The running catch-up, replaced by the next reconnect's.
    task: Option<tokio::task::JoinHandle<()>>,
    /// When to look at the connection counter ([`RECONNECT_CHECK_EVERY`]).
    reconnects: tokio::time::Interval,
    /// `p = ns % partitions`, to read journal subjects.
    partitions: u64,
}

impl Tap {
    pub(crate) async fn new(js: &jetstream::Context, enabled: bool, partitions: u64) -> Self {
        let client = js.client();
        let subscriber = if enabled {
            match client.subscribe(crate::stream::JOURNAL_SUBJECTS).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "journal tap not subscribed: changes wait for the consumer");
                    None
                }
            }
        } else {
            None
        };
        let statistics = client.statistics();
        let connects = statistics
            .connects
            .load(std::sync::atomic::Ordering::Relaxed);
        let (caught_up_tx, caught_up) = mpsc::channel(1024);
        let mut reconnects = tokio::time::interval(RECONNECT_CHECK_EVERY);
        reconnects.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Tap {
            subscriber,
            statistics,
            connects,
            caught_up,
            caught_up_tx,
            task: None,
            reconnects,
            partitions,
        }
    }

    /// The next change seen before the journal reader has it (a tapped publish or one read by
    /// a catch-up), or `None` when a reconnect was noticed instead (a catch-up from `last_seq`
    /// of `stream` is then started). Cancel-safe: every step is.
    pub(crate) async fn next_early(
        &mut self,
        stream: &jetstream::stream::Stream,
        last_seq: u64,
    ) -> Option<(u64, u64)> {
        tokio::select! {
            biased;
            Some(message) = herald_upstream::upstream::next_message(&mut self.subscriber) => {
                tapped(&message.subject, &message.payload, self.partitions)
            }
            Some(change) = self.caught_up.recv() => Some(change),
            _ = self.reconnects.tick() => {
                if self.reconnected() {
                    self.catch_up(stream, last_seq, self.partitions);
                }
                None
            }
        }
    }

    /// True once per reconnect of the relay's NATS connection.
    fn reconnected(&mut self) -> bool {
        let now = self
            .statistics
            .connects
            .load(std::sync::atomic::Ordering::Relaxed);
        let changed = now != self.connects;
        self.connects = now;
        changed
    }

    /// Reads the journal forward from `after` (the last sequence the consumer applied) in a few
    /// passes, sending what it finds to [`Tap::caught_up`]. Replaces a catch-up still running.
    fn catch_up(&mut self, stream: &jetstream::stream::Stream, after: u64, partitions: u64) {
        metrics::counter!("herald_relay_catch_ups_total").increment(1);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let stream = stream.clone();
        let tx = self.caught_up_tx.clone();
        self.task = Some(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut next = after + 1;
            let mut read = 0usize;
            for at in CATCH_UP_PASSES {
                tokio::time::sleep_until(started + at).await;
                let (reached, n) = catch_up_pass(&stream, next, partitions, &tx).await;
                next = next.max(reached);
                read += n;
            }
            tracing::info!(
                from = after + 1,
                read,
                "journal catch-up after a reconnect done"
            );
        }));
    }
}

/// A message seen by the tap: applied only when well formed (the journal reader delivers the
/// same message and counts what is wrong with it).
fn tapped(subject: &str, body: &[u8], partitions: u64) -> Option<(u64, u64)> {
    match read_journal_message(subject, body, partitions) {
        Ok(JournalEntry::Change { ns, sjid } | JournalEntry::Misrouted { ns, sjid, .. }) => {
            metrics::counter!("herald_relay_journal_tapped_total").increment(1);
            Some((ns, sjid))
        }
        Err(_) => None,
    }
}

/// One catch-up pass: direct gets of the next journal message at or after `from`, until none is
/// left, one fails, or [`CATCH_UP_MAX_MESSAGES`]. Returns the sequence to start the next pass
/// from and how many messages it read.
async fn catch_up_pass(
    stream: &jetstream::stream::Stream,
    from: u64,
    partitions: u64,
    tx: &mpsc::Sender<(u64, u64)>,
) -> (u64, usize) {
    let mut next = from;
    let mut read = 0;
    while read < CATCH_UP_MAX_MESSAGES {
        let got = tokio::time::timeout(
            DIRECT_GET_TIMEOUT,
            stream.direct_get_next_for_subject(crate::stream::JOURNAL_SUBJECTS, Some(next)),
        )
        .await;
        let message = match got {
            Ok(Ok(m)) => m,
            Ok(Err(e)) if matches!(e.kind(), DirectGetErrorKind::NotFound) => break,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "journal catch-up: direct get failed; next pass retries");
                break;
            }
            Err(_) => {
                tracing::debug!("journal catch-up: direct get timed out; next pass retries");
                break;
            }
        };
        next = message.sequence + 1;
        read += 1;
        if let Ok(JournalEntry::Change { ns, sjid } | JournalEntry::Misrouted { ns, sjid, .. }) =
            read_journal_message(message.subject.as_str(), &message.payload, partitions)
            && tx.send((ns, sjid)).await.is_err()
        {
            break;
        }
    }
    (next, read)
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
