//! A child process that opens subscribed connections and keeps them idle until its parent says
//! stop (closes stdin). One process holds at most ~19k sockets (20000 open files per process),
//! so larger runs start several, each bound to its own source address (127.0.0.2, 127.0.0.3, …)
//! so that none runs out of ephemeral ports.

use futures_util::{SinkExt, StreamExt};
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
    Connector, WebSocketStream, client_async_tls_with_config, client_async_with_config,
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
}

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// A connection kept open (plain or TLS): never read again, only held until dropped.
type Held = Box<dyn Send>;

pub(crate) fn run(args: &HoldArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(hold(args.clone()))
}

async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let tls = args.tls_ca.as_deref().map(client_tls).transpose()?;
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
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await?;
    drop(conns);
    Ok(())
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

/// Connects, says HELLO, subscribes, and waits for the PONG that proves the subscription is live.
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
    if let Some(tls) = tls {
        let stream = connect_from(args.conns.source, args.conns.ws).await?;
        let request = upgrade_request(&format!("wss://{}/v1/connect", args.conns.ws))?;
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            client_async_tls_with_config(
                request,
                stream,
                Some(config),
                Some(Connector::Rustls(tls.clone())),
            ),
        )
        .await??;
        setup(&mut ws, &args.conns.token, pairs, index).await?;
        return Ok(Box::new(ws));
    }
    open_subscribed(
        args.conns.ws,
        &args.conns.token,
        args.conns.source,
        pairs,
        index,
        config,
    )
    .await
    .map(|ws| Box::new(ws) as Held)
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
