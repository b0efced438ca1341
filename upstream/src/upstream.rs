//! [`Upstream`]: one NATS connection, a task per subscribed partition, look-ups and resyncs.

use crate::partition::{Partition, Position};
use crate::watchdog::{self, Silence};
use crate::{Changes, Scope, UpstreamConfig};
use async_nats::{Client, Event};
use futures_util::StreamExt;
use herald_proto::fanout::{FanoutBatch, LatestReply, LatestRequest, MAX_PAIRS_PER_MESSAGE};
use herald_proto::fanout::{fanout_subject, latest_subject, partition};
use herald_proto::fanout::{parse_journal_body, parse_journal_subject};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Raised changes waiting for their consumer before partition tasks wait.
const OUT_QUEUE: usize = 1024;

/// Longest wait between two attempts to reconnect to NATS. The client library's default doubles
/// up to 4 s, so after an outage of a few seconds a restored broker or link would be noticed up
/// to 4 s late, far past the 1 s delivery bound (PROTOCOL.md). An attempt is one TCP connect.
const RECONNECT_MAX: Duration = Duration::from_millis(250);

/// How often the client pings the server. Two unanswered pings drop the connection, so a hung
/// server (not a closed socket) is noticed in about 10 s instead of the client default's 2 min;
/// the reconnect then resyncs.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// The wait before reconnect attempt `attempts` (1 for the first after a disconnect): none, then
/// doubling from 2 ms up to [`RECONNECT_MAX`].
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(16);
    Duration::from_millis(1 << exp).min(RECONNECT_MAX)
}

/// Why a look-up (or the subscription it needs) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// No relay answered before the look-up deadline (none ready, or none reachable).
    #[error("no relay answered herald.latest.{partition} in time: {last}")]
    Unavailable {
        /// The partition asked.
        partition: u64,
        /// The last failure seen.
        last: String,
    },
    /// A relay answered with bytes that are not a `LatestReply`.
    #[error("malformed latest reply: {0}")]
    Malformed(String),
    /// The partition subscription could not be made before the deadline.
    #[error("could not subscribe to herald.fanout.{0} in time")]
    Subscribe(u64),
}

/// Handle to the upstream (cheap to clone).
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: UpstreamConfig,
    parts: Mutex<HashMap<u64, Slot>>,
    out: mpsc::Sender<Changes>,
    connected: AtomicBool,
    /// When a relay was last heard, and the server the watchdog gave up on.
    silence: Arc<Silence>,
    /// The runtime `connect` ran on. Partition readers and resyncs run there, whichever thread
    /// (a gateway worker's own runtime, say) asked for them.
    runtime: tokio::runtime::Handle,
}

