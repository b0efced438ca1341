//! Wires a relay together: admin listener, NATS connection, source, fan-out, responder.

use crate::admin::{self, AdminState};
use crate::coalesce::Coalescer;
use crate::config::ServeArgs;
use crate::metrics::SourceMetrics;
use crate::responder::Answers;
use crate::source::journal::JournalSource;
use crate::source::upstream::UpstreamSource;
use crate::source::{Intake, Source};
use crate::{fanout, nats, responder, stream};
use anyhow::Context;
use herald_core::latest::LatestTable;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Raised changes the source may queue ahead of the fan-out publisher.
const FANOUT_QUEUE: usize = 64 * 1024;

/// A random non-zero epoch for this relay process.
#[must_use]
pub fn new_epoch() -> u64 {
    loop {
        let e: u64 = rand::random();
        if e != 0 {
            return e;
        }
    }
}

/// Runs a relay until `shutdown` is cancelled (main cancels it on SIGTERM or SIGINT).
///
/// Prints `herald-relay ready admin=ADDR epoch=HEX` on stdout once the journal is loaded and
/// the latest responder subscribed. Returns an error for bad settings, an unusable broker (no
/// JetStream, older than 2.10) or an incompatible journal stream; everything else (broker down,
/// disconnects, stream missing) is logged and retried.
pub async fn run(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    args.validate()?;
    let metrics = crate::metrics::install()?;
    let url = args.nats.nats.clone();
    let epoch = new_epoch();
    let table = Arc::new(LatestTable::new());
    let (ready_tx, ready_rx) = watch::channel(false);

    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| {
            format!(
                "binding the admin listener --admin-listen {}",
                args.admin_listen
            )
        })?;
    let admin_addr = admin_listener.local_addr()?;
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn({
        let state = AdminState {
            ready: ready_rx.clone(),
            table: table.clone(),
            metrics,
        };
        let stop = admin_stop.clone();
        async move {
            axum::serve(admin_listener, admin::router(state))
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    });
    tracing::info!(%admin_addr, epoch = format!("{epoch:016x}"), nats = %url, "herald relay starting");

    let result = serve(args, epoch, table, ready_tx, admin_addr, &shutdown).await;
    admin_stop.cancel();
    let _ = admin.await;
    tracing::info!("stopped");
    result
}

async fn serve(
    args: ServeArgs,
    epoch: u64,
    table: Arc<LatestTable>,
    ready: watch::Sender<bool>,
    admin_addr: std::net::SocketAddr,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let url = args.nats.nats.clone();
    let Some(client) = nats::connect(&url, "herald-relay", shutdown).await else {
        return Ok(());
    };
    if args.upstream_nats.is_none() {
        // Tier 0 reads the journal: JetStream on 2.10+. A tier-N relay needs only core NATS here.
        stream::check_server(&client.server_info(), &url)?;
    }
    tracing::info!(version = %client.server_info().version, "connected to NATS");
    let mut js = async_nats::jetstream::new(client.clone());
    // JetStream API calls (stream checks, consumer creation) give up after 5 s instead of 10 s,
    // so a relay whose cluster is electing a new meta leader retries sooner.
    js.set_timeout(std::time::Duration::from_secs(5));

    let (tx, rx) = mpsc::channel(FANOUT_QUEUE);
    let fanout_settings = args.fanout();
    let coalescer = Coalescer::new(epoch, fanout_settings.partitions, fanout_settings.coalesce);
    let fanout = tokio::spawn(fanout::run(
        client.clone(),
        coalescer,
        rx,
        ready.subscribe(),
        fanout_settings.heartbeat,
    ));

    // The source says when it has loaded; the relay is ready once the responder listens too.
    let (loaded_tx, mut loaded_rx) = watch::channel(false);
    let freshness = crate::freshness::Freshness::new(client.statistics());
    let source_stop = CancellationToken::new();
    let (source, answers) = match &args.upstream_nats {
        None => (
            Source::Journal(Box::new(JournalSource::new(
                js,
                args.partitions,
                args.stream.settings(),
                args.journal_tap(),
                args.journal_pull(),
            ))),
            Answers::Table(table.clone(), freshness.clone()),
        ),
        Some(upstream_url) => {
            let timeout = std::time::Duration::from_millis(args.upstream_request_timeout_ms);
            let up = UpstreamSource::connect(upstream_url, args.partitions, timeout).await?;
            let answers = Answers::Upstream(up.upstream());
            (Source::Upstream(up), answers)
        }
    };
    let intake = Intake::new(
        table.clone(),
        tx,
        loaded_tx,
        SourceMetrics::new(),
        freshness,
    );
    let mut source_task = tokio::spawn(source.run(intake, source_stop.clone()));

    let responder_stop = CancellationToken::new();
    let mut responder = None;
    let outcome: anyhow::Result<()> = tokio::select! {
        r = loaded_rx.wait_for(|loaded| *loaded) => {
            r.context("the source's readiness channel closed")?;
            let sub = responder::subscribe(&client)
                .await
                .context("subscribing to herald.latest.*")?;
            // The subscription must reach the server before the relay says it is ready.
            let _ = client.flush().await;
            responder = Some(tokio::spawn(responder::serve(
                client.clone(),
                sub,
                answers,
                epoch,
                responder_stop.clone(),
            )));
            ready.send_replace(true);
            tracing::info!(namespaces = table.len(), "herald relay ready");
            println!("herald-relay ready admin={admin_addr} epoch={epoch:016x}");
            tokio::select! {
                () = shutdown.cancelled() => Ok(()),
                r = &mut source_task => source_outcome(r),
            }
        }
        r = &mut source_task => source_outcome(r),
        () = shutdown.cancelled() => Ok(()),
    };

    // Stop: not ready, no more answers, stop reading, send what is coalesced, flush.
    ready.send_replace(false);
    responder_stop.cancel();
    if let Some(r) = responder {
        let _ = r.await;
    }
    source_stop.cancel();
    if !source_task.is_finished() {
        let _ = source_task.await;
    }
    let _ = fanout.await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client.flush()).await;
    outcome
}

fn source_outcome(
    r: Result<Result<(), stream::StreamError>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("the journal source cannot go on"),
        Err(e) => Err(anyhow::anyhow!("the journal source task failed: {e}")),
    }
}
