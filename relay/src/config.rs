//! Settings: command-line flags with `HERALD_*` environment overrides, validated once at start.
//! Components receive only their slice ([`StreamSettings`], [`FanoutSettings`]), never the whole.

use clap::{Args, Parser, Subcommand};
use herald_proto::fanout::DEFAULT_PARTITIONS;
use std::net::SocketAddr;
use std::time::Duration;

/// Most partitions a deployment may configure (one fan-out subject and one latest subject each).
pub const MAX_PARTITIONS: u64 = 1 << 20;
/// Longest coalescing delay: the whole delivery bound is 1 s (PROTOCOL.md), keep most of it.
pub const MAX_COALESCE_US: u64 = 100_000;
/// Longest vouching delay: a change the direct path lost is delivered by the vouch, within the
/// 1 s delivery bound (PROTOCOL.md).
pub const MAX_VOUCH_MS: u64 = 900;
/// The vouching delay of a tier-0 relay when `--vouch-ms` is not given.
pub const DEFAULT_VOUCH_MS: u64 = 500;
/// Bounds of the journal's duplicate window. DESIGN.md: the window, not the data, dominates the
/// server's memory and restart time, so it is kept short.
pub const DUPLICATE_WINDOW_S_RANGE: std::ops::RangeInclusive<u64> = 1..=300;

/// The `herald-relay` command line.
#[derive(Debug, Parser)]
#[command(
    name = "herald-relay",
    version,
    about = "Herald relay: journal → latest table → fan-out and latest look-ups",
    // A flag given twice takes its last value, so wrappers and tests can append overrides.
    args_override_self = true
)]
pub struct Cli {
    /// What to do; without a subcommand the relay serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Relay settings (used when serving).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the journal stream if it is missing (a relay also does this when it starts).
    CreateStream {
        /// The NATS server.
        #[command(flatten)]
        nats: NatsArgs,
        /// The stream's settings.
        #[command(flatten)]
        stream: StreamArgs,
    },
    /// Publish `ns:sjid` pairs to the journal, as a metaserver would, and wait for every ack.
    Publish(PublishArgs),
}

/// Where the NATS server is.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL, or several comma-separated (nats-server 2.10 or newer, with JetStream).
    #[arg(long, env = "HERALD_NATS", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
}

/// Settings of the journal stream, applied when the relay creates it.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// Replicas of the journal stream (1 for a single server, 3 for a cluster).
    #[arg(long, env = "HERALD_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// Duplicate window of the journal stream, seconds. Keep it short: it dominates server memory.
    #[arg(long, env = "HERALD_DUPLICATE_WINDOW_S", default_value_t = 10)]
    pub duplicate_window_s: u64,
}

/// `publish` arguments.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The NATS server.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Partitions of the deployment (the same on publishers and relays).
    #[arg(long, env = "HERALD_PARTITIONS", default_value_t = DEFAULT_PARTITIONS)]
    pub partitions: u64,
    /// Changes as `ns:sjid` (decimal), e.g. `7:42 9:3`.
    #[arg(required = true, value_name = "NS:SJID")]
    pub changes: Vec<String>,
}

