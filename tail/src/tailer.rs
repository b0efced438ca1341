//! The loop: source → sink → checkpoint, reconnecting with backoff.
//!
//! A batch goes to the sink; once the sink has acknowledged it, its resume point is handed to
//! the checkpoint writer (a thread of its own: the fsyncs never hold up reading), which stores
//! the newest point it has been given. So the stored point never passes an unacknowledged
//! change, and a crash anywhere re-sends at most what came after the stored point.

use crate::checkpoint::Checkpoint;
use crate::config::TailConfig;
use crate::metrics as m;
use crate::mysql::MysqlSource;
use crate::mysql::preflight::Refusal;
use crate::postgres::PostgresSource;
use crate::sink::JournalSink;
use crate::source::ChangeSource;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Runs the tailer until `shutdown`, or until the database is refused (an operator must act).
/// Transient failures (database or journal unreachable, stream cut) are retried with backoff
/// from the last acknowledged point.
pub async fn run<S: JournalSink>(
    cfg: TailConfig,
    sink: S,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stored = Checkpoint::load(cfg.checkpoint())?;
    if let Some(cp) = &stored {
        tracing::info!(server = %cp.server, position = %cp.position, path = %cfg.checkpoint().display(), "checkpoint loaded");
    }
    let writer = CheckpointWriter::spawn(cfg.checkpoint().to_path_buf(), stored)?;
    let mut backoff = Duration::from_millis(100);
    let result = loop {
        let acked = writer.latest();
        let session = tokio::select! {
            r = session(&cfg, &sink, &writer, acked.as_ref()) => r,
            () = shutdown.cancelled() => break Ok(()),
        };
        metrics::gauge!(m::CONNECTED).set(0.0);
        match session {
            Ok(()) => break Ok(()),
            Err(e) if e.downcast_ref::<Refusal>().is_some() => {
                tracing::error!(error = %e, "refusing to tail this database");
                break Err(e);
            }
            Err(e) => {
                metrics::counter!(m::ERRORS, "kind" => "source").increment(1);
                tracing::warn!(error = %format!("{e:#}"), retry_ms = backoff.as_millis() as u64, "tailer session ended; resuming from the last acknowledged point");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => break Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };
    writer.finish().await;
    result
}

/// One connection's life: open the database's source, then batches until an error.
async fn session<S: JournalSink>(
    cfg: &TailConfig,
    sink: &S,
    writer: &CheckpointWriter,
    resume: Option<&Checkpoint>,
) -> anyhow::Result<()> {
    match cfg {
        TailConfig::Mysql(c) => {
            let source = MysqlSource::open(c, resume).await?;
            pump(source, c.max_batch, sink, writer).await
        }
        TailConfig::Postgres(c) => {
            let source = PostgresSource::open(c, resume).await?;
            pump(source, c.max_batch, sink, writer).await
        }
    }
}

/// Batches from `source` to `sink`; each batch's resume point goes to the source
/// ([`ChangeSource::acknowledged`]) and the checkpoint writer only after the sink acknowledged.
async fn pump<C: ChangeSource, S: JournalSink>(
    mut source: C,
    max_batch: usize,
    sink: &S,
    writer: &CheckpointWriter,
) -> anyhow::Result<()> {
    metrics::gauge!(m::CONNECTED).set(1.0);
    loop {
        let batch = source.next_batch(max_batch).await?;
        if !batch.changes.is_empty() {
            let n = batch.changes.len() as u64;
            let started = Instant::now();
            sink.deliver(batch.changes).await.inspect_err(|_| {
                metrics::counter!(m::ERRORS, "kind" => "sink").increment(1);
            })?;
            metrics::histogram!(m::SINK_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::counter!(m::CHANGES_PUBLISHED).increment(n);
        }
        if let Some(cp) = batch.checkpoint {
            source.acknowledged(&cp);
            writer.set(cp);
        }
    }
}

/// Stores the newest acknowledged resume point on a thread of its own.
struct CheckpointWriter {
    tx: watch::Sender<Option<Checkpoint>>,
    /// The newest point given (acknowledged), stored or not yet.
    latest: Arc<Mutex<Option<Checkpoint>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CheckpointWriter {
    fn spawn(path: std::path::PathBuf, stored: Option<Checkpoint>) -> anyhow::Result<Self> {
        let (tx, mut rx) = watch::channel(stored.clone());
        let latest = Arc::new(Mutex::new(stored));
        let thread = std::thread::Builder::new()
            .name("herald-tail-checkpoint".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                let Ok(rt) = rt else { return };
                rt.block_on(async move {
                    // The newest point not stored yet (a failed store), and since when.
                    let mut pending: Option<(Checkpoint, Instant)> = None;
                    loop {
                        let changed =
                            tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
                        let closed = matches!(changed, Ok(Err(_)));
                        if changed.is_ok()
                            && let Some(cp) = rx.borrow_and_update().clone()
                        {
                            let since = pending.take().map_or_else(Instant::now, |p| p.1);
                            pending = Some((cp, since));
                        }
                        if let Some((cp, since)) = pending.take()
                            && !store(&path, &cp)
                        {
                            pending = Some((cp, since));
                        }
                        let age = pending
                            .as_ref()
                            .map_or(0.0, |p| p.1.elapsed().as_secs_f64());
                        metrics::gauge!(m::CHECKPOINT_AGE_SECONDS).set(age);
                        if closed {
                            return;
                        }
                    }
                });
            })?;
        Ok(CheckpointWriter {
            tx,
            latest,
            thread: Some(thread),
        })
    }

    fn set(&self, cp: Checkpoint) {
        if let Ok(mut l) = self.latest.lock() {
            *l = Some(cp.clone());
        }
        let _ = self.tx.send(Some(cp));
    }

    fn latest(&self) -> Option<Checkpoint> {
        self.latest.lock().ok().and_then(|l| l.clone())
    }

    /// Stores the last point and stops the thread.
    async fn finish(mut self) {
        let thread = self.thread.take();
        drop(self);
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

fn store(path: &std::path::Path, cp: &Checkpoint) -> bool {
    match cp.store(path) {
        Ok(()) => true,
        Err(e) => {
            metrics::counter!(m::ERRORS, "kind" => "checkpoint").increment(1);
            tracing::error!(error = %format!("{e:#}"), "storing the checkpoint failed; will retry with the next batch");
            false
        }
    }
}
