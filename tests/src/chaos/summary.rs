//! The soak's result ([`Summary`]): delays by fault kind, drift, missed changes, printed as the
//! report `ops/chaos.sh` shows.

use super::{ChaosConfig, Fault, LATE};
use std::collections::BTreeMap;
use std::time::Duration;

/// RSS and open descriptors of one process slot at the start and at the end.
#[derive(Debug, Clone)]
pub struct Drift {
    /// `n0`, `relay1`, `gateway0`, `chaos` (this process, clients included).
    pub name: String,
    /// Times the slot's process was restarted in between (then start and end are different
    /// processes).
    pub restarts: usize,
    /// `(VmRSS KiB, fds)` at the start.
    pub start: (u64, usize),
    /// `(VmRSS KiB, fds)` at the end.
    pub end: (u64, usize),
}

/// Delay figures of one category.
#[derive(Debug, Clone)]
pub struct DelayRow {
    pub category: &'static str,
    pub samples: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// What a soak found.
#[derive(Debug, Clone)]
pub struct Summary {
    pub config: ChaosConfig,
    /// Faults injected, by kind.
    pub faults: BTreeMap<Fault, usize>,
    /// The schedule as it ran: (seconds into the load, kind, target, seconds down or hung).
    pub log: Vec<String>,
    /// Changes acknowledged to the publisher.
    pub changes: usize,
    /// Publish attempts retried.
    pub publish_retries: usize,
    /// (client, change) pairs checked (delivered).
    pub deliveries: u64,
    /// (client, change) pairs never delivered.
    pub missed: u64,
    pub missed_examples: Vec<String>,
    /// Unexpected RESET / DENIED / fatal / impossible SJIDs.
    pub problems: Vec<String>,
    pub problem_count: usize,
    /// Peak of (client, ns) pairs owing a change over [`LATE`] old, in the continuous check.
    pub late_peak: usize,
    pub delays: Vec<DelayRow>,
    pub drift: Vec<Drift>,
    /// Client sessions started (WELCOMEs and first polls), GOAWAYs received.
    pub sessions: usize,
    pub goaways: usize,
    pub elapsed: Duration,
    /// Where the processes' logs were copied when the run failed.
    pub logs_kept: Option<std::path::PathBuf>,
}

impl Summary {
    /// True when nothing was missed and no problem seen.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.missed == 0 && self.problem_count == 0 && self.changes > 0
    }
}

pub(super) fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "herald chaos soak: seed {}, {} clients, {} publishes/s, load {:.0} s, wall {:.0} s",
            c.seed,
            c.clients,
            c.rate,
            c.duration.as_secs_f64(),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f)?;
        writeln!(f, "| fault | injected |")?;
        writeln!(f, "|---|---:|")?;
        for kind in Fault::ALL {
            writeln!(
                f,
                "| {} | {} |",
                kind.name(),
                self.faults.get(&kind).copied().unwrap_or(0)
            )?;
        }
        writeln!(
            f,
            "| total | {} |",
            self.faults.values().copied().sum::<usize>()
        )?;
        writeln!(f)?;
        writeln!(f, "| check | value |")?;
        writeln!(f, "|---|---:|")?;
        writeln!(f, "| changes acknowledged | {} |", self.changes)?;
        writeln!(f, "| publish retries | {} |", self.publish_retries)?;
        writeln!(
            f,
            "| (client, change) deliveries checked | {} |",
            self.deliveries
        )?;
        writeln!(f, "| missed | {} |", self.missed)?;
        writeln!(
            f,
            "| unexpected RESET/DENIED/fatal | {} |",
            self.problem_count
        )?;
        writeln!(
            f,
            "| peak (client, ns) owing a change > {} s old | {} |",
            LATE.as_secs(),
            self.late_peak
        )?;
        writeln!(f, "| client sessions started | {} |", self.sessions)?;
        writeln!(f, "| client GOAWAYs | {} |", self.goaways)?;
        writeln!(f)?;
        writeln!(
            f,
            "| changes acked in the window of | deliveries | p50 ms | p99 ms | max ms |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|")?;
        for r in &self.delays {
            writeln!(
                f,
                "| {} | {} | {} | {} | {} |",
                r.category,
                r.samples,
                ms(r.p50),
                ms(r.p99),
                ms(r.max)
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "| process | restarts | RSS start KiB | RSS end KiB | RSS drift KiB | fds start | fds end | fd drift |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for d in &self.drift {
            writeln!(
                f,
                "| {} | {} | {} | {} | {:+} | {} | {} | {:+} |",
                d.name,
                d.restarts,
                d.start.0,
                d.end.0,
                d.end.0 as i64 - d.start.0 as i64,
                d.start.1,
                d.end.1,
                d.end.1 as i64 - d.start.1 as i64
            )?;
        }
        if !self.missed_examples.is_empty() {
            writeln!(f, "\nmissed, e.g.: {:?}", self.missed_examples)?;
        }
        if !self.problems.is_empty() {
            writeln!(f, "\nproblems, e.g.: {:?}", self.problems)?;
        }
        if let Some(dir) = &self.logs_kept {
            writeln!(
                f,
                "\nlogs of the gateways and relays kept in {}",
                dir.display()
            )?;
        }
        writeln!(
            f,
            "\nresult: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}
