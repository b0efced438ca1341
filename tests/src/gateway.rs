//! A `herald-gateway` child process: started on ephemeral loopback ports with a throwaway data
//! directory and a test signing key, found ready by its stdout line, and killed (SIGKILL, then
//! reaped) when dropped.

use crate::http::{self, HttpResponse};
use crate::ws::WsClient;
use herald_gateway::keys::{SigningKey, claims_for, unix_now};
use herald_proto::{Claims, NsGrant};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a gateway may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The `kid` of the key every test gateway trusts.
pub const KID: &str = "test";

/// Extra command-line flags for a test gateway (on top of the listeners, data dir and key).
#[derive(Debug, Clone, Default)]
pub struct GatewayOptions {
    /// Flags passed as they are, after the harness's own.
    pub args: Vec<String>,
    /// Also serve `wss` (`--tls-listen`) with a self-signed ECDSA P-256 certificate for
    /// `localhost` and `127.0.0.1`, made in the gateway's temp dir.
    pub tls: bool,
}

impl GatewayOptions {
    /// No extra flags.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `wss` too, with a fresh self-signed certificate ([`GatewayProcess::tls_roots`]).
    #[must_use]
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Adds `flag value`, e.g. `.arg("--heartbeat-ms", "15000")`.
    #[must_use]
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_owned());
        self.args.push(value.to_string());
        self
    }

    /// Adds a flag that takes no value, e.g. `.flag("--no-journal-direct")`.
    #[must_use]
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push(flag.to_owned());
        self
    }
}

/// A running gateway. Dropping it kills the process (SIGKILL) and waits for it.
pub struct GatewayProcess {
    /// The child, `None` once killed or exited.
    child: Option<Child>,
    /// Holds the data dir, the public key file and the stderr log; deleted on drop.
    dir: tempfile::TempDir,
    /// The key whose public half the gateway trusts under [`KID`].
    key: SigningKey,
    /// Flags to start (and restart) with.
    options: GatewayOptions,
    /// Client (WebSocket) listener.
    ws: SocketAddr,
    /// Admin (publish, health, metrics) listener.
    admin: SocketAddr,
    /// `wss` listener, when started with [`GatewayOptions::tls`].
    wss: Option<SocketAddr>,
    /// QUIC listener, when started with `--quic-listen`.
    quic: Option<SocketAddr>,
}

/// `target/<profile>/herald-gateway` ([`crate::process::sibling_binary`]).
fn binary() -> PathBuf {
    crate::process::sibling_binary("herald-gateway")
}

impl GatewayProcess {
    /// Starts a gateway with `options` and waits (at most 20 s) for its ready line.
    ///
    /// Blocks the calling thread while waiting; call it before starting client tasks.
    #[must_use]
    pub fn start(options: GatewayOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herald-e2e-")
            .tempdir()
            .expect("tempdir");
        let key = SigningKey::generate(Some(KID.into())).expect("generate key");
        std::fs::write(dir.path().join("test.pub.pem"), key.public_pem()).expect("write key");
        let mut gw = GatewayProcess {
            child: None,
            dir,
            key,
            options,
            ws: ([127, 0, 0, 1], 0).into(),
            admin: ([127, 0, 0, 1], 0).into(),
            wss: None,
            quic: None,
        };
        if gw.options.tls {
            gw.write_new_cert();
            let (cert, key) = (gw.cert_path(), gw.key_path());
            gw.options.args.extend([
                "--tls-listen".into(),
                "127.0.0.1:0".into(),
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
            ]);
        }
        gw.spawn();
        gw
    }

