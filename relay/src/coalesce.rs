//! The coalescer: gathers raised changes per partition for a bounded delay and seals them into
//! numbered [`FanoutBatch`]es. Sans-IO like `herald-proto`: no sockets, no clock (time is passed
//! in), so the tests drive it with made-up instants.
//!
//! ```text
//!  push(now, ns, sjid) ─► pending[p]: ns → max sjid   (first push of p starts its delay)
//!                            │ delay passed, or MAX_PAIRS_PER_MESSAGE distinct namespaces
//!                            ▼
//!  poll_batch(now) ◄── sealed: (p, FanoutBatch{epoch, seq[p] += 1, changes})
//! ```

use herald_proto::fanout::{FanoutBatch, MAX_PAIRS_PER_MESSAGE, partition};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Changes of one partition waiting for their delay to pass.
#[derive(Debug)]
struct Pending {
    /// When this batch goes out.
    due: Instant,
    /// `(ns, max sjid)` in first-seen order.
    changes: Vec<(u64, u64)>,
    /// ns → index in `changes`, so a repeated namespace is sent once, with its max.
    index: HashMap<u64, usize>,
}

/// Per-partition coalescing and numbering of one relay's fan-out stream.
#[derive(Debug)]
pub struct Coalescer {
    /// Random id of this relay process, stamped on every batch.
    epoch: u64,
    /// `p = ns % partitions`.
    partitions: u64,
    /// How long a partition's first change waits for company.
    delay: Duration,
    /// Most distinct namespaces per batch.
    max_pairs: usize,
    /// Open batches by partition.
    pending: HashMap<u64, Pending>,
    /// `(due, p)` in push order; as the delay is constant, also in due order. Entries whose
    /// partition was sealed early (full) are skipped when their `due` no longer matches.
    deadlines: VecDeque<(Instant, u64)>,
    /// Batches ready to publish, in order (a partition's batches in seq order).
    sealed: VecDeque<(u64, FanoutBatch)>,
    /// Last seq used per partition (the next batch gets +1; the first is 1).
    seq: HashMap<u64, u64>,
    /// When each partition's last batch was handed out by [`Coalescer::poll_batch`].
    sent: HashMap<u64, Instant>,
}

impl Coalescer {
    /// A coalescer for a relay with `epoch`, holding changes at most `delay`.
    #[must_use]
    pub fn new(epoch: u64, partitions: u64, delay: Duration) -> Self {
        Self::with_max_pairs(epoch, partitions, delay, MAX_PAIRS_PER_MESSAGE)
    }

    /// Like [`Coalescer::new`] with another batch size limit (tests use small ones).
    #[must_use]
    pub fn with_max_pairs(epoch: u64, partitions: u64, delay: Duration, max_pairs: usize) -> Self {
        Coalescer {
            epoch,
            partitions: partitions.max(1),
            delay,
            max_pairs: max_pairs.max(1),
            pending: HashMap::new(),
            deadlines: VecDeque::new(),
            sealed: VecDeque::new(),
            seq: HashMap::new(),
            sent: HashMap::new(),
        }
    }

    /// The epoch stamped on batches.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Adds a raised change.
    pub fn push(&mut self, now: Instant, ns: u64, sjid: u64) {
        let p = partition(ns, self.partitions);
        let pending = self.pending.entry(p).or_insert_with(|| {
            let due = now + self.delay;
            self.deadlines.push_back((due, p));
            Pending {
                due,
                changes: Vec::new(),
                index: HashMap::new(),
            }
        });
        if let Some(&i) = pending.index.get(&ns) {
            let slot = &mut pending.changes[i].1;
            *slot = (*slot).max(sjid);
            return;
        }
        pending.index.insert(ns, pending.changes.len());
        pending.changes.push((ns, sjid));
        if pending.changes.len() >= self.max_pairs
            && let Some(full) = self.pending.remove(&p)
        {
            self.seal(p, full);
        }
    }

