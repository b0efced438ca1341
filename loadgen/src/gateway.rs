//! A gateway under test: started as a child process, or attached to by address and pid.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running gateway.
pub(crate) struct Gateway {
    pub(crate) ws: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) pid: u32,
    pub(crate) token: String,
    child: Option<Child>,
}

impl Gateway {
    /// Starts `bin` on loopback with a dev key and a fresh data dir, and waits for its ready line.
    pub(crate) fn start(
        bin: &str,
        data_dir: &std::path::Path,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--journal-no-sync",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {bin}: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut token = None;
        let mut addrs = None;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(t) = line.strip_prefix("HERALD_DEV_TOKEN=") {
                token = Some(t.to_owned());
            }
            if let Some(rest) = line.strip_prefix("herald-gateway ready ") {
                let field = |k: &str| {
                    rest.split_whitespace()
                        .find_map(|f| f.strip_prefix(k))
                        .and_then(|v| v.parse::<SocketAddr>().ok())
                };
                addrs = field("ws=").zip(field("admin="));
                break;
            }
        }
        let (ws, admin) =
            addrs.ok_or_else(|| anyhow::anyhow!("gateway exited before it was ready"))?;
        Ok(Gateway {
            ws,
            admin,
            pid: child.id(),
            token: token.ok_or_else(|| anyhow::anyhow!("gateway printed no dev token"))?,
            child: Some(child),
        })
    }

    /// An already running gateway.
    pub(crate) fn attach(ws: SocketAddr, admin: SocketAddr, pid: u32, token: String) -> Self {
        Gateway {
            ws,
            admin,
            pid,
            token,
            child: None,
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

    fn get(&self, path: &str) -> anyhow::Result<String> {
        let mut s = TcpStream::connect_timeout(&self.admin, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
