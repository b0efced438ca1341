//! The fan-out publisher: raised changes in, coalesced [`FanoutBatch`]es out on
//! `herald.fanout.<p>` over core NATS (at-most-once; subscribers resync on a gap or a new epoch).
//!
//! [`FanoutBatch`]: herald_proto::fanout::FanoutBatch

use crate::coalesce::Coalescer;
use crate::metrics::{FANOUT_BATCHES, FANOUT_CHANGES, HEARTBEATS};
use async_nats::Client;
use herald_proto::fanout::fanout_subject;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Raised changes taken from the queue at once.
const RECV_CHUNK: usize = 4096;
/// Longest wait for the client to write out what was published.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// Publishes the coalescer's batches until the queue closes (the source has stopped), then
/// sends what is still open and flushes. While the relay is `ready`, every `heartbeat` (and at
/// once when it becomes ready) it also sends each partition's heartbeat: an empty batch with the
/// last seq, so subscribers learn of a new epoch or a lost last batch within one period.
pub async fn run(
    client: Client,
    mut coalescer: Coalescer,
    mut rx: mpsc::Receiver<(u64, u64)>,
    mut ready: watch::Receiver<bool>,
    heartbeat: Duration,
) {
    let batches = metrics::counter!(FANOUT_BATCHES);
    let changes = metrics::counter!(FANOUT_CHANGES);
    let mut chunk = Vec::with_capacity(RECV_CHUNK);
    let mut beat = tokio::time::interval(heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = coalescer.next_deadline();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            n = rx.recv_many(&mut chunk, RECV_CHUNK) => {
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                for (ns, sjid) in chunk.drain(..) {
                    coalescer.push(now, ns, sjid);
                }
            }
            () = sleep => {}
            _ = beat.tick() => {
                publish_due(&client, &mut coalescer, Instant::now(), &batches, &changes).await;
                if *ready.borrow() {
                    publish_heartbeats(&client, &coalescer, heartbeat).await;
                }
                continue;
            }
            Ok(()) = ready.changed() => {
                if *ready.borrow_and_update() {
                    publish_due(&client, &mut coalescer, Instant::now(), &batches, &changes).await;
                    publish_heartbeats(&client, &coalescer, heartbeat).await;
                }
                continue;
            }
        }
        publish_due(&client, &mut coalescer, Instant::now(), &batches, &changes).await;
    }
    coalescer.flush_all();
    publish_due(&client, &mut coalescer, Instant::now(), &batches, &changes).await;
    // Stopping: wait (a little) for the last batches to be written.
    if client.connection_state() == async_nats::connection::State::Connected
        && tokio::time::timeout(FLUSH_TIMEOUT, client.flush())
            .await
            .is_err()
    {
        tracing::debug!("fan-out flush slow");
    }
}

async fn publish_heartbeats(client: &Client, coalescer: &Coalescer, period: Duration) {
    for (p, batch) in coalescer.heartbeats(Instant::now(), period) {
        if let Err(e) = client
            .publish(fanout_subject(p), batch.encode().into())
            .await
        {
            tracing::debug!(p, error = %e, "heartbeat publish failed");
            return;
        }
    }
    metrics::counter!(HEARTBEATS).increment(1);
}

async fn publish_due(
    client: &Client,
    coalescer: &mut Coalescer,
    now: Instant,
    batches: &metrics::Counter,
    changes: &metrics::Counter,
) {
    while let Some((p, batch)) = coalescer.poll_batch(now) {
        let n = batch.changes.len() as u64;
        match client
            .publish(fanout_subject(p), batch.encode().into())
            .await
        {
            Ok(()) => {
                batches.increment(1);
                changes.increment(n);
            }
            // Only a closed client fails here; subscribers recover by resync (seq gap).
            Err(e) => tracing::warn!(p, seq = batch.seq, error = %e, "fan-out publish failed"),
        }
    }
    // No flush per batch: async-nats' connection task writes what it was handed and flushes as
    // soon as its command queue is empty (`ProcessFut` in async-nats 0.51), so the batch leaves
    // at once; an explicit `flush()` only added a command, a oneshot and a wait per batch.
}
