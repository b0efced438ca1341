//! The idle-memory benchmark: how many bytes a gateway spends per idle, subscribed connection.
//!
//! Reads the gateway's RSS (`/proc/<pid>/status`) and heap (`herald_heap_allocated_bytes` from
//! `/metrics`, jemalloc's count) with no clients, then after each step of connections, and
//! reports the deltas per connection. Connections live in `hold` child processes, each bound to
//! its own source address (127.0.0.2, 127.0.0.3, …).
//!
//! With `--gateway-processes K` it starts K gateways on one port (each worker of each process
//! binds it with `SO_REUSEPORT`, so the kernel spreads connections over all of them), with their
//! own admin ports and data dirs and one shared key, and sums their RSS and heap: the way past
//! the 20000 open files one process may have here.

use crate::authkey::{SharedKey, free_port};
use crate::gateway::{Gateway, heap, mib, sibling_gateway};
use crate::procfs;
use crate::progress::Bars;
use serde::Serialize;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Most connections one `hold` process opens by default (the open-files limit is 20000).
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
    /// Connections per `hold` child process (each binds its own source address).
    #[arg(long, default_value_t = PER_PROCESS)]
    per_process: usize,
    /// Gateway processes to start on one WebSocket port (`SO_REUSEPORT`); their RSS and heap are
    /// summed. Each needs its own 20000 open files: keep connections / K well under 19k.
    #[arg(long, default_value_t = 1)]
    gateway_processes: usize,
    /// Connections each holder opens per second (0: unpaced). Pace big runs (e.g. 1000): the
    /// gateway sets TCP keepalive (60 s, then every 10 s), and the probes of connections accepted
    /// in one burst leave in one burst, which loopback drops beyond `netdev_max_backlog` (1000);
    /// after 9 lost probes the gateway's kernel drops the connection.
    #[arg(long, default_value_t = 0)]
    connect_rate: u64,
    /// Each holder sends every connection a PING this often, in seconds (0: never), as a
    /// client's heartbeat would. Needed past ~100k connections here: without data from the
    /// client, the gateway's TCP keepalive probes every idle connection each ~60 s, loopback
    /// drops probes beyond `net.core.netdev_max_backlog` (1000 queued), and after 9 lost probes
    /// the kernel drops the connection.
    #[arg(long, default_value_t = 0)]
    ping_s: u64,
    /// Hold the last step this many seconds, then measure again (does idle memory creep?).
    #[arg(long, default_value_t = 0)]
    hold_s: u64,
    /// Gateway binary to start (default: `herald-gateway` next to this binary).
    #[arg(long)]
    gateway_bin: Option<String>,
    /// Extra arguments for the started gateways.
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
    /// Write each started gateway's stderr (its log) to DIR/gateway-K.log instead of discarding it.
    #[arg(long)]
    gateway_log_dir: Option<std::path::PathBuf>,
    /// Write the report as JSON here (and the memory chart next to it, as SVG).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Connect over TLS (`wss`): the started gateway gets `--tls-listen` and a self-signed
    /// ECDSA P-256 certificate (one gateway process only).
    #[arg(long, conflicts_with = "ws")]
    tls: bool,
}

