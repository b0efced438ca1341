//! The phases of one path (paced, burst) and the merge of the receivers' reports into a
//! phase's figures.

use super::FanoutArgs;
use super::publish::Publish;
use super::receiver::Receivers;
use super::report::{CpuFigure, PhaseReport, Quantiles};
use crate::procfs;
use crate::receive::{self, Progress, Report as ReceiverReport, Target, now_us};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// CPU seconds of the server processes, the receivers and this process, at one instant.
struct CpuSnapshot {
    servers: Vec<f64>,
    receivers: f64,
    loadgen: f64,
}

/// What a phase needs.
pub(super) struct Bench<'a> {
    args: &'a FanoutArgs,
    servers: Vec<(String, u32)>,
    pub(super) receivers: Receivers,
    publisher: Publish,
    subscribers: Vec<u64>,
    /// Highest SJID published so far (SJIDs are strictly increasing over the whole path).
    last_sjid: u64,
    /// Next namespace of the round robin.
    next_ns: u64,
}

/// What a phase's publishing loop produced.
struct Published {
    target: Target,
    publishes: u64,
    calls: u64,
    call_us: Histogram<u64>,
    expected: u64,
    measured_publishes: u64,
    measured_expected: u64,
    seconds: f64,
}

impl Published {
    fn new(namespaces: u64) -> Self {
        Published {
            target: Target {
                last: vec![0; namespaces as usize],
                count: vec![0; namespaces as usize],
            },
            publishes: 0,
            calls: 0,
            call_us: receive::new_histogram(),
            expected: 0,
            measured_publishes: 0,
            measured_expected: 0,
            seconds: 0.0,
        }
    }
}

impl<'a> Bench<'a> {
    /// A path's bench, once its servers are up and its receivers subscribed.
    pub(super) fn new(
        args: &'a FanoutArgs,
        servers: Vec<(String, u32)>,
        receivers: Receivers,
        publisher: Publish,
    ) -> Self {
        Bench {
            args,
            servers,
            receivers,
            publisher,
            subscribers: subscribers_per_namespace(args.conns, args.namespaces),
            last_sjid: 0,
            next_ns: 0,
        }
    }

    fn cpu(&self) -> anyhow::Result<CpuSnapshot> {
        Ok(CpuSnapshot {
            servers: self
                .servers
                .iter()
                .map(|(_, pid)| procfs::cpu_seconds(*pid))
                .collect::<anyhow::Result<_>>()?,
            receivers: self
                .receivers
                .0
                .iter()
                .map(|r| procfs::cpu_seconds(r.pid).unwrap_or(0.0))
                .sum(),
            loadgen: procfs::cpu_seconds(std::process::id())?,
        })
    }

    /// The next SJID: the wall clock in µs, strictly above the last one.
    fn sjid(&mut self) -> u64 {
        self.last_sjid = now_us().max(self.last_sjid + 1);
        self.last_sjid
    }

    fn next_ns(&mut self) -> u64 {
        let ns = self.next_ns % self.args.namespaces;
        self.next_ns += 1;
        ns
    }

    /// Publishes `changes` and books them; `measured` says whether they count in the window.
    async fn publish(
        &mut self,
        changes: &[(u64, u64)],
        measured: bool,
        out: &mut Published,
    ) -> anyhow::Result<()> {
        let t = Instant::now();
        self.publisher.publish(changes).await?;
        out.call_us
            .saturating_record(t.elapsed().as_micros() as u64);
        out.calls += 1;
        for &(ns, sjid) in changes {
            let subs = self.subscribers[ns as usize];
            out.target.last[ns as usize] = sjid;
            out.target.count[ns as usize] += 1;
            out.publishes += 1;
            out.expected += subs;
            if measured {
                out.measured_publishes += 1;
                out.measured_expected += subs;
            }
        }
        Ok(())
    }

    /// `--rate` publishes a second, one namespace each, for the warm-up and `--seconds`.
    pub(super) async fn paced(&mut self) -> anyhow::Result<PhaseReport> {
        let args = self.args;
        let period = Duration::from_secs_f64(1.0 / args.rate as f64);
        let warm = (args.warmup_s * args.rate as f64).round() as u64;
        let total = warm + args.seconds * args.rate;
        let lead = Duration::from_millis(200);
        let start = Instant::now() + lead;
        // Deliveries of SJIDs from here on are measured: the scheduled time of the first
        // publish after the warm-up, on the wall clock.
        let from_us = now_us() + (lead + period * warm as u32).as_micros() as u64;
        self.receivers.all(&format!("phase {from_us}"))?;
        let mut out = Published::new(args.namespaces);
        let mut cpu0 = None;
        println!(
            "  paced: {total} publishes at {}/s ({} s warm-up)…",
            args.rate, args.warmup_s
        );
        for i in 0..total {
            tokio::time::sleep_until((start + period * i as u32).into()).await;
            let sjid = self.sjid();
            let measured = sjid >= from_us;
            if measured && cpu0.is_none() {
                cpu0 = Some(self.cpu()?);
            }
            let ns = self.next_ns();
            self.publish(&[(ns, sjid)], measured, &mut out).await?;
        }
        out.seconds = start.elapsed().as_secs_f64();
        let cpu0 = match cpu0 {
            Some(c) => c,
            None => self.cpu()?,
        };
        self.finish("paced", from_us, cpu0, out).await
    }

