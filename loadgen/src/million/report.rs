//! What `million` reports: the measured steps, the broadcast, the storm and the rolling
//! restart (the JSON report's shapes), the kernel counters that name a limit, and the line printed
//! per step.

use crate::gateway::mib;
use serde::Serialize;

/// One measured step.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Step {
    /// Connections assigned to holders, and subscribed (the holders' count).
    pub(super) target: u64,
    pub(super) subscribed: u64,
    /// The gateways' own count (`herald_connections`, summed).
    pub(super) gateway_connections: f64,
    /// Seconds from the start of this step to every connection subscribed; its rate.
    pub(super) step_seconds: f64,
    pub(super) connects_per_second: f64,
    pub(super) gateway_rss_bytes: u64,
    pub(super) gateway_rss_per_conn: f64,
    /// RSS growth since the previous step ÷ connections added.
    pub(super) gateway_rss_per_added_conn: Option<f64>,
    pub(super) gateway_heap_bytes: Option<u64>,
    /// Heap growth over the baseline ÷ connections, and since the previous step ÷ added.
    pub(super) gateway_heap_per_conn: Option<f64>,
    pub(super) gateway_heap_per_added_conn: Option<f64>,
    /// Connections per gateway process: fewest and most.
    pub(super) gateway_min_conns: f64,
    pub(super) gateway_max_conns: f64,
    /// Machine-wide `Slab` growth since the baseline ÷ sockets (two per connection).
    pub(super) kernel_slab_bytes: u64,
    pub(super) kernel_slab_per_socket: f64,
    pub(super) tcp_sockets_in_use: Option<u64>,
    pub(super) nats_rss_bytes: u64,
    pub(super) nats_varz_mem_bytes: Option<u64>,
    pub(super) nats_subscriptions: Option<u64>,
    pub(super) relay_rss_bytes: u64,
    /// Holders' RSS (counts their shared binary pages once per process) and anonymous memory
    /// (their own allocations), the latter per connection and per added connection.
    pub(super) holder_rss_bytes: u64,
    pub(super) holder_anon_bytes: u64,
    pub(super) holder_anon_per_conn: f64,
    pub(super) holder_anon_per_added_conn: Option<f64>,
    /// Failed attempts and 503s so far (the holders retry them).
    pub(super) failed_attempts: u64,
    pub(super) http_503: u64,
    pub(super) dropped: u64,
    /// Machine-wide kernel counters: open files (`fs/file-nr`), and from /proc/net/netstat
    /// ListenOverflows, ListenDrops, TCPAbortOnTimeout, TCPKeepAlive (cumulative since boot).
    pub(super) kernel: KernelCounters,
    pub(super) loadavg: String,
    pub(super) unix_time: u64,
}

/// Kernel counters that name the limit a run hits.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct KernelCounters {
    pub(super) open_files: Option<u64>,
    pub(super) file_max: Option<u64>,
    pub(super) listen_overflows: Option<u64>,
    pub(super) listen_drops: Option<u64>,
    pub(super) tcp_abort_on_timeout: Option<u64>,
    pub(super) tcp_keepalive_probes: Option<u64>,
}

impl KernelCounters {
    pub(super) fn read() -> Self {
        let file_nr = std::fs::read_to_string("/proc/sys/fs/file-nr").unwrap_or_default();
        let nr: Vec<u64> = file_nr
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
        let lines: Vec<&str> = netstat.lines().collect();
        let mut tcp_ext = std::collections::HashMap::new();
        for pair in lines.chunks(2) {
            if let [names, values] = pair
                && names.starts_with("TcpExt:")
            {
                for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                    if let Ok(v) = v.parse::<u64>() {
                        tcp_ext.insert(n.to_owned(), v);
                    }
                }
            }
        }
        KernelCounters {
            open_files: nr.first().copied(),
            file_max: nr.get(2).copied(),
            listen_overflows: tcp_ext.get("ListenOverflows").copied(),
            listen_drops: tcp_ext.get("ListenDrops").copied(),
            tcp_abort_on_timeout: tcp_ext.get("TCPAbortOnTimeout").copied(),
            tcp_keepalive_probes: tcp_ext.get("TCPKeepAlive").copied(),
        }
    }
}

/// The broadcast.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Broadcast {
    pub(super) namespaces: u64,
    /// Connections subscribed when it started: every one must get the change.
    pub(super) expected: u64,
    pub(super) delivered: u64,
    pub(super) missed: u64,
    pub(super) changed_frames: u64,
    /// Publish call → JetStream acked every change.
    pub(super) publish_ack_seconds: f64,
    /// Publish call → the last connection got its CHANGED.
    pub(super) last_delivery_seconds: Option<f64>,
    pub(super) deliveries_per_second: Option<f64>,
    pub(super) server_cpu_seconds: f64,
    pub(super) cpu_seconds_per_million_deliveries: Option<f64>,
    pub(super) cpu_by_process: CpuSplit,
}

