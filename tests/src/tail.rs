//! What the tailer suites (`tests/tail_mariadb.rs`, `tests/tail_postgres.rs`) share: a sink that
//! records what the tailer delivered, and the helpers of their benchmarks.

use herald_tail::{Change, JournalSink};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bound on one expected change: database → tailer is milliseconds; generous for a loaded CI box.
const WAIT: Duration = Duration::from_secs(20);

/// The changes the tailer delivered, in order: the test's window onto its output.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Change>>>);

impl JournalSink for Recorder {
    async fn deliver(&self, changes: Vec<Change>) -> anyhow::Result<()> {
        self.0.lock().unwrap().extend(changes);
        Ok(())
    }
}

impl Recorder {
    /// True while nothing was delivered since the last [`Recorder::take`].
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap().is_empty()
    }

    /// What was delivered since the last call, in order.
    pub fn take(&self) -> Vec<Change> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// Waits until a delivered change has `ns` at `sjid` or above.
    pub async fn until(&self, ns: u64, sjid: u64) {
        crate::eventually(
            WAIT,
            &format!("the tailer delivers ({ns}, {sjid})"),
            || async {
                self.0
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|&(n, s)| n == ns && s >= sjid)
                    .then_some(())
            },
        )
        .await;
    }
}

/// The `p` quantile (0..=1) of sorted durations.
#[must_use]
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// CPU seconds (user + system) this test process has used: an in-process tailer's cost.
#[must_use]
pub fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    // utime and stime, fields 14 and 15, counted from after the command name (field 3 = 0).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}
