//! Settings: command-line flags with `HERALD_*` environment overrides, validated once at start.
//! Components receive only their slice ([`ConnLimits`], [`JournalConfig`]), never the whole.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Heartbeat bounds from PROTOCOL.md.
pub const HEARTBEAT_MS_RANGE: std::ops::RangeInclusive<u64> = 15_000..=900_000;

/// The `herald-gateway` command line.
#[derive(Debug, Parser)]
#[command(
    name = "herald-gateway",
    version,
    about = "Herald notification gateway",
    // A flag given twice takes its last value, so wrappers and tests can append overrides.
    args_override_self = true
)]
pub struct Cli {
    /// What to do; without a subcommand the gateway serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Gateway settings (used when serving).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a new Ed25519 key pair: NAME.key.pem (private, for the metaserver) and NAME.pub.pem.
    GenKey {
        /// Path prefix of the two files.
        #[arg(long, default_value = "herald")]
        out: PathBuf,
    },
    /// Print a signed token.
    MintToken(MintArgs),
    /// Write a self-signed TLS certificate and its key (for `--tls-cert` / `--tls-key` in
    /// development and tests): NAME.crt.pem and NAME.key.pem.
    GenCert(GenCertArgs),
}

/// `gen-cert` arguments.
#[derive(Debug, Args)]
pub struct GenCertArgs {
    /// Path prefix of the two files (neither may exist yet).
    #[arg(long, default_value = "herald-tls")]
    pub out: PathBuf,
    /// Names the certificate is valid for, DNS names or IP addresses (repeat or comma-separate).
    #[arg(
        long = "san",
        value_delimiter = ',',
        default_values = ["localhost", "127.0.0.1", "::1"]
    )]
    pub sans: Vec<String>,
    /// An Ed25519 key instead of ECDSA P-256.
    #[arg(long)]
    pub ed25519: bool,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

/// `mint-token` arguments.
#[derive(Debug, Args)]
pub struct MintArgs {
    /// PKCS#8 PEM private key (from gen-key).
    #[arg(long)]
    pub key: PathBuf,
    /// Key id to put in the token header.
    #[arg(long)]
    pub kid: Option<String>,
    /// Subject (user id).
    #[arg(long, default_value = "dev")]
    pub sub: String,
    /// Namespaces: `*` or a comma-separated list of ids.
    #[arg(long, default_value = "*")]
    pub ns: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_s: u64,
    /// Issuer claim.
    #[arg(long)]
    pub iss: Option<String>,
    /// Audience claim.
    #[arg(long)]
    pub aud: Option<String>,
}

