//! A child process that opens subscribed connections and keeps them idle until its parent says
//! stop (closes stdin). One process holds at most ~19k sockets (20000 open files per process),
//! so larger runs start several, each bound to its own source address (127.0.0.2, 127.0.0.3, …)
//! so that none runs out of ephemeral ports.

use futures_util::{FutureExt, SinkExt, StreamExt};
use herald_proto::frame::decode_server;
use herald_proto::{ClientFrame, ServerFrame};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, http::HeaderValue};
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream, client_async_tls_with_config,
    client_async_with_config,
};

/// Arguments of `hold`.
/// The connections one child process opens: shared by `hold` (idle) and `receive` (fan-out).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConnSet {
    /// Gateway WebSocket address.
    #[arg(long)]
    pub(crate) ws: SocketAddr,
    /// Token for HELLO.
    #[arg(long)]
    pub(crate) token: String,
    /// Connections to open.
    #[arg(long)]
    pub(crate) count: usize,
    /// Source address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) source: IpAddr,
    /// Namespaces in the pattern (connection i of the run starts at namespace i modulo this).
    #[arg(long, default_value_t = 1000)]
    pub(crate) namespaces: u64,
    /// Index of this process's first connection in the whole run (spreads namespaces evenly).
    #[arg(long, default_value_t = 0)]
    pub(crate) first: u64,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 200)]
    pub(crate) parallel: usize,
}

/// Arguments of `hold`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct HoldArgs {
    /// Which connections.
    #[command(flatten)]
    conns: ConnSet,
    /// Subscriptions per connection.
    #[arg(long, default_value_t = 1)]
    subs_per_conn: u64,
    /// Connect with `wss` (`--ws` is then the TLS listener), trusting this PEM certificate.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Connections opened per second (0: as fast as `parallel` allows). Pacing spreads the
    /// gateway's TCP keepalive timers: connections accepted in one burst probe in one burst, and
    /// on loopback a burst beyond `net.core.netdev_max_backlog` (1000) is dropped.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// While holding, send each connection a PING every this many seconds, spread evenly over
    /// the period (0: never), as a client's heartbeat would. Data from the client keeps the
    /// gateway's TCP keepalive from probing (see `idle --ping-s`).
    #[arg(long, default_value_t = 0)]
    ping_s: u64,
}

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// A connection kept open, plain or TLS (read only by the heartbeat, when on).
type Held = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) fn run(args: &HoldArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(hold(args.clone()))
}

async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let tls = args.tls_ca.as_deref().map(client_tls).transpose()?;
    let start = tokio::time::Instant::now();
    let gap = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    let mut tasks = Vec::new();
    for _ in 0..args.conns.parallel.min(args.conns.count).max(1) {
        let (args, next, tls) = (args.clone(), next.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.conns.count {
                    return Ok::<_, anyhow::Error>(held);
                }
                if let Some(gap) = gap {
                    tokio::time::sleep_until(start + gap * i as u32).await;
                }
                held.push(open(&args, tls.as_ref(), args.conns.first + i as u64).await?);
            }
        }));
    }
    let mut conns: Vec<Held> = Vec::with_capacity(args.conns.count);
    for t in tasks {
        conns.extend(t.await??);
    }
    println!("ready {}", conns.len());
    // Hold until the parent closes our stdin.
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    });
    if args.ping_s == 0 {
        stdin_closed.await?;
    } else {
        tokio::select! {
            r = stdin_closed => r?,
            never = heartbeat(&mut conns, Duration::from_secs(args.ping_s)) => match never {},
        }
    }
    drop(conns);
    Ok(())
}

