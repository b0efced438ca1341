//! `quic-idle`: how many bytes a gateway spends per idle, subscribed QUIC connection, next to
//! plain WebSocket in the same run (a fresh gateway for each, same flags).
//!
//! QUIC connections are opened from this process over a few client endpoints (UDP sockets, so
//! no file-descriptor limit applies); each does HELLO, SUBSCRIBE(one namespace) and PING/PONG,
//! then stays silent (no keep-alive). WebSocket connections live in `hold` child processes, as
//! in `idle`. Figures: the gateway's RSS (`/proc`) and jemalloc heap (`/metrics`) over its
//! baseline, divided by the connections.

use crate::gateway::{Gateway, heap, mib, sibling_gateway};
use crate::procfs;
use herald_proto::quic::{Deframed, encode_frame, next_frame};
use herald_proto::{ClientFrame, MAX_SERVER_FRAME, QUIC_ALPN, ServerFrame, frame::decode_server};
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `quic-idle`.
#[derive(Debug, clap::Args)]
pub(crate) struct QuicIdleArgs {
    /// Connection counts to measure at, ascending.
    #[arg(long, value_delimiter = ',', default_value = "2000,5000,10000")]
    steps: Vec<usize>,
    /// Client UDP sockets the QUIC connections are spread over.
    #[arg(long, default_value_t = 16)]
    endpoints: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 100)]
    parallel: usize,
    /// Namespaces in the subscription pattern.
    #[arg(long, default_value_t = 1000)]
    namespaces: u64,
    /// Gateway binary to start (default: `herald-gateway` next to this binary).
    #[arg(long)]
    gateway_bin: Option<String>,
    /// Extra arguments for both gateways.
    #[arg(long, allow_hyphen_values = true)]
    gateway_arg: Vec<String>,
    /// Skip the WebSocket comparison.
    #[arg(long)]
    no_ws: bool,
}

/// One measurement.
struct Step {
    connections: usize,
    rss_per_conn: f64,
    heap_per_conn: Option<f64>,
    rss_mib: f64,
    connect_seconds: f64,
}

pub(crate) fn run(args: &QuicIdleArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("herald-quic-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(args: &QuicIdleArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])?.self_signed(&key)?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    let bin = args.gateway_bin.clone().unwrap_or_else(sibling_gateway);

    let mut flags = vec![
        "--heartbeat-ms".to_owned(),
        "900000".to_owned(),
        "--tls-cert".to_owned(),
        dir.join("cert.pem").display().to_string(),
        "--tls-key".to_owned(),
        dir.join("key.pem").display().to_string(),
    ];
    flags.extend(args.gateway_arg.iter().cloned());

    let mut quic_flags = flags.clone();
    quic_flags.extend(["--quic-listen".to_owned(), "127.0.0.1:0".to_owned()]);
    println!("QUIC:");
    let quic = {
        let gw = Gateway::start(&bin, &dir.join("data-quic"), &quic_flags)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(quic_pass(args, &gw, &cert.pem()))?
    };
    let ws = if args.no_ws {
        Vec::new()
    } else {
        println!("WebSocket:");
        let gw = Gateway::start(&bin, &dir.join("data-ws"), &flags)?;
        ws_pass(args, &gw)?
    };
    println!("\nconnections | QUIC RSS B/conn | QUIC heap B/conn | WS RSS B/conn | WS heap B/conn");
    for (i, q) in quic.iter().enumerate() {
        let w = ws.get(i);
        println!(
            "{:>11} | {:>15.0} | {:>16} | {:>13} | {:>14}",
            q.connections,
            q.rss_per_conn,
            fmt_opt(q.heap_per_conn),
            w.map_or("-".into(), |w| format!("{:.0}", w.rss_per_conn)),
            w.map_or("-".into(), |w| fmt_opt(w.heap_per_conn)),
        );
    }
    Ok(())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.0}"))
}

/// Baseline, then each step's figures.
struct Meter<'a> {
    gw: &'a Gateway,
    base_rss: u64,
    base_heap: Option<u64>,
}

impl<'a> Meter<'a> {
    fn new(gw: &'a Gateway) -> anyhow::Result<Self> {
        std::thread::sleep(Duration::from_secs(1));
        let m = Meter {
            gw,
            base_rss: procfs::rss_bytes(gw.pid)?,
            base_heap: heap(gw),
        };
        println!(
            "  gateway pid {} baseline: RSS {:.1} MiB, heap {}",
            gw.pid,
            mib(m.base_rss),
            m.base_heap
                .map_or("n/a".into(), |h| format!("{:.1} MiB", mib(h)))
        );
        Ok(m)
    }

    fn step(&self, connections: usize, connect_seconds: f64) -> anyhow::Result<Step> {
        let rss = procfs::rss_bytes(self.gw.pid)?;
        let per = |now: u64, base: u64| now.saturating_sub(base) as f64 / connections as f64;
        let step = Step {
            connections,
            rss_per_conn: per(rss, self.base_rss),
            heap_per_conn: heap(self.gw).zip(self.base_heap).map(|(h, b)| per(h, b)),
            rss_mib: mib(rss),
            connect_seconds,
        };
        println!(
            "  {:>6} conns: gateway RSS {:>7.1} MiB = {:>6.0} B/conn; heap {:>6} B/conn; connected in {:.1} s",
            step.connections,
            step.rss_mib,
            step.rss_per_conn,
            fmt_opt(step.heap_per_conn),
            step.connect_seconds
        );
        Ok(step)
    }
}

