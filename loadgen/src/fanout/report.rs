//! The figures of a run, as written to `--json`, and the nats ÷ standalone comparison.

use super::PathKind;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency (or call time) quantiles, µs.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Quantiles {
    pub(super) count: u64,
    pub(super) p50: u64,
    pub(super) p90: u64,
    pub(super) p99: u64,
    pub(super) p999: u64,
    pub(super) max: u64,
    pub(super) mean: f64,
}

impl Quantiles {
    pub(super) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Quantiles::default();
        }
        Quantiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// CPU of one process over a phase's measured window.
#[derive(Debug, Clone, Serialize)]
pub(super) struct CpuFigure {
    pub(super) process: String,
    pub(super) pid: u32,
    pub(super) cpu_seconds: f64,
    pub(super) per_1m_deliveries: f64,
}

/// One phase (paced or burst) of one path.
#[derive(Debug, Clone, Serialize)]
pub(super) struct PhaseReport {
    pub(super) phase: &'static str,
    /// Changes published (one `(ns, sjid)` each).
    pub(super) publishes: u64,
    /// Publish calls (HTTP requests / `Publisher::publish` calls).
    pub(super) publish_calls: u64,
    pub(super) publish_seconds: f64,
    pub(super) publishes_per_s: f64,
    /// Time of one publish call (request → 202, or every JetStream ack of the batch), µs.
    pub(super) publish_call_us: Quantiles,
    /// Publishes × subscribers of their namespace.
    pub(super) expected_deliveries: u64,
    /// `(ns, sjid)` pairs received in CHANGED frames.
    pub(super) delivered: u64,
    /// Publishes a connection got folded into a later SJID's CHANGED (allowed).
    pub(super) coalesced: u64,
    /// Publishes of connections that never got their namespace's last SJID (must be 0).
    pub(super) missing: u64,
    pub(super) stale_connections: u64,
    /// Deliveries beyond the publishes, non-increasing SJIDs, foreign namespaces (all must be 0).
    pub(super) extra: u64,
    pub(super) non_increasing: u64,
    pub(super) foreign: u64,
    pub(super) resets: u64,
    pub(super) goaways: u64,
    pub(super) closed_connections: u64,
    /// Every connection got its namespace's last SJID within the settle timeout.
    pub(super) complete: bool,
    /// From the last publish until every connection had its last SJID (or the timeout).
    pub(super) settle_seconds: f64,
    /// Publishes and deliveries in the measured window (paced: after the warm-up).
    pub(super) measured_publishes: u64,
    pub(super) measured_expected: u64,
    pub(super) measured_deliveries: u64,
    /// Measured window: start of measuring → last delivery.
    pub(super) window_seconds: f64,
    pub(super) deliveries_per_s: f64,
    /// publish→CHANGED of the measured deliveries, µs.
    pub(super) latency_us: Quantiles,
    /// The same as an HdrHistogram (V2, base64), for the latency CDF chart.
    pub(super) latency_hist: String,
    /// Per server process, over the measured window.
    pub(super) cpu: Vec<CpuFigure>,
    /// Sum over the server processes, CPU-seconds per 1M measured deliveries.
    pub(super) server_cpu_per_1m: f64,
    /// The load generator's own CPU in the window (receivers, and this process).
    pub(super) receivers_cpu_seconds: f64,
    pub(super) loadgen_cpu_seconds: f64,
    pub(super) errors: Vec<String>,
}

/// One path.
#[derive(Debug, Clone, Serialize)]
pub(super) struct PathReport {
    pub(super) path: PathKind,
    pub(super) description: String,
    pub(super) connections: usize,
    pub(super) namespaces: u64,
    pub(super) subscribers_per_namespace: f64,
    pub(super) receiver_processes: usize,
    pub(super) connect_seconds: f64,
    /// Load average (1, 5, 15 min) when the path started.
    pub(super) loadavg_start: String,
    /// The process that holds the client connections: `herald-gateway`, `nats-server`, `node`.
    pub(super) server: String,
    /// Its version, when known (peers).
    pub(super) server_version: Option<String>,
    /// Its RSS before the connections were opened.
    pub(super) server_rss_before_bytes: u64,
    /// User-space memory per idle connection: (RSS once every connection is subscribed and idle
    /// − RSS before) ÷ connections, bytes.
    pub(super) rss_per_connection: f64,
    /// RSS of the process holding the connections (the gateway; the peer server on peer paths)
    /// once every connection is subscribed and idle, and at the end.
    pub(super) gateway_rss_bytes: u64,
    pub(super) gateway_rss_end_bytes: u64,
    /// Gateway counters at the end (`/metrics`).
    pub(super) gateway_notifications_sent: Option<f64>,
    pub(super) gateway_slow_consumers: Option<f64>,
    /// Partition resyncs of a distributed gateway: once every connection was subscribed, and
    /// at the end (resyncs in between mean a numbered stream had a gap during measuring).
    pub(super) gateway_upstream_resyncs_at_start: Option<f64>,
    pub(super) gateway_upstream_resyncs: Option<f64>,
    pub(super) phases: Vec<PhaseReport>,
}

/// nats path ÷ standalone path.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Comparison {
    pub(super) phase: &'static str,
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) p999: f64,
    pub(super) deliveries_per_s: f64,
    pub(super) server_cpu_per_1m: f64,
    pub(super) gateway_cpu_per_1m: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct RunReport {
    pub(super) started_unix_s: u64,
    pub(super) build: &'static str,
    pub(super) cpus: usize,
    pub(super) loadavg_start: String,
    pub(super) loadavg_end: String,
    pub(super) conns: usize,
    pub(super) namespaces: u64,
    pub(super) rate: u64,
    pub(super) seconds: u64,
    pub(super) warmup_s: f64,
    pub(super) burst: u64,
    pub(super) burst_batch: u64,
    pub(super) coalesce_us: u64,
    pub(super) partitions: u64,
    pub(super) journal_sync: bool,
    pub(super) paths: Vec<PathReport>,
    pub(super) comparison: Vec<Comparison>,
}

pub(super) fn compare(paths: &[PathReport]) -> Vec<Comparison> {
    let find = |kind| paths.iter().find(|p| p.path == kind);
    let (Some(s), Some(n)) = (find(PathKind::Standalone), find(PathKind::Nats)) else {
        return Vec::new();
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let gateway_cpu = |ph: &PhaseReport| {
        ph.cpu
            .iter()
            .find(|c| c.process == "gateway")
            .map_or(0.0, |c| c.per_1m_deliveries)
    };
    s.phases
        .iter()
        .filter_map(|sp| {
            let np = n.phases.iter().find(|p| p.phase == sp.phase)?;
            Some(Comparison {
                phase: sp.phase,
                p50: ratio(np.latency_us.p50 as f64, sp.latency_us.p50 as f64),
                p99: ratio(np.latency_us.p99 as f64, sp.latency_us.p99 as f64),
                p999: ratio(np.latency_us.p999 as f64, sp.latency_us.p999 as f64),
                deliveries_per_s: ratio(np.deliveries_per_s, sp.deliveries_per_s),
                server_cpu_per_1m: ratio(np.server_cpu_per_1m, sp.server_cpu_per_1m),
                gateway_cpu_per_1m: ratio(gateway_cpu(np), gateway_cpu(sp)),
            })
        })
        .collect()
}
