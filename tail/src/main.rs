//! `herald-tail`: follow the metaserver database's commit stream (MySQL/MariaDB binlog or
//! PostgreSQL logical replication) into `HERALD_JOURNAL`.

use anyhow::Context;
use axum::routing::get;
use clap::Parser;
use herald_tail::TailConfig;
use herald_tail::jetstream::JetStreamSink;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Follows the journal table in the metaserver's MySQL/MariaDB binlog or PostgreSQL logical
/// replication and publishes every committed change into HERALD_JOURNAL, as a metaserver would.
#[derive(Debug, Parser)]
#[command(name = "herald-tail", version)]
struct Cli {
    /// The database, chosen by the URL's scheme:
    /// mysql://USER[:PASSWORD]@HOST:PORT/DATABASE[?server_id=N&table=T&ns_column=C&sjid_column=C&password_file=PATH]
    /// or postgres://USER[:PASSWORD]@HOST:PORT/DATABASE[?slot=S&publication=P&schema=S&table=T&ns_column=C&sjid_column=C&password_file=PATH].
    /// Without a password in the URL or password_file, HERALD_TAIL_PASSWORD is used.
    #[arg(long, env = "HERALD_TAIL_SOURCE")]
    source: String,
    /// File holding the resume point (binlog file and position, or PostgreSQL LSN).
    #[arg(
        long,
        env = "HERALD_TAIL_CHECKPOINT",
        default_value = "herald-tail.checkpoint"
    )]
    checkpoint: PathBuf,
    /// NATS server of the journal.
    #[arg(long, env = "HERALD_NATS", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Journal partitions (the deployment constant shared with publishers and relays).
    #[arg(long, env = "HERALD_PARTITIONS", default_value_t = 64)]
    partitions: u64,
    /// Health and metrics listener (`/healthz`, `/metrics`).
    #[arg(
        long,
        env = "HERALD_TAIL_ADMIN_LISTEN",
        default_value = "127.0.0.1:9466"
    )]
    admin_listen: SocketAddr,
    /// `text` or `json` logs on stderr.
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0])?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;

    let cfg = TailConfig::from_url(&cli.source, cli.checkpoint.clone())?;
    herald_tail::preflight(&cfg).await?;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(&cli.nats)
        .await
        .with_context(|| format!("connecting to NATS at {}", cli.nats))?;
    let sink = JetStreamSink::new(client, cli.partitions);

    let listener = tokio::net::TcpListener::bind(cli.admin_listen)
        .await
        .with_context(|| format!("binding the admin listener {}", cli.admin_listen))?;
    let admin_addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    tracing::info!(?cfg, %admin_addr, "herald-tail starting");
    // A machine-readable line for scripts and tests (logs go to stderr).
    println!("herald-tail ready admin={admin_addr}");
    herald_tail::run(cfg, sink, shutdown).await
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop herald-tail with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    shutdown.cancel();
}
