//! Wires a standalone gateway together: keys, journal, workers, admin listener, signals.

use crate::accept::{self, WorkerSetup};
use crate::admin::{self, AdminState};
use crate::auth::Verifier;
use crate::config::ServeArgs;
use crate::journal::Journal;
use crate::keys::{SigningKey, claims_for};
use crate::lookup::Lookup;
use crate::tls::{self, ReloadableConfig};
use crate::worker::Shared;
use anyhow::Context;
use herald_core::batch::Batch;
use herald_core::latest::LatestTable;
use herald_proto::NsGrant;
use herald_upstream::{Upstream, UpstreamConfig};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Fan-out batches a worker may have pending before the journal waits for it.
const FANOUT_QUEUE: usize = 1024;

/// Installs the Prometheus recorder (once per process).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0])
        .context("metrics buckets")?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
    Ok(handle)
}

/// Every socket a gateway serves on, bound before it starts, so that a program embedding it
/// (or a test) can bind port 0 and learn the addresses first.
pub struct Listeners {
    /// The WebSocket and long-poll listener: one `SO_REUSEPORT` socket per worker.
    pub ws: Vec<TcpListener>,
    /// `wss`: one socket per worker, and the certificate SIGHUP reloads.
    pub tls: Option<(Vec<TcpListener>, Arc<ReloadableConfig>)>,
    /// QUIC: one UDP socket (and settings) per worker, and the address they share.
    pub quic: (Vec<crate::quic::QuicSetup>, Option<SocketAddr>),
    /// The admin listener.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds every listener `args` asks for, one per worker where workers share a port.
    ///
    /// # Errors
    /// A listener that cannot be bound, or a certificate that does not load, naming it.
    pub fn bind(args: &ServeArgs) -> anyhow::Result<Self> {
        let workers = args.worker_count();
        let ws = bind_reuseport(args.listen, workers)?;
        let tls = match (args.tls_listen, &args.tls_cert, &args.tls_key) {
            (Some(addr), Some(cert), Some(key)) => Some((
                bind_reuseport(addr, workers)?,
                Arc::new(ReloadableConfig::load(cert, key, tls::wss_config)?),
            )),
            _ => None,
        };
        let limits = args.conn_limits(open_files_limit());
        let quic = quic_setups(args, &limits, workers)?;
        let admin = TcpListener::bind(args.admin_listen)
            .with_context(|| format!("binding the admin listener {}", args.admin_listen))?;
        admin.set_nonblocking(true)?;
        Ok(Listeners {
            ws,
            tls,
            quic,
            admin,
        })
    }
}

/// How a running gateway is told to stop: `stop` starts the stop (readiness off, then the grace,
/// then the drain); `skip_grace` ends the grace early.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Start stopping.
    pub stop: CancellationToken,
    /// End the grace at once (a second SIGTERM).
    pub skip_grace: CancellationToken,
}

/// Runs a gateway from the command line: binds its listeners, stops on SIGTERM or SIGINT (a
/// second one ends the grace early), drains and returns.
pub async fn serve(args: ServeArgs, metrics: PrometheusHandle) -> anyhow::Result<()> {
    args.validate()?;
    let listeners = Listeners::bind(&args)?;
    let shutdown = Shutdown::default();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        if wait_for_signal().await.is_ok() {
            signals.stop.cancel();
            if wait_for_signal().await.is_ok() {
                signals.skip_grace.cancel();
            }
        }
    });
    run(args, metrics, listeners, shutdown).await
}