    /// `--burst` changes, in batches of distinct namespaces, as fast as the path takes them.
    pub(super) async fn burst(&mut self) -> anyhow::Result<PhaseReport> {
        let args = self.args;
        let batch = args.burst_batch.clamp(1, args.namespaces);
        let from_us = now_us();
        self.receivers.all(&format!("phase {from_us}"))?;
        println!("  burst: {} changes in batches of {batch}…", args.burst);
        let mut out = Published::new(args.namespaces);
        let cpu0 = self.cpu()?;
        let start = Instant::now();
        let mut sent = 0;
        while sent < args.burst {
            let n = batch.min(args.burst - sent);
            let sjid = self.sjid();
            let changes: Vec<(u64, u64)> = (0..n).map(|_| (self.next_ns(), sjid)).collect();
            self.publish(&changes, true, &mut out).await?;
            sent += n;
        }
        out.seconds = start.elapsed().as_secs_f64();
        self.finish("burst", from_us, cpu0, out).await
    }

    /// Waits for every connection to reach its namespace's last SJID (or the settle timeout),
    /// collects the receivers' reports and turns them into figures.
    async fn finish(
        &mut self,
        phase: &'static str,
        from_us: u64,
        cpu0: CpuSnapshot,
        out: Published,
    ) -> anyhow::Result<PhaseReport> {
        let published_at = Instant::now();
        self.receivers
            .all(&format!("target {}", serde_json::to_string(&out.target)?))?;
        let settle = Duration::from_secs(self.args.settle_timeout_s);
        let mut complete = false;
        let mut last_progress = Progress::default();
        while published_at.elapsed() < settle {
            last_progress = self.receivers.progress()?;
            if last_progress.pending == 0 {
                complete = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let settle_seconds = published_at.elapsed().as_secs_f64();
        let cpu1 = self.cpu()?;
        if !complete {
            eprintln!(
                "  warning: {} connections still lack their last SJID after {settle:?} ({} deliveries of {})",
                last_progress.pending, last_progress.delivered, out.expected
            );
        }
        let reports = self.receivers.reports()?;

        let mut latency = receive::new_histogram();
        let mut first_recv_us = u64::MAX;
        let mut last_recv_us = 0;
        let mut sum = ReceiverReport::default();
        let mut errors = Vec::new();
        for r in &reports {
            latency.add(receive::decode_histogram(&r.hist_measured)?)?;
            if r.first_recv_us > 0 {
                first_recv_us = first_recv_us.min(r.first_recv_us);
            }
            last_recv_us = last_recv_us.max(r.last_recv_us);
            sum.delivered += r.delivered;
            sum.measured += r.measured;
            sum.coalesced += r.coalesced;
            sum.missing += r.missing;
            sum.stale_connections += r.stale_connections;
            sum.extra += r.extra;
            sum.non_increasing += r.non_increasing;
            sum.foreign += r.foreign;
            sum.resets += r.resets;
            sum.goaways += r.goaways;
            sum.closed += r.closed;
            errors.extend(r.errors.iter().cloned());
        }
        let window_seconds = (last_recv_us.saturating_sub(from_us)) as f64 / 1e6;
        let measured = sum.measured;
        let per_1m = |cpu: f64| {
            if measured == 0 {
                0.0
            } else {
                cpu / measured as f64 * 1e6
            }
        };
        let cpu: Vec<CpuFigure> = self
            .servers
            .iter()
            .zip(cpu0.servers.iter().zip(&cpu1.servers))
            .map(|((name, pid), (a, b))| CpuFigure {
                process: name.clone(),
                pid: *pid,
                cpu_seconds: b - a,
                per_1m_deliveries: per_1m(b - a),
            })
            .collect();
        let server_cpu_per_1m = cpu.iter().map(|c| c.per_1m_deliveries).sum();
        Ok(PhaseReport {
            phase,
            publishes: out.publishes,
            publish_calls: out.calls,
            publish_seconds: out.seconds,
            publishes_per_s: out.publishes as f64 / out.seconds.max(1e-9),
            publish_call_us: Quantiles::of(&out.call_us),
            expected_deliveries: out.expected,
            delivered: sum.delivered,
            coalesced: sum.coalesced,
            missing: sum.missing,
            stale_connections: sum.stale_connections,
            extra: sum.extra,
            non_increasing: sum.non_increasing,
            foreign: sum.foreign,
            resets: sum.resets,
            goaways: sum.goaways,
            closed_connections: sum.closed,
            complete,
            settle_seconds,
            measured_publishes: out.measured_publishes,
            measured_expected: out.measured_expected,
            measured_deliveries: measured,
            window_seconds,
            deliveries_per_s: measured as f64 / window_seconds.max(1e-9),
            latency_us: Quantiles::of(&latency),
            latency_hist: crate::receive::encode_histogram(&latency)?,
            cpu,
            server_cpu_per_1m,
            receivers_cpu_seconds: cpu1.receivers - cpu0.receivers,
            loadgen_cpu_seconds: cpu1.loadgen - cpu0.loadgen,
            errors,
        })
    }
}

/// Subscribers of each namespace: connection i subscribes to i % namespaces.
fn subscribers_per_namespace(conns: usize, namespaces: u64) -> Vec<u64> {
    let conns = conns as u64;
    (0..namespaces)
        .map(|ns| conns / namespaces + u64::from(ns < conns % namespaces))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_spread_evenly() {
        assert_eq!(subscribers_per_namespace(15, 5), vec![3; 5]);
        assert_eq!(subscribers_per_namespace(7, 3), vec![3, 2, 2]);
        assert_eq!(subscribers_per_namespace(2, 4), vec![1, 1, 0, 0]);
    }
}