/// One gateway process at one step.
#[derive(Debug, Clone, Serialize)]
struct ProcessFigures {
    pid: u32,
    /// Its `herald_connections` gauge.
    connections: Option<f64>,
    rss_bytes: u64,
    heap_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
struct Step {
    /// Connections the holders opened.
    connections: usize,
    /// Connections the gateways count (`herald_connections`, summed); the per-connection figures
    /// divide by this.
    gateway_connections: Option<f64>,
    /// Summed over the gateway processes.
    rss_bytes: u64,
    heap_bytes: Option<u64>,
    rss_per_conn: f64,
    heap_per_conn: Option<f64>,
    /// Growth since the previous step ÷ connections added: the cost of one more connection,
    /// free of the processes' fixed costs (first step: none).
    marginal_rss_per_conn: Option<f64>,
    marginal_heap_per_conn: Option<f64>,
    /// Machine-wide `Slab` growth per connection (both ends of each loopback connection).
    kernel_slab_per_conn: f64,
    /// Machine-wide TCP sockets in use and TCP buffer pages (`/proc/net/sockstat`).
    tcp_inuse: Option<u64>,
    tcp_mem_pages: Option<u64>,
    connect_seconds: f64,
    processes: Vec<ProcessFigures>,
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
struct Report {
    gateway_processes: usize,
    namespaces: u64,
    subs_per_conn: u64,
    baseline_rss_bytes: u64,
    baseline_heap_bytes: Option<u64>,
    steps: Vec<Step>,
    /// The last step measured again after `--hold-s`.
    after_hold: Option<Step>,
}

/// The gateways under test and what every holder needs to reach them.
struct Target {
    gateways: Vec<Gateway>,
    /// Where the holders connect (the `wss` listener with `--tls`).
    ws: SocketAddr,
    token: String,
    /// With `--tls`: the certificate the holders trust.
    tls_ca: Option<std::path::PathBuf>,
}

/// A baseline to subtract.
struct Baseline {
    rss: u64,
    heap: Option<u64>,
    slab: u64,
}

pub(crate) fn run(args: &IdleArgs) -> anyhow::Result<()> {
    crate::reaper::install()?;
    let dir = std::env::temp_dir().join(format!("herald-idle-{}", std::process::id()));
    crate::reaper::register_dir(&dir);
    let result = idle(args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn start_target(args: &IdleArgs, dir: &std::path::Path) -> anyhow::Result<Target> {
    if let (Some(ws), Some(admin), Some(pid), Some(token)) =
        (args.ws, args.admin, args.pid, &args.token)
    {
        return Ok(Target {
            gateways: vec![Gateway::attach(ws, admin, pid, token.clone())],
            ws,
            token: token.clone(),
            tls_ca: None,
        });
    }
    let bin = args.gateway_bin.clone().unwrap_or_else(sibling_gateway);
    let mut extra = vec!["--heartbeat-ms".to_owned(), "900000".to_owned()];
    if args.tls && args.gateway_processes > 1 {
        anyhow::bail!("--tls runs one gateway process (--gateway-processes 1)");
    }
    if args.gateway_processes <= 1 {
        let mut tls_ca = None;
        if args.tls {
            let (cert, key) = crate::gateway::gen_cert(&bin, &dir.join("tls"), false)?;
            extra.extend(["--tls-listen".into(), "127.0.0.1:0".into()]);
            extra.extend(["--tls-cert".into(), cert.display().to_string()]);
            extra.extend(["--tls-key".into(), key.display().to_string()]);
            tls_ca = Some(cert);
        }
        extra.extend(args.gateway_arg.iter().cloned());
        let gw = start_gateway(args, &bin, &dir.join("data"), &extra, 0)?;
        let ws = match tls_ca {
            Some(_) => gw
                .wss
                .ok_or_else(|| anyhow::anyhow!("the gateway has no wss listener"))?,
            None => gw.ws,
        };
        let token = gw.token.clone();
        return Ok(Target {
            gateways: vec![gw],
            ws,
            token,
            tls_ca,
        });
    }
    let key = SharedKey::generate(&bin, &dir.join("key"))?;
    let port = free_port()?;
    extra.extend(["--listen".to_owned(), format!("127.0.0.1:{port}")]);
    extra.extend(key.gateway_args());
    extra.extend(args.gateway_arg.iter().cloned());
    let mut gateways = Vec::new();
    for k in 0..args.gateway_processes {
        gateways.push(start_gateway(
            args,
            &bin,
            &dir.join(format!("data-{k}")),
            &extra,
            k,
        )?);
    }
    Ok(Target {
        gateways,
        ws: SocketAddr::from(([127, 0, 0, 1], port)),
        token: key.token,
        tls_ca: None,
    })
}

/// Starts gateway `k` like `Gateway::start`, its stderr to `--gateway-log-dir`/gateway-`k`.log
/// if given.
fn start_gateway(
    args: &IdleArgs,
    bin: &str,
    data_dir: &std::path::Path,
    extra: &[String],
    k: usize,
) -> anyhow::Result<Gateway> {
    let Some(dir) = &args.gateway_log_dir else {
        return Gateway::start(bin, data_dir, extra);
    };
    let mut all = vec![
        "--journal-no-sync".to_owned(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ];
    all.extend(extra.iter().cloned());
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(dir.join(format!("gateway-{k}.log")))?;
    Gateway::start_with(bin, &all, log.into())
}

fn idle(args: &IdleArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let bars = Bars::new();
    let target = start_target(args, dir)?;
    bars.sleep(Duration::from_secs(1), "settling");
    let base = Baseline {
        rss: sum(target.gateways.iter().map(|g| procfs::rss_bytes(g.pid)))?,
        heap: target.gateways.iter().map(heap).sum(),
        slab: procfs::slab_bytes()?,
    };
    bars.println(&format!(
        "{} gateway process(es) (pids {}) on {}: baseline RSS {:.1} MiB, heap {}",
        target.gateways.len(),
        target
            .gateways
            .iter()
            .map(|g| g.pid.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        target.ws,
        mib(base.rss),
        base.heap
            .map_or("n/a".into(), |h| format!("{:.1} MiB", mib(h)))
    ));
    let mut holders: Vec<Child> = Vec::new();
    let mut held = 0;
    let mut report = Report {
        gateway_processes: target.gateways.len(),
        namespaces: args.namespaces,
        subs_per_conn: args.subs_per_conn,
        baseline_rss_bytes: base.rss,
        baseline_heap_bytes: base.heap,
        steps: Vec::new(),
        after_hold: None,
    };
    let result = (|| -> anyhow::Result<()> {
        for &step in &args.steps {
            let started = Instant::now();
            let bar = bars.bar(step as u64, "connecting");
            bar.set_position(held as u64);
            let watch = MetricWatch::start(
                target
                    .gateways
                    .iter()
                    .map(|g| Gateway::attach(g.ws, g.admin, g.pid, String::new()))
                    .collect(),
                bar.clone(),
            );
            while held < step {
                let count = (step - held).min(args.per_process.max(1));
                // Each holder binds its own source address: 127.0.0.2, 127.0.0.3, …
                let source = format!("127.0.0.{}", 2 + holders.len());
                holders.push(spawn_holder(args, &target, &source, count, held)?);
                held += count;
            }
            drop(watch);
            bar.finish_and_clear();
            let connect_seconds = started.elapsed().as_secs_f64();
            bars.sleep(Duration::from_secs(2), "settling");
            let mut s = measure(&target, &base, held, connect_seconds)?;
            if let Some(prev) = report.steps.last() {
                let count = |st: &Step| st.gateway_connections.unwrap_or(st.connections as f64);
                let added = (count(&s) - count(prev)).max(1.0);
                let grow = |now: u64, then: u64| (now as f64 - then as f64) / added;
                s.marginal_rss_per_conn = Some(grow(s.rss_bytes, prev.rss_bytes));
                s.marginal_heap_per_conn = s
                    .heap_bytes
                    .zip(prev.heap_bytes)
                    .map(|(now, then)| grow(now, then));
            }
            bars.println(&line(&s));
            report.steps.push(s);
        }
        if args.hold_s > 0 && held > 0 {
            bars.sleep(Duration::from_secs(args.hold_s), "holding");
            let s = measure(&target, &base, held, 0.0)?;
            bars.println(&format!("after holding {} s: {}", args.hold_s, line(&s)));
            report.after_hold = Some(s);
        }
        Ok(())
    })();
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
        crate::reaper::unregister(h.id());
    }
    result?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("report written to {}", path.display());
        for chart in crate::chart::write_charts(path)? {
            println!("chart written to {}", chart.display());
        }
    }
    drop(target);
    Ok(())
}

fn measure(
    target: &Target,
    base: &Baseline,
    held: usize,
    connect_seconds: f64,
) -> anyhow::Result<Step> {
    let mut processes = Vec::new();
    for g in &target.gateways {
        processes.push(ProcessFigures {
            pid: g.pid,
            connections: g.metric("herald_connections").ok().flatten(),
            rss_bytes: procfs::rss_bytes(g.pid)?,
            heap_bytes: heap(g),
        });
    }
    // The gateways' own count, when they report it: connections they closed (or never got)
    // must not dilute the figure.
    let counted: Option<f64> = processes.iter().map(|p| p.connections).sum();
    let denominator = counted.map_or(held as f64, |c| c.max(1.0));
    let rss: u64 = processes.iter().map(|p| p.rss_bytes).sum();
    let heap_now: Option<u64> = processes.iter().map(|p| p.heap_bytes).sum();
    let slab = procfs::slab_bytes()?;
    let per = |now: u64, base: u64| now.saturating_sub(base) as f64 / denominator;
    let (tcp_inuse, tcp_mem_pages) = crate::procfs::sockstat_tcp();
    Ok(Step {
        connections: held,
        gateway_connections: counted,
        rss_bytes: rss,
        heap_bytes: heap_now,
        rss_per_conn: per(rss, base.rss),
        heap_per_conn: heap_now.zip(base.heap).map(|(h, b)| per(h, b)),
        marginal_rss_per_conn: None,
        marginal_heap_per_conn: None,
        kernel_slab_per_conn: per(slab, base.slab),
        tcp_inuse,
        tcp_mem_pages,
        connect_seconds,
        processes,
    })
}

fn line(s: &Step) -> String {
    let spread = if s.processes.len() > 1 {
        format!(
            " [per process: {}]",
            s.processes
                .iter()
                .map(|p| p.connections.map_or("?".into(), |c| format!("{c:.0}")))
                .collect::<Vec<_>>()
                .join("/")
        )
    } else {
        String::new()
    };
    let lost = match s.gateway_connections {
        Some(c) if (c as usize) < s.connections => format!(
            " (the gateways hold only {c:.0}: the rest were closed; the figures divide by {c:.0})"
        ),
        _ => String::new(),
    };
    let marginal = match (s.marginal_rss_per_conn, s.marginal_heap_per_conn) {
        (Some(r), h) => format!(
            "; since the previous step {r:.0} B RSS, {} B heap per added conn",
            h.map_or("n/a".into(), |h| format!("{h:.0}"))
        ),
        _ => String::new(),
    };
    format!(
        "{:>7} conns{lost}: gateway RSS {:>7.1} MiB = {:>6.0} B/conn; heap {:>6} B/conn; kernel slab ~{:>5.0} B/conn (machine-wide){marginal}; connected in {:.1} s{spread}",
        s.connections,
        mib(s.rss_bytes),
        s.rss_per_conn,
        s.heap_per_conn.map_or("n/a".into(), |h| format!("{h:.0}")),
        s.kernel_slab_per_conn,
        s.connect_seconds
    )
}

fn sum(values: impl Iterator<Item = anyhow::Result<u64>>) -> anyhow::Result<u64> {
    values.sum()
}

fn spawn_holder(
    args: &IdleArgs,
    target: &Target,
    source: &str,
    count: usize,
    first: usize,
) -> anyhow::Result<Child> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("hold");
    if let Some(ca) = &target.tls_ca {
        // The holders connect to the `wss` listener and trust its certificate.
        cmd.arg("--tls-ca").arg(ca);
    }
    cmd.args([
        "--ws",
        &target.ws.to_string(),
        "--token",
        &target.token,
        "--source",
        source,
    ])
    .args(["--count", &count.to_string(), "--first", &first.to_string()])
    .args([
        "--namespaces",
        &args.namespaces.to_string(),
        "--subs-per-conn",
        &args.subs_per_conn.to_string(),
        "--rate",
        &args.connect_rate.to_string(),
        "--ping-s",
        &args.ping_s.to_string(),
    ]);
    crate::reaper::spawn_ready(&mut cmd, "holder")
}

/// Shows the summed `herald_connections` of some gateways on a progress bar, from a thread,
/// until dropped.
pub(crate) struct MetricWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricWatch {
    pub(crate) fn start(gateways: Vec<Gateway>, bar: indicatif::ProgressBar) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let n: f64 = gateways
                    .iter()
                    .filter_map(|g| g.metric("herald_connections").ok().flatten())
                    .sum();
                bar.set_position(n as u64);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        MetricWatch {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for MetricWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
