//! The servers of a `million` run: nats-server, the relay and the gateways (started in parallel,
//! killed at once), the publisher, and what is read off them (metrics sums, CPU, `/varz`).

use super::MillionArgs;
use super::report::CpuSplit;
use crate::authkey::{SharedKey, free_port};
use crate::gateway::Gateway;
use crate::natsproc::{self, NatsServer, Relay};
use crate::procfs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The servers of the run.
pub(super) struct Fleet {
    pub(super) nats: NatsServer,
    pub(super) relay: Relay,
    pub(super) gateways: Vec<Gateway>,
    pub(super) gateway_bin: String,
    pub(super) gateway_args: Vec<String>,
    pub(super) ws: SocketAddr,
    pub(super) token: String,
    pub(super) log_dir: PathBuf,
    pub(super) publisher: herald_relay::Publisher,
}

pub(super) fn start_fleet(
    args: &MillionArgs,
    temp: &Path,
    log_dir: &Path,
    gateways: usize,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Fleet> {
    let gateway_bin = crate::gateway::sibling_binary(args.gateway_bin.as_ref(), "herald-gateway")?;
    let relay_bin = crate::gateway::sibling_binary(args.relay_bin.as_ref(), "herald-relay")?;
    let nats_bin = natsproc::nats_server_binary(args.nats_server.as_deref())?;
    let nats = NatsServer::start_monitored(&nats_bin, temp, true)?;
    let relay = Relay::start(
        &relay_bin,
        &nats.url(),
        &["--partitions".into(), args.partitions.to_string()],
        &log_dir.join("relay.log"),
    )?;
    let key = SharedKey::generate(&gateway_bin, &temp.join("key"))?;
    let port = free_port()?;
    let mut gateway_args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--nats".to_owned(),
        nats.url(),
        "--partitions".to_owned(),
        args.partitions.to_string(),
        "--heartbeat-ms".to_owned(),
        "900000".to_owned(),
        "--workers".to_owned(),
        args.gateway_workers.to_string(),
        "--drain-s".to_owned(),
        args.drain_s.to_string(),
        "--stop-grace-ms".to_owned(),
        "0".to_owned(),
    ];
    gateway_args.extend(key.gateway_args());
    gateway_args.extend(args.gateway_arg.iter().cloned());
    let started = start_gateways(&gateway_bin, &gateway_args, log_dir, 0..gateways)?;
    let publisher = rt.block_on(async {
        let client = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(nats.url()))
            .await??;
        Ok::<_, anyhow::Error>(herald_relay::Publisher::new(
            async_nats::jetstream::new(client),
            args.partitions,
        ))
    })?;
    Ok(Fleet {
        nats,
        relay,
        gateways: started,
        gateway_bin,
        gateway_args,
        ws: SocketAddr::from(([127, 0, 0, 1], port)),
        token: key.token,
        log_dir: log_dir.to_owned(),
        publisher,
    })
}

/// Starts gateways `range` in parallel (a few threads), each until ready (its upstream too).
pub(super) fn start_gateways(
    bin: &str,
    args: &[String],
    log_dir: &Path,
    range: std::ops::Range<usize>,
) -> anyhow::Result<Vec<Gateway>> {
    let ids: Vec<usize> = range.collect();
    let results: Vec<anyhow::Result<Vec<Gateway>>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(ids.len().div_ceil(8).max(1))
            .map(|part| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for &k in part {
                        let log = std::fs::File::create(log_dir.join(format!("gateway-{k}.log")))?;
                        let gw = Gateway::start_with(bin, args, Stdio::from(log))?;
                        gw.wait_ready(Duration::from_secs(60))?;
                        out.push(gw);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a gateway start thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::new();
    let mut first_err = None;
    for r in results {
        match r {
            Ok(g) => all.extend(g),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        kill_all(&mut all);
        return Err(e);
    }
    Ok(all)
}

/// SIGKILLs every gateway at once (one `kill`), then reaps them (their guards).
pub(super) fn kill_all(gateways: &mut Vec<Gateway>) {
    if gateways.is_empty() {
        return;
    }
    let pids: Vec<String> = gateways.iter().map(|g| g.pid.to_string()).collect();
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .args(&pids)
        .stderr(Stdio::null())
        .status();
    gateways.clear();
}

pub(super) fn gateway_sum(gateways: &[Gateway], metric: &str) -> f64 {
    gateways
        .iter()
        .filter_map(|g| g.metric(metric).ok().flatten())
        .sum()
}

pub(super) fn server_cpu(fleet: &Fleet) -> CpuSplit {
    CpuSplit {
        gateways: fleet
            .gateways
            .iter()
            .filter_map(|g| procfs::cpu_seconds(g.pid).ok())
            .sum(),
        relay: procfs::cpu_seconds(fleet.relay.pid).unwrap_or(0.0),
        nats_server: procfs::cpu_seconds(fleet.nats.pid).unwrap_or(0.0),
    }
}

/// `nats-server --version` of the running server (from its log's first lines, else unknown).
pub(super) fn nats_version(nats: &NatsServer) -> String {
    http_json(nats.monitor, "/varz")
        .and_then(|v| v["version"].as_str().map(|s| format!("nats-server {s}")))
        .unwrap_or_else(|| "nats-server (version unknown)".into())
}

/// GET `path` on the nats-server monitoring port, as JSON (HTTP/1.0: no chunked body).
pub(super) fn http_json(port: Option<u16>, path: &str) -> Option<serde_json::Value> {
    let port = port?;
    let mut s = std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: nats\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let body = out.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}