    /// Starts a gateway with default settings.
    #[must_use]
    pub fn start_default() -> Self {
        Self::start(GatewayOptions::new())
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "gateway already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open gateway log");
        let mut child = Command::new(binary())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--auth-key")
            .arg(format!(
                "{KID}={}",
                self.dir.path().join("test.pub.pem").display()
            ))
            // SIGTERM starts the drain at once in tests; the grace's own test sets it (a flag
            // given twice takes its last value).
            .arg("--stop-grace-ms")
            .arg("0")
            .args(&self.options.args)
            .env(
                "HERALD_LOG",
                "info,herald_gateway=debug,herald_upstream=debug",
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn herald-gateway");
        let stdout = child.stdout.take().expect("piped stdout");
        // Set the child first so that a panic below still kills it.
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Forward every line until EOF, so the pipe never fills.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((ws, admin, wss)) = parse_ready(&line) {
                        self.ws = ws;
                        self.admin = admin;
                        self.wss = wss;
                        self.quic = line
                            .split_whitespace()
                            .find_map(|p| p.strip_prefix("quic="))
                            .and_then(|v| v.parse().ok());
                        return;
                    }
                }
                Err(e) => panic!(
                    "herald-gateway did not print its ready line ({e}); its stderr:\n{}",
                    self.log_tail(40)
                ),
            }
        }
    }

    /// The client listener's address.
    #[must_use]
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws
    }

    /// The QUIC listener's address (`--quic-listen`), if on.
    #[must_use]
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic
    }

    /// The admin listener's address.
    #[must_use]
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The `wss` listener's address (started with [`GatewayOptions::tls`]).
    #[must_use]
    pub fn wss_addr(&self) -> SocketAddr {
        self.wss
            .expect("gateway started without GatewayOptions::tls")
    }

    /// Where the gateway's TLS certificate (PEM) is.
    #[must_use]
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("tls.crt.pem")
    }

    /// Where the gateway's TLS private key (PEM) is.
    #[must_use]
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("tls.key.pem")
    }

    /// Replaces the certificate files by a new self-signed pair (not reloaded until SIGHUP).
    pub fn write_new_cert(&self) {
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let (cert, key) = herald_gateway::tls::self_signed(&names, false).expect("self-signed");
        // Key first, then certificate, each by rename, so a reload never sees half a file.
        for (path, pem) in [(self.key_path(), key), (self.cert_path(), cert)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, pem).expect("write TLS file");
            std::fs::rename(&tmp, &path).expect("rename TLS file");
        }
    }

    /// Trust anchors holding exactly the certificate now in [`cert_path`](Self::cert_path).
    #[must_use]
    pub fn tls_roots(&self) -> crate::ws::TlsRoots {
        crate::ws::TlsRoots::from_pem_file(&self.cert_path()).expect("trust anchors")
    }

    /// Sends SIGHUP (the gateway reloads its certificate).
    pub fn sighup(&self) {
        crate::process::signal(self.pid(), nix::sys::signal::Signal::SIGHUP);
    }

    /// The process id (while running).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway not running").id()
    }

    /// The process id, `None` while it is not running (killed and not restarted yet).
    #[must_use]
    pub fn running_pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// The key the gateway trusts, for minting unusual tokens.
    #[must_use]
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// A token granting `grant` for `ttl_s` seconds.
    #[must_use]
    pub fn token(&self, grant: NsGrant, ttl_s: u64) -> String {
        self.key
            .mint(&claims_for("e2e", grant, ttl_s), None)
            .expect("mint")
    }

    /// A token of subject `sub` granting `grant` for `ttl_s` seconds.
    #[must_use]
    pub fn token_for(&self, sub: &str, grant: NsGrant, ttl_s: u64) -> String {
        self.key
            .mint(&claims_for(sub, grant, ttl_s), None)
            .expect("mint")
    }

    /// A token granting every namespace for an hour.
    #[must_use]
    pub fn token_all(&self) -> String {
        self.token(NsGrant::All, 3600)
    }

    /// A token with an explicit `exp` (unix seconds), which may be in the past.
    #[must_use]
    pub fn token_exp(&self, grant: NsGrant, exp: u64) -> String {
        let claims = Claims {
            sub: "e2e".into(),
            ns: grant,
            exp,
            nbf: None,
            iss: None,
            cls: None,
            iat: None,
        };
        self.key.mint(&claims, None).expect("mint")
    }

    /// A token of client class `cls` (the gateway may pick its heartbeat by it).
    #[must_use]
    pub fn token_class(&self, cls: &str) -> String {
        let mut claims = herald_gateway::keys::claims_for("e2e", NsGrant::All, 3600);
        claims.cls = Some(cls.to_owned());
        self.key.mint(&claims, None).expect("mint")
    }

    /// Seconds since the Unix epoch (the clock tokens use).
    #[must_use]
    pub fn unix_now() -> u64 {
        unix_now()
    }

    /// A connected client that has said HELLO with an all-namespaces token.
    pub async fn client(&self) -> WsClient {
        let mut c = WsClient::connect(self.ws).await;
        c.hello(&self.token_all()).await;
        c
    }

    /// `POST /v1/publish` of `changes`; SJIDs and namespaces above 2^53 go as decimal strings.
    pub async fn publish(&self, changes: &[(u64, u64)]) -> HttpResponse {
        let num = |v: u64| {
            if v > 1 << 53 {
                serde_json::Value::from(v.to_string())
            } else {
                serde_json::Value::from(v)
            }
        };
        let list: Vec<_> = changes
            .iter()
            .map(|&(ns, sjid)| serde_json::json!({"ns": num(ns), "sjid": num(sjid)}))
            .collect();
        let body = serde_json::json!({ "changes": list }).to_string();
        self.publish_raw(body.as_bytes()).await
    }

    /// Publishes and asserts `202 {"accepted": n}`.
    pub async fn publish_ok(&self, changes: &[(u64, u64)]) {
        let r = self.publish(changes).await;
        assert_eq!(r.status, 202, "publish refused: {}", r.text());
        assert_eq!(r.json()["accepted"], changes.len(), "{}", r.text());
    }

    /// `POST /v1/publish` with `body` as it is.
    pub async fn publish_raw(&self, body: &[u8]) -> HttpResponse {
        http::request(self.admin, "POST", "/v1/publish", Some(body))
            .await
            .expect("publish request")
    }

    /// `POST /v1/disconnect` (revocation) of `sub`, optionally only tokens issued before
    /// `issued_before` (unix seconds).
    pub async fn disconnect(&self, sub: &str, issued_before: Option<u64>) -> HttpResponse {
        let body = match issued_before {
            Some(t) => format!(r#"{{"sub":"{sub}","issued_before":{t}}}"#),
            None => format!(r#"{{"sub":"{sub}"}}"#),
        };
        http::request(self.admin, "POST", "/v1/disconnect", Some(body.as_bytes()))
            .await
            .expect("disconnect request")
    }

    /// `GET path` on the admin listener.
    pub async fn get(&self, path: &str) -> HttpResponse {
        http::request(self.admin, "GET", path, None)
            .await
            .expect("admin GET")
    }

    /// Resident set size of the process, from `/proc/<pid>/status`.
    #[must_use]
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// The gateway's `--data-dir` (journal, and the tailer's checkpoint with `--journal-source`).
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        crate::process::kill9(&mut self.child);
    }

    /// Kills it (if running) and starts it again with the same data dir, key and flags. The
    /// listeners get new ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sends SIGTERM (the process drains, then exits).
    pub fn sigterm(&self) {
        crate::process::sigterm(self.pid());
    }

    /// Waits up to `limit` for the process to exit; returns its exit status, or `None` if it is
    /// still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        crate::process::wait_exit(&mut self.child, limit).await
    }

    /// Where its stderr log is (deleted with the process's temp dir).
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    /// The last `lines` lines of the gateway's stderr.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.log_path(), lines)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill9();
        crate::process::show_log_if_panicking("herald-gateway", &self.log_path());
    }
}