/// Runs a gateway on `listeners` until `shutdown.stop`, then stops in two steps a load balancer
/// can follow (PROTOCOL.md "Operations interface"): readiness off for the grace, then the drain.
pub async fn run(
    args: ServeArgs,
    metrics: PrometheusHandle,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    args.validate()?;
    let verifier = Arc::new(verifier(&args)?);
    let limits = args.conn_limits(open_files_limit());
    let workers = listeners.ws.len();
    let (senders, receivers): (Vec<mpsc::Sender<Batch>>, Vec<_>) =
        (0..workers).map(|_| mpsc::channel(FANOUT_QUEUE)).unzip();
    let (lookup, journal) = match &args.nats {
        Some(url) => (
            upstream_source(&args, url, senders, verifier.clone()).await?,
            None,
        ),
        None => {
            let latest = Arc::new(LatestTable::new());
            let journal = Journal::open(&args.journal(), latest.clone(), senders)?;
            if let Some(url) = &args.journal_source {
                crate::journal_sink::start(url, &args.data_dir, journal.clone()).await?;
            }
            (Lookup::Embedded(latest), Some(journal))
        }
    };

    let Listeners {
        ws: ws_listeners,
        tls,
        quic: (mut quic, quic_addr),
        admin: admin_listener,
    } = listeners;
    let ws_addr = ws_listeners[0].local_addr()?;
    let mut tls_listeners: Vec<Option<TcpListener>> = (0..workers).map(|_| None).collect();
    let mut wss = None;
    if let Some((bound, config)) = tls {
        wss = Some((bound[0].local_addr()?, config.clone()));
        tls_listeners = bound.into_iter().map(Some).collect();
        tokio::spawn(reload_on_sighup(config));
    }
    let shared = Arc::new(Shared::default());
    let drain = CancellationToken::new();
    let mut threads = Vec::with_capacity(workers);
    for (id, ((listener, fanout), tls_listener)) in ws_listeners
        .into_iter()
        .zip(receivers)
        .zip(tls_listeners)
        .enumerate()
    {
        threads.push(accept::spawn(WorkerSetup {
            id,
            listener,
            fanout,
            lookup: lookup.clone(),
            verifier: verifier.clone(),
            limits: limits.clone(),
            shared: shared.clone(),
            shutdown: drain.clone(),
            drain: std::time::Duration::from_secs(args.drain_s),
            workers,
            tls: tls_listener.zip(wss.as_ref().map(|(_, config)| config.clone())),
            quic: quic.pop(),
        })?);
    }

    let admin_listener = tokio::net::TcpListener::from_std(admin_listener)?;
    let admin_addr = admin_listener.local_addr()?;
    let nats = match &lookup {
        Lookup::Upstream(up) => Some(up.client().clone()),
        Lookup::Embedded(_) => None,
    };
    let state = AdminState {
        journal,
        lookup,
        shared: shared.clone(),
        metrics,
        max_connections: limits.max_connections,
        token: args.admin_token.as_deref().map(Arc::from),
        nats,
        verifier: verifier.clone(),
    };
    // The admin listener outlives the drain, so /readyz answers 503 and /metrics keeps working
    // while clients leave; it stops once the workers have.
    let admin_stop = CancellationToken::new();
    let admin_shutdown = admin_stop.clone();
    let admin = tokio::spawn(async move {
        axum::serve(admin_listener, admin::router(state))
            .with_graceful_shutdown(async move { admin_shutdown.cancelled().await })
            .await
    });

    shared.ready.store(true, Ordering::Relaxed);
    let wss_part = wss
        .as_ref()
        .map(|(addr, _)| format!(" wss={addr}"))
        .unwrap_or_default();
    tracing::info!(%ws_addr, %admin_addr, wss = %wss_part.trim(), workers, max_connections = limits.max_connections, "herald gateway ready");
    // A machine-readable line for scripts and tests (logs go to stderr).
    let quic_ready = quic_addr.map(|a| format!(" quic={a}")).unwrap_or_default();
    println!("herald-gateway ready ws={ws_addr} admin={admin_addr}{wss_part}{quic_ready}");

    shutdown.stop.cancelled().await;
    // Grace: readiness fails at once so load balancers stop sending new clients, while the
    // listeners still accept the ones already on their way.
    shared.ready.store(false, Ordering::Relaxed);
    if args.stop_grace_ms > 0 {
        tracing::info!(
            stop_grace_ms = args.stop_grace_ms,
            "stopping: /readyz 503, still accepting during the grace"
        );
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(args.stop_grace_ms)) => {}
            () = shutdown.skip_grace.cancelled() => {}
        }
    }
    tracing::info!(drain_s = args.drain_s, "draining");
    shared.draining.store(true, Ordering::Relaxed);
    drain.cancel();
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    admin_stop.cancel();
    let _ = admin.await;
    tracing::info!("stopped");
    Ok(())
}

/// One QUIC socket and configuration per worker when `--quic-listen` is set (popped from the
/// back, so any order), and the address they share.
fn quic_setups(
    args: &ServeArgs,
    limits: &crate::config::ConnLimits,
    workers: usize,
) -> anyhow::Result<(Vec<crate::quic::QuicSetup>, Option<SocketAddr>)> {
    let (Some(addr), Some(cert), Some(key)) = (args.quic_listen, &args.tls_cert, &args.tls_key)
    else {
        return Ok((Vec::new(), None));
    };
    let tls = crate::tls::server_config(cert, key, &[herald_proto::QUIC_ALPN])?;
    // Longer than the longest heartbeat timeout (2.5 x heartbeat), so the sweep closes a silent
    // client with code 104 before QUIC's idle timeout would.
    let longest = (0..=limits.session.heartbeat_classes.len())
        .map(|c| limits.session.heartbeat_of(c as u8))
        .max()
        .unwrap_or(limits.session.heartbeat);
    let idle = longest.mul_f64(2.5) + std::time::Duration::from_secs(30);
    let server = crate::quic::server_config(tls, idle)?;
    let endpoint = crate::quic::endpoint_config(key)?;
    let sockets = crate::quic::bind_reuseport_udp(addr, workers)
        .with_context(|| format!("binding the QUIC listener {addr}"))?;
    let bound = sockets[0].local_addr()?;
    let setups = sockets
        .into_iter()
        .map(|socket| crate::quic::QuicSetup {
            socket,
            endpoint: endpoint.clone(),
            server: server.clone(),
        })
        .collect();
    Ok((setups, Some(bound)))
}

