//! `herald-relay` child processes against a test's nats-server ([`crate::nats`]): start one with
//! options, read its ready line and admin address, run its subcommands, watch its fan-out batches
//! and ask its `herald.latest.<p>` responder.

use crate::http::{self, HttpResponse};
use async_nats::Client;
use futures_util::StreamExt;
use herald_proto::fanout::{FanoutBatch, LatestReply, LatestRequest, latest_subject};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a relay may take to print its ready line.
const RELAY_READY_TIMEOUT: Duration = Duration::from_secs(20);

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
