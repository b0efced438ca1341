//! The idle-memory benchmark: how many bytes a gateway spends per idle, subscribed connection.
//!
//! Reads the gateway's RSS (`/proc/<pid>/status`) and heap (`herald_heap_allocated_bytes` from
//! `/metrics`, jemalloc's count) with no clients, then after each step of connections, and
//! reports the deltas per connection. Connections live in `hold` child processes.

use crate::gateway::Gateway;
use crate::procfs;
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Most connections one `hold` process opens.
const PER_PROCESS: usize = 15_000;

/// Arguments of `idle`.
#[derive(Debug, clap::Args)]
pub(crate) struct IdleArgs {
    /// Connection counts to measure at, ascending.
    #[arg(long, value_delimiter = ',', default_value = "5000,10000,15000")]
    steps: Vec<usize>,
    /// Namespaces in the subscription pattern.
    #[arg(long, default_value_t = 1000)]
    namespaces: u64,
    /// Subscriptions per connection.
    #[arg(long, default_value_t = 1)]
    subs_per_conn: u64,
    /// Gateway binary to start (default: `herald-gateway` next to this binary).
    #[arg(long)]
    gateway_bin: Option<String>,
    /// Extra arguments for the started gateway.
    #[arg(long, allow_hyphen_values = true)]
    gateway_arg: Vec<String>,
    /// Attach to a running gateway instead: its WebSocket address (needs --admin, --pid, --token).
    #[arg(long, requires_all = ["admin", "pid", "token"])]
    ws: Option<SocketAddr>,
    /// Admin address of an attached gateway.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Pid of an attached gateway.
    #[arg(long)]
    pid: Option<u32>,
    /// Token for an attached gateway.
    #[arg(long)]
    token: Option<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Connect over TLS (`wss`): the started gateway gets `--tls-listen` and a self-signed
    /// ECDSA P-256 certificate.
    #[arg(long, conflicts_with = "ws")]
    tls: bool,
}

#[derive(Debug, Serialize)]
struct Step {
    connections: usize,
    rss_bytes: u64,
    heap_bytes: Option<u64>,
    rss_per_conn: f64,
    heap_per_conn: Option<f64>,
    kernel_slab_per_conn: f64,
    connect_seconds: f64,
}

pub(crate) fn run(args: &IdleArgs) -> anyhow::Result<()> {
    let data_dir = std::env::temp_dir().join(format!("herald-idle-{}", std::process::id()));
    let mut tls_ca = None;
    let gateway = match (args.ws, args.admin, args.pid, &args.token) {
        (Some(ws), Some(admin), Some(pid), Some(token)) => {
            Gateway::attach(ws, admin, pid, token.clone())
        }
        _ => {
            let bin = args.gateway_bin.clone().unwrap_or_else(sibling_gateway);
            let mut extra = vec!["--heartbeat-ms".to_owned(), "900000".to_owned()];
            if args.tls {
                let (cert, key) = crate::gateway::gen_cert(&bin, &data_dir.join("tls"), false)?;
                extra.extend(["--tls-listen".into(), "127.0.0.1:0".into()]);
                extra.extend(["--tls-cert".into(), cert.display().to_string()]);
                extra.extend(["--tls-key".into(), key.display().to_string()]);
                tls_ca = Some(cert);
            }
            extra.extend(args.gateway_arg.iter().cloned());
            Gateway::start(&bin, &data_dir, &extra)?
        }
    };
    std::thread::sleep(Duration::from_secs(1));
    let base_rss = procfs::rss_bytes(gateway.pid)?;
    let base_heap = heap(&gateway);
    let base_slab = procfs::slab_bytes()?;
    println!(
        "gateway pid {} baseline: RSS {:.1} MiB, heap {}",
        gateway.pid,
        mib(base_rss),
        base_heap.map_or("n/a".into(), |h| format!("{:.1} MiB", mib(h)))
    );
    let mut holders: Vec<Child> = Vec::new();
    let mut held = 0;
    let mut report = Vec::new();
    for &target in &args.steps {
        let started = Instant::now();
        while held < target {
            let count = (target - held).min(PER_PROCESS);
            // Each holder binds its own source address: 127.0.0.2, 127.0.0.3, …
            let source = format!("127.0.0.{}", 2 + holders.len());
            holders.push(spawn_holder(
                args,
                &gateway,
                tls_ca.as_deref(),
                &source,
                count,
                held,
            )?);
            held += count;
        }
        let connect_seconds = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        let rss = procfs::rss_bytes(gateway.pid)?;
        let heap_now = heap(&gateway);
        let slab = procfs::slab_bytes()?;
        let per = |now: u64, base: u64| now.saturating_sub(base) as f64 / held as f64;
        let step = Step {
            connections: held,
            rss_bytes: rss,
            heap_bytes: heap_now,
            rss_per_conn: per(rss, base_rss),
            heap_per_conn: heap_now.zip(base_heap).map(|(h, b)| per(h, b)),
            kernel_slab_per_conn: per(slab, base_slab),
            connect_seconds,
        };
        println!(
            "{:>7} conns: gateway RSS {:>7.1} MiB = {:>6.0} B/conn; heap {:>6} B/conn; kernel slab ~{:>5.0} B/conn (machine-wide); connected in {:.1} s",
            step.connections,
            mib(rss),
            step.rss_per_conn,
            step.heap_per_conn
                .map_or("n/a".into(), |h| format!("{h:.0}")),
            step.kernel_slab_per_conn,
            connect_seconds
        );
        report.push(step);
    }
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("report written to {}", path.display());
    }
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

fn spawn_holder(
    args: &IdleArgs,
    gw: &Gateway,
    tls_ca: Option<&std::path::Path>,
    source: &str,
    count: usize,
    first: usize,
) -> anyhow::Result<Child> {
    let mut cmd = Command::new(std::env::current_exe()?);
    // With TLS, the holders connect to the `wss` listener and trust its certificate.
    let addr = match tls_ca {
        Some(ca) => {
            cmd.arg("hold").arg("--tls-ca").arg(ca);
            gw.wss
                .ok_or_else(|| anyhow::anyhow!("the gateway has no wss listener"))?
        }
        None => {
            cmd.arg("hold");
            gw.ws
        }
    };
    let mut child = cmd
        .args([
            "--ws",
            &addr.to_string(),
            "--token",
            &gw.token,
            "--source",
            source,
        ])
        .args(["--count", &count.to_string(), "--first", &first.to_string()])
        .args([
            "--namespaces",
            &args.namespaces.to_string(),
            "--subs-per-conn",
            &args.subs_per_conn.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("holder has no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("ready") {
        let _ = child.kill();
        anyhow::bail!("holder failed before it was ready (see its stderr)");
    }
    Ok(child)
}

fn heap(gw: &Gateway) -> Option<u64> {
    gw.metric("herald_heap_allocated_bytes")
        .ok()
        .flatten()
        .map(|v| v as u64)
}

pub(crate) fn sibling_gateway() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("herald-gateway")))
        .map_or_else(|| "herald-gateway".into(), |p| p.display().to_string())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}