/// A partition and the machinery of its subscription.
struct Slot {
    part: Partition,
    /// Becomes true once the NATS subscription is registered with the server.
    subscribed: watch::Receiver<bool>,
    /// The task reading `herald.fanout.<p>`; aborted (which unsubscribes) when the slot goes.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

impl Upstream {
    /// Connects (retrying in the background if NATS is not reachable yet) and returns the handle
    /// and the stream of raised changes.
    pub async fn connect(
        config: UpstreamConfig,
    ) -> Result<(Upstream, mpsc::Receiver<Changes>), async_nats::ConnectError> {
        let (event_tx, mut events) = mpsc::unbounded_channel();
        let silence = Arc::new(Silence::default());
        let picker = silence.clone();
        let client = async_nats::ConnectOptions::new()
            .name(&config.name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .reconnect_to_server_callback(move |pool, _info| {
                let choice = picker.pick_server(&pool);
                async move { choice }
            })
            .ping_interval(PING_INTERVAL)
            .request_timeout(Some(config.request_timeout))
            .event_callback(move |e| {
                let tx = event_tx.clone();
                async move {
                    let _ = tx.send(e);
                }
            })
            .connect(config.servers())
            .await?;
        let (out, rx) = mpsc::channel(OUT_QUEUE);
        let up = Upstream {
            inner: Arc::new(Inner {
                client,
                config,
                parts: Mutex::new(HashMap::new()),
                out,
                connected: AtomicBool::new(false),
                silence,
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        let weak = Arc::downgrade(&up.inner);
        tokio::spawn(async move {
            let mut ever_connected = false;
            while let Some(event) = events.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                let up = Upstream { inner };
                match event {
                    Event::Connected => {
                        up.inner.connected.store(true, Ordering::Relaxed);
                        up.inner.silence.connected();
                        tracing::info!(url = %up.inner.config.nats_url, "upstream NATS connected");
                        if ever_connected {
                            // Whatever was published while we were away is lost to us.
                            up.resync_all("NATS reconnect");
                        }
                        ever_connected = true;
                    }
                    Event::Disconnected => {
                        up.inner.connected.store(false, Ordering::Relaxed);
                        tracing::warn!(
                            "upstream NATS disconnected; will resync after reconnecting"
                        );
                    }
                    Event::SlowConsumer(_) => up.resync_all("slow consumer (messages dropped)"),
                    other => tracing::debug!(event = %other, "upstream NATS event"),
                }
            }
        });
        if let Some(limit) = up.inner.config.relay_silence {
            tokio::spawn(watch_relay_silence(Arc::downgrade(&up.inner), limit));
        }
        if up.inner.config.scope == Scope::All {
            for p in 0..up.inner.config.partitions {
                up.ensure_partition(p);
            }
        }
        Ok((up, rx))
    }

    /// Waits until connected and every partition followed so far is subscribed (for
    /// [`Scope::All`]: every partition), so look-ups and the change stream are complete from now.
    pub async fn ready(&self) {
        loop {
            let waits: Vec<watch::Receiver<bool>> = self
                .parts()
                .values()
                .map(|s| s.subscribed.clone())
                .collect();
            for mut w in waits {
                let _ = w.wait_for(|v| *v).await;
            }
            if self.is_connected() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True while the NATS connection is up.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// The NATS client (tier-N relays publish downstream on another one; this is for requests).
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    fn parts(&self) -> MutexGuard<'_, HashMap<u64, Slot>> {
        self.inner.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn partition_of(&self, ns: u64) -> u64 {
        partition(ns, self.inner.config.partitions)
    }

    /// Registers interest in `ns` and returns once every partition involved is subscribed, so a
    /// look-up that follows cannot miss a change.
    pub async fn add_interest(&self, ns: &[u64]) -> Result<(), LookupError> {
        let mut waits = Vec::new();
        {
            let mut parts = self.parts();
            for &n in ns {
                let p = self.partition_of(n);
                let slot = self.slot(&mut parts, p);
                *slot.part.interest.entry(n).or_insert(0) += 1;
                if !*slot.subscribed.borrow() {
                    waits.push((p, slot.subscribed.clone()));
                }
            }
        }
        let deadline = self.inner.config.lookup_deadline;
        for (p, mut ready) in waits {
            let subscribed = tokio::time::timeout(deadline, ready.wait_for(|v| *v)).await;
            if !matches!(subscribed, Ok(Ok(_))) {
                return Err(LookupError::Subscribe(p));
            }
        }
        Ok(())
    }

    /// Drops interest in `ns` (once per earlier [`Upstream::add_interest`] of it). A partition
    /// left without interest is unsubscribed and forgotten.
    pub fn remove_interest(&self, ns: &[u64]) {
        let mut parts = self.parts();
        for &n in ns {
            let p = self.partition_of(n);
            let Some(slot) = parts.get_mut(&p) else {
                continue;
            };
            if let Some(count) = slot.part.interest.get_mut(&n) {
                *count -= 1;
                if *count == 0 {
                    slot.part.interest.remove(&n);
                    if self.inner.config.scope == Scope::Interest {
                        slot.part.latest.remove(&n);
                    }
                }
            }
            if slot.part.interest.is_empty() && self.inner.config.scope == Scope::Interest {
                parts.remove(&p);
            }
        }
    }

    fn ensure_partition(&self, p: u64) {
        let mut parts = self.parts();
        self.slot(&mut parts, p);
    }

    /// The slot of `p`, subscribing it if it is new.
    fn slot<'a>(&self, parts: &'a mut HashMap<u64, Slot>, p: u64) -> &'a mut Slot {
        parts.entry(p).or_insert_with(|| {
            let (tx, rx) = watch::channel(false);
            let generation = rand::random();
            let reader = self
                .inner
                .runtime
                .spawn(read_partition(self.clone(), p, generation, tx));
            let part = Partition {
                generation,
                ..Partition::default()
            };
            Slot {
                part,
                subscribed: rx,
                reader: Some(reader),
            }
        })
    }

    /// The look-up deadline (`--lookup-deadline-ms`): how long a look-up may take in all.
    #[must_use]
    pub fn lookup_deadline(&self) -> Duration {
        self.inner.config.lookup_deadline
    }

    /// Latest SJIDs of `ns`, in order: from what this upstream tracks when it can vouch for it,
    /// else from the relays (one request per partition, retried until the look-up deadline).
    pub async fn lookup(&self, ns: &[u64]) -> Result<Vec<(u64, u64)>, LookupError> {
        let mut known: HashMap<u64, u64> = HashMap::with_capacity(ns.len());
        let mut remote: HashMap<u64, (u64, Vec<u64>)> = HashMap::new();
        {
            let parts = self.parts();
            for &n in ns {
                let p = self.partition_of(n);
                match parts.get(&p) {
                    Some(s)
                        if *s.subscribed.borrow()
                            && !s.part.resyncing
                            && s.part.latest.contains_key(&n) =>
                    {
                        known.insert(n, s.part.latest[&n]);
                    }
                    other => {
                        let generation = other.map_or(0, |s| s.part.generation);
                        remote
                            .entry(p)
                            .or_insert_with(|| (generation, Vec::new()))
                            .1
                            .push(n);
                    }
                }
            }
        }
        metrics::counter!("herald_upstream_lookups_local_total").increment(known.len() as u64);
        let asks = remote
            .into_iter()
            .map(|(p, (generation, list))| async move {
                let reply = self.request_retrying(p, &list).await?;
                Ok::<_, LookupError>(self.merge_reply(p, generation, &reply.entries, true))
            });
        for merged in futures_util::future::join_all(asks).await {
            known.extend(merged?);
        }
        Ok(ns
            .iter()
            .map(|n| (*n, known.get(n).copied().unwrap_or(0)))
            .collect())
    }

    /// Merges `entries` into partition `p` (if it is still the same subscription) and returns
    /// each entry's value after the merge. With `forward`, raised ones go to the consumer.
    fn merge_reply(
        &self,
        p: u64,
        generation: u64,
        entries: &[(u64, u64)],
        forward: bool,
    ) -> Vec<(u64, u64)> {
        let mut parts = self.parts();
        let Some(slot) = parts
            .get_mut(&p)
            .filter(|s| s.part.generation == generation)
        else {
            return entries.to_vec();
        };
        let all = self.inner.config.scope == Scope::All;
        let mut raised = Vec::new();
        let merged = entries
            .iter()
            .map(|&(ns, sjid)| {
                if all || slot.part.interest.contains_key(&ns) {
                    if slot.part.merge(ns, sjid) && forward {
                        raised.push((ns, sjid));
                    }
                    (ns, slot.part.latest[&ns])
                } else {
                    (ns, sjid)
                }
            })
            .collect();
        drop(parts);
        if !raised.is_empty() {
            // The partition task and resync both feed `out`; never block while holding the lock.
            let out = self.inner.out.clone();
            self.inner.runtime.spawn(async move {
                let _ = out.send(raised).await;
            });
        }
        merged
    }

    async fn request(&self, p: u64, ns: &[u64]) -> Result<LatestReply, String> {
        let mut entries = Vec::with_capacity(ns.len());
        let mut epoch = 0;
        for chunk in ns.chunks(MAX_PAIRS_PER_MESSAGE) {
            let body = LatestRequest { ns: chunk.to_vec() }.encode();
            let msg = self
                .inner
                .client
                .request(latest_subject(p), body.into())
                .await
                .map_err(|e| e.to_string())?;
            let reply = LatestReply::decode(&msg.payload)
                .map_err(|e| format!("malformed latest reply: {e}"))?;
            // A relay answers a request it cannot read with no entries: a namespace missing from
            // a reply is unanswered, never 0.
            let answered: std::collections::HashSet<u64> =
                reply.entries.iter().map(|&(n, _)| n).collect();
            if chunk.iter().any(|ns| !answered.contains(ns)) {
                return Err(format!(
                    "the reply from relay {:016x} left namespaces unanswered",
                    reply.epoch
                ));
            }
            epoch = reply.epoch;
            entries.extend(reply.entries);
        }
        Ok(LatestReply { epoch, entries })
    }

    async fn request_retrying(&self, p: u64, ns: &[u64]) -> Result<LatestReply, LookupError> {
        let deadline = tokio::time::Instant::now() + self.inner.config.lookup_deadline;
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.request(p, ns).await {
                Ok(r) => return Ok(r),
                Err(last) => {
                    metrics::counter!("herald_upstream_lookup_failures_total").increment(1);
                    if tokio::time::Instant::now() + backoff >= deadline {
                        return Err(LookupError::Unavailable { partition: p, last });
                    }
                    tracing::debug!(partition = p, error = %last, "latest request failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    fn resync_all(&self, why: &str) {
        let ps: Vec<u64> = self.parts().keys().copied().collect();
        tracing::info!(partitions = ps.len(), why, "resyncing every partition");
        for p in ps {
            self.resync(p, why);
        }
    }

    /// Starts a resync of `p` unless one is running (then it runs once more after).
    fn resync(&self, p: u64, why: &str) {
        let generation = {
            let mut parts = self.parts();
            let Some(slot) = parts.get_mut(&p) else {
                return;
            };
            if slot.part.resyncing {
                slot.part.resync_again = true;
                return;
            }
            slot.part.resyncing = true;
            slot.part.generation
        };
        metrics::counter!("herald_upstream_resyncs_total").increment(1);
        tracing::debug!(partition = p, why, "resync");
        let up = self.clone();
        self.inner
            .runtime
            .spawn(async move { up.run_resync(p, generation).await });
    }

    async fn run_resync(&self, p: u64, generation: u64) {
        let mut backoff = Duration::from_millis(20);
        loop {
            let tracked = {
                let parts = self.parts();
                match parts.get(&p).filter(|s| s.part.generation == generation) {
                    Some(s) => s.part.tracked(),
                    None => return,
                }
            };
            if !tracked.is_empty() {
                match self.request(p, &tracked).await {
                    Ok(reply) => {
                        self.merge_reply(p, generation, &reply.entries, true);
                    }
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "resync request failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            let mut parts = self.parts();
            let Some(slot) = parts
                .get_mut(&p)
                .filter(|s| s.part.generation == generation)
            else {
                return;
            };
            if std::mem::take(&mut slot.part.resync_again) {
                continue;
            }
            slot.part.resyncing = false;
            return;
        }
    }
}

/// The subscriptions of one followed partition.
struct PartitionSubs {
    /// `herald.fanout.<p>`: the relays' numbered stream, the guarantee.
    fanout: async_nats::Subscriber,
    /// `herald.journal.<p>.*` when [`UpstreamConfig::journal_direct`]: each publish as it
    /// happens, one hop shorter than the fan-out.
    journal: Option<async_nats::Subscriber>,
}

/// Subscribes what partition `p` needs and confirms it with a flush, retrying until it works
/// (the task is aborted when the partition is dropped).
async fn subscribe_partition(up: &Upstream, p: u64) -> PartitionSubs {
    let client = &up.inner.client;
    let mut backoff = Duration::from_millis(20);
    loop {
        let attempt = async {
            let fanout = client.subscribe(fanout_subject(p)).await?;
            let journal = if up.inner.config.journal_direct {
                Some(client.subscribe(journal_partition_subjects(p)).await?)
            } else {
                None
            };
            client.flush().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(PartitionSubs { fanout, journal })
        };
        match attempt.await {
            Ok(subs) => return subs,
            Err(e) => tracing::warn!(partition = p, error = %e, "subscribing failed; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// What one message of a partition's subscriptions brought.
enum Incoming {
    /// A relay's numbered batch.
    Batch(FanoutBatch),
    /// A publish on the journal subject: one change.
    Journal((u64, u64)),
}

/// The task of one subscribed partition: subscribe, confirm with a flush, then apply batches
/// (and, with [`UpstreamConfig::journal_direct`], journal publishes).
async fn read_partition(up: Upstream, p: u64, generation: u64, subscribed: watch::Sender<bool>) {
    let PartitionSubs {
        mut fanout,
        mut journal,
    } = subscribe_partition(&up, p).await;
    let _ = subscribed.send(true);
    // A partition just followed has not had time to hear its relays yet.
    up.inner.silence.heard();
    let partitions = up.inner.config.partitions;
    let all = up.inner.config.scope == Scope::All;
    loop {
        let incoming = tokio::select! {
            biased;
            msg = fanout.next() => {
                let Some(msg) = msg else { return };
                up.inner.silence.heard_from_relay();
                match FanoutBatch::decode(&msg.payload) {
                    Ok(batch) => Incoming::Batch(batch),
                    Err(e) => {
                        metrics::counter!("herald_upstream_bad_messages_total").increment(1);
                        tracing::warn!(partition = p, error = %e, "malformed fan-out batch skipped");
                        continue;
                    }
                }
            }
            Some(msg) = next_message(&mut journal) => {
                match direct_change(&msg.subject, &msg.payload, p, partitions) {
                    Some(change) => Incoming::Journal(change),
                    None => {
                        // The relays log and count these too; the fan-out carries the change
                        // (under its right partition) a little later.
                        metrics::counter!("herald_upstream_journal_skipped_total").increment(1);
                        continue;
                    }
                }
            }
        };
        let from_journal = matches!(incoming, Incoming::Journal(_));
        let (resync, raised) = {
            let mut parts = up.parts();
            let Some(slot) = parts
                .get_mut(&p)
                .filter(|s| s.part.generation == generation)
            else {
                return;
            };
            let part = &mut slot.part;
            let (resync, mut changes) = match incoming {
                Incoming::Batch(batch) => {
                    let position = part.position(batch.epoch, batch.seq, batch.changes.is_empty());
                    (position == Position::Resync, batch.changes)
                }
                Incoming::Journal(change) => (false, vec![change]),
            };
            changes.retain(|&(ns, sjid)| {
                (all || part.interest.contains_key(&ns)) && part.merge(ns, sjid)
            });
            (resync, changes)
        };
        if !raised.is_empty() {
            metrics::counter!(if from_journal {
                "herald_upstream_direct_changes_total"
            } else {
                "herald_upstream_fanout_changes_total"
            })
            .increment(raised.len() as u64);
        }
        if resync {
            up.resync(p, "new relay epoch or a gap in its sequence");
        }
        if !raised.is_empty() && up.inner.out.send(raised).await.is_err() {
            return;
        }
    }
}

/// `herald.journal.<p>.*`: every journal subject of partition `p`.
fn journal_partition_subjects(p: u64) -> String {
    format!("herald.journal.{p}.*")
}

/// The change a journal publish on partition `p`'s subjects carries, if it is well formed and
/// its namespace belongs to `p`.
fn direct_change(subject: &str, body: &[u8], p: u64, partitions: u64) -> Option<(u64, u64)> {
    let (on, ns) = parse_journal_subject(subject)?;
    let sjid = parse_journal_body(body)?;
    (on == p && partition(ns, partitions) == p).then_some((ns, sjid))
}

/// The next message of an optional subscription: never ready when there is none, so it can sit
/// in a `select!` beside the subscriptions that always exist.
pub async fn next_message(sub: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match sub.as_mut() {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// The relay-silence watchdog ([`crate::watchdog`]): while connected and following some
/// partition, a silence longer than `limit` moves the connection to another server.
async fn watch_relay_silence(inner: std::sync::Weak<Inner>, limit: Duration) {
    loop {
        tokio::time::sleep(watchdog::check_interval(limit)).await;
        let Some(inner) = inner.upgrade() else { return };
        let up = Upstream { inner };
        let following = up.parts().values().any(|s| *s.subscribed.borrow());
        if !up.is_connected() || !following {
            up.inner.silence.heard();
            continue;
        }
        let quiet = up.inner.silence.silent_for();
        if quiet <= up.inner.silence.allowance(limit) {
            continue;
        }
        let info = up.inner.client.server_info();
        up.inner.silence.give_up_on(&info);
        up.inner.silence.heard();
        metrics::counter!("herald_upstream_silence_reconnects_total").increment(1);
        tracing::warn!(
            server = %format!("{}:{}", info.host, info.port),
            silent_ms = quiet.as_millis() as u64,
            "no relay heartbeat from this NATS server; switching to another and resyncing"
        );
        if let Err(e) = up.inner.client.force_reconnect().await {
            tracing::warn!(error = %e, "forced reconnect failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_publishes_are_read_only_on_their_partition() {
        let body = 42u64.to_be_bytes();
        assert_eq!(
            direct_change("herald.journal.2.130", &body, 2, 64),
            Some((130, 42))
        );
        // A publisher on the wrong partition's subject: the relays still apply it, the direct
        // path leaves it to their fan-out.
        assert_eq!(direct_change("herald.journal.3.130", &body, 3, 64), None);
        assert_eq!(direct_change("herald.journal.2.130", b"42", 2, 64), None);
        assert_eq!(direct_change("herald.fanout.2", &body, 2, 64), None);
        assert_eq!(journal_partition_subjects(2), "herald.journal.2.*");
    }

    #[test]
    fn reconnect_delays_stay_within_the_delivery_bound() {
        let delays: Vec<u128> = (1..=10).map(|a| reconnect_delay(a).as_millis()).collect();
        assert_eq!(delays, [0, 2, 4, 8, 16, 32, 64, 128, 250, 250]);
        assert_eq!(reconnect_delay(usize::MAX), RECONNECT_MAX);
    }
}