/// Sends every connection a PING once per `period`, one connection after another, evenly spread,
/// first reading what already arrived on it (the previous PONG): unread, each PONG would pin a
/// socket buffer of about a KB in the kernel. A connection that failed is left alone from then
/// on (and reported once on stderr): the others stay held, and the gateway's count shows the loss.
async fn heartbeat(conns: &mut [Held], period: Duration) -> std::convert::Infallible {
    let gap = period / u32::try_from(conns.len().max(1)).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(gap.max(Duration::from_micros(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dead = vec![false; conns.len()];
    let mut nonce = 0u64;
    loop {
        for (i, ws) in conns.iter_mut().enumerate() {
            tick.tick().await;
            if dead[i] {
                continue;
            }
            let mut failed = None;
            while let Some(msg) = ws.next().now_or_never() {
                match msg {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => failed = Some(e.to_string()),
                    None => failed = Some("closed by the gateway".into()),
                }
                if failed.is_some() {
                    break;
                }
            }
            if failed.is_none() {
                nonce += 1;
                let ping = Message::binary(ClientFrame::Ping(nonce).to_vec());
                match tokio::time::timeout(Duration::from_secs(10), ws.send(ping)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failed = Some(e.to_string()),
                    Err(_) => failed = Some("PING blocked for 10 s".into()),
                }
            }
            if let Some(why) = failed {
                if !dead.contains(&true) {
                    eprintln!("hold: connection {i} lost ({why}); later losses are not reported");
                }
                dead[i] = true;
            }
        }
    }
}

/// A rustls client configuration (aws-lc-rs) trusting the certificates in the PEM file `ca`.
pub(crate) fn client_tls(ca: &std::path::Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// Connects (over TLS when `tls` is set), says HELLO, subscribes, and waits for the PONG that
/// proves the subscription is live.
async fn open(
    args: &HoldArgs,
    tls: Option<&Arc<rustls::ClientConfig>>,
    index: u64,
) -> anyhow::Result<Held> {
    let pairs: Vec<(u64, u64)> = (0..args.subs_per_conn)
        .map(|k| ((index + k) % args.conns.namespaces, 0))
        .collect();
    // Small buffers: this process holds thousands of these.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let stream = connect_from(args.conns.source, args.conns.ws).await?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let request = upgrade_request(&format!("{scheme}://{}/v1/connect", args.conns.ws))?;
    let connector = tls.map(|c| Connector::Rustls(c.clone()));
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        client_async_tls_with_config(request, stream, Some(config), connector),
    )
    .await??;
    setup(&mut ws, &args.conns.token, pairs, index).await?;
    Ok(ws)
}

async fn connect_from(source: IpAddr, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    Ok(tokio::time::timeout(Duration::from_secs(30), socket.connect(addr)).await??)
}

fn upgrade_request(
    url: &str,
) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(herald_proto::WS_SUBPROTOCOL),
    );
    Ok(request)
}

/// Connects from `source`, says HELLO with `token`, subscribes to `pairs` (`(ns, cursor)`), and
/// waits for the PONG (nonce `index`) that proves the subscriptions are live and their cursors
/// checked. Shared by `hold` and `receive`.
pub(crate) async fn open_subscribed(
    ws_addr: SocketAddr,
    token: &str,
    source: IpAddr,
    pairs: Vec<(u64, u64)>,
    index: u64,
    config: WebSocketConfig,
) -> anyhow::Result<Ws> {
    let stream = connect_from(source, ws_addr).await?;
    let request = upgrade_request(&format!("ws://{ws_addr}/v1/connect"))?;
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        client_async_with_config(request, stream, Some(config)),
    )
    .await??;
    setup(&mut ws, token, pairs, index).await?;
    Ok(ws)
}

/// HELLO, SUBSCRIBE and the PING barrier on an upgraded connection (plain or TLS).
async fn setup<S>(
    ws: &mut WebSocketStream<S>,
    token: &str,
    pairs: Vec<(u64, u64)>,
    index: u64,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let hello = ClientFrame::Hello {
        version: herald_proto::PROTOCOL_VERSION,
        token: token.to_owned(),
    };
    ws.send(Message::binary(hello.to_vec())).await?;
    expect(ws, |f| matches!(f, ServerFrame::Welcome { .. })).await?;
    ws.send(Message::binary(ClientFrame::Subscribe(pairs).to_vec()))
        .await?;
    ws.send(Message::binary(ClientFrame::Ping(index).to_vec()))
        .await?;
    expect(ws, |f| matches!(f, ServerFrame::Pong(_))).await
}

async fn expect<S>(
    ws: &mut WebSocketStream<S>,
    want: impl Fn(&ServerFrame) -> bool,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("connection closed during setup"))??;
        if let Message::Binary(b) = msg {
            let frame = decode_server(&b)?;
            if want(&frame) {
                return Ok(());
            }
            if let ServerFrame::Error { code, message } = frame {
                anyhow::bail!("gateway refused: {code} {message}");
            }
        }
    }
}
