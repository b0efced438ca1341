//! The journal source: one unfiltered ordered push consumer on `HERALD_JOURNAL` loads the
//! compacted journal (one message per namespace) into the latest table, then keeps tailing.
//! A vouching relay reads it with no-wait pulls of a pull consumer instead, one per
//! `--vouch-ms` (and more at once while they come back full: the load), so the broker hands it
//! a period's changes in one reply ([`super::pull::Puller`]; its own gap check stands in for
//! the ordered consumer's).
//!
//! Loading is done when the consumer has caught up: a message says `pending == 0`, or the
//! stream had nothing to deliver, or (fallback, checked every few seconds) the stream's last
//! sequence is one already seen. Nothing the broker sends can panic the relay: a bad message is
//! logged, counted and skipped; a lost connection or consumer is recreated by the ordered
//! consumer itself; a deleted or replaced stream is recreated and read again from the start.
//! A change that comes late (lower than the table's) is written back over (see [`super::repair`]).
//!
//! Beside the consumer, a plain NATS subscription on the journal's subjects (the *tap*) sees each
//! publish as it happens, so a change reaches the table without waiting for JetStream to deliver
//! it. That matters when a NATS node dies: the ordered consumer then needs the JetStream meta
//! leader to recreate itself, which can take seconds (an election), while core NATS reroutes in
//! milliseconds. What the tap misses while the relay's own connection is down is read back after
//! each reconnect by a *catch-up*: direct gets from the last journal sequence applied, answered
//! by any replica (the stream allows direct gets), so no leader is needed either. The consumer
//! stays the reference: it loads the table and delivers everything, the tap and the catch-up only
//! make it sooner, and merge is max makes the overlap harmless. A publish the stream never
//! acknowledges (rejected, or retried by the publisher) may be announced by the tap: its
//! transaction is committed (publishers publish after the commit), so announcing it is right.

