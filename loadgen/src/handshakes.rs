//! The TLS handshake benchmark: full handshakes a second one gateway worker (one core) completes,
//! and the gateway's CPU time per 1000 of them.
//!
//! Starts a gateway with one worker, `--tls-listen` and a fresh self-signed certificate (ECDSA
//! P-256, or Ed25519), then opens fresh TLS connections from `--parallel` tasks of this process:
//! TCP connect, full handshake (no resumption: the gateway issues no tickets), close_notify, and
//! wait for the gateway's EOF, so every counted handshake was finished on the gateway's side too.
//! On a small machine the client side (which verifies the certificate) shares the cores, so the
//! per-core figure is the gateway's CPU per handshake, not the wall-clock rate.

use crate::gateway::{Gateway, gen_cert};
use crate::procfs;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Arguments of `tls-handshakes`.
#[derive(Debug, clap::Args)]
pub(crate) struct HandshakeArgs {
    /// Seconds to measure (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Client threads (the gateway has one worker).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// An Ed25519 certificate instead of ECDSA P-256.
    #[arg(long)]
    ed25519: bool,
    /// Gateway binary to start (default: `herald-gateway` next to this binary).
    #[arg(long)]
    gateway_bin: Option<String>,
}

pub(crate) fn run(args: &HandshakeArgs) -> anyhow::Result<()> {
    let bin = args
        .gateway_bin
        .clone()
        .unwrap_or_else(crate::gateway::sibling_gateway);
    let data_dir = std::env::temp_dir().join(format!("herald-handshakes-{}", std::process::id()));
    let (cert, key) = gen_cert(&bin, &data_dir.join("tls"), args.ed25519)?;
    let extra: Vec<String> = [
        "--workers",
        "1",
        "--handshake-rate",
        "0",
        "--tls-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([
        "--tls-cert".to_owned(),
        cert.display().to_string(),
        "--tls-key".to_owned(),
        key.display().to_string(),
    ])
    .collect();
    let gateway = Gateway::start(&bin, &data_dir, &extra)?;
    let wss = gateway
        .wss
        .ok_or_else(|| anyhow::anyhow!("the gateway printed no wss address"))?;
    let tls = crate::hold::client_tls(&cert)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()?;
    let result = rt.block_on(measure(args, &gateway, wss, tls));
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

async fn measure(
    args: &HandshakeArgs,
    gateway: &Gateway,
    wss: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<()> {
    let connector = tokio_rustls::TlsConnector::from(tls);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..args.parallel.max(1) {
        let (connector, done, failed, stop) = (
            connector.clone(),
            done.clone(),
            failed.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(10), handshake(&connector, wss))
                    .await
                {
                    Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (n0, cpu0, t0) = (
        done.load(Ordering::Relaxed),
        procfs::cpu_seconds(gateway.pid)?,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (n1, cpu1, elapsed) = (
        done.load(Ordering::Relaxed),
        procfs::cpu_seconds(gateway.pid)?,
        t0.elapsed().as_secs_f64(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let count = n1 - n0;
    let cpu = cpu1 - cpu0;
    let per_1000 = cpu / count.max(1) as f64 * 1000.0;
    println!(
        "TLS handshakes ({}, one gateway worker, {} in flight): {count} in {elapsed:.1} s = {:.0}/s wall clock; \
         gateway CPU {cpu:.2} s = {per_1000:.3} CPU-s per 1000 handshakes = {:.0} handshakes/s per gateway core; \
         {} failed",
        if args.ed25519 {
            "Ed25519"
        } else {
            "ECDSA P-256"
        },
        args.parallel,
        count as f64 / elapsed,
        if cpu > 0.0 { count as f64 / cpu } else { 0.0 },
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One fresh connection: TCP connect, full TLS handshake, close_notify, the gateway's EOF.
async fn handshake(connector: &tokio_rustls::TlsConnector, addr: SocketAddr) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await?;
    tls.shutdown().await?;
    let mut rest = Vec::new();
    // The gateway answers close_notify with its own and closes; an error here is fine.
    let _ = tls.read_to_end(&mut rest).await;
    Ok(())
}
