//! The latest responder: answers `herald.latest.<p>` from memory, in queue group
//! `herald-relay` so several relays share the load. It subscribes only once the relay is ready;
//! a relay that is not ready does not answer, so callers time out and retry another. A ready
//! relay whose table may be behind the journal (see [`Freshness`]) answers with no entries, so
//! callers retry at once rather than act on a stale value.
//!
//! A request that cannot be decoded, or that asks for more than `MAX_PAIRS_PER_MESSAGE`
//! namespaces, is logged and answered with a reply holding **no entries** (never a partial or
//! made-up one), so the caller learns at once that it was not understood.

use crate::freshness::Freshness;
use crate::metrics::{LATEST_LOOKUPS, LATEST_REQUESTS, LogLimiter};
use async_nats::{Client, Subscriber};
use futures_util::StreamExt;
use herald_core::latest::LatestTable;
use herald_proto::fanout::{LatestReply, LatestRequest, MAX_PAIRS_PER_MESSAGE};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The subjects answered.
pub const LATEST_SUBJECTS: &str = "herald.latest.*";
/// The queue group all relays answer in.
pub const QUEUE_GROUP: &str = "herald-relay";

/// Why a request got an empty reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The payload is not a v1 `LatestRequest`.
    #[error("undecodable latest request: {0}")]
    Malformed(herald_proto::FrameError),
    /// More namespaces than one reply can carry.
    #[error("latest request for {0} namespaces, more than {MAX_PAIRS_PER_MESSAGE}")]
    TooMany(usize),
    /// (Tier N) the upstream tier did not answer in time; the caller retries.
    #[error("the upstream tier did not answer: {0}")]
    Upstream(String),
    /// The relay's table may be behind the journal (its NATS connection came back, or its
    /// journal consumer started over, and it has not caught up since): the caller asks again.
    #[error("the relay is catching up with the journal")]
    Behind,
}

/// The reply to a request payload: `(ns, latest or 0)` for each namespace asked, in order.
pub fn answer(table: &LatestTable, epoch: u64, payload: &[u8]) -> Result<LatestReply, BadRequest> {
    let request = LatestRequest::decode(payload).map_err(BadRequest::Malformed)?;
    if request.ns.len() > MAX_PAIRS_PER_MESSAGE {
        return Err(BadRequest::TooMany(request.ns.len()));
    }
    Ok(LatestReply {
        epoch,
        entries: request.ns.iter().map(|&ns| (ns, table.get(ns))).collect(),
    })
}

/// Subscribes to [`LATEST_SUBJECTS`] in [`QUEUE_GROUP`].
pub async fn subscribe(client: &Client) -> Result<Subscriber, async_nats::SubscribeError> {
    client
        .queue_subscribe(LATEST_SUBJECTS, QUEUE_GROUP.to_owned())
        .await
}

/// Where answers come from.
#[derive(Clone)]
pub enum Answers {
    /// The relay's own table (tier 0: it holds every namespace of the journal), answered from
    /// only while it is current.
    Table(Arc<LatestTable>, Freshness),
    /// The upstream tier (tier N): from what is tracked, else asked upstream and then tracked.
    Upstream(herald_upstream::Upstream),
}

impl Answers {
    async fn answer(&self, epoch: u64, payload: &[u8]) -> Result<LatestReply, BadRequest> {
        match self {
            Answers::Table(_, freshness) if !freshness.is_current() => Err(BadRequest::Behind),
            Answers::Table(table, _) => answer(table, epoch, payload),
            Answers::Upstream(up) => {
                let request = LatestRequest::decode(payload).map_err(BadRequest::Malformed)?;
                if request.ns.len() > MAX_PAIRS_PER_MESSAGE {
                    return Err(BadRequest::TooMany(request.ns.len()));
                }
                let entries = up
                    .lookup(&request.ns)
                    .await
                    .map_err(|e| BadRequest::Upstream(e.to_string()))?;
                Ok(LatestReply { epoch, entries })
            }
        }
    }
}

/// Answers requests on `sub` until `shutdown`, then unsubscribes. Upstream answers may wait for
/// the upstream tier, so each runs in its own task.
pub async fn serve(
    client: Client,
    mut sub: Subscriber,
    answers: Answers,
    epoch: u64,
    shutdown: CancellationToken,
) {
    let ok = metrics::counter!(LATEST_REQUESTS, "result" => "ok");
    let malformed = metrics::counter!(LATEST_REQUESTS, "result" => "malformed");
    let behind = metrics::counter!(LATEST_REQUESTS, "result" => "behind");
    let lookups = metrics::counter!(LATEST_LOOKUPS);
    let mut limit = LogLimiter::default();
    loop {
        let message = tokio::select! {
            m = sub.next() => match m {
                Some(m) => m,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        let Some(reply_to) = message.reply else {
            continue;
        };
        if let Answers::Upstream(_) = &answers {
            let (client, answers) = (client.clone(), answers.clone());
            let (ok, malformed, lookups) = (ok.clone(), malformed.clone(), lookups.clone());
            tokio::spawn(async move {
                let reply = match answers.answer(epoch, &message.payload).await {
                    Ok(reply) => {
                        ok.increment(1);
                        lookups.increment(reply.entries.len() as u64);
                        reply
                    }
                    Err(e) => {
                        malformed.increment(1);
                        tracing::debug!(error = %e, "latest request answered with no entries");
                        LatestReply {
                            epoch,
                            entries: Vec::new(),
                        }
                    }
                };
                let _ = client.publish(reply_to, reply.encode().into()).await;
            });
            continue;
        }
        let reply = match answers.answer(epoch, &message.payload).await {
            Ok(reply) => {
                ok.increment(1);
                lookups.increment(reply.entries.len() as u64);
                reply
            }
            Err(BadRequest::Behind) => {
                behind.increment(1);
                LatestReply {
                    epoch,
                    entries: Vec::new(),
                }
            }
            Err(e) => {
                malformed.increment(1);
                if limit.allow() {
                    tracing::warn!(subject = %message.subject, error = %e, "bad latest request: answered with no entries");
                }
                LatestReply {
                    epoch,
                    entries: Vec::new(),
                }
            }
        };
        if let Err(e) = client.publish(reply_to, reply.encode().into()).await {
            tracing::warn!(error = %e, "could not send a latest reply");
        }
    }
    let _ = sub.unsubscribe().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_from_the_table() {
        let table = LatestTable::new();
        table.merge(7, 42);
        let req = LatestRequest { ns: vec![7, 8, 7] }.encode();
        assert_eq!(
            answer(&table, 5, &req),
            Ok(LatestReply {
                epoch: 5,
                entries: vec![(7, 42), (8, 0), (7, 42)]
            })
        );
        assert!(matches!(
            answer(&table, 5, b"\x02junk"),
            Err(BadRequest::Malformed(_))
        ));
        let many = LatestRequest {
            ns: (0..MAX_PAIRS_PER_MESSAGE as u64 + 1).collect(),
        }
        .encode();
        assert!(matches!(
            answer(&table, 5, &many),
            Err(BadRequest::TooMany(_))
        ));
    }
}
