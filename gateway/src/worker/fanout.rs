//! A worker's fan-out: batches from the journal (standalone) or the relays (distributed), each
//! change encoded once and the same bytes queued to every subscriber that does not know it yet,
//! then one write per touched connection at the end of the round.

use super::Worker;
use crate::conn::{Queued, SharedChange};
use herald_core::batch::Batch;
use std::rc::Rc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Changes one fan-out round may take: batches already waiting behind the first one join its
/// round, so a connection gets one write for all of them (under a burst, several CHANGED per
/// write instead of one each; a paced batch finds nothing waiting and goes alone).
const ROUND_CHANGES: usize = 16 * 1024;

/// The fan-out task: a round per batch (and those waiting behind it) until the channel closes.
pub async fn run(worker: Rc<Worker>, mut fanout: mpsc::Receiver<Batch>) {
    // Resolved once: the macro looks the key up in the registry on every call.
    let lag = metrics::histogram!("herald_fanout_lag_seconds");
    let mut round: Vec<Instant> = Vec::new();
    while let Some(batch) = fanout.recv().await {
        let mut changes = batch.changes.len();
        worker.fanout(&batch.changes);
        round.push(batch.at);
        while changes < ROUND_CHANGES {
            let Ok(next) = fanout.try_recv() else { break };
            changes += next.changes.len();
            worker.fanout(&next.changes);
            round.push(next.at);
        }
        worker.flush_round();
        // From the gateway getting the change to the last write (or queueing) of it here.
        for at in round.drain(..) {
            lag.record(at.elapsed().as_secs_f64());
        }
    }
}

impl Worker {
    /// Queues a batch for delivery: each change is encoded once and the same bytes go to every
    /// subscriber that does not know it yet. Nothing is written until [`Worker::flush_round`].
    pub fn fanout(&self, batch: &[(u64, u64)]) {
        let now = self.now();
        let limit = self.limits.outbox_limit_bytes;
        let mut interest = self.interest.borrow_mut();
        let conns = self.conns.borrow();
        let mut touched = self.touched.borrow_mut();
        let mut sent = 0;
        let mut already = 0;
        for &(ns, sjid) in batch {
            let Some(subs) = interest.subscribers_mut(ns) else {
                continue;
            };
            already += subs.len() as u64;
            let mut change = SharedChange::new(ns, sjid);
            for sub in subs.iter_mut().filter(|s| s.known < sjid) {
                sub.known = sjid;
                let Some(conn) = conns.get(sub.conn as usize) else {
                    continue;
                };
                match conn.queue_shared(&mut change, limit, &self.lookup, now) {
                    Queued::First => touched.push(sub.conn),
                    Queued::SlowConsumer => self.stats.slow_consumers.add(1),
                    Queued::No | Queued::Collected | Queued::Behind => {}
                }
                sent += 1;
            }
        }
        self.stats.changes_in.add(batch.len() as u64);
        self.stats.notifications_sent.add(sent);
        self.stats.already_known.add(already - sent);
    }

    /// Ends a fan-out round: one write to every connection the round queued changes for.
    pub fn flush_round(&self) {
        let conns = self.conns.borrow();
        let mut touched = self.touched.borrow_mut();
        self.stats.fanout_writes.add(touched.len() as u64);
        for key in touched.drain(..) {
            if let Some(conn) = conns.get(key as usize) {
                conn.flush_queued();
            }
        }
    }
}
