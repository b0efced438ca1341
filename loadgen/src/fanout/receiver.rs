//! The `receive` child processes: spawned with their share of the connections, then driven
//! by one command line each, answered by one line.

use super::FanoutArgs;
use crate::gateway::Gateway;
use crate::receive::{Progress, Report as ReceiverReport};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a receiver may take to answer a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One `receive` child process.
pub(super) struct Receiver {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub(super) pid: u32,
}

impl Receiver {
    pub(super) fn spawn(
        args: &FanoutArgs,
        gateway: &Gateway,
        source: IpAddr,
        count: usize,
        first: usize,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("receive")
            .args(["--ws", &gateway.ws.to_string(), "--token", &gateway.token])
            .args(["--source", &source.to_string()])
            .args(["--count", &count.to_string(), "--first", &first.to_string()])
            .args(["--namespaces", &args.namespaces.to_string()])
            .args(["--read-buffer", &args.read_buffer.to_string()]);
        Self::start(command)
    }

    /// A `peer-receive` child for a peer server's WebSocket listener at `addr`.
    pub(super) fn spawn_peer(
        args: &FanoutArgs,
        protocol: &str,
        addr: SocketAddr,
        source: IpAddr,
        count: usize,
        first: usize,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("peer-receive")
            .args(["--protocol", protocol, "--addr", &addr.to_string()])
            .args(["--source", &source.to_string()])
            .args(["--count", &count.to_string(), "--first", &first.to_string()])
            .args(["--namespaces", &args.namespaces.to_string()])
            .args(["--read-buffer", &args.read_buffer.to_string()]);
        Self::start(command)
    }

    fn start(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        crate::reaper::register(child.id());
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("receiver has no stdout"))?;
        let lines = crate::lines::stdout_lines(stdout);
        Ok(Receiver {
            pid: child.id(),
            child: Some(child),
            stdin,
            lines,
        })
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("receiver stdin closed"))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| anyhow::anyhow!("receiver {} (exited? see its stderr): {e}", self.pid))
    }

    pub(super) fn recv(&self, limit: Duration) -> anyhow::Result<String> {
        self.lines.recv_timeout(limit).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => {
                anyhow::anyhow!("receiver {} did not answer within {limit:?}", self.pid)
            }
            mpsc::RecvTimeoutError::Disconnected => {
                anyhow::anyhow!("receiver {} exited (see its stderr)", self.pid)
            }
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            crate::reaper::unregister(child.id());
        }
    }
}

/// All receivers of a path.
pub(super) struct Receivers(pub(super) Vec<Receiver>);

impl Receivers {
    /// Sends `line` to every receiver, then collects each one's answer.
    fn ask(&mut self, line: &str) -> anyhow::Result<Vec<String>> {
        for r in &mut self.0 {
            r.send(line)?;
        }
        self.0.iter().map(|r| r.recv(COMMAND_TIMEOUT)).collect()
    }

    /// Sends a command every receiver answers with `ok`.
    pub(super) fn all(&mut self, line: &str) -> anyhow::Result<()> {
        for answer in self.ask(line)? {
            anyhow::ensure!(answer == "ok", "receiver answered {answer:?}");
        }
        Ok(())
    }

    pub(super) fn progress(&mut self) -> anyhow::Result<Progress> {
        let mut sum = Progress::default();
        for answer in self.ask("progress")? {
            let p: Progress = serde_json::from_str(&answer)?;
            sum.delivered += p.delivered;
            sum.pending += p.pending;
            sum.closed += p.closed;
        }
        Ok(sum)
    }

    pub(super) fn reports(&mut self) -> anyhow::Result<Vec<ReceiverReport>> {
        self.ask("report")?
            .iter()
            .map(|a| Ok(serde_json::from_str(a)?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::receive;

    #[test]
    fn histograms_survive_the_pipe() {
        let mut h = receive::new_histogram();
        for v in [1, 10, 100, 1000, 123_456] {
            h.record(v).unwrap();
        }
        let back = receive::decode_histogram(&receive::encode_histogram(&h).unwrap()).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
    }
}