/// Settings of a serving gateway.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML file of settings (keys are these flags' long names). Precedence: file, then
    /// `HERALD_*` environment, then flags.
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Client listener (WebSocket `/v1/connect`).
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// WebSocket-over-TLS listener (`wss`, and long-poll over HTTPS). Needs `--tls-cert` and
    /// `--tls-key`.
    #[arg(long, env = "HERALD_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    /// QUIC listener (UDP, ALPN `herald/1`). Needs `--tls-cert` and `--tls-key`.
    #[arg(long, env = "HERALD_QUIC_LISTEN")]
    pub quic_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) for TLS and QUIC, leaf first (ECDSA P-256 or Ed25519). Read
    /// again on SIGHUP.
    #[arg(long, env = "HERALD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM, PKCS#8 or SEC1) of `--tls-cert`. Read again on SIGHUP.
    #[arg(long, env = "HERALD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Admin listener (publish, health, metrics). Keep it on loopback or a private network.
    #[arg(long, env = "HERALD_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Bearer token required on `POST /v1/publish` (none: open, for loopback use).
    #[arg(long, env = "HERALD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// NATS URL of the relays (distributed mode). Without it the gateway is standalone, with an
    /// embedded journal and `POST /v1/publish`.
    #[arg(long, env = "HERALD_NATS")]
    pub nats: Option<String>,
    /// Journal partitions (the same on publishers, relays and gateways).
    #[arg(long, env = "HERALD_PARTITIONS", default_value_t = herald_proto::fanout::DEFAULT_PARTITIONS)]
    pub partitions: u64,
    /// Time allowed for one latest look-up request to the relays.
    #[arg(
        long,
        env = "HERALD_UPSTREAM_REQUEST_TIMEOUT_MS",
        default_value_t = 1000
    )]
    pub upstream_request_timeout_ms: u64,
    /// How long a SUBSCRIBE's look-up keeps retrying before the client is sent elsewhere
    /// (GOAWAY overloaded).
    #[arg(long, env = "HERALD_LOOKUP_DEADLINE_MS", default_value_t = 10_000)]
    pub lookup_deadline_ms: u64,
    /// Directory of the embedded journal.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "herald-data")]
    pub data_dir: PathBuf,
    /// Skip fdatasync on publish (faster, but a power loss may lose acknowledged changes).
    #[arg(long, env = "HERALD_JOURNAL_NO_SYNC")]
    pub journal_no_sync: bool,
    /// Size at which the journal rolls to a new segment and compacts the older ones into a
    /// snapshot of one record per namespace (in the background; at least 4096).
    #[arg(long, env = "HERALD_JOURNAL_COMPACT_BYTES", default_value_t = DEFAULT_COMPACT_BYTES)]
    pub journal_compact_bytes: u64,
    /// Feed the embedded journal from the metaserver's database (committed changes of its
    /// journal table, read from the binlog or from logical replication):
    /// `mysql://USER@HOST:PORT/DATABASE?server_id=N` or
    /// `postgres://USER@HOST:PORT/DATABASE?slot=NAME&publication=NAME`
    /// (README "Reading the metaserver's database"). The resume point is kept in
    /// `<data-dir>/tail.checkpoint`. `POST /v1/publish` keeps working beside it.
    #[arg(long, env = "HERALD_JOURNAL_SOURCE", hide_env_values = true)]
    pub journal_source: Option<String>,
    /// Token public keys, `kid=path.pem` or `path.pem` (repeat or comma-separate). None: a
    /// throwaway dev key is generated and a dev token printed.
    #[arg(long = "auth-key", env = "HERALD_AUTH_KEYS", value_delimiter = ',')]
    pub auth_keys: Vec<String>,
    /// Required `iss` claim.
    #[arg(long, env = "HERALD_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "HERALD_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Worker threads, each with its own listener socket (0: one per CPU).
    #[arg(long, env = "HERALD_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Heartbeat interval announced in WELCOME (15000–900000).
    #[arg(long, env = "HERALD_HEARTBEAT_MS", default_value_t = 60_000)]
    pub heartbeat_ms: u64,
    /// Heartbeat for a client class, `NAME=MS` (repeat or comma-separate): a token whose `cls`
    /// claim is NAME gets MS (15000–900000) in WELCOME, e.g. `mobile=300000` to save battery.
    #[arg(
        long = "heartbeat-class",
        env = "HERALD_HEARTBEAT_CLASSES",
        value_delimiter = ','
    )]
    pub heartbeat_classes: Vec<String>,
    /// Time from TCP accept to HELLO.
    #[arg(long, env = "HERALD_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Clock skew allowed on a token's `exp` and `nbf`, in seconds (PROTOCOL.md "Auth": 30).
    #[arg(long, env = "HERALD_TOKEN_LEEWAY_S", default_value_t = herald_core::token::TOKEN_LEEWAY_S)]
    pub token_leeway_s: u64,
    /// Live subscriptions per connection.
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS", default_value_t = 1024)]
    pub max_subscriptions: u64,
    /// Connection cap for the process (0: the open-files limit less a reserve).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// New connections a second the whole gateway accepts (0: unlimited); over it, 503 with
    /// Retry-After before the upgrade.
    #[arg(long, env = "HERALD_HANDSHAKE_RATE", default_value_t = 20_000)]
    pub handshake_rate: u64,
    /// New connections a second from one source address (0: unlimited). Leave generous: many
    /// clients can share an address behind NAT.
    #[arg(long, env = "HERALD_HANDSHAKE_RATE_PER_SOURCE", default_value_t = 0)]
    pub handshake_rate_per_source: u64,
    /// Web origins whose pages may read long-poll answers (CORS), e.g.
    /// `https://app.example.com` (repeat or comma-separate), or `*` for any. Default: none (only
    /// same-origin pages; WebSocket needs no CORS). Tokens travel in the body, not in cookies.
    #[arg(
        long = "longpoll-allow-origin",
        env = "HERALD_LONGPOLL_ALLOW_ORIGINS",
        value_delimiter = ','
    )]
    pub longpoll_allow_origins: Vec<String>,
    /// Bytes queued for a socket that does not take writes before it is a slow consumer.
    #[arg(long, env = "HERALD_OUTBOX_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub outbox_limit_bytes: usize,
    /// On SIGTERM, how long `/readyz` answers 503 while the listeners still accept, so a load
    /// balancer's health check takes the gateway out before it refuses anything; then the
    /// drain begins. A second SIGTERM ends the grace early.
    #[arg(long, env = "HERALD_STOP_GRACE_MS", default_value_t = 5000)]
    pub stop_grace_ms: u64,
    /// Distributed mode: the longest a NATS server may deliver no relay heartbeat (while some
    /// partition is followed) before the gateway switches to another server of `--nats` and
    /// resyncs (0: off; relays send heartbeats every 500 ms).
    #[arg(long, env = "HERALD_RELAY_SILENCE_MS", default_value_t = 2000)]
    pub relay_silence_ms: u64,
    /// Distributed mode: do not read the journal's subjects. By default a gateway also
    /// subscribes `herald.journal.<p>.*` for the partitions with local interest, so a change
    /// comes straight from its publisher, one hop shorter than the relays' fan-out, which stays
    /// the guarantee (numbered, resynced on a gap). Set this where the NATS side has no journal
    /// publishes (below a tier-N relay), and give such gateways relays with `--vouch-ms 0`.
    #[arg(long, env = "HERALD_NO_JOURNAL_DIRECT")]
    pub no_journal_direct: bool,
    /// Seconds live clients are given to leave on SIGTERM.
    #[arg(long, env = "HERALD_DRAIN_S", default_value_t = 30)]
    pub drain_s: u64,
    /// Lifetime of the printed dev token, when no auth key is configured.
    #[arg(long, env = "HERALD_DEV_TOKEN_TTL_S", default_value_t = 86_400)]
    pub dev_token_ttl_s: u64,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Per-connection limits and timings, the slice a worker and its connections need.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// The session rules' settings: heartbeat (and by client class), handshake timeout,
    /// subscriptions per connection.
    pub session: herald_core::session::Limits,
    /// Process-wide connection cap.
    pub max_connections: usize,
    /// Queued bytes before `slow_consumer`.
    pub outbox_limit_bytes: usize,
    /// Handshakes a second for the whole gateway (0: unlimited).
    pub handshake_rate: u64,
    /// Handshakes a second per source address (0: unlimited).
    pub handshake_rate_per_source: u64,
    /// Web origins that may read long-poll answers (CORS).
    pub allowed_origins: herald_proto::cors::AllowedOrigins,
}