/// Parses `herald-gateway ready ws=ADDR admin=ADDR[ wss=ADDR]`.
fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr, Option<SocketAddr>)> {
    let rest = line.strip_prefix("herald-gateway ready ")?;
    let mut ws = None;
    let mut admin = None;
    let mut wss = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("ws=") {
            ws = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("admin=") {
            admin = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("wss=") {
            wss = v.parse().ok();
        }
    }
    Some((ws?, admin?, wss))
}

/// A self-signed certificate for `localhost` (ECDSA P-256, made with rcgen), its PEM, and the
/// directory holding `cert.pem` and `key.pem` for `--tls-cert` / `--tls-key`.
pub struct TestCert {
    /// The certificate, PEM (what clients trust).
    pub pem: String,
    /// Holds `cert.pem` and `key.pem`; deleted on drop.
    pub dir: tempfile::TempDir,
}

impl TestCert {
    /// A new certificate and key, written to a temporary directory.
    #[must_use]
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).expect("cert");
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).expect("key");
        TestCert {
            pem: cert.pem(),
            dir,
        }
    }

    /// `options` plus a QUIC listener on `quic` with this certificate.
    #[must_use]
    pub fn quic_options(&self, quic: &str, options: GatewayOptions) -> GatewayOptions {
        let mut opts = GatewayOptions::new()
            .arg("--quic-listen", quic)
            .arg("--tls-cert", self.dir.path().join("cert.pem").display())
            .arg("--tls-key", self.dir.path().join("key.pem").display());
        opts.args.extend(options.args);
        opts
    }
}

impl Default for TestCert {
    fn default() -> Self {
        Self::new()
    }
}
