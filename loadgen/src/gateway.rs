//! A gateway under test: started as a child process, or attached to by address and pid.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a started gateway may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running gateway.
pub(crate) struct Gateway {
    pub(crate) ws: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) pid: u32,
    pub(crate) token: String,
    /// The `wss` listener, when started with `--tls-listen`.
    pub(crate) wss: Option<SocketAddr>,
    /// QUIC listener, when started with `--quic-listen`.
    pub(crate) quic: Option<SocketAddr>,
    child: Option<Child>,
}

impl Gateway {
    /// Starts `bin` on loopback with a dev key and a fresh data dir, and waits for its ready line.
    pub(crate) fn start(
        bin: &str,
        data_dir: &std::path::Path,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut args = vec!["--journal-no-sync".to_owned(), "--data-dir".to_owned()];
        args.push(data_dir.display().to_string());
        args.extend(extra.iter().cloned());
        Self::start_with(bin, &args, Stdio::null())
    }

    /// Starts `bin` on loopback ports with a dev key and `args` (data dir, `--nats`, …), sends its
    /// stderr to `stderr`, and waits (at most 30 s) for its ready line.
    pub(crate) fn start_with(bin: &str, args: &[String], stderr: Stdio) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {bin}: {e}"))?;
        crate::reaper::register(child.id());
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        // Kills the child if it never gets ready (the guard owns it until then).
        let mut gateway = Gateway {
            ws: ([127, 0, 0, 1], 0).into(),
            admin: ([127, 0, 0, 1], 0).into(),
            pid: child.id(),
            token: String::new(),
            wss: None,
            quic: None,
            child: Some(child),
        };
        let rx = crate::lines::stdout_lines(stdout);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut token = None;
        let (ws, admin, wss) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    anyhow::bail!("{bin} printed no ready line within {READY_TIMEOUT:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("{bin} exited before it was ready")
                }
            };
            if let Some(t) = line.strip_prefix("HERALD_DEV_TOKEN=") {
                token = Some(t.to_owned());
            }
            if let Some(rest) = line.strip_prefix("herald-gateway ready ") {
                let field = |k: &str| {
                    rest.split_whitespace()
                        .find_map(|f| f.strip_prefix(k))
                        .and_then(|v| v.parse::<SocketAddr>().ok())
                };
                gateway.quic = field("quic=");
                let (ws, admin) = field("ws=")
                    .zip(field("admin="))
                    .ok_or_else(|| anyhow::anyhow!("unreadable ready line {line:?}"))?;
                break (ws, admin, field("wss="));
            }
        };
        // Keep draining stdout so the gateway never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        gateway.ws = ws;
        gateway.admin = admin;
        gateway.wss = wss;
        // With `--auth-key` the gateway prints no dev token: the caller has its own.
        let keyed = args.iter().any(|a| a == "--auth-key");
        gateway.token = match token {
            Some(t) => t,
            None if keyed => String::new(),
            None => anyhow::bail!("gateway printed no dev token"),
        };
        Ok(gateway)
    }

    /// An already running gateway.
    pub(crate) fn attach(ws: SocketAddr, admin: SocketAddr, pid: u32, token: String) -> Self {
        Gateway {
            ws,
            admin,
            pid,
            token,
            wss: None,
            quic: None,
            child: None,
        }
    }

    /// Waits until `/readyz` answers 200 (a gateway in distributed mode is ready once its
    /// upstream is), at most `limit`.
    pub(crate) fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok((status, _)) = self.request("/readyz")
                && status == 200
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!("gateway /readyz did not answer 200 within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A metric's value from `/metrics` (first sample with that name).
    pub(crate) fn metric(&self, name: &str) -> anyhow::Result<Option<f64>> {
        let body = self.get("/metrics")?;
        Ok(body.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = rest.rsplit(' ').next()?;
            (rest.starts_with(' ') || rest.starts_with('{')).then(|| value.parse().ok())?
        }))
    }

    /// The sum of every series of a metric (e.g. a gauge labelled per worker).
    pub(crate) fn metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        let body = self.get("/metrics")?;
        Ok(body
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let value = rest.rsplit(' ').next()?;
                (rest.starts_with(' ') || rest.starts_with('{'))
                    .then(|| value.parse::<f64>().ok())?
            })
            .sum())
    }

    fn get(&self, path: &str) -> anyhow::Result<String> {
        Ok(self.request(path)?.1)
    }

    /// `GET path`: status and body.
    fn request(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.admin, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }
}

impl Gateway {
    /// Waits (at most `limit`) for a started gateway to exit on its own (after SIGTERM, say);
    /// reaps it. True when it exited (or was not started here).
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                crate::reaper::unregister(child.id());
                self.child = None;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Writes a self-signed certificate for 127.0.0.1 with `herald-gateway gen-cert` as
/// `PREFIX.crt.pem` and `PREFIX.key.pem`; returns their paths.
pub(crate) fn gen_cert(
    bin: &str,
    prefix: &std::path::Path,
    ed25519: bool,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    if let Some(dir) = prefix.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut cmd = Command::new(bin);
    cmd.args(["gen-cert", "--san", "127.0.0.1,localhost", "--out"])
        .arg(prefix);
    if ed25519 {
        cmd.arg("--ed25519");
    }
    let out = cmd.stdout(Stdio::null()).status()?;
    anyhow::ensure!(out.success(), "{bin} gen-cert failed");
    Ok((
        prefix.with_extension("crt.pem"),
        prefix.with_extension("key.pem"),
    ))
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            crate::reaper::unregister(child.id());
        }
    }
}

/// The gateway's jemalloc heap (`herald_heap_allocated_bytes`), when it reports one.
pub(crate) fn heap(gw: &Gateway) -> Option<u64> {
    gw.metric("herald_heap_allocated_bytes")
        .ok()
        .flatten()
        .map(|v| v as u64)
}

/// `herald-gateway` beside this executable (the same build), else from `PATH`.
pub(crate) fn sibling_gateway() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("herald-gateway")))
        .map_or_else(|| "herald-gateway".into(), |p| p.display().to_string())
}

/// Bytes as MiB, for printing.
pub(crate) fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// A binary next to this one, unless given.
pub(crate) fn sibling_binary(explicit: Option<&String>, name: &str) -> anyhow::Result<String> {
    if let Some(bin) = explicit {
        return Ok(bin.clone());
    }
    let path = std::env::current_exe()?
        .parent()
        .map(|d| d.join(name))
        .ok_or_else(|| anyhow::anyhow!("no directory of the current executable"))?;
    anyhow::ensure!(
        path.exists(),
        "{} does not exist: build it (cargo build --release -p herald-gateway -p herald-relay \
         -p herald-loadgen) or pass its path",
        path.display()
    );
    Ok(path.display().to_string())
}