/// Settings of a serving relay.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The NATS server.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The journal stream's settings.
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Partitions of the deployment (the same on publishers, relays and gateways).
    #[arg(long, env = "HERALD_PARTITIONS", default_value_t = DEFAULT_PARTITIONS)]
    pub partitions: u64,
    /// How long raised changes of a partition are gathered before one batch goes out,
    /// microseconds. 0 (the default) publishes at once, batching only what is already queued:
    /// under load that coalesces by itself, and a timer below a millisecond costs more latency
    /// than it saves (tokio's timer has 1 ms resolution; the fan-out benchmark measured ~1.5 ms
    /// more p50 with 200 µs than with 0).
    #[arg(long, env = "HERALD_COALESCE_US", default_value_t = 0)]
    pub coalesce_us: u64,
    /// Vouching (tier 0): gateways read each change straight from the journal's subjects
    /// (herald-gateway's default), so the fan-out only has to vouch for what they may have
    /// lost: the relay pulls the journal every this many milliseconds (a pull consumer, what
    /// was stored since the last pull in one reply) and sends each pull's changes as one
    /// numbered batch per partition (a gap in it still resyncs). The relay's and the broker's
    /// work per change goes with it. 0: a push consumer, every change at once
    /// (`--coalesce-us`), for gateways that do not read the journal. Default 500 on tier 0; a
    /// tier-N relay always fans out at once (its gateways cannot see the journal).
    #[arg(long, env = "HERALD_VOUCH_MS")]
    pub vouch_ms: Option<u64>,
    /// Tier 0: also read the journal's subjects with a plain subscription (the *tap*), so the
    /// latest table, the look-ups and the fan-out have a change before JetStream delivers it,
    /// also while the consumer is being recreated after a NATS node failed. Default: on without
    /// vouching, off with it (the tap would wake the relay for every change, and each tapped
    /// change goes out at once, as with `--vouch-ms 0`); off, look-ups answered by this relay
    /// can be up to one pull period stale, which vouching gateways cover (they read the
    /// journal themselves).
    #[arg(long, env = "HERALD_JOURNAL_TAP", action = clap::ArgAction::Set)]
    pub journal_tap: Option<bool>,
    /// How often every partition gets a heartbeat (an empty batch with the last seq), so
    /// gateways notice a new relay or a lost last batch; milliseconds.
    #[arg(long, env = "HERALD_HEARTBEAT_MS", default_value_t = 500)]
    pub heartbeat_ms: u64,
    /// Admin listener (health, readiness, metrics). Keep it on loopback or a private network.
    #[arg(long, env = "HERALD_ADMIN_LISTEN", default_value = "127.0.0.1:9190")]
    pub admin_listen: SocketAddr,
    /// Tier N: follow the relay tier on this NATS server (its herald.fanout.* and
    /// herald.latest.*) instead of reading the journal, and serve this side on --nats.
    #[arg(long, env = "HERALD_UPSTREAM_NATS")]
    pub upstream_nats: Option<String>,
    /// Tier N: time allowed for one look-up request to the upstream tier.
    #[arg(
        long,
        env = "HERALD_UPSTREAM_REQUEST_TIMEOUT_MS",
        default_value_t = 1000
    )]
    pub upstream_request_timeout_ms: u64,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// The journal stream's settings, the slice stream creation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// Replicas.
    pub replicas: usize,
    /// De-duplication window of `Nats-Msg-Id`.
    pub duplicate_window: Duration,
}

/// The fan-out publisher's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutSettings {
    /// Partitions of the deployment.
    pub partitions: u64,
    /// How long a partition's changes are gathered before they go out.
    pub coalesce: Duration,
    /// How often each partition's heartbeat goes out.
    pub heartbeat: Duration,
}

/// Checks the partition count, naming the flag.
pub fn validate_partitions(partitions: u64) -> anyhow::Result<()> {
    if !(1..=MAX_PARTITIONS).contains(&partitions) {
        anyhow::bail!("--partitions {partitions} must be within 1..={MAX_PARTITIONS}");
    }
    Ok(())
}

/// Checks a NATS URL's shape, naming the flag (the connection itself is tried later).
pub fn validate_nats(nats: &NatsArgs) -> anyhow::Result<()> {
    if nats.nats.trim().is_empty() {
        anyhow::bail!("--nats must name a server, e.g. nats://127.0.0.1:4222");
    }
    Ok(())
}

impl StreamArgs {
    /// Checks every setting, naming the one that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=5).contains(&self.replicas) {
            anyhow::bail!(
                "--replicas {} must be within 1..=5 (JetStream's limit)",
                self.replicas
            );
        }
        if !DUPLICATE_WINDOW_S_RANGE.contains(&self.duplicate_window_s) {
            anyhow::bail!(
                "--duplicate-window-s {} must be within {}..={} (a long window costs server memory)",
                self.duplicate_window_s,
                DUPLICATE_WINDOW_S_RANGE.start(),
                DUPLICATE_WINDOW_S_RANGE.end()
            );
        }
        Ok(())
    }

    /// The stream slice.
    #[must_use]
    pub fn settings(&self) -> StreamSettings {
        StreamSettings {
            replicas: self.replicas,
            duplicate_window: Duration::from_secs(self.duplicate_window_s),
        }
    }
}

