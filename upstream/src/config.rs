//! Settings of an [`crate::Upstream`].

use std::time::Duration;

/// Which partitions to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only partitions with interest, and only changes to namespaces with interest (gateways).
    Interest,
    /// Every partition and every change (tier-N relays, which serve a whole downstream side).
    All,
}

/// Settings of an upstream connection.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    /// Partition count (the same on publishers, relays and gateways).
    pub partitions: u64,
    /// What to follow.
    pub scope: Scope,
    /// Time allowed for one `herald.latest.<p>` request.
    pub request_timeout: Duration,
    /// How long a look-up keeps retrying (no relay ready, timeouts) before it fails.
    pub lookup_deadline: Duration,
    /// Connection name shown by the NATS server.
    pub name: String,
    /// Longest silence (no fan-out batch or relay heartbeat on any followed partition) before
    /// the connected NATS server is taken for hung: switch to another server and resync
    /// ([`crate::watchdog`]). `None`: off.
    pub relay_silence: Option<Duration>,
    /// Also read the journal's subjects (`herald.journal.<p>.*`) of every followed partition
    /// with a plain subscription, so a change arrives straight from its publisher instead of
    /// through a relay's fan-out. The relays' numbered fan-out stays the guarantee: it still
    /// carries every change (coalesced, when the relays run with `--vouch-ms`), and a gap in it
    /// still resyncs. On a NATS side where nobody publishes the journal (below a tier-N relay)
    /// this subscription simply stays quiet.
    pub journal_direct: bool,
}

/// The servers of a comma-separated NATS URL list (blanks trimmed, empty items dropped).
#[must_use]
pub fn servers(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

impl UpstreamConfig {
    /// The servers of `nats_url`, split at commas (blanks around each trimmed, empty items
    /// dropped). The NATS client parses one string as one URL, so a list must go as a list.
    #[must_use]
    pub fn servers(&self) -> Vec<&str> {
        servers(&self.nats_url)
    }

    /// Defaults for `nats_url`: 64 partitions, interest scope, 1 s requests, 10 s look-ups,
    /// 2 s relay silence, journal subjects read directly.
    #[must_use]
    pub fn new(nats_url: impl Into<String>) -> Self {
        UpstreamConfig {
            nats_url: nats_url.into(),
            partitions: herald_proto::fanout::DEFAULT_PARTITIONS,
            scope: Scope::Interest,
            request_timeout: Duration::from_secs(1),
            lookup_deadline: Duration::from_secs(10),
            name: "herald".into(),
            relay_silence: Some(Duration::from_secs(2)),
            journal_direct: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_split_at_commas() {
        let one = UpstreamConfig::new("nats://127.0.0.1:4222");
        assert_eq!(one.servers(), ["nats://127.0.0.1:4222"]);
        let many = UpstreamConfig::new("nats://a:1, nats://b:2,,nats://c:3 ");
        assert_eq!(many.servers(), ["nats://a:1", "nats://b:2", "nats://c:3"]);
    }
}
