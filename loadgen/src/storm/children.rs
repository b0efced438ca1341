//! The parent's side of the `storm-clients` children: spawning them (one source address each),
//! their line protocol (see [`super::clients`]), and their summed progress.

use super::StormArgs;
use super::state::StormProgress;
use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a child may take to answer one command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// One `storm-clients` child and its line protocol.
pub(super) struct Children {
    procs: Vec<(Child, ChildStdin, mpsc::Receiver<String>)>,
}

impl Children {
    /// `connect`: how the clients reach the server (`--url … --token …`, or `--protocol …
    /// --addr …`).
    pub(super) fn spawn(args: &StormArgs, connect: &[String]) -> anyhow::Result<Self> {
        let mut procs = Vec::new();
        let mut first = 0;
        while first < args.conns {
            let count = (args.conns - first).min(args.per_process.max(1));
            let source = format!("127.0.0.{}", 2 + procs.len());
            let mut child = Command::new(std::env::current_exe()?)
                .arg("storm-clients")
                .args(connect)
                .args(["--source", &source])
                .args(["--count", &count.to_string(), "--first", &first.to_string()])
                .args(["--namespaces", &args.namespaces.to_string()])
                .args(args.policy.flags())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            crate::reaper::register(child.id());
            let stdin = child
                .stdin
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
            procs.push((child, stdin, crate::lines::stdout_lines(stdout)));
            first += count;
        }
        Ok(Children { procs })
    }

    /// Waits for every child's `ready` line.
    pub(super) fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        for (i, (_, _, rx)) in self.procs.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .map_err(|_| anyhow::anyhow!("client process {i} was not ready in {limit:?}"))?;
            anyhow::ensure!(line.starts_with("ready"), "client process {i}: {line}");
        }
        Ok(())
    }

    /// Sends `cmd` to every child and returns their answers.
    pub(super) fn all(&mut self, cmd: &str) -> anyhow::Result<Vec<String>> {
        for (_, stdin, _) in &mut self.procs {
            writeln!(stdin, "{cmd}")?;
            stdin.flush()?;
        }
        self.procs
            .iter()
            .enumerate()
            .map(|(i, (_, _, rx))| {
                rx.recv_timeout(ANSWER_TIMEOUT)
                    .map_err(|_| anyhow::anyhow!("client process {i} did not answer {cmd:?}"))
            })
            .collect()
    }

    /// How many child processes there are.
    pub(super) fn count(&self) -> usize {
        self.procs.len()
    }

    /// The children's RSS, summed.
    pub(super) fn rss_bytes(&self) -> anyhow::Result<u64> {
        self.procs
            .iter()
            .map(|(c, _, _)| crate::procfs::rss_bytes(c.id()))
            .sum()
    }

    pub(super) fn progress(&mut self) -> anyhow::Result<StormProgress> {
        let mut sum = StormProgress::default();
        for line in self.all("progress")? {
            let p: StormProgress = serde_json::from_str(&line)?;
            sum.clients += p.clients;
            sum.live += p.live;
            sum.resubscribed += p.resubscribed;
            sum.caught_up += p.caught_up;
            sum.disconnects += p.disconnects;
            sum.failed_attempts += p.failed_attempts;
            sum.http_503 += p.http_503;
            sum.fatal += p.fatal;
        }
        Ok(sum)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (mut child, stdin, _) in self.procs.drain(..) {
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            crate::reaper::unregister(child.id());
        }
    }
}

/// Polls the children until `done` holds for the sum of their progress, at most `limit`.
pub(super) fn wait_until(
    children: &mut Children,
    limit: Duration,
    done: impl Fn(&StormProgress) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let p = children.progress()?;
        if done(&p) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not done within {limit:?}: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