/// Server CPU-seconds over a window, by kind of process.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct CpuSplit {
    pub(super) gateways: f64,
    pub(super) relay: f64,
    pub(super) nats_server: f64,
}

/// The storm.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Storm {
    pub(super) connections: u64,
    /// SIGKILL of every gateway → every gateway ready again.
    pub(super) restart_seconds: f64,
    /// SIGKILL → every connection subscribed again (the last resubscription).
    pub(super) all_back_seconds: Option<f64>,
    /// SIGKILL → every connection got the change published while the gateways were down.
    pub(super) all_caught_up_seconds: Option<f64>,
    pub(super) sessions_after_kill: u64,
    pub(super) http_503: u64,
    pub(super) failed_attempts: u64,
    pub(super) missed: u64,
    pub(super) gateway_rss_after_bytes: u64,
    pub(super) gateway_heap_after_bytes: Option<u64>,
}

/// The rolling restart with drain.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Rolling {
    pub(super) connections: u64,
    pub(super) gateways: usize,
    pub(super) drain_s: u64,
    /// First SIGTERM → the last replacement ready.
    pub(super) restart_seconds: f64,
    /// Per gateway: SIGTERM → exited (the drain), longest.
    pub(super) max_drain_seconds: f64,
    /// First SIGTERM → every connection subscribed again and caught up (after the last
    /// replacement was ready).
    pub(super) all_back_seconds: Option<f64>,
    pub(super) all_caught_up_seconds: Option<f64>,
    pub(super) sessions: u64,
    pub(super) goaways: u64,
    pub(super) http_503: u64,
    pub(super) missed: u64,
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Report {
    pub(super) conns: usize,
    pub(super) namespaces: u64,
    pub(super) gateways: usize,
    pub(super) gateway_workers: usize,
    pub(super) holders: usize,
    pub(super) per_holder: usize,
    pub(super) partitions: u64,
    pub(super) nats_server: String,
    pub(super) kernel: String,
    pub(super) baseline_gateway_rss_bytes: u64,
    pub(super) baseline_gateway_heap_bytes: Option<u64>,
    pub(super) baseline_slab_bytes: u64,
    /// Kernel counters before the first connection.
    pub(super) kernel_before: KernelCounters,
    pub(super) steps: Vec<Step>,
    /// The last step measured again after --hold-secs.
    pub(super) after_hold: Option<Step>,
    pub(super) hold_secs: u64,
    /// Lowest subscribed count seen while holding.
    pub(super) hold_min_subscribed: Option<u64>,
    pub(super) broadcast: Option<Broadcast>,
    pub(super) storm: Option<Storm>,
    pub(super) rolling: Option<Rolling>,
    /// Gateway memory per connection at each step, in the shape `herald-loadgen chart` draws
    /// (`<report>.memory.svg`).
    pub(super) memory_chart: Vec<ChartPoint>,
    /// Why the ramp stopped short of --conns, with the evidence.
    pub(super) stopped: Option<String>,
    pub(super) holder_errors: Vec<String>,
}

/// One point of the memory chart.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ChartPoint {
    pub(super) connections: u64,
    pub(super) rss_per_conn: f64,
    pub(super) heap_per_conn: Option<f64>,
}

pub(super) fn line(s: &Step) -> String {
    format!(
        "{:>8} subscribed (gateways count {:.0}, {:.0}–{:.0} per process) in {:.1} s = {:.0}/s | \
         gateways RSS {:.1} MiB = {:.0} B/conn{}{}{} | slab {:.0} B/socket | nats RSS {:.1} MiB, {} subs | \
         relay RSS {:.1} MiB | holders RSS {:.1} MiB, own {:.1} MiB = {:.0} B/conn{} | {} failed attempts, {} 503, {} dropped | load {}",
        s.subscribed,
        s.gateway_connections,
        s.gateway_min_conns,
        s.gateway_max_conns,
        s.step_seconds,
        s.connects_per_second,
        mib(s.gateway_rss_bytes),
        s.gateway_rss_per_conn,
        s.gateway_rss_per_added_conn
            .map_or(String::new(), |a| format!(" ({a:.0} B per added conn)")),
        s.gateway_heap_per_conn
            .map_or(String::new(), |h| format!(", heap {h:.0} B/conn")),
        s.gateway_heap_per_added_conn
            .map_or(String::new(), |h| format!(" ({h:.0} B per added conn)")),
        s.kernel_slab_per_socket,
        mib(s.nats_rss_bytes),
        s.nats_subscriptions.map_or("?".into(), |n| n.to_string()),
        mib(s.relay_rss_bytes),
        mib(s.holder_rss_bytes),
        mib(s.holder_anon_bytes),
        s.holder_anon_per_conn,
        s.holder_anon_per_added_conn
            .map_or(String::new(), |a| format!(" ({a:.0} B per added conn)")),
        s.failed_attempts,
        s.http_503,
        s.dropped,
        s.loadavg
    )
}
