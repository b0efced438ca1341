//! `--journal-source`: the embedded journal fed by herald-tail from the metaserver's database,
//! so a standalone gateway announces exactly what the database committed, with no second write
//! by the metaserver. The tailer hands over committed changes in commit order; an append
//! resolves once they are durably in the journal (and fanned out), and only then does the
//! tailer move its checkpoint.

use crate::journal::Journal;
use std::path::Path;

/// Checkpoint file of the tailer, in the data directory beside the journal.
pub const CHECKPOINT_FILE: &str = "tail.checkpoint";

/// The embedded journal as the tailer's sink.
#[derive(Clone)]
pub struct EmbeddedJournalSink {
    journal: Journal,
}

impl herald_tail::JournalSink for EmbeddedJournalSink {
    async fn deliver(&self, changes: Vec<herald_tail::Change>) -> anyhow::Result<()> {
        self.journal
            .append(changes)
            .await
            .map_err(anyhow::Error::msg)
    }
}

/// Checks the database (refusing a misconfigured one before the gateway reports ready), then
/// runs the tailer in the background for the life of the process.
pub async fn start(url: &str, data_dir: &Path, journal: Journal) -> anyhow::Result<()> {
    let cfg = herald_tail::TailConfig::from_url(url, data_dir.join(CHECKPOINT_FILE))?;
    herald_tail::preflight(&cfg)
        .await
        .map_err(|e| anyhow::anyhow!("--journal-source: {e:#}"))?;
    tracing::info!(
        ?cfg,
        "journal source: following the database's commit stream"
    );
    let sink = EmbeddedJournalSink { journal };
    tokio::spawn(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        if let Err(e) = herald_tail::run(cfg, sink, shutdown).await {
            tracing::error!(error = %format!("{e:#}"), "journal source stopped: no database changes reach the journal until the gateway is restarted");
        }
    });
    Ok(())
}
