//! The peer servers as child processes: a private core `nats-server` with a WebSocket listener
//! (with JetStream for the nats-ws-js peer), and `node ops/bench/node-ws-server.js`. Both listen on free loopback ports, log to a file in
//! the caller's temp dir, and are killed (SIGKILL, by pid) and reaped on drop. `restart` kills
//! one and starts it again on the same ports (only the nats-ws-js peer keeps anything on disk:
//! its stream, under the caller's temp dir).

use super::Protocol;
use super::publish::PeerJournal;
use crate::fanout::publish::Endpoint;
use crate::natsproc::{accepts_nats, free_port, tail};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a peer server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the peers' programs are (`fanout` and `storm` take the same options).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PeerArgs {
    /// nats-server 2.10+ (default: $HERALD_NATS_SERVER, then the pyenv one, then PATH).
    #[arg(long)]
    pub(crate) nats_server: Option<String>,
    /// Node.js for the node-ws peer.
    #[arg(long, default_value = "node")]
    pub(crate) node: String,
    /// The Node `ws` server script (default: $HERALD_NODE_WS_SERVER, then
    /// ops/bench/node-ws-server.js of the checkout this binary was built in, then of the current
    /// directory); its `ws` dependency must be installed (`npm ci --prefix ops/bench`).
    #[arg(long, env = "HERALD_NODE_WS_SERVER")]
    pub(crate) node_ws_script: Option<PathBuf>,
}

/// How a peer server was started, so that it can be started again the same way.
enum Launch {
    /// `nats-server -c <config>`; the config names both ports.
    NatsWs {
        bin: PathBuf,
        config: PathBuf,
        port: u16,
    },
    /// `node <script> --port <port>` (0 the first time; the port it took afterwards).
    NodeWs { node: String, script: PathBuf },
}

/// A running peer server.
pub(crate) struct PeerServer {
    child: Option<Child>,
    /// Its protocol.
    pub(crate) protocol: Protocol,
    /// Its pid (memory and CPU are read from `/proc/<pid>`).
    pub(crate) pid: u32,
    /// Its WebSocket listener.
    pub(crate) ws: SocketAddr,
    /// Where to publish: `nats://…` for nats-server, the HTTP listener for Node.
    pub(crate) publish: String,
    /// What ran, with versions.
    pub(crate) version: String,
    /// Publishes go through a JetStream stream (the nats-ws-js peer).
    /// The journal settings of the nats-ws-js peer's stream; `None` for the other peers.
    journal: Option<PeerJournal>,
    log: PathBuf,
    launch: Launch,
}

impl PeerServer {
    /// The peer server of `protocol`, its files under `dir`.
    pub(crate) fn start(protocol: Protocol, args: &PeerArgs, dir: &Path) -> anyhow::Result<Self> {
        match protocol {
            Protocol::NatsWs => {
                let bin = crate::natsproc::nats_server_binary(args.nats_server.as_deref())?;
                Self::nats_ws(&bin, dir)
            }
            Protocol::NodeWs => Self::node_ws(&args.node, &node_ws_script(args)?, dir),
        }
    }

    /// `nats-server` (core NATS, no JetStream) with `websocket { no_tls: true }`.
    pub(crate) fn nats_ws(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        Self::nats_ws_with(bin, dir, None)
    }

    /// `nats-server` with `websocket { no_tls: true }` and JetStream storing under `dir`: the
    /// nats-ws-js peer, whose publisher writes to a stream (the durable journal Herald keeps).
    pub(crate) fn nats_ws_journal(
        args: &PeerArgs,
        dir: &Path,
        journal: PeerJournal,
    ) -> anyhow::Result<Self> {
        let bin = crate::natsproc::nats_server_binary(args.nats_server.as_deref())?;
        Self::nats_ws_with(&bin, dir, Some(journal))
    }

    fn nats_ws_with(bin: &Path, dir: &Path, journal: Option<PeerJournal>) -> anyhow::Result<Self> {
        let (port, ws_port) = (free_port()?, free_port()?);
        let config = dir.join("nats-ws.conf");
        let jetstream = if journal.is_some() {
            format!(
                "jetstream {{\n  store_dir: \"{}\"\n}}\n",
                dir.join("jetstream").display()
            )
        } else {
            String::new()
        };
        std::fs::write(
            &config,
            format!(
                "# herald-loadgen peer: NATS with a plain WebSocket listener\n\
                 listen: \"127.0.0.1:{port}\"\n\
                 websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n\
                 {jetstream}"
            ),
        )?;
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut server = PeerServer {
            child: None,
            protocol: Protocol::NatsWs,
            pid: 0,
            ws: SocketAddr::from(([127, 0, 0, 1], ws_port)),
            publish: format!("nats://127.0.0.1:{port}"),
            version,
            journal,
            log: dir.join("nats-ws.log"),
            launch: Launch::NatsWs {
                bin: bin.to_owned(),
                config,
                port,
            },
        };
        server.spawn()?;
        Ok(server)
    }