impl ServeArgs {
    /// Checks every setting, naming the one that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        validate_nats(&self.nats)?;
        self.stream.validate()?;
        validate_partitions(self.partitions)?;
        if self.coalesce_us > MAX_COALESCE_US {
            anyhow::bail!(
                "--coalesce-us {} must be at most {MAX_COALESCE_US} (the delivery bound is 1 s)",
                self.coalesce_us
            );
        }
        if let Some(vouch) = self.vouch_ms {
            if vouch > MAX_VOUCH_MS {
                anyhow::bail!(
                    "--vouch-ms {vouch} must be at most {MAX_VOUCH_MS} (the delivery bound is 1 s)"
                );
            }
            if vouch > 0 && self.upstream_nats.is_some() {
                anyhow::bail!(
                    "--vouch-ms {vouch} needs the journal: a tier-N relay (--upstream-nats) \
                     fans out at once, its gateways cannot read the journal's subjects"
                );
            }
        }
        if !(10..=10_000).contains(&self.heartbeat_ms) {
            anyhow::bail!(
                "--heartbeat-ms {} must be within 10..=10000 (the delivery bound is 1 s)",
                self.heartbeat_ms
            );
        }
        Ok(())
    }

    /// The vouching delay in effect (zero: every change goes out at once).
    #[must_use]
    pub fn vouch(&self) -> Duration {
        let default = if self.upstream_nats.is_some() {
            0
        } else {
            DEFAULT_VOUCH_MS
        };
        Duration::from_millis(self.vouch_ms.unwrap_or(default))
    }

    /// Whether the journal source runs the tap (see `--journal-tap`).
    #[must_use]
    pub fn journal_tap(&self) -> bool {
        self.journal_tap.unwrap_or(self.vouch().is_zero())
    }

    /// How often a vouching relay pulls the journal (`None`: a push consumer, every change at
    /// once).
    #[must_use]
    pub fn journal_pull(&self) -> Option<Duration> {
        Some(self.vouch()).filter(|v| !v.is_zero())
    }

    /// The fan-out slice.
    #[must_use]
    pub fn fanout(&self) -> FanoutSettings {
        FanoutSettings {
            partitions: self.partitions,
            // Vouching: the pull period is the gathering; each pull's changes go out at once
            // (one batch per partition, as they are queued together).
            coalesce: if self.journal_pull().is_some() {
                Duration::ZERO
            } else {
                Duration::from_micros(self.coalesce_us)
            },
            heartbeat: Duration::from_millis(self.heartbeat_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("herald-relay").chain(args.iter().copied()))
            .expect("parses")
    }

    #[test]
    fn defaults_are_valid() {
        let cli = parse(&[]);
        assert!(cli.command.is_none());
        cli.serve.validate().expect("defaults");
        assert_eq!(cli.serve.partitions, 64);
        // Vouching by default: the journal is pulled every 500 ms, each pull goes out at once,
        // and the tap is off.
        assert_eq!(cli.serve.journal_pull(), Some(Duration::from_millis(500)));
        assert_eq!(cli.serve.fanout().coalesce, Duration::ZERO);
        assert!(!cli.serve.journal_tap());
        let tapped = parse(&["--vouch-ms", "200", "--journal-tap", "true"]);
        assert!(tapped.serve.journal_tap());
        assert_eq!(
            tapped.serve.journal_pull(),
            Some(Duration::from_millis(200))
        );
        let at_once = parse(&["--vouch-ms", "0", "--coalesce-us", "2000"]);
        assert_eq!(at_once.serve.fanout().coalesce, Duration::from_millis(2));
        assert_eq!(at_once.serve.journal_pull(), None);
        assert!(at_once.serve.journal_tap());
        let tier_n = parse(&["--upstream-nats", "nats://up:4222"]);
        tier_n.serve.validate().expect("tier N");
        assert_eq!(tier_n.serve.fanout().coalesce, Duration::ZERO);
        assert_eq!(tier_n.serve.journal_pull(), None);
        assert_eq!(
            cli.serve.stream.settings().duplicate_window,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn bad_settings_name_the_flag() {
        for (args, flag) in [
            (&["--partitions", "0"][..], "--partitions"),
            (&["--replicas", "7"], "--replicas"),
            (&["--duplicate-window-s", "0"], "--duplicate-window-s"),
            (&["--coalesce-us", "5000000"], "--coalesce-us"),
            (&["--vouch-ms", "1000"], "--vouch-ms"),
            (
                &["--vouch-ms", "100", "--upstream-nats", "nats://up:4222"],
                "--vouch-ms",
            ),
            (&["--nats", " "], "--nats"),
        ] {
            let err = parse(args).serve.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn subcommands() {
        let cli = parse(&["publish", "--partitions", "8", "7:42", "9:3"]);
        match cli.command {
            Some(Command::Publish(p)) => {
                assert_eq!(p.partitions, 8);
                assert_eq!(p.changes, ["7:42", "9:3"]);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["create-stream", "--replicas", "3"]);
        assert!(matches!(
            cli.command,
            Some(Command::CreateStream { stream, .. }) if stream.replicas == 3
        ));
    }
}
