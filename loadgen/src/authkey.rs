//! A key pair shared by several gateway processes (the `SO_REUSEPORT` scale run) or by a gateway
//! and its restart (the reconnect storm), so that one token is valid on all of them. Without
//! `--auth-key` each gateway makes a throwaway dev key of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A key pair made with `herald-gateway gen-key`, and a token signed with it.
pub(crate) struct SharedKey {
    /// Public key, for `--auth-key`.
    pub(crate) public: PathBuf,
    /// A token for every namespace, valid for a day.
    pub(crate) token: String,
}

impl SharedKey {
    /// Writes a key pair into `dir` with `gateway_bin gen-key` and mints a token with it.
    pub(crate) fn generate(gateway_bin: &str, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let prefix = dir.join("loadgen");
        run(Command::new(gateway_bin)
            .arg("gen-key")
            .arg("--out")
            .arg(&prefix))?;
        let private = dir.join("loadgen.key.pem");
        let token = run(Command::new(gateway_bin)
            .arg("mint-token")
            .arg("--key")
            .arg(&private)
            .args(["--sub", "loadgen", "--ns", "*", "--ttl-s", "86400"]))?;
        let token = token
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .ok_or_else(|| anyhow::anyhow!("mint-token printed no token"))?
            .to_owned();
        Ok(SharedKey {
            public: dir.join("loadgen.pub.pem"),
            token,
        })
    }

    /// The gateway flags that make it accept [`token`](SharedKey::token).
    pub(crate) fn gateway_args(&self) -> Vec<String> {
        vec!["--auth-key".to_owned(), self.public.display().to_string()]
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("running {cmd:?}: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A loopback port free right now (bound to port 0 and released), for processes that must share
/// one fixed port (several gateways with `SO_REUSEPORT`, or a gateway and its restart).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
