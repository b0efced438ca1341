//! The system under test in a storm: Herald's gateway (and how to start it again on the same
//! port, data dir and key) or a peer server, with its pid, version, publish endpoint and memory.

use super::StormArgs;
use crate::authkey::{SharedKey, free_port};
use crate::fanout::publish::Endpoint;
use crate::gateway::Gateway;
use crate::peer::Protocol;
use crate::peer::server::PeerServer;
use crate::procfs;
use serde::Serialize;
use std::process::Stdio;

/// The server's memory at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct ServerMemory {
    pub(super) pid: u32,
    /// Herald's own count (`herald_connections`); `None` for a peer.
    pub(super) connections: Option<f64>,
    pub(super) rss_bytes: u64,
    /// Herald's jemalloc heap; `None` for a peer.
    pub(super) heap_bytes: Option<u64>,
}

/// The system under test: a gateway and how to start it again, or a peer server.
pub(super) enum Server {
    Herald {
        gw: Gateway,
        bin: String,
        args: Vec<String>,
    },
    Peer(PeerServer),
}

impl Server {
    pub(super) fn pid(&self) -> u32 {
        match self {
            Server::Herald { gw, .. } => gw.pid,
            Server::Peer(p) => p.pid,
        }
    }

    /// The process measured.
    pub(super) fn process(&self) -> &'static str {
        match self {
            Server::Herald { .. } => "herald-gateway",
            Server::Peer(p) => match p.protocol {
                Protocol::NatsWs => "nats-server",
                Protocol::NodeWs => "node",
            },
        }
    }

    /// What ran, with its version.
    pub(super) fn version(&self) -> String {
        match self {
            Server::Herald { .. } => format!("herald-gateway {}", env!("CARGO_PKG_VERSION")),
            Server::Peer(p) => p.version.clone(),
        }
    }

    /// Where to publish: Herald's admin listener, Node's HTTP listener, or core NATS.
    pub(super) fn endpoint(&self) -> anyhow::Result<Endpoint> {
        match self {
            Server::Herald { gw, .. } => Ok(Endpoint::Http(gw.admin)),
            Server::Peer(p) => p.endpoint(),
        }
    }

    /// SIGKILL, then start again on the same port(s) (Herald: and data dir and key).
    pub(super) fn restart(&mut self) -> anyhow::Result<()> {
        match self {
            Server::Herald { gw, bin, args } => {
                // The old one must be gone before the new one binds its port.
                drop(std::mem::replace(
                    gw,
                    Gateway::attach(gw.ws, gw.admin, gw.pid, String::new()),
                ));
                *gw = Gateway::start_with(bin, args, Stdio::null())?;
                Ok(())
            }
            Server::Peer(p) => p.restart(),
        }
    }

    pub(super) fn memory(&self) -> anyhow::Result<ServerMemory> {
        Ok(match self {
            Server::Herald { gw, .. } => ServerMemory {
                pid: gw.pid,
                connections: gw.metric("herald_connections").ok().flatten(),
                rss_bytes: procfs::rss_bytes(gw.pid)?,
                heap_bytes: crate::gateway::heap(gw),
            },
            Server::Peer(p) => ServerMemory {
                pid: p.pid,
                connections: None,
                rss_bytes: procfs::rss_bytes(p.pid)?,
                heap_bytes: None,
            },
        })
    }

    /// Herald's count of handshakes refused by its rate limit.
    pub(super) fn rate_limited(&self) -> Option<f64> {
        match self {
            Server::Herald { gw, .. } => gw
                .metric("herald_handshakes_rate_limited_total")
                .ok()
                .flatten(),
            Server::Peer(_) => None,
        }
    }
}

/// Starts the server of `--target`; returns it and the `storm-clients` arguments that reach it.
pub(super) fn start_server(
    args: &StormArgs,
    dir: &std::path::Path,
) -> anyhow::Result<(Server, Vec<String>)> {
    if let Some(protocol) = args.target.protocol() {
        let server = PeerServer::start(protocol, &args.peers, dir)?;
        let connect = [
            "--protocol",
            protocol.name(),
            "--addr",
            &server.ws.to_string(),
        ];
        return Ok((Server::Peer(server), connect.map(str::to_owned).to_vec()));
    }
    let bin = args
        .gateway_bin
        .clone()
        .unwrap_or_else(crate::gateway::sibling_gateway);
    let key = SharedKey::generate(&bin, &dir.join("key"))?;
    let port = free_port()?;
    let mut gw_args = vec![
        "--journal-no-sync".to_owned(),
        "--data-dir".to_owned(),
        dir.join("data").display().to_string(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
    ];
    gw_args.extend(key.gateway_args());
    gw_args.extend(args.gateway_arg.iter().cloned());
    let gw = Gateway::start_with(&bin, &gw_args, Stdio::null())?;
    let url = format!("ws://127.0.0.1:{port}/v1/connect");
    let connect = vec!["--url".to_owned(), url, "--token".to_owned(), key.token];
    let server = Server::Herald {
        gw,
        bin,
        args: gw_args,
    };
    Ok((server, connect))
}