    /// The next batch to publish, if one is due at `now`.
    pub fn poll_batch(&mut self, now: Instant) -> Option<(u64, FanoutBatch)> {
        self.seal_due(now);
        let next = self.sealed.pop_front();
        if let Some((p, _)) = &next {
            self.sent.insert(*p, now);
        }
        next
    }

    /// When the next open batch becomes due (`None`: nothing open). Batches sealed because they
    /// were full are due at once: call [`Coalescer::poll_batch`] until `None` before sleeping.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines
            .iter()
            .find(|(due, p)| self.pending.get(p).is_some_and(|x| x.due == *due))
            .map(|(due, _)| *due)
    }

    /// Seals every open batch at once (at shutdown), in deadline order.
    pub fn flush_all(&mut self) {
        while let Some((_, p)) = self.deadlines.pop_front() {
            if let Some(pending) = self.pending.remove(&p) {
                self.seal(p, pending);
            }
        }
    }

    /// One empty batch per partition carrying the last seq used there (0 before the first
    /// batch). Subscribers compare it with the last seq they saw, so a lost last batch, or a new
    /// relay, is noticed without waiting for the next change. Publish sealed batches first: a
    /// heartbeat must not overtake a batch whose seq it carries.
    ///
    /// A partition that had a batch out within the last `period` is skipped: that batch told
    /// its subscribers the seq and that the relay lives, and if it was lost, the next heartbeat
    /// (at most two periods after it) tells them. With vouching, every busy partition sends a
    /// batch each period, so this halves the relay's messages.
    pub fn heartbeats(
        &self,
        now: Instant,
        period: Duration,
    ) -> impl Iterator<Item = (u64, FanoutBatch)> + '_ {
        (0..self.partitions)
            .filter(move |p| {
                self.sent
                    .get(p)
                    .is_none_or(|&at| now.saturating_duration_since(at) >= period)
            })
            .map(|p| {
                let batch = FanoutBatch {
                    epoch: self.epoch,
                    seq: self.seq.get(&p).copied().unwrap_or(0),
                    changes: Vec::new(),
                };
                (p, batch)
            })
    }

    /// Changes held in open batches.
    #[must_use]
    pub fn open_changes(&self) -> usize {
        self.pending.values().map(|p| p.changes.len()).sum()
    }

    fn seal_due(&mut self, now: Instant) {
        while let Some(&(due, p)) = self.deadlines.front() {
            if due > now {
                break;
            }
            self.deadlines.pop_front();
            if self.pending.get(&p).is_some_and(|x| x.due == due)
                && let Some(pending) = self.pending.remove(&p)
            {
                self.seal(p, pending);
            }
        }
    }

    fn seal(&mut self, p: u64, pending: Pending) {
        let seq = self.seq.entry(p).or_insert(0);
        *seq += 1;
        self.sealed.push_back((
            p,
            FanoutBatch {
                epoch: self.epoch,
                seq: *seq,
                changes: pending.changes,
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn drain(c: &mut Coalescer, now: Instant) -> Vec<(u64, FanoutBatch)> {
        std::iter::from_fn(|| c.poll_batch(now)).collect()
    }

    #[test]
    fn heartbeats_carry_the_last_seq_of_each_partition() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(9, 2, Duration::ZERO);
        c.push(t0, 1, 10);
        drain(&mut c, t0);
        c.push(t0, 3, 11);
        drain(&mut c, t0);
        let hb: Vec<(u64, u64, usize)> = c
            .heartbeats(t0 + 500 * MS, 500 * MS)
            .map(|(p, b)| (p, b.seq, b.changes.len()))
            .collect();
        // Partition 0 never had a batch; partition 1 had seq 1 then 2.
        assert_eq!(hb, vec![(0, 0, 0), (1, 2, 0)]);
        assert!(
            c.heartbeats(t0 + 500 * MS, 500 * MS)
                .all(|(_, b)| b.epoch == 9)
        );
        // Within a period of its last batch a partition sends no heartbeat; after it, it does.
        c.push(t0 + 600 * MS, 1, 12);
        drain(&mut c, t0 + 600 * MS);
        let parts = |now| -> Vec<u64> { c.heartbeats(now, 500 * MS).map(|(p, _)| p).collect() };
        assert_eq!(parts(t0 + 900 * MS), vec![0]);
        assert_eq!(parts(t0 + 1100 * MS), vec![0, 1]);
    }

    #[test]
    fn merges_within_the_window() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(9, 4, MS);
        c.push(t0, 5, 10);
        c.push(t0, 5, 12);
        c.push(t0, 9, 3); // same partition 1, another namespace
        c.push(t0, 5, 11); // lower: the max stays
        assert!(c.poll_batch(t0).is_none(), "not due yet");
        assert_eq!(c.next_deadline(), Some(t0 + MS));
        let out = drain(&mut c, t0 + MS);
        assert_eq!(
            out,
            vec![(
                1,
                FanoutBatch {
                    epoch: 9,
                    seq: 1,
                    changes: vec![(5, 12), (9, 3)]
                }
            )]
        );
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn seq_counts_per_partition() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(1, 4, Duration::ZERO);
        for (i, ns) in [0u64, 1, 4, 0, 2, 1].into_iter().enumerate() {
            c.push(t0, ns, i as u64 + 1);
            let out = drain(&mut c, t0);
            assert_eq!(out.len(), 1);
        }
        let mut c = Coalescer::new(1, 4, Duration::ZERO);
        let mut seqs = Vec::new();
        for ns in [0u64, 1, 4, 0, 2, 1, 8] {
            c.push(t0, ns, 1);
            seqs.extend(drain(&mut c, t0).into_iter().map(|(p, b)| (p, b.seq)));
        }
        assert_eq!(
            seqs,
            vec![(0, 1), (1, 1), (0, 2), (0, 3), (2, 1), (1, 2), (0, 4)]
        );
    }

    #[test]
    fn full_batches_go_out_at_once() {
        let t0 = Instant::now();
        let mut c = Coalescer::with_max_pairs(1, 1, Duration::from_secs(1), 3);
        for ns in 0..7 {
            c.push(t0, ns, 100 + ns);
        }
        c.push(t0, 6, 200); // still open: merged
        let early = drain(&mut c, t0);
        assert_eq!(early.len(), 2);
        assert_eq!(early[0].1.changes, vec![(0, 100), (1, 101), (2, 102)]);
        assert_eq!(early[1].1.seq, 2);
        assert_eq!(early[1].1.changes.len(), 3);
        assert_eq!(c.open_changes(), 1);
        // The stale deadline of the first (sealed) batch does not seal the open one early.
        assert!(c.poll_batch(t0 + Duration::from_millis(999)).is_none());
        let late = drain(&mut c, t0 + Duration::from_secs(1));
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].1.seq, 3);
        assert_eq!(late[0].1.changes, vec![(6, 200)]);
    }

    #[test]
    fn real_limit_keeps_batches_under_the_message_size() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(u64::MAX, 1, Duration::from_secs(1));
        for ns in 0..(MAX_PAIRS_PER_MESSAGE as u64 + 1) {
            c.push(t0, u64::MAX - ns, u64::MAX);
        }
        let (_, batch) = c.poll_batch(t0).expect("the full batch is sealed");
        assert_eq!(batch.changes.len(), MAX_PAIRS_PER_MESSAGE);
        assert!(batch.encode().len() <= herald_proto::fanout::MAX_MESSAGE);
        assert_eq!(c.open_changes(), 1);
    }

    #[test]
    fn flush_all_seals_everything_in_order() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(1, 8, Duration::from_secs(1));
        c.push(t0, 3, 1);
        c.push(t0 + MS, 1, 1);
        c.flush_all();
        let out: Vec<u64> = drain(&mut c, t0).into_iter().map(|(p, _)| p).collect();
        assert_eq!(out, vec![3, 1]);
        assert_eq!(c.open_changes(), 0);
    }
}
