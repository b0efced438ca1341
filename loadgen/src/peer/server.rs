//! The peer servers as child processes: a private core `nats-server` with a WebSocket listener,
//! and `node ops/bench/node-ws-server.js`. Both listen on free loopback ports, log to a file in
//! the path's temp dir, and are killed (SIGKILL, by pid) and reaped on drop.

use crate::natsproc::{accepts_nats, free_port, tail};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a peer server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running peer server.
pub(crate) struct PeerServer {
    child: Option<Child>,
    /// Its pid (memory and CPU are read from `/proc/<pid>`).
    pub(crate) pid: u32,
    /// Its WebSocket listener.
    pub(crate) ws: SocketAddr,
    /// Where to publish: `nats://…` for nats-server, the HTTP listener for Node.
    pub(crate) publish: String,
    /// What ran, with versions.
    pub(crate) version: String,
    log: PathBuf,
}

impl PeerServer {
    /// `nats-server` (core NATS, no JetStream) with `websocket { no_tls: true }`.
    pub(crate) fn nats_ws(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let (port, ws_port) = (free_port()?, free_port()?);
        let config = dir.join("nats-ws.conf");
        std::fs::write(
            &config,
            format!(
                "# herald-loadgen peer: core NATS with a plain WebSocket listener\n\
                 listen: \"127.0.0.1:{port}\"\n\
                 websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"
            ),
        )?;
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let log = dir.join("nats-ws.log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", bin.display()))?;
        crate::reaper::register(child.id());
        let ws = SocketAddr::from(([127, 0, 0, 1], ws_port));
        let mut server = PeerServer {
            pid: child.id(),
            child: Some(child),
            ws,
            publish: format!("nats://127.0.0.1:{port}"),
            version,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !(accepts_nats(port) && TcpStream::connect(ws).is_ok()) {
            server.check_running()?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "nats-server did not listen on {port} and {ws_port} within {START_TIMEOUT:?}:\n{}",
                tail(&server.log, 20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// `node <script> --port 0`, ready when it prints `node-ws-server ready port=<p> …`.
    pub(crate) fn node_ws(node: &str, script: &Path, dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join("node-ws.log");
        let mut child = Command::new(node)
            .arg(script)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {node} {}: {e}", script.display()))?;
        crate::reaper::register(child.id());
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("node has no stdout"))?;
        let mut server = PeerServer {
            pid: child.id(),
            child: Some(child),
            ws: SocketAddr::from(([127, 0, 0, 1], 0)),
            publish: String::new(),
            version: String::new(),
            log,
        };
        let lines = crate::lines::stdout_lines(stdout);
        let line = match lines.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => anyhow::bail!(
                "node-ws-server printed no ready line within {START_TIMEOUT:?}:\n{}",
                tail(&server.log, 20)
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!(
                "node-ws-server exited before it was ready (npm ci in ops/bench?):\n{}",
                tail(&server.log, 20)
            ),
        };
        let ready = ReadyLine::parse(&line)?;
        server.ws.set_port(ready.port);
        server.publish = server.ws.to_string();
        server.version = format!("node {}, ws {}", ready.node, ready.ws);
        // Keep draining its stdout, so it never blocks on a full pipe.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        Ok(server)
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
            self.child = None;
            anyhow::bail!("exited at start ({status}):\n{}", tail(&self.log, 20));
        }
        Ok(())
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            crate::reaper::unregister(child.id());
        }
    }
}

/// `node-ws-server ready port=<port> pid=<pid> ws=<version> node=<version>`.
#[derive(Debug, PartialEq, Eq)]
struct ReadyLine {
    port: u16,
    ws: String,
    node: String,
}

impl ReadyLine {
    fn parse(line: &str) -> anyhow::Result<Self> {
        let rest = line
            .strip_prefix("node-ws-server ready ")
            .ok_or_else(|| anyhow::anyhow!("unexpected first line from node: {line:?}"))?;
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no {name}= in {line:?}"))
        };
        Ok(ReadyLine {
            port: field("port")?.parse()?,
            ws: field("ws")?,
            node: field("node")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_node_servers_ready_line() {
        let r = ReadyLine::parse("node-ws-server ready port=4100 pid=7 ws=8.23.0 node=v20.20.2")
            .unwrap();
        assert_eq!(
            r,
            ReadyLine {
                port: 4100,
                ws: "8.23.0".into(),
                node: "v20.20.2".into()
            }
        );
        assert!(ReadyLine::parse("listening on 4100").is_err());
    }
}