use crate::config::StreamSettings;
use crate::metrics::LogLimiter;
use crate::nats::Backoff;
use crate::source::Intake;
use crate::source::repair::{Repair, Repairer};
use crate::stream::{self, StreamError};
use async_nats::jetstream::consumer::{DeliverPolicy, push::OrderedConfig};
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, Message};
use futures_util::StreamExt;
use herald_core::latest::Merged;
use herald_proto::fanout::{JOURNAL_STREAM, parse_journal_body, parse_journal_subject, partition};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often the stream is looked at (does it still exist, is it the same one, have we
/// caught up).
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// Stream checks in a row that find the journal ahead of the consumer while it delivers nothing
/// before the consumer is replaced. The ordered consumer recreates itself after a reconnect, but
/// when the JetStream meta leader was lost it can wait out a 10 s request timeout first (fault
/// test `cluster_node_killed`); a fresh consumer is quicker, and re-reading the journal is
/// harmless (merge is max: only what was missed is fanned out).
const STALLED_CHECKS: u32 = 2;
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

/// Reads `HERALD_JOURNAL`.
#[derive(Debug)]
pub struct JournalSource {
    /// JetStream context of the relay's connection.
    js: jetstream::Context,
    /// `p = ns % partitions`, to spot misconfigured publishers.
    partitions: u64,
    /// Used when the stream has to be created.
    stream: StreamSettings,
    /// Whether to run the tap (`--journal-tap`).
    tap: bool,
    /// Pull the journal this often instead of a push consumer (a vouching relay).
    pull: Option<Duration>,
}

/// Why one consumer's life ended.
enum Ended {
    /// Shutdown was asked.
    Shutdown,
    /// Start over with a new consumer from the first message (the stream was replaced, or the
    /// message stream ended).
    Restart(String),
}

/// Per-consumer state of the reading loop.
struct Reader {
    /// The stream as this consumer found it; another `created` means it was replaced.
    stream: jetstream::stream::Info,
    /// Highest stream sequence applied.
    last_seq: u64,
    /// Messages applied during the load (for the log line).
    loaded_messages: u64,
    /// `last_seq` at the previous stream check, and how many checks in a row found the stream
    /// ahead of it with no progress (see [`STALLED_CHECKS`]).
    seq_at_check: u64,
    stalled_checks: u32,
}

impl Reader {
    /// Nothing applied yet from the stream `stream`.
    fn new(stream: jetstream::stream::Info) -> Self {
        Reader {
            stream,
            last_seq: 0,
            loaded_messages: 0,
            seq_at_check: 0,
            stalled_checks: 0,
        }
    }
}

/// Log limiters per kind of bad message.
#[derive(Default)]
struct Limits {
    body: LogLimiter,
    subject: LogLimiter,
    partition: LogLimiter,
}

impl JournalSource {
    /// A source reading the journal through `js`, with the tap when `tap`, with a pull every
    /// `pull` when it is given (else a push consumer).
    #[must_use]
    pub fn new(
        js: jetstream::Context,
        partitions: u64,
        stream: StreamSettings,
        tap: bool,
        pull: Option<Duration>,
    ) -> Self {
        JournalSource {
            js,
            partitions: partitions.max(1),
            stream,
            tap,
            pull,
        }
    }

    /// Loads, then tails, until `shutdown`; retries everything but a fatal [`StreamError`].
    pub async fn run(
        self,
        mut intake: Intake,
        shutdown: CancellationToken,
    ) -> Result<(), StreamError> {
        let mut backoff = Backoff::new();
        let mut limits = Limits::default();
        let started = Instant::now();
        let mut tap = Tap::new(&self.js, self.tap, self.partitions).await;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match self
                .consume(
                    &mut intake,
                    &mut limits,
                    &mut tap,
                    started,
                    &shutdown,
                    &mut backoff,
                )
                .await
            {
                Ok(Ended::Shutdown) => return Ok(()),
                Ok(Ended::Restart(why)) => {
                    tracing::warn!(reason = %why, "reading the journal again from its start");
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => tracing::warn!(error = %e, "journal source: retrying"),
            }
            if !backoff.wait(&shutdown).await {
                return Ok(());
            }
        }
    }

    /// Ensures the stream and returns it, with its info as found.
    async fn open_stream(
        &self,
    ) -> Result<(jetstream::stream::Stream, jetstream::stream::Info), StreamError> {
        let api = |e: &dyn std::fmt::Display| StreamError::Api(e.to_string());
        match stream::ensure_stream(&self.js, &self.stream).await? {
            stream::Ensured::Created => tracing::info!(
                stream = JOURNAL_STREAM,
                replicas = self.stream.replicas,
                duplicate_window = ?self.stream.duplicate_window,
                "created the journal stream"
            ),
            stream::Ensured::Existing => tracing::debug!("journal stream present"),
        }
        let mut stream = self
            .js
            .get_stream(JOURNAL_STREAM)
            .await
            .map_err(|e| api(&e))?;
        let info = stream.info().await.map_err(|e| api(&e))?.clone();
        Ok((stream, info))
    }

    /// Ensures the stream, creates one ordered consumer and reads it until it must be replaced.
    async fn consume(
        &self,
        intake: &mut Intake,
        limits: &mut Limits,
        tap: &mut Tap,
        started: Instant,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<Ended, StreamError> {
        if let Some(every) = self.pull {
            return self
                .consume_pulled(every, intake, limits, tap, started, shutdown, backoff)
                .await;
        }
        let api = |e: &dyn std::fmt::Display| StreamError::Api(e.to_string());
        let (stream, info) = self.open_stream().await?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                deliver_policy: DeliverPolicy::All,
                description: Some("herald-relay journal reader".into()),
                ..OrderedConfig::default()
            })
            .await
            .map_err(|e| api(&e))?;
        intake.freshness().behind();
        let to_deliver = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.map_err(|e| api(&e))?;
        backoff.reset();
        tracing::info!(
            messages = info.state.messages,
            to_deliver,
            "journal consumer started"
        );
        let mut reader = Reader::new(info);
        if to_deliver == 0 {
            self.caught_up(intake, &reader, started);
        }
        let mut repairer = Repairer::spawn(self.js.clone());
        let mut watch = tokio::time::interval(WATCH_EVERY);
        watch.tick().await;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(Ended::Shutdown),
                early = tap.next_early(&stream, reader.last_seq) => {
                    if let Some((ns, sjid)) = early {
                        intake.apply_early(ns, sjid).await;
                    }
                }
                next = messages.next() => match next {
                    Some(Ok(message)) => {
                        let pending = self.handle(&message, intake, limits, &mut reader, &mut repairer).await;
                        if pending == Some(0) {
                            self.caught_up(intake, &reader, started);
                        }
                    }
                    Some(Err(e)) => {
                        // The ordered consumer recreates itself after this (missed heartbeats,
                        // reconnects); say so and keep reading.
                        tracing::warn!(error = %e, "journal consumer interrupted; it resumes by itself");
                    }
                    None => return Ok(Ended::Restart("the consumer's message stream ended".into())),
                },
                _ = watch.tick() => {
                    if let Some(ended) = self.check_stream(intake, &mut reader, started).await {
                        return Ok(ended);
                    }
                }
            }
        }
    }

    /// As [`JournalSource::consume`] for a vouching relay: a pull consumer read every `every`
    /// (and at once again while a pull comes back full), so the broker delivers what was stored
    /// since the last pull in one reply and the relay wakes per pull, not per change.
    #[allow(clippy::too_many_arguments)]
    async fn consume_pulled(
        &self,
        every: Duration,
        intake: &mut Intake,
        limits: &mut Limits,
        tap: &mut Tap,
        started: Instant,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<Ended, StreamError> {
        let (stream, info) = self.open_stream().await?;
        intake.freshness().behind();
        backoff.reset();
        tracing::info!(
            messages = info.state.messages,
            every_ms = every.as_millis() as u64,
            "journal pulls started"
        );
        let mut puller = super::pull::Puller::new(stream.clone());
        let mut reader = Reader::new(info);
        let mut repairer = Repairer::spawn(self.js.clone());
        let mut pulls = tokio::time::interval(every);
        pulls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = tokio::time::interval(WATCH_EVERY);
        watch.tick().await;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(Ended::Shutdown),
                early = tap.next_early(&stream, reader.last_seq) => {
                    if let Some((ns, sjid)) = early {
                        intake.apply_early(ns, sjid).await;
                    }
                }
                _ = pulls.tick() => {
                    // Until a pull comes back short: then everything stored before it is read.
                    loop {
                        let pulled = puller.pull(reader.last_seq).await;
                        for message in &pulled.messages {
                            self.handle(message, intake, limits, &mut reader, &mut repairer).await;
                        }
                        if pulled.failed {
                            break;
                        }
                        if !pulled.full {
                            self.caught_up(intake, &reader, started);
                            break;
                        }
                        if shutdown.is_cancelled() {
                            return Ok(Ended::Shutdown);
                        }
                    }
                }
                _ = watch.tick() => {
                    if let Some(ended) = self.check_stream(intake, &mut reader, started).await {
                        return Ok(ended);
                    }
                }
            }
        }
    }

    /// Applies one journal message; returns its `pending` count when it has one.
    async fn handle(
        &self,
        message: &Message,
        intake: &mut Intake,
        limits: &mut Limits,
        reader: &mut Reader,
        repairer: &mut Repairer,
    ) -> Option<u64> {
        let (pending, stream_seq) = match message.info() {
            Ok(info) => {
                reader.last_seq = reader.last_seq.max(info.stream_sequence);
                (Some(info.pending), Some(info.stream_sequence))
            }
            Err(_) => (None, None),
        };
        if !intake.is_loaded() {
            reader.loaded_messages += 1;
        }
        let subject = message.subject.as_str();
        let (ns, sjid) = match read_journal_message(subject, &message.payload, self.partitions) {
            Ok(JournalEntry::Change { ns, sjid }) => (ns, sjid),
            Ok(JournalEntry::Misrouted { ns, sjid, expected }) => {
                intake.metrics().bad_partition.increment(1);
                if limits.partition.allow() {
                    tracing::warn!(
                        subject,
                        expected,
                        partitions = self.partitions,
                        seen = limits.partition.seen(),
                        "misconfigured publisher: partition does not match ns % partitions \
                         (is --partitions the same everywhere?); applied anyway"
                    );
                }
                (ns, sjid)
            }
            Err(BadMessage::Subject) => {
                intake.metrics().bad_subject.increment(1);
                if limits.subject.allow() {
                    tracing::warn!(
                        subject,
                        seen = limits.subject.seen(),
                        "journal message with a subject that is not herald.journal.<p>.<ns>: skipped"
                    );
                }
                return pending;
            }
            Err(BadMessage::Body) => {
                intake.metrics().bad_body.increment(1);
                if limits.body.allow() {
                    tracing::warn!(
                        subject,
                        len = message.payload.len(),
                        seen = limits.body.seen(),
                        "journal message body is not an 8-byte big-endian SJID: skipped"
                    );
                }
                return pending;
            }
        };
        if let Merged::Behind(latest) = intake.apply(ns, sjid).await
            && let Some(stream_seq) = stream_seq
        {
            repairer.request(Repair {
                subject: subject.to_owned(),
                stream_seq,
                ns,
                latest,
            });
        }
        pending
    }

    /// The reader has everything the stream held a moment ago: the load is done (the first
    /// time) and look-ups may be answered.
    fn caught_up(&self, intake: &mut Intake, reader: &Reader, started: Instant) {
        if !intake.is_loaded() {
            self.loaded(intake, reader, started);
        }
        intake.freshness().caught_up();
    }

    fn loaded(&self, intake: &mut Intake, reader: &Reader, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        intake.metrics().load_seconds.set(secs);
        intake.mark_loaded();
        let namespaces = intake.table().len();
        tracing::info!(
            namespaces,
            messages = reader.loaded_messages,
            seconds = format!("{secs:.3}"),
            per_second = (reader.loaded_messages as f64 / secs.max(1e-9)) as u64,
            "journal loaded"
        );
    }

    /// Looks at the stream: gone or replaced → start over; caught up while loading → loaded.
    async fn check_stream(
        &self,
        intake: &mut Intake,
        reader: &mut Reader,
        started: Instant,
    ) -> Option<Ended> {
        let info = match self.js.get_stream(JOURNAL_STREAM).await {
            Ok(s) => s.cached_info().clone(),
            Err(e) => {
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
                {
                    return Some(Ended::Restart(format!(
                        "the stream {JOURNAL_STREAM} disappeared (deleted?)"
                    )));
                }
                // Disconnected or slow: the consumer will say more; look again later.
                tracing::debug!(error = %e, "could not look at the journal stream");
                return None;
            }
        };
        if info.created != reader.stream.created {
            return Some(Ended::Restart(format!(
                "the stream {JOURNAL_STREAM} was replaced by a new one"
            )));
        }
        if info.state.messages == 0 || info.state.last_sequence <= reader.last_seq {
            self.caught_up(intake, reader, started);
        }
        let behind = info.state.last_sequence > reader.last_seq;
        if behind && reader.last_seq == reader.seq_at_check {
            reader.stalled_checks += 1;
        } else {
            reader.stalled_checks = 0;
        }
        reader.seq_at_check = reader.last_seq;
        if reader.stalled_checks >= STALLED_CHECKS {
            metrics::counter!("herald_relay_consumer_stalls_total").increment(1);
            return Some(Ended::Restart(format!(
                "the journal consumer stalled: the stream is at {}, applied up to {}",
                info.state.last_sequence, reader.last_seq
            )));
        }
        None
    }
}