/// Default `--journal-compact-bytes`: 16 MiB.
pub const DEFAULT_COMPACT_BYTES: u64 = 16 * 1024 * 1024;

/// The embedded journal's settings. Build it with [`JournalConfig::new`] and set the other
/// fields after, so new fields keep a default.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Where the segments and the snapshot live.
    pub dir: PathBuf,
    /// fdatasync before acknowledging.
    pub sync: bool,
    /// Active segment size that triggers a roll and a background compaction.
    pub compact_bytes: u64,
}

impl JournalConfig {
    /// A journal in `dir`, with fdatasync when `sync`, and the other settings at their defaults.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>, sync: bool) -> Self {
        Self {
            dir: dir.into(),
            sync,
            compact_bytes: DEFAULT_COMPACT_BYTES,
        }
    }
}

impl ServeArgs {
    /// Checks every setting, naming the one that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !HEARTBEAT_MS_RANGE.contains(&self.heartbeat_ms) {
            anyhow::bail!(
                "--heartbeat-ms {} is outside {}..={} (PROTOCOL.md)",
                self.heartbeat_ms,
                HEARTBEAT_MS_RANGE.start(),
                HEARTBEAT_MS_RANGE.end()
            );
        }
        for spec in &self.heartbeat_classes {
            parse_class(spec)?;
        }
        if self.heartbeat_classes.len() > 255 {
            anyhow::bail!("--heartbeat-class: at most 255 classes");
        }
        if self.token_leeway_s > 3600 {
            anyhow::bail!(
                "--token-leeway-s {} is over an hour: fix the clocks instead",
                self.token_leeway_s
            );
        }
        if !(100..=600_000).contains(&self.handshake_timeout_ms) {
            anyhow::bail!("--handshake-timeout-ms must be within 100..=600000");
        }
        herald_proto::cors::AllowedOrigins::parse(&self.longpoll_allow_origins)
            .map_err(|e| anyhow::anyhow!("--longpoll-allow-origin: {e}"))?;
        if self.max_subscriptions == 0 {
            anyhow::bail!("--max-subscriptions must be at least 1");
        }
        if self.journal_source.is_some() && self.nats.is_some() {
            anyhow::bail!(
                "--journal-source feeds the embedded journal of a standalone gateway; with --nats, run herald-tail to publish into HERALD_JOURNAL instead"
            );
        }
        if self.partitions == 0 {
            anyhow::bail!("--partitions must be at least 1");
        }
        if self.upstream_request_timeout_ms == 0
            || self.lookup_deadline_ms < self.upstream_request_timeout_ms
        {
            anyhow::bail!(
                "--lookup-deadline-ms must be at least --upstream-request-timeout-ms (and both above 0)"
            );
        }
        if (self.tls_listen.is_some() || self.quic_listen.is_some())
            && (self.tls_cert.is_none() || self.tls_key.is_none())
        {
            anyhow::bail!("--tls-listen and --quic-listen need --tls-cert and --tls-key");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            anyhow::bail!("--tls-cert and --tls-key go together");
        }
        if self.journal_compact_bytes < 4096 {
            anyhow::bail!("--journal-compact-bytes must be at least 4096");
        }
        if self.outbox_limit_bytes < 4096 {
            anyhow::bail!("--outbox-limit-bytes must be at least 4096");
        }
        Ok(())
    }

    /// Worker count after resolving 0.
    #[must_use]
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The connection slice.
    #[must_use]
    pub fn conn_limits(&self, open_files_limit: u64) -> ConnLimits {
        // Keep a reserve of descriptors for the journal, admin connections and logs.
        let by_files = open_files_limit.saturating_sub(64).max(1) as usize;
        ConnLimits {
            session: herald_core::session::Limits {
                heartbeat: Duration::from_millis(self.heartbeat_ms),
                heartbeat_classes: self
                    .heartbeat_classes
                    .iter()
                    .filter_map(|spec| parse_class(spec).ok())
                    .map(|(name, ms)| (name, Duration::from_millis(ms)))
                    .collect(),
                handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
                max_subscriptions: self.max_subscriptions,
                token_leeway_s: self.token_leeway_s,
            },
            max_connections: match self.max_connections {
                0 => by_files,
                n => n.min(by_files),
            },
            outbox_limit_bytes: self.outbox_limit_bytes,
            handshake_rate: self.handshake_rate,
            handshake_rate_per_source: self.handshake_rate_per_source,
            // Checked in `validate`.
            allowed_origins: herald_proto::cors::AllowedOrigins::parse(
                &self.longpoll_allow_origins,
            )
            .unwrap_or_default(),
        }
    }

    /// The journal slice.
    #[must_use]
    pub fn journal(&self) -> JournalConfig {
        JournalConfig {
            compact_bytes: self.journal_compact_bytes,
            ..JournalConfig::new(self.data_dir.clone(), !self.journal_no_sync)
        }
    }
}