    /// `node <script> --port 0`, ready when it prints `node-ws-server ready port=<p> …`.
    pub(crate) fn node_ws(node: &str, script: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mut server = PeerServer {
            child: None,
            protocol: Protocol::NodeWs,
            pid: 0,
            ws: SocketAddr::from(([127, 0, 0, 1], 0)),
            publish: String::new(),
            version: String::new(),
            journal: None,
            log: dir.join("node-ws.log"),
            launch: Launch::NodeWs {
                node: node.to_owned(),
                script: script.to_owned(),
            },
        };
        server.spawn()?;
        Ok(server)
    }

    /// Where its publisher connects.
    pub(crate) fn endpoint(&self) -> anyhow::Result<Endpoint> {
        Ok(match self.protocol {
            Protocol::NatsWs => match self.journal {
                Some(journal) => Endpoint::Journal(self.publish.clone(), journal),
                None => Endpoint::Subjects(self.publish.clone()),
            },
            Protocol::NodeWs => Endpoint::Http(self.publish.parse()?),
        })
    }

    /// SIGKILLs the server and starts it again on the same ports, with nothing kept: what a
    /// crashed and restarted server of this kind comes back as.
    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Starts the child (on `self.ws`'s port, or any port the first time for Node) and waits
    /// until it listens. Its stderr goes to the log file (appended to on a restart).
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        match &self.launch {
            Launch::NatsWs { bin, config, port } => {
                let child = Command::new(bin)
                    .arg("-c")
                    .arg(config)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .map_err(|e| anyhow::anyhow!("starting {}: {e}", bin.display()))?;
                let port = *port;
                self.started(child);
                let deadline = Instant::now() + START_TIMEOUT;
                while !(accepts_nats(port) && TcpStream::connect(self.ws).is_ok()) {
                    self.check_running()?;
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "nats-server did not listen on {port} and {} within {START_TIMEOUT:?}:\n{}",
                        self.ws.port(),
                        tail(&self.log, 20)
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Launch::NodeWs { node, script } => {
                let mut child = Command::new(node)
                    .arg(script)
                    .args(["--host", "127.0.0.1", "--port", &self.ws.port().to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(log)
                    .spawn()
                    .map_err(|e| anyhow::anyhow!("starting {node} {}: {e}", script.display()))?;
                let stdout = child
                    .stdout
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("node has no stdout"))?;
                self.started(child);
                let lines = crate::lines::stdout_lines(stdout);
                let line = match lines.recv_timeout(START_TIMEOUT) {
                    Ok(line) => line,
                    Err(mpsc::RecvTimeoutError::Timeout) => anyhow::bail!(
                        "node-ws-server printed no ready line within {START_TIMEOUT:?}:\n{}",
                        tail(&self.log, 20)
                    ),
                    Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!(
                        "node-ws-server exited before it was ready (npm ci in ops/bench?):\n{}",
                        tail(&self.log, 20)
                    ),
                };
                let ready = ReadyLine::parse(&line)?;
                self.ws.set_port(ready.port);
                self.publish = self.ws.to_string();
                self.version = format!("node {}, ws {}", ready.node, ready.ws);
                // Keep draining its stdout, so it never blocks on a full pipe.
                std::thread::spawn(move || while lines.recv().is_ok() {});
            }
        }
        Ok(())
    }

    /// Takes `child` as the running server (registered with the reaper until killed).
    fn started(&mut self, child: Child) {
        crate::reaper::register(child.id());
        self.pid = child.id();
        self.child = Some(child);
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
            self.child = None;
            anyhow::bail!("exited at start ({status}):\n{}", tail(&self.log, 20));
        }
        Ok(())
    }

    /// SIGKILL, by pid, and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            crate::reaper::unregister(child.id());
        }
    }
}

/// The Node server script: `--node-ws-script` / `$HERALD_NODE_WS_SERVER`, else
/// `ops/bench/node-ws-server.js` of the checkout this binary was built in (`target/<profile>/`
/// two levels up), else of the current directory.
pub(crate) fn node_ws_script(args: &PeerArgs) -> anyhow::Result<PathBuf> {
    if let Some(script) = &args.node_ws_script {
        return Ok(script.clone());
    }
    let relative = PathBuf::from("ops/bench/node-ws-server.js");
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join(&relative)));
    from_exe
        .into_iter()
        .chain([relative])
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "ops/bench/node-ws-server.js not found next to the checkout or in the current \
                 directory: pass --node-ws-script"
            )
        })
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.kill();
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