/// The tap (a core NATS subscription on the journal's subjects) and the reconnect catch-up.
struct Tap {
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
    async fn new(js: &jetstream::Context, enabled: bool, partitions: u64) -> Self {
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
    async fn next_early(
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

/// A journal message that can be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalEntry {
    /// `herald.journal.<p>.<ns>` with the right `p`.
    Change {
        /// The namespace (last subject token).
        ns: u64,
        /// The SJID (body).
        sjid: u64,
    },
    /// The subject's `p` is not `ns % partitions`: a misconfigured publisher (still applied).
    Misrouted {
        /// The namespace.
        ns: u64,
        /// The SJID.
        sjid: u64,
        /// The partition the subject should have had.
        expected: u64,
    },
}

/// A journal message that is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadMessage {
    /// Not `herald.journal.<p>.<ns>` with decimal `p` and `ns`.
    Subject,
    /// Not an 8-byte big-endian SJID.
    Body,
}

/// Reads one journal message (PROTOCOL.md "Publishing").
pub fn read_journal_message(
    subject: &str,
    body: &[u8],
    partitions: u64,
) -> Result<JournalEntry, BadMessage> {
    let (p, ns) = parse_journal_subject(subject).ok_or(BadMessage::Subject)?;
    let sjid = parse_journal_body(body).ok_or(BadMessage::Body)?;
    let expected = partition(ns, partitions);
    Ok(if p == expected {
        JournalEntry::Change { ns, sjid }
    } else {
        JournalEntry::Misrouted { ns, sjid, expected }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_messages() {
        let body = 42u64.to_be_bytes();
        assert_eq!(
            read_journal_message("herald.journal.2.130", &body, 64),
            Ok(JournalEntry::Change { ns: 130, sjid: 42 })
        );
        assert_eq!(
            read_journal_message("herald.journal.3.130", &body, 64),
            Ok(JournalEntry::Misrouted {
                ns: 130,
                sjid: 42,
                expected: 2
            })
        );
        assert_eq!(
            read_journal_message("herald.journal.0.18446744073709551615", &body, 1),
            Ok(JournalEntry::Change {
                ns: u64::MAX,
                sjid: 42
            })
        );
        for subject in [
            "herald.journal.2",
            "herald.journal.x.130",
            "herald.journal.2.130.9",
            "herald.journal.2.-1",
            "herald.journal.2.18446744073709551616",
            "other.2.130",
        ] {
            assert_eq!(
                read_journal_message(subject, &body, 64),
                Err(BadMessage::Subject),
                "{subject}"
            );
        }
        for bad in [&b""[..], b"42", &[0; 9], &[0; 7]] {
            assert_eq!(
                read_journal_message("herald.journal.2.130", bad, 64),
                Err(BadMessage::Body)
            );
        }
    }
}
