//! The parent's side of the `lean-hold` children: spawning them, their status lines, commands.

use super::MillionArgs;
use crate::lean_hold::Status;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One `lean-hold` child.
pub(super) struct Holder {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub(super) pid: u32,
    /// Its latest status line.
    pub(super) status: Status,
    /// It printed one since the last [`Holders::pump`] that asked.
    fresh: bool,
}

/// Every holder of the run.
#[derive(Default)]
pub(super) struct Holders(pub(super) Vec<Holder>);

/// Source address of holder `k`: 127.77.x.y, away from the 127.0.x.y other benchmarks use.
fn source(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 77, (k / 250) as u8, (2 + k % 250) as u8))
}

/// The source ports a holder of `count` connections walks: below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), or above it. Ports taken with an explicit `bind()` are
/// skipped by every `connect()` that lets the kernel pick the port, whatever the address (Linux
/// `__inet_hash_connect`), so holders spread over the whole range left no port for anything
/// else on the box: a gateway restarted during the 1M rolling restart could not connect to
/// NATS ("IO error" for 60 s, readyz never 200). At least 1.5 × `count` ports are needed for
/// the reconnect churn.
fn holder_ports(count: usize) -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".into());
    let mut range = text
        .split_whitespace()
        .filter_map(|v| v.parse::<u32>().ok());
    let (lo, hi) = (range.next().unwrap_or(32768), range.next().unwrap_or(60999));
    let need = (count as u32).saturating_mul(3) / 2;
    if lo.saturating_sub(1024) >= need {
        return (1024, (lo - 1) as u16);
    }
    if 65535u32.saturating_sub(hi) >= need {
        return ((hi + 1) as u16, 65535);
    }
    eprintln!(
        "warning: the ephemeral port range {lo}-{hi} leaves fewer than {need} ports for a holder \
         of {count} connections, so holders share it: a process started mid-run may find no \
         port to connect from (narrow net.ipv4.ip_local_port_range to fix it)"
    );
    (10_000, 65_000)
}

impl Holders {
    /// Starts holder number `self.0.len()` for connections `first..first + count`.
    pub(super) fn spawn(
        &mut self,
        args: &MillionArgs,
        ws: SocketAddr,
        token: &str,
        first: usize,
        count: usize,
        log_dir: &std::path::Path,
    ) -> anyhow::Result<()> {
        let k = self.0.len();
        let (port_lo, port_hi) = holder_ports(count);
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("lean-hold")
            .args(["--ws", &ws.to_string(), "--token", token])
            .args(["--count", &count.to_string(), "--first", &first.to_string()])
            .args(["--namespaces", &args.namespaces.to_string()])
            .args(["--source", &source(k).to_string()])
            .args([
                "--port-lo",
                &port_lo.to_string(),
                "--port-hi",
                &port_hi.to_string(),
            ])
            .args(["--rate", &args.holder_rate.to_string()])
            .args(["--parallel", &args.parallel.to_string()])
            .args(["--ping-s", &args.ping_s.to_string()])
            .arg("--reconnect")
            .args(["--backoff-initial-ms", &args.backoff_initial_ms.to_string()])
            .args(["--backoff-max-ms", &args.backoff_max_ms.to_string()])
            .args(["--max-seconds", &args.max_seconds.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(
                log_dir.join(format!("holder-{k}.log")),
            )?);
        let mut child = cmd.spawn()?;
        crate::reaper::register(child.id());
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("holder has no stdout"))?;
        self.0.push(Holder {
            pid: child.id(),
            stdin: child.stdin.take(),
            child: Some(child),
            lines: crate::lines::stdout_lines(stdout),
            status: Status {
                count,
                ..Status::default()
            },
            fresh: false,
        });
        Ok(())
    }

    /// Reads every status line that arrived; the latest of each holder is kept.
    pub(super) fn pump(&mut self) {
        for h in &mut self.0 {
            while let Ok(line) = h.lines.try_recv() {
                if let Ok(s) = serde_json::from_str::<Status>(&line) {
                    h.status = s;
                    h.fresh = true;
                }
            }
        }
    }

    /// Sends `line` to every holder.
    pub(super) fn all(&mut self, line: &str) -> anyhow::Result<()> {
        for h in &mut self.0 {
            if let Some(stdin) = h.stdin.as_mut() {
                writeln!(stdin, "{line}")?;
                stdin.flush()?;
            }
        }
        Ok(())
    }

    /// Asks every holder for a status line and waits (at most `limit`) until each answered.
    pub(super) fn refresh(&mut self, limit: Duration) -> anyhow::Result<()> {
        self.pump();
        for h in &mut self.0 {
            h.fresh = false;
        }
        self.all("report")?;
        let deadline = Instant::now() + limit;
        loop {
            self.pump();
            if self.0.iter().all(|h| h.fresh) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!("holders did not answer `report` within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sum of a status field over the holders.
    pub(super) fn sum(&self, f: impl Fn(&Status) -> u64) -> u64 {
        self.0.iter().map(|h| f(&h.status)).sum()
    }

    /// Max of a status field over the holders.
    pub(super) fn max(&self, f: impl Fn(&Status) -> u64) -> u64 {
        self.0.iter().map(|h| f(&h.status)).max().unwrap_or(0)
    }

    /// Connections the holders were given.
    pub(super) fn assigned(&self) -> u64 {
        self.sum(|s| s.count as u64)
    }

    /// The first errors the holders reported (at most 5).
    pub(super) fn errors(&self) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|h| h.status.first_error.clone())
            .take(5)
            .collect()
    }

    /// Summed RSS of the holder processes.
    pub(super) fn rss_bytes(&self) -> u64 {
        self.0
            .iter()
            .filter_map(|h| crate::procfs::rss_bytes(h.pid).ok())
            .sum()
    }

    /// Summed anonymous memory of the holder processes (their own allocations).
    pub(super) fn anon_bytes(&self) -> u64 {
        self.0
            .iter()
            .filter_map(|h| crate::procfs::anon_bytes(h.pid).ok())
            .sum()
    }

    /// Stops every holder: stdin closed, then SIGKILL whatever did not exit within 5 s; reaped.
    pub(super) fn stop(&mut self) {
        for h in &mut self.0 {
            drop(h.stdin.take());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for h in &mut self.0 {
            let Some(mut child) = h.child.take() else {
                continue;
            };
            loop {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            crate::reaper::unregister(h.pid);
        }
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        self.stop();
    }
}
