//! The long-poll idle-memory benchmark: how many bytes a gateway spends per waiting long-poll
//! (PROTOCOL.md "Transports", C16), to compare with `idle` (plain WebSocket).
//!
//! Like `idle`: the gateway's RSS (and heap, when built with jemalloc) with no clients, then after
//! each step, per waiting poll. The polls live in `longpoll-hold` child processes: each opens raw
//! TCP connections from its own source address and sends one `POST /v1/longpoll` per connection
//! (one never-published namespace at cursor 0, `timeout_s` 480, so every poll waits). A step
//! counts once the gateway's `herald_subscriptions` gauge shows every poll registered.

use crate::gateway::{Gateway, heap, mib, sibling_gateway};
use crate::procfs;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// Most polls one `longpoll-hold` process keeps (20000 open files per process).
const PER_PROCESS: usize = 15_000;
/// Longest wait the protocol allows, so no poll is answered during the run.
const TIMEOUT_S: u64 = 480;

/// Arguments of `longpoll-idle`.
#[derive(Debug, clap::Args)]
pub(crate) struct LongPollIdleArgs {
    /// Waiting-poll counts to measure at, ascending.
    #[arg(long, value_delimiter = ',', default_value = "5000,15000")]
    steps: Vec<usize>,
    /// Namespaces in the pattern (poll i waits on namespace 1_000_000 + i modulo this).
    #[arg(long, default_value_t = 1000)]
    namespaces: u64,
    /// Gateway binary to start (default: `herald-gateway` next to this binary).
    #[arg(long)]
    gateway_bin: Option<String>,
    /// Extra arguments for the started gateway.
    #[arg(long, allow_hyphen_values = true)]
    gateway_arg: Vec<String>,
}

/// Arguments of `longpoll-hold`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LongPollHoldArgs {
    /// Gateway client listener.
    #[arg(long)]
    ws: SocketAddr,
    /// Token for the polls.
    #[arg(long)]
    token: String,
    /// Polls to keep waiting.
    #[arg(long)]
    count: usize,
    /// Source address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    source: IpAddr,
    /// Namespaces in the pattern.
    #[arg(long, default_value_t = 1000)]
    namespaces: u64,
    /// Index of this process's first poll in the whole run.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    parallel: usize,
}

pub(crate) fn run(args: &LongPollIdleArgs) -> anyhow::Result<()> {
    let data_dir = std::env::temp_dir().join(format!("herald-lpidle-{}", std::process::id()));
    let bin = args.gateway_bin.clone().unwrap_or_else(sibling_gateway);
    let gateway = Gateway::start(&bin, &data_dir, &args.gateway_arg)?;
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
    let result = (|| -> anyhow::Result<()> {
        for &target in &args.steps {
            let started = Instant::now();
            while held < target {
                let count = (target - held).min(PER_PROCESS);
                let source = format!("127.0.0.{}", 2 + holders.len());
                holders.push(spawn_holder(args, &gateway, &source, count, held)?);
                held += count;
            }
            // Every poll registered (the gauge is refreshed by the sweep, every 500 ms).
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let subs = gateway.metric_sum("herald_subscriptions")? as usize;
                if subs >= held {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "only {subs} of {held} polls registered after 60 s"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
            let connect_seconds = started.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_secs(2));
            let rss = procfs::rss_bytes(gateway.pid)?;
            let heap_now = heap(&gateway);
            let slab = procfs::slab_bytes()?;
            let per = |now: u64, base: u64| now.saturating_sub(base) as f64 / held as f64;
            println!(
                "{:>7} waiting polls: gateway RSS {:>7.1} MiB = {:>6.0} B/poll; heap {:>6} B/poll; kernel slab ~{:>5.0} B/poll (machine-wide); set up in {:.1} s",
                held,
                mib(rss),
                per(rss, base_rss),
                heap_now
                    .zip(base_heap)
                    .map_or("n/a".into(), |(h, b)| format!("{:.0}", per(h, b))),
                per(slab, base_slab),
                connect_seconds
            );
        }
        Ok(())
    })();
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    drop(gateway);
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

fn spawn_holder(
    args: &LongPollIdleArgs,
    gw: &Gateway,
    source: &str,
    count: usize,
    first: usize,
) -> anyhow::Result<Child> {
    crate::reaper::spawn_ready(
        Command::new(std::env::current_exe()?)
            .arg("longpoll-hold")
            .args(["--ws", &gw.ws.to_string(), "--token", &gw.token])
            .args(["--source", source, "--count", &count.to_string()])
            .args(["--first", &first.to_string()])
            .args(["--namespaces", &args.namespaces.to_string()]),
        "longpoll-hold",
    )
}

/// The child: sends `count` polls and keeps their sockets until stdin closes.
pub(crate) fn hold(args: &LongPollHoldArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(hold_polls(args.clone()))
}

async fn hold_polls(args: LongPollHoldArgs) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.parallel.min(args.count).max(1) {
        let (args, next) = (args.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.count {
                    return Ok::<_, anyhow::Error>(held);
                }
                held.push(send_poll(&args, args.first + i as u64).await?);
            }
        }));
    }
    let mut socks: Vec<TcpStream> = Vec::with_capacity(args.count);
    for t in tasks {
        socks.extend(t.await??);
    }
    println!("ready {}", socks.len());
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await?;
    drop(socks);
    Ok(())
}

/// Connects from the source address and sends one poll on a never-published namespace.
async fn send_poll(args: &LongPollHoldArgs, index: u64) -> anyhow::Result<TcpStream> {
    let socket = if args.source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(args.source, 0))?;
    let mut stream =
        tokio::time::timeout(Duration::from_secs(30), socket.connect(args.ws)).await??;
    let ns = 1_000_000 + index % args.namespaces;
    let body = herald_proto::longpoll::Request {
        token: args.token.clone(),
        cursors: vec![(ns, 0)],
        timeout_s: TIMEOUT_S,
    }
    .encode();
    let mut req = format!(
        "POST /v1/longpoll HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        args.ws,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    stream.write_all(&req).await?;
    Ok(stream)
}
