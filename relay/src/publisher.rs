//! The metaserver's side of the journal: [`Publisher`] puts `(ns, sjid)` changes into
//! `HERALD_JOURNAL` (PROTOCOL.md "Publishing") and waits until JetStream has stored every one.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let publisher = herald_relay::Publisher::new(async_nats::jetstream::new(client), 64);
//! let published = publisher.publish(&[(7, 42), (9, 3)]).await?;
//! assert_eq!(published.stored + published.duplicates, 2);
//! # Ok(())
//! # }
//! ```

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use herald_proto::fanout::{JOURNAL_STREAM, journal_body, journal_subject, msg_id};

/// Acknowledgements awaited at once; more publishes wait for the oldest ack (the JetStream
/// context itself allows 5000 in flight and would block the 5001st forever).
const ACK_WINDOW: usize = 1024;

/// Why a publish failed. Changes before the failing one may have been stored: publishing again
/// is safe (merge is max, and `Nats-Msg-Id` de-duplicates within the window).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// SJIDs start at 1 (0 means "nothing yet").
    #[error("namespace {ns}: SJID 0 is not a valid SJID")]
    ZeroSjid {
        /// The namespace.
        ns: u64,
    },
    /// No stream captures the subject: start a relay or run `herald-relay create-stream`.
    #[error(
        "namespace {ns}: no JetStream stream takes herald.journal.*: create {JOURNAL_STREAM} (start a relay, or run `herald-relay create-stream`)"
    )]
    NoStream {
        /// The namespace.
        ns: u64,
    },
    /// The server did not acknowledge in time.
    #[error("namespace {ns} SJID {sjid}: no acknowledgement from JetStream in time")]
    Timeout {
        /// The namespace.
        ns: u64,
        /// The SJID.
        sjid: u64,
    },
    /// Another stream took the message (its subjects overlap the journal's).
    #[error("namespace {ns}: stored in stream {stream}, not {JOURNAL_STREAM}")]
    WrongStream {
        /// The namespace.
        ns: u64,
        /// The stream that acknowledged.
        stream: String,
    },
    /// The connection failed or the server refused the message.
    #[error("namespace {ns} SJID {sjid}: {message}")]
    Failed {
        /// The namespace.
        ns: u64,
        /// The SJID.
        sjid: u64,
        /// What the client library said.
        message: String,
    },
}

/// What a successful [`Publisher::publish`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Changes stored as new messages.
    pub stored: usize,
    /// Changes the stream recognised as duplicates (same `Nats-Msg-Id` within its window).
    pub duplicates: usize,
}

/// Publishes journal changes: `herald.journal.<p>.<ns>`, body = SJID as 8 bytes big-endian,
/// header `Nats-Msg-Id: <ns>:<sjid>`.
#[derive(Debug, Clone)]
pub struct Publisher {
    /// JetStream context of a connected client.
    js: jetstream::Context,
    /// `p = ns % partitions`; the deployment constant shared with the relays.
    partitions: u64,
}

impl Publisher {
    /// A publisher with `partitions` (the deployment's constant, default 64).
    #[must_use]
    pub fn new(js: jetstream::Context, partitions: u64) -> Self {
        Publisher {
            js,
            partitions: partitions.max(1),
        }
    }

    /// Publishes the changes and waits for every acknowledgement. A namespace repeated in
    /// `changes` is published once, with its highest SJID.
    ///
    /// Publish a namespace's changes in SJID order: the journal keeps only the *last* message of
    /// each namespace, so a late lower SJID would replace a higher one there (running relays
    /// ignore it and write the higher one back, but a relay that lags may only ever see the
    /// lower one).
    pub async fn publish(&self, changes: &[(u64, u64)]) -> Result<Published, PublishError> {
        if let Some(&(ns, _)) = changes.iter().find(|c| c.1 == 0) {
            return Err(PublishError::ZeroSjid { ns });
        }
        let changes = max_per_namespace(changes);
        let mut acks = FuturesOrdered::new();
        let mut done = Published::default();
        for (ns, sjid) in changes {
            if acks.len() >= ACK_WINDOW
                && let Some(result) = acks.next().await
            {
                count(result, &mut done)?;
            }
            let message = PublishMessage::build()
                .payload(Bytes::copy_from_slice(&journal_body(sjid)))
                .message_id(msg_id(ns, sjid));
            let ack = self
                .js
                .send_publish(journal_subject(ns, self.partitions), message)
                .await
                .map_err(|e| classify(ns, sjid, e.kind(), &e))?;
            acks.push_back(async move { (ns, sjid, ack.await) });
        }
        while let Some(result) = acks.next().await {
            count(result, &mut done)?;
        }
        Ok(done)
    }
}

/// Each namespace once, with its highest SJID, in first-seen order.
fn max_per_namespace(changes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut index = std::collections::HashMap::with_capacity(changes.len());
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(changes.len());
    for &(ns, sjid) in changes {
        match index.entry(ns) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let slot: &mut (u64, u64) = &mut out[*e.get()];
                slot.1 = slot.1.max(sjid);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(out.len());
                out.push((ns, sjid));
            }
        }
    }
    out
}

type AckResult = (
    u64,
    u64,
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
);

fn count((ns, sjid, result): AckResult, done: &mut Published) -> Result<(), PublishError> {
    let ack = result.map_err(|e| classify(ns, sjid, e.kind(), &e))?;
    if ack.stream != JOURNAL_STREAM {
        return Err(PublishError::WrongStream {
            ns,
            stream: ack.stream,
        });
    }
    if ack.duplicate {
        done.duplicates += 1;
    } else {
        done.stored += 1;
    }
    Ok(())
}

fn classify(
    ns: u64,
    sjid: u64,
    kind: PublishErrorKind,
    err: &dyn std::fmt::Display,
) -> PublishError {
    match kind {
        PublishErrorKind::StreamNotFound => PublishError::NoStream { ns },
        PublishErrorKind::TimedOut => PublishError::Timeout { ns, sjid },
        _ => PublishError::Failed {
            ns,
            sjid,
            message: err.to_string(),
        },
    }
}

/// Parses `ns:sjid` (decimal), as the `publish` subcommand takes them.
pub fn parse_change(text: &str) -> Result<(u64, u64), String> {
    let (ns, sjid) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not ns:sjid"))?;
    let ns = ns
        .parse()
        .map_err(|_| format!("{text:?}: namespace {ns:?} is not a decimal u64"))?;
    let sjid: u64 = sjid
        .parse()
        .map_err(|_| format!("{text:?}: SJID {sjid:?} is not a decimal u64"))?;
    if sjid == 0 {
        return Err(format!("{text:?}: SJIDs start at 1"));
    }
    Ok((ns, sjid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_namespaces_go_once_with_their_max() {
        assert_eq!(
            max_per_namespace(&[(5, 1), (9, 7), (5, 3), (5, 2)]),
            vec![(5, 3), (9, 7)]
        );
    }

    #[test]
    fn change_arguments() {
        assert_eq!(parse_change("7:42"), Ok((7, 42)));
        assert_eq!(parse_change("18446744073709551615:1"), Ok((u64::MAX, 1)));
        for bad in ["7", "7:", ":4", "7:0", "x:1", "7:-1", "7:1:2"] {
            assert!(parse_change(bad).is_err(), "{bad}");
        }
    }
}