/// Parses `NAME=MS` of `--heartbeat-class`.
fn parse_class(spec: &str) -> anyhow::Result<(String, u64)> {
    let (name, ms) = spec
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--heartbeat-class {spec:?}: expected NAME=MS"))?;
    let ms: u64 = ms
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--heartbeat-class {spec:?}: {ms:?} is not milliseconds"))?;
    if name.trim().is_empty() || !HEARTBEAT_MS_RANGE.contains(&ms) {
        anyhow::bail!(
            "--heartbeat-class {spec:?}: needs a name and MS within {}..={}",
            HEARTBEAT_MS_RANGE.start(),
            HEARTBEAT_MS_RANGE.end()
        );
    }
    Ok((name.trim().to_owned(), ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn heartbeat_classes() {
        let cli =
            Cli::try_parse_from(["g", "--heartbeat-class", "mobile=300000,tv=20000"]).unwrap();
        cli.serve.validate().unwrap();
        let limits = cli.serve.conn_limits(1024);
        assert_eq!(limits.session.class_of(Some("tv")), 2);
        assert_eq!(limits.session.class_of(Some("car")), 0);
        assert_eq!(limits.session.heartbeat_of(1), Duration::from_secs(300));
        assert_eq!(limits.session.heartbeat_of(0), Duration::from_secs(60));
        for bad in ["mobile", "mobile=1000", "=20000", "x=abc"] {
            let cli = Cli::try_parse_from(["g", "--heartbeat-class", bad]).unwrap();
            assert!(cli.serve.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn journal_source_is_for_the_embedded_journal() {
        let url = "mysql://u@127.0.0.1:3306/meta";
        let cli = Cli::try_parse_from(["g", "--journal-source", url]).unwrap();
        cli.serve.validate().unwrap();
        assert_eq!(cli.serve.journal_source.as_deref(), Some(url));
        let cli =
            Cli::try_parse_from(["g", "--journal-source", url, "--nats", "nats://x:4222"]).unwrap();
        let e = cli.serve.validate().unwrap_err().to_string();
        assert!(e.contains("herald-tail"), "{e}");
    }
}