/// Distributed mode: follow the relays over NATS and hand raised changes to every worker.
async fn upstream_source(
    args: &ServeArgs,
    url: &str,
    workers: Vec<mpsc::Sender<Batch>>,
    verifier: Arc<Verifier>,
) -> anyhow::Result<Lookup> {
    let mut config = UpstreamConfig::new(url);
    config.partitions = args.partitions;
    config.request_timeout = std::time::Duration::from_millis(args.upstream_request_timeout_ms);
    config.lookup_deadline = std::time::Duration::from_millis(args.lookup_deadline_ms);
    config.name = format!("herald-gateway {}", std::process::id());
    config.relay_silence = (args.relay_silence_ms > 0)
        .then(|| std::time::Duration::from_millis(args.relay_silence_ms));
    config.journal_direct = !args.no_journal_direct;
    let (upstream, mut changes) = Upstream::connect(config)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))?;
    tokio::spawn(async move {
        while let Some(raised) = changes.recv().await {
            let batch = Batch::new(raised, std::time::Instant::now());
            for worker in &workers {
                // A stopped worker (shutdown) is skipped.
                let _ = worker.send(batch.clone()).await;
            }
        }
    });
    follow_revocations(upstream.client(), verifier).await?;
    Ok(Lookup::Upstream(upstream))
}

/// Distributed mode: applies the revocations any gateway publishes (`POST /v1/disconnect`).
async fn follow_revocations(
    client: &async_nats::Client,
    verifier: Arc<Verifier>,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let mut revocations = client
        .subscribe(crate::revocation::SUBJECT)
        .await
        .context("subscribing to revocations")?;
    tokio::spawn(async move {
        while let Some(msg) = revocations.next().await {
            match crate::revocation::Revocation::parse(&msg.payload) {
                Ok(r) => {
                    verifier.revocations().add(&r, crate::keys::unix_now());
                    tracing::info!(sub = %r.sub, "tokens revoked (from NATS)");
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed revocation"),
            }
        }
    });
    Ok(())
}

fn verifier(args: &ServeArgs) -> anyhow::Result<Verifier> {
    if !args.auth_keys.is_empty() {
        let keys = Verifier::load_keys(&args.auth_keys)?;
        return Ok(Verifier::new(
            keys,
            args.auth_issuer.as_deref(),
            args.auth_audience.as_deref(),
        )
        .with_leeway(args.token_leeway_s));
    }
    let key = SigningKey::generate(None)?;
    let mut claims = claims_for("dev", NsGrant::All, args.dev_token_ttl_s);
    claims.iss.clone_from(&args.auth_issuer);
    let token = key.mint(&claims, args.auth_audience.as_deref())?;
    tracing::warn!(
        "no --auth-key configured: using a throwaway dev key made for this run. Anyone holding the \
         dev token below may subscribe to every namespace. Configure --auth-key for production."
    );
    eprintln!(
        "\nDev token (sub=dev, ns=*, valid {} s):\n{token}\n",
        args.dev_token_ttl_s
    );
    println!("HERALD_DEV_TOKEN={token}");
    let keys = HashMap::from([(String::new(), key.decoding_key())]);
    Ok(Verifier::new(
        keys,
        args.auth_issuer.as_deref(),
        args.auth_audience.as_deref(),
    )
    .with_leeway(args.token_leeway_s))
}

/// `n` listening sockets on one address with `SO_REUSEPORT`, so the kernel spreads accepts over
/// the workers (and over other gateway processes on the same port). Port 0 resolves once.
fn bind_reuseport(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket
            .bind(&addr.into())
            .with_context(|| format!("binding the client listener {addr}"))?;
        socket.listen(4096)?;
        let listener: TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// The soft open-files limit (what the connection cap must stay under).
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

/// On every SIGHUP, reads the certificate and key again: new TLS handshakes use them, live
/// connections keep theirs. A file that does not load is logged and the old certificate kept.
async fn reload_on_sighup(config: Arc<ReloadableConfig>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; certificate reload is off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let config = config.clone();
        match tokio::task::spawn_blocking(move || config.reload()).await {
            Ok(Ok(())) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Ok(Err(e)) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "SIGHUP: TLS certificate not reloaded; keeping the old one"
                );
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed"),
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