/// A held QUIC session (dropping it closes the connection).
struct Held {
    _conn: quinn::Connection,
    _send: quinn::SendStream,
    _recv: quinn::RecvStream,
}

async fn quic_pass(args: &QuicIdleArgs, gw: &Gateway, ca_pem: &str) -> anyhow::Result<Vec<Step>> {
    let addr = gw
        .quic
        .ok_or_else(|| anyhow::anyhow!("the gateway printed no quic= address"))?;
    let config = client_config(ca_pem)?;
    let mut endpoints = Vec::with_capacity(args.endpoints.max(1));
    for _ in 0..args.endpoints.max(1) {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        ep.set_default_client_config(config.clone());
        endpoints.push(ep);
    }
    let meter = Meter::new(gw)?;
    let mut held: Vec<Held> = Vec::new();
    let mut steps = Vec::new();
    for &target in &args.steps {
        let started = Instant::now();
        while held.len() < target {
            let batch = (target - held.len()).min(args.parallel.max(1));
            let opens = (0..batch).map(|i| {
                let n = held.len() + i;
                let ep = endpoints[n % endpoints.len()].clone();
                let token = gw.token.clone();
                let ns = n as u64 % args.namespaces.max(1);
                tokio::spawn(async move { open(&ep, addr, &token, ns).await })
            });
            let opened: Vec<_> = futures_util::future::join_all(opens).await;
            for o in opened {
                held.push(o??);
            }
        }
        let connect_seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        steps.push(meter.step(held.len(), connect_seconds)?);
    }
    drop(held);
    for ep in &endpoints {
        ep.close(quinn::VarInt::from_u32(0), b"");
    }
    Ok(steps)
}

fn client_config(ca_pem: &str) -> anyhow::Result<quinn::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![QUIC_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Silent while idle: no keep-alive, and an idle timeout longer than the run.
    t.keep_alive_interval(None);
    t.max_idle_timeout(Some(Duration::from_secs(3600).try_into()?));
    t.mtu_discovery_config(None);
    config.transport_config(Arc::new(t));
    Ok(config)
}

/// HELLO, SUBSCRIBE(ns, 0), PING; waits for the PONG.
async fn open(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    token: &str,
    ns: u64,
) -> anyhow::Result<Held> {
    let conn = ep.connect(addr, "localhost")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut wire = Vec::new();
    for frame in [
        ClientFrame::Hello {
            version: 1,
            token: token.to_owned(),
        },
        ClientFrame::Subscribe(vec![(ns, 0)]),
        ClientFrame::Ping(1),
    ] {
        encode_frame(&frame.to_vec(), &mut wire);
    }
    send.write_all(&wire).await?;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        while let Deframed::Frame { start, end } = next_frame(&buf, MAX_SERVER_FRAME, false)? {
            let frame = decode_server(&buf[start..end])?;
            buf.drain(..end);
            match frame {
                ServerFrame::Pong(1) => {
                    return Ok(Held {
                        _conn: conn,
                        _send: send,
                        _recv: recv,
                    });
                }
                ServerFrame::Error { code, message } => {
                    anyhow::bail!("ERROR {code}: {message}")
                }
                _ => {}
            }
        }
        let chunk = tokio::time::timeout_at(deadline, recv.read_chunk(MAX_SERVER_FRAME, true))
            .await
            .map_err(|_| anyhow::anyhow!("no PONG within 30 s"))??
            .ok_or_else(|| anyhow::anyhow!("stream ended before PONG"))?;
        buf.extend_from_slice(&chunk.bytes);
    }
}

/// The same steps over WebSocket, with `hold` child processes (as `idle` does).
fn ws_pass(args: &QuicIdleArgs, gw: &Gateway) -> anyhow::Result<Vec<Step>> {
    let meter = Meter::new(gw)?;
    let mut holders: Vec<Child> = Vec::new();
    let mut held = 0;
    let mut steps = Vec::new();
    for &target in &args.steps {
        let started = Instant::now();
        while held < target {
            let count = (target - held).min(15_000);
            let source = format!("127.0.0.{}", 2 + holders.len());
            let child = crate::reaper::spawn_ready(
                Command::new(std::env::current_exe()?)
                    .arg("hold")
                    .args(["--ws", &gw.ws.to_string(), "--token", &gw.token])
                    .args(["--source", &source, "--count", &count.to_string()])
                    .args(["--first", &held.to_string()])
                    .args(["--namespaces", &args.namespaces.to_string()]),
                "holder",
            )?;
            holders.push(child);
            held += count;
        }
        let connect_seconds = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        steps.push(meter.step(held, connect_seconds)?);
    }
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    Ok(steps)
}
