//! `herald-relay`: parse the command line, set up logging and signals, run.

use anyhow::Context;
use clap::Parser;
use herald_relay::config::{Cli, Command, NatsArgs, PublishArgs, StreamArgs};
use herald_relay::{Publisher, nats, publisher, stream};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        None => cli.serve.log_format.clone(),
        Some(_) => "text".to_owned(),
    };
    init_logging(&log_format);
    // Two threads. One was cheaper per change while the relay handled every change itself (the
    // paced fan-out benchmark: ~15% less relay CPU), but a vouching relay pulls the journal
    // and has no per-change work left, while a reconnect storm's look-ups need both cores: in
    // the 1M storm a one-thread relay fell behind on look-ups, its heartbeats came late, every
    // gateway's relay-silence watchdog reconnected and resynced, and that load kept it behind.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        match cli.command {
            Some(Command::CreateStream { nats, stream }) => create_stream(&nats, &stream).await,
            Some(Command::Publish(args)) => publish(&args).await,
            None => {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                herald_relay::run(cli.serve, shutdown).await
            }
        }
    })
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
        tracing::error!("cannot install signal handlers; stop the relay with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    shutdown.cancel();
}

async fn create_stream(nats_args: &NatsArgs, stream_args: &StreamArgs) -> anyhow::Result<()> {
    herald_relay::config::validate_nats(nats_args)?;
    stream_args.validate()?;
    let client = nats::connect_once(&nats_args.nats, "herald-relay create-stream").await?;
    stream::check_server(&client.server_info(), &nats_args.nats)?;
    let js = async_nats::jetstream::new(client);
    match stream::ensure_stream(&js, &stream_args.settings()).await? {
        stream::Ensured::Created => println!("created stream HERALD_JOURNAL"),
        stream::Ensured::Existing => println!("stream HERALD_JOURNAL exists; left as it is"),
    }
    Ok(())
}

async fn publish(args: &PublishArgs) -> anyhow::Result<()> {
    herald_relay::config::validate_nats(&args.nats)?;
    herald_relay::config::validate_partitions(args.partitions)?;
    let changes = args
        .changes
        .iter()
        .map(|c| publisher::parse_change(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let client = nats::connect_once(&args.nats.nats, "herald-relay publish").await?;
    let publisher = Publisher::new(async_nats::jetstream::new(client.clone()), args.partitions);
    let done = publisher.publish(&changes).await?;
    println!(
        "published {} changes ({} stored, {} duplicates)",
        changes.len(),
        done.stored,
        done.duplicates
    );
    client.flush().await.ok();
    Ok(())
}
