//! The soak's servers: the NATS cluster, relays and gateways (behind cuttable proxies) as processes
//! it can kill, stop and restart; the feed that publishes as a metaserver would.

use super::{Fault, RECOVERY_LIMIT, Soak};
use crate::GatewayProcess;
use crate::fleet::NAMESPACES;
use crate::nats::{NatsCluster, RelayProcess};
use crate::proxy::Proxy;
use herald_client::{Client, LongPoller};
use herald_relay::Publisher;
use nix::sys::signal::Signal;
use rand::Rng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A managed client on one transport.
pub(super) enum Handle {
    Session(Client),
    Poll(LongPoller),
}

impl Handle {
    pub(super) async fn close(&self) {
        match self {
            Handle::Session(c) => c.close().await,
            Handle::Poll(p) => p.close().await,
        }
    }
}

/// The fleet's gateways: fixed ports (clients find a restarted one where it was), a shared
/// certificate, and one cuttable proxy per NATS node.
pub(super) struct Gateway {
    pub(super) process: GatewayProcess,
    pub(super) ws_port: u16,
    pub(super) wss_port: u16,
    pub(super) quic_port: u16,
    pub(super) proxies: Vec<Proxy>,
}

pub(super) fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub(super) fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free UDP port")
}

/// Publishes `rate` changes a second to random namespaces, each `(ns, latest + 1)`, retrying a
/// change until it is acknowledged (even when asked to stop), and records each ack.
pub(super) async fn feed(
    publisher: Publisher,
    soak: Soak,
    mut rng: StdRng,
    rate: u32,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> usize {
    let mut latest = vec![0u64; NAMESPACES as usize];
    let mut retries = 0;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let ns = rng.random_range(0..NAMESPACES);
        let sjid = latest[ns as usize] + 1;
        loop {
            match tokio::time::timeout(Duration::from_secs(3), publisher.publish(&[(ns, sjid)]))
                .await
            {
                Ok(Ok(_)) => break,
                Ok(Err(_)) | Err(_) => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        soak.published(ns, sjid);
        latest[ns as usize] = sjid;
        acked.fetch_add(1, Ordering::SeqCst);
        next += interval;
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        } else {
            next = now;
        }
    }
    retries
}

/// Runs a process-blocking harness call (a restart waiting for its ready line) without stalling
/// the other tasks of this worker thread.
pub(super) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub(super) fn signal(pid: Option<u32>, sig: Signal) {
    if let Some(pid) = pid {
        crate::process::signal(pid, sig);
    }
}

/// The fleet's processes, by slot.
pub(super) struct Fleet {
    pub(super) cluster: NatsCluster,
    pub(super) relays: Vec<RelayProcess>,
    pub(super) gateways: Vec<Gateway>,
    pub(super) restarts: BTreeMap<String, usize>,
}

impl Fleet {
    pub(super) fn pids(&self) -> Vec<(String, Option<u32>)> {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push((format!("n{i}"), self.cluster.pid(i)));
        }
        for (i, r) in self.relays.iter().enumerate() {
            v.push((format!("relay{i}"), r.pid()));
        }
        for (i, g) in self.gateways.iter().enumerate() {
            v.push((format!("gateway{i}"), g.process.running_pid()));
        }
        v.push(("chaos (clients)".into(), Some(std::process::id())));
        v
    }

    pub(super) fn sample(&self) -> BTreeMap<String, (u64, usize)> {
        self.pids()
            .into_iter()
            .filter_map(|(name, pid)| Some((name, crate::process::rss_and_fds(pid?)?)))
            .collect()
    }

    pub(super) async fn ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + RECOVERY_LIMIT;
        for (i, g) in self.gateways.iter().enumerate() {
            loop {
                let ok = tokio::time::timeout(
                    Duration::from_secs(2),
                    crate::http::request(g.process.admin_addr(), "GET", "/readyz", None),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|r| r.status == 200);
                if ok {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!("gateway{i} not ready within {RECOVERY_LIMIT:?}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    pub(super) fn restarted(&mut self, slot: String) {
        *self.restarts.entry(slot).or_default() += 1;
    }

    /// Injects one fault of `kind` with a random target, lasting `down`; returns its log line.
    pub(super) async fn inject(&mut self, kind: Fault, rng: &mut StdRng, down: Duration) -> String {
        let target = match kind {
            Fault::NatsKill | Fault::NatsRestart | Fault::NatsHang => rng.random_range(0..3),
            Fault::RelayKill | Fault::RelayHang => rng.random_range(0..self.relays.len()),
            _ => rng.random_range(0..self.gateways.len()),
        };
        match kind {
            Fault::NatsKill => {
                self.cluster.node(target).stop();
                tokio::time::sleep(down).await;
                blocking(|| self.cluster.node(target).resume());
                self.restarted(format!("n{target}"));
                format!("n{target}")
            }
            Fault::NatsRestart => {
                let graceful = self
                    .cluster
                    .node(target)
                    .terminate(Duration::from_secs(10))
                    .await;
                tokio::time::sleep(down).await;
                blocking(|| self.cluster.node(target).resume());
                self.restarted(format!("n{target}"));
                format!("n{target} (exited by itself: {graceful})")
            }
            Fault::NatsHang => {
                let pid = self.cluster.pid(target);
                signal(pid, Signal::SIGSTOP);
                tokio::time::sleep(down).await;
                signal(pid, Signal::SIGCONT);
                format!("n{target}")
            }
            Fault::RelayKill => {
                self.relays[target].kill9();
                tokio::time::sleep(down).await;
                self.relays[target].restart().await;
                self.restarted(format!("relay{target}"));
                format!("relay{target}")
            }
            Fault::RelayHang => {
                let pid = self.relays[target].pid();
                signal(pid, Signal::SIGSTOP);
                tokio::time::sleep(down).await;
                signal(pid, Signal::SIGCONT);
                format!("relay{target}")
            }
            Fault::GatewayKill => {
                self.gateways[target].process.kill9();
                tokio::time::sleep(down).await;
                blocking(|| self.gateways[target].process.restart());
                self.restarted(format!("gateway{target}"));
                format!("gateway{target}")
            }
            Fault::GatewayHang => {
                let pid = self.gateways[target].process.running_pid();
                signal(pid, Signal::SIGSTOP);
                tokio::time::sleep(down).await;
                signal(pid, Signal::SIGCONT);
                format!("gateway{target}")
            }
            Fault::LinkCut => {
                for p in &self.gateways[target].proxies {
                    p.cut();
                }
                tokio::time::sleep(down).await;
                for p in &self.gateways[target].proxies {
                    p.restore();
                }
                format!("gateway{target}")
            }
        }
    }
}

/// Copies the gateways' and relays' logs (deleted with their temp dirs) to
/// `$TMPDIR/herald-chaos-<seed>/` for a failed run.
pub(super) fn keep_logs(fleet: &Fleet, seed: u64) -> Option<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("herald-chaos-{seed}"));
    std::fs::create_dir_all(&dir).ok()?;
    for (i, g) in fleet.gateways.iter().enumerate() {
        let _ = std::fs::copy(g.process.log_path(), dir.join(format!("gateway{i}.log")));
    }
    for (i, r) in fleet.relays.iter().enumerate() {
        let _ = std::fs::copy(r.log_path(), dir.join(format!("relay{i}.log")));
    }
    Some(dir)
}
