//! Publishing changes: `POST /v1/publish` on the standalone path (and to the Node peer),
//! `herald_relay::Publisher` to JetStream on the nats path, core NATS subjects to the nats-ws peer.
//! `storm` publishes the same way ([`Endpoint`]).

use super::PathKind;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// How long one publish (an HTTP request, or a batch's JetStream acks) may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where changes are published without JetStream: what `storm` publishes to.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    /// `POST /v1/publish` to this HTTP listener (Herald's admin listener, the Node peer).
    Http(SocketAddr),
    /// Core NATS subjects `ns.<n>` at this `nats://` URL (the nats-ws peer).
    Subjects(String),
    /// The same subjects through a JetStream stream at this `nats://` URL (the nats-ws-js peer),
    /// with these journal settings.
    Journal(String, crate::peer::publish::PeerJournal),
}

/// How the load generator publishes on one path.
pub(crate) enum Publish {
    Http(HttpPublisher),
    /// Boxed: it is much larger than the HTTP one. Its JetStream context keeps the client.
    Nats(Box<herald_relay::Publisher>),
    /// `PUB ns.<n>` to core NATS (the nats-ws peer).
    Subjects(crate::peer::publish::NatsPublisher),
    /// `ns.<n>` through JetStream, acks awaited (the nats-ws-js peer).
    Journal(crate::peer::publish::JournalPublisher),
}

impl Publish {
    pub(super) async fn connect(
        kind: PathKind,
        admin: SocketAddr,
        nats_url: Option<String>,
        partitions: u64,
    ) -> anyhow::Result<Self> {
        match (kind, nats_url) {
            (PathKind::Nats, Some(url)) => {
                let client = tokio::time::timeout(
                    Duration::from_secs(10),
                    async_nats::connect(url.as_str()),
                )
                .await??;
                let js = async_nats::jetstream::new(client);
                Ok(Publish::Nats(Box::new(herald_relay::Publisher::new(
                    js, partitions,
                ))))
            }
            _ => Ok(Publish::Http(HttpPublisher::connect(admin).await?)),
        }
    }

    /// Connects to `endpoint`: `POST /v1/publish` over one kept-alive connection, or core NATS.
    pub(crate) async fn open(endpoint: &Endpoint) -> anyhow::Result<Self> {
        Ok(match endpoint {
            Endpoint::Http(addr) => Publish::Http(HttpPublisher::connect(*addr).await?),
            Endpoint::Subjects(url) => {
                Publish::Subjects(crate::peer::publish::NatsPublisher::connect(url).await?)
            }
            Endpoint::Journal(url, variant) => Publish::Journal(
                crate::peer::publish::JournalPublisher::connect(url, *variant).await?,
            ),
        })
    }

    pub(crate) async fn publish(&mut self, changes: &[(u64, u64)]) -> anyhow::Result<()> {
        match self {
            Publish::Subjects(publisher) => publisher.publish(changes).await,
            Publish::Journal(publisher) => publisher.publish(changes).await,
            Publish::Http(http) => tokio::time::timeout(PUBLISH_TIMEOUT, http.publish(changes))
                .await
                .map_err(|_| anyhow::anyhow!("POST /v1/publish took over {PUBLISH_TIMEOUT:?}"))?,
            Publish::Nats(publisher) => {
                let done = tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(changes))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("JetStream acks took over {PUBLISH_TIMEOUT:?}")
                    })??;
                anyhow::ensure!(
                    done.stored == changes.len(),
                    "JetStream stored {} of {} changes ({} duplicates)",
                    done.stored,
                    changes.len(),
                    done.duplicates
                );
                Ok(())
            }
        }
    }
}

/// `POST /v1/publish` over one kept-alive HTTP/1.1 connection.
pub(crate) struct HttpPublisher {
    conn: tokio::io::BufReader<tokio::net::TcpStream>,
    request: Vec<u8>,
    body: String,
    line: String,
}

impl HttpPublisher {
    pub(crate) async fn connect(admin: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(admin),
        )
        .await??;
        stream.set_nodelay(true)?;
        Ok(HttpPublisher {
            conn: tokio::io::BufReader::new(stream),
            request: Vec::new(),
            body: String::new(),
            line: String::new(),
        })
    }

    pub(crate) async fn publish(&mut self, changes: &[(u64, u64)]) -> anyhow::Result<()> {
        use std::fmt::Write as _;
        self.body.clear();
        self.body.push_str(r#"{"changes":["#);
        for (i, (ns, sjid)) in changes.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(self.body, r#"{sep}{{"ns":{ns},"sjid":{sjid}}}"#)?;
        }
        self.body.push_str("]}");
        self.request.clear();
        write!(
            self.request,
            "POST /v1/publish HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.body.len()
        )?;
        self.request.extend_from_slice(self.body.as_bytes());
        self.conn.get_mut().write_all(&self.request).await?;

        self.line.clear();
        anyhow::ensure!(
            self.conn.read_line(&mut self.line).await? > 0,
            "the admin listener closed the connection"
        );
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad HTTP status line {:?}", self.line))?;
        let mut length = 0usize;
        loop {
            self.line.clear();
            anyhow::ensure!(
                self.conn.read_line(&mut self.line).await? > 0,
                "the admin listener closed the connection"
            );
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.conn.read_exact(&mut body).await?;
        anyhow::ensure!(
            status == 202,
            "POST /v1/publish answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}
