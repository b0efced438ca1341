//! A worker thread: its runtime, its tasks (fan-out, sweep, accept), and the accept loops that
//! turn sockets into connections (WebSocket and TLS here; QUIC in [`crate::quic`]).

use crate::auth::Verifier;
use crate::config::ConnLimits;
use crate::conn::{Io, Transport};
use crate::lookup::Lookup;
use crate::tls::ReloadableConfig;
use crate::tls_stream::TlsStream;
use crate::worker::sweep::SWEEP_EVERY;
use crate::worker::{Shared, Worker, fanout, sweep};
use crate::ws;
use herald_core::batch::Batch;
use herald_core::time::{CLOSE_GRACE_TICKS, TICK};
use rand::Rng;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Everything a worker thread is started with.
pub struct WorkerSetup {
    /// Index, for names and metrics labels.
    pub id: usize,
    /// Its listener socket (bound, listening, non-blocking).
    pub listener: std::net::TcpListener,
    /// Batches from the journal.
    pub fanout: mpsc::Receiver<Batch>,
    /// For SUBSCRIBE look-ups.
    pub lookup: Lookup,
    /// For HELLO.
    pub verifier: Arc<Verifier>,
    /// Connection settings.
    pub limits: ConnLimits,
    /// Process-wide flags and counts.
    pub shared: Arc<Shared>,
    /// Cancelled when the process starts draining.
    pub shutdown: CancellationToken,
    /// How long draining may take.
    pub drain: Duration,
    /// Worker threads in the process (rates are split between them).
    pub workers: usize,
    /// Its `wss` listener socket and the certificate holder, when `--tls-listen` is set.
    pub tls: Option<(std::net::TcpListener, Arc<ReloadableConfig>)>,
    /// Its QUIC socket and settings, when `--quic-listen` is on.
    pub quic: Option<crate::quic::QuicSetup>,
}

/// Starts a worker thread.
pub fn spawn(setup: WorkerSetup) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("herald-worker-{}", setup.id))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "worker runtime failed to start");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(setup));
        })
}

async fn run(setup: WorkerSetup) {
    let WorkerSetup {
        id,
        listener,
        fanout,
        lookup,
        verifier,
        limits,
        shared,
        shutdown,
        drain,
        workers,
        tls,
        quic,
    } = setup;
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "listener could not join the runtime");
            return;
        }
    };
    let tls = match tls.map(|(l, config)| TcpListener::from_std(l).map(|l| (l, config))) {
        None => None,
        Some(Ok(pair)) => Some(pair),
        Some(Err(e)) => {
            tracing::error!(worker = id, error = %e, "TLS listener could not join the runtime");
            return;
        }
    };
    let worker = Rc::new(Worker::new(id, lookup, verifier, limits, shared, workers));
    let quic = match quic.map(crate::quic::QuicSetup::endpoint).transpose() {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "QUIC endpoint could not start");
            None
        }
    };
    if let Some(endpoint) = &quic {
        tokio::task::spawn_local(crate::quic::accept_loop(
            worker.clone(),
            endpoint.clone(),
            shutdown.clone(),
        ));
    }
    tokio::task::spawn_local(fanout::run(worker.clone(), fanout));
    tokio::task::spawn_local(sweep::run(worker.clone(), drain));
    match &tls {
        None => accept_loop(&worker, &listener, None, &shutdown).await,
        Some((tls_listener, config)) => {
            tokio::join!(
                accept_loop(&worker, &listener, None, &shutdown),
                accept_loop(&worker, tls_listener, Some(config), &shutdown)
            );
        }
    }
    drop(listener);
    drop(tls);
    // Draining: the sweep sends GOAWAY spread over the drain period; wait for the clients to go.
    let deadline = Instant::now() + drain + TICK * CLOSE_GRACE_TICKS + SWEEP_EVERY;
    while !worker.conns.borrow().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stats.flush();
    tracing::info!(
        worker = id,
        left = worker.conns.borrow().len(),
        "worker stopped"
    );
}

/// Accepts until shutdown. Errors (EMFILE, ENOBUFS) are logged and backed off, never fatal.
/// With `tls`, each connection starts a TLS session with the certificate current at accept; the
/// handshake counts against the handshake timeout like the HTTP upgrade.
async fn accept_loop(
    worker: &Rc<Worker>,
    listener: &TcpListener,
    tls: Option<&ReloadableConfig>,
    shutdown: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                // Idle time jittered per socket (60–120 s): connections accepted in one burst
                // (a reconnect storm) would otherwise probe in one burst forever after, and a
                // burst of probes beyond the receiver's backlog is dropped (seen on loopback at
                // 150k connections: half of them aborted after 180 s idle).
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(Duration::from_millis(
                        rand::rng().random_range(60_000..=120_000),
                    ))
                    .with_interval(Duration::from_secs(10));
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                let io = match tls {
                    None => Io::Tcp(stream),
                    Some(config) => match TlsStream::new(stream, config.current()) {
                        Ok(t) => Io::Tls(Box::new(t)),
                        Err(e) => {
                            tracing::warn!(error = %e, "TLS session could not start");
                            continue;
                        }
                    },
                };
                admit(worker, io, peer.ip());
            }
            Err(e) => {
                tracing::warn!(worker = worker.id, error = %e, "accept failed; backing off");
                metrics::counter!("herald_accept_errors_total").increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Takes a new TCP connection: into the table, and its task started.
fn admit(worker: &Rc<Worker>, io: Io, source: std::net::IpAddr) {
    let admitted = worker.within_rate(source);
    let conn = worker.insert(io, Transport::WebSocket);
    if !admitted {
        // Answered with 503 once its request head is read (C-rate: before any upgrade work).
        conn.state.borrow_mut().wire.rate_limited = true;
        metrics::counter!("herald_handshakes_rate_limited_total").increment(1);
    }
    tokio::task::spawn_local(ws::run(worker.clone(), conn));
}
