//! The journal source: one unfiltered ordered push consumer on `HERALD_JOURNAL` loads the
//! compacted journal (one message per namespace) into the latest table, then keeps tailing.
//! A vouching relay reads it with no-wait pulls of a pull consumer instead, one per
//! `--vouch-ms` (and more at once while they come back full: the load), so the broker hands it
//! a period's changes in one reply ([`super::pull`]; its own gap check stands in for the
//! ordered consumer's).
//!
//! Loading is done when the consumer has caught up: a message says `pending == 0`, or the
//! stream had nothing to deliver, or (fallback, checked every few seconds) the stream's last
//! sequence is one already seen. Nothing the broker sends can panic the relay: a bad message is
//! logged, counted and skipped; a lost connection or consumer is recreated by the ordered
//! consumer itself; a deleted or replaced stream is recreated and read again from the start.
//! A change that comes late (lower than the table's) is written back over (see [`super::repair`]).
//!
//! Beside the consumer, a plain NATS subscription on the journal's subjects (the *tap*) sees each
//! publish as it happens ([`super::tap`]), so a change reaches the table without waiting for
//! JetStream to deliver it. That matters when a NATS node dies: the ordered consumer then needs the JetStream meta
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
use crate::source::tap::Tap;
use crate::stream::{self, StreamError};
use async_nats::jetstream::consumer::{DeliverPolicy, push::OrderedConfig};
use async_nats::jetstream::{self, Message};
use futures_util::StreamExt;
use herald_core::latest::Merged;
use herald_proto::fanout::{JOURNAL_STREAM, parse_journal_body, parse_journal_subject, partition};
use std::time::{Duration, Instant};
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
