//! The tables printed after each path.

use super::report::PathReport;

pub(super) fn print_path(p: &PathReport) {
    let gateway_counters = if p.server == "herald-gateway" {
        format!(
            "; gateway sent {} notifications, {} slow consumers",
            p.gateway_notifications_sent
                .map_or("?".into(), |v| format!("{v:.0}")),
            p.gateway_slow_consumers
                .map_or("?".into(), |v| format!("{v:.0}"))
        )
    } else {
        String::new()
    };
    println!(
        "  {} connections, {} namespaces × {:.1} subscribers; {} RSS {:.1} MiB idle ({:.0} B per \
         connection) → {:.1} MiB at the end{gateway_counters}{}",
        p.connections,
        p.namespaces,
        p.subscribers_per_namespace,
        p.server,
        mib(p.gateway_rss_bytes),
        p.rss_per_connection,
        mib(p.gateway_rss_end_bytes),
        p.gateway_upstream_resyncs
            .zip(p.gateway_upstream_resyncs_at_start)
            .map_or(String::new(), |(end, start)| format!(
                ", {start:.0} upstream resyncs by the end of connecting, {:.0} while measuring",
                end - start
            ))
    );
    println!(
        "  {:<6} {:>9} {:>8} {:>10} {:>10} {:>7} {:>9} {:>12} {:>7} {:>7} {:>7} {:>7} {:>8}",
        "phase",
        "publishes",
        "pub/s",
        "expected",
        "delivered",
        "missing",
        "coalesced",
        "deliveries/s",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max µs"
    );
    for ph in &p.phases {
        let l = &ph.latency_us;
        println!(
            "  {:<6} {:>9} {:>8.0} {:>10} {:>10} {:>7} {:>9} {:>12.0} {:>7} {:>7} {:>7} {:>7} {:>8}",
            ph.phase,
            ph.publishes,
            ph.publishes_per_s,
            ph.expected_deliveries,
            ph.delivered,
            ph.missing,
            ph.coalesced,
            ph.deliveries_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
    }
    for ph in &p.phases {
        let per: Vec<String> = ph
            .cpu
            .iter()
            .map(|c| format!("{} {:.2}", c.process, c.per_1m_deliveries))
            .collect();
        println!(
            "  {} CPU-s per 1M deliveries: {} = {:.2} server total ({} measured deliveries in {:.2} s; \
             receivers used {:.1} CPU-s, publisher {:.1}; publish call p50 {} µs, p99 {} µs)",
            ph.phase,
            per.join(", "),
            ph.server_cpu_per_1m,
            ph.measured_deliveries,
            ph.window_seconds,
            ph.receivers_cpu_seconds,
            ph.loadgen_cpu_seconds,
            ph.publish_call_us.p50,
            ph.publish_call_us.p99
        );
        let wrong = ph.extra + ph.non_increasing + ph.foreign + ph.resets + ph.goaways;
        if !ph.complete || ph.missing > 0 || ph.closed_connections > 0 || wrong > 0 {
            println!(
                "  {} PROBLEMS: complete={}, missing={} ({} stale connections), closed={}, extra={}, \
                 non-increasing={}, foreign={}, resets={}, goaways={}; first errors: {:?}",
                ph.phase,
                ph.complete,
                ph.missing,
                ph.stale_connections,
                ph.closed_connections,
                ph.extra,
                ph.non_increasing,
                ph.foreign,
                ph.resets,
                ph.goaways,
                ph.errors
            );
        }
    }
}

pub(super) fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}
