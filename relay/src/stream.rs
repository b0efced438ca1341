//! The journal stream `HERALD_JOURNAL`: the server checks, its configuration, and creating it
//! idempotently (at relay start and by `herald-relay create-stream`).
//!
//! `max_msgs_per_subject = 1` makes the stream *be* the latest-SJID table: one message per
//! namespace subject, the newest. The duplicate window is short on purpose (DESIGN.md: it, not
//! the data, dominates the server's memory and restart time).

use crate::config::StreamSettings;
use async_nats::ServerInfo;
use async_nats::jetstream::{self, context::CreateStreamErrorKind, context::GetStreamErrorKind};
use async_nats::jetstream::{
    ErrorCode,
    stream::{Config, DiscardPolicy, RetentionPolicy, StorageType},
};
use herald_proto::fanout::JOURNAL_STREAM;

/// Subjects of the journal stream.
pub const JOURNAL_SUBJECTS: &str = "herald.journal.>";
/// Oldest nats-server the relay accepts (2.9 lacks what async-nats relies on, DESIGN.md).
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 10, 0);

/// Why the journal stream could not be checked or created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The server runs without JetStream (start it with `-js`).
    #[error(
        "the NATS server at {url} has no JetStream: start nats-server with -js (or `jetstream {{}}` in its config)"
    )]
    NoJetStream {
        /// Which server.
        url: String,
    },
    /// The server is older than [`MIN_SERVER_VERSION`].
    #[error("the NATS server at {url} runs nats-server {version}; Herald needs 2.10 or newer")]
    ServerTooOld {
        /// Which server.
        url: String,
        /// Its version string.
        version: String,
    },
    /// The server's version string could not be read.
    #[error("the NATS server at {url} reports an unreadable version {version:?}")]
    UnknownVersion {
        /// Which server.
        url: String,
        /// What it said.
        version: String,
    },
    /// The stream exists with a setting Herald cannot work with.
    #[error(
        "stream {JOURNAL_STREAM} exists with {setting} = {found}, but Herald needs {wanted}; fix or recreate it"
    )]
    Incompatible {
        /// The setting.
        setting: &'static str,
        /// Its value on the server.
        found: String,
        /// What Herald needs.
        wanted: String,
    },
    /// The JetStream API failed (timeout, disconnect, server busy); worth retrying.
    #[error("JetStream API: {0}")]
    Api(String),
}

impl StreamError {
    /// True when retrying cannot help (the server or the stream must be changed by an operator).
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        !matches!(self, StreamError::Api(_))
    }
}

/// What [`ensure_stream`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The stream was missing and has been created.
    Created,
    /// The stream was there with compatible settings and was left as it is.
    Existing,
}

/// Parses `2.15.1` (also `v2.15.1`, `2.11.0-beta.2`) into `(major, minor, patch)`.
#[must_use]
pub fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let v = version.trim().trim_start_matches('v');
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// Checks that the server (from the connection's INFO) has JetStream and is 2.10 or newer.
pub fn check_server(info: &ServerInfo, url: &str) -> Result<(), StreamError> {
    let version = parse_version(&info.version).ok_or_else(|| StreamError::UnknownVersion {
        url: url.to_owned(),
        version: info.version.clone(),
    })?;
    if version < MIN_SERVER_VERSION {
        return Err(StreamError::ServerTooOld {
            url: url.to_owned(),
            version: info.version.clone(),
        });
    }
    if !info.jetstream {
        return Err(StreamError::NoJetStream {
            url: url.to_owned(),
        });
    }
    Ok(())
}

/// The configuration a new journal stream gets.
#[must_use]
pub fn stream_config(settings: &StreamSettings) -> Config {
    Config {
        name: JOURNAL_STREAM.to_owned(),
        description: Some(
            "Herald journal: latest SJID per namespace (one message per subject)".into(),
        ),
        subjects: vec![JOURNAL_SUBJECTS.to_owned()],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        // Any replica answers direct gets: the relay reads the journal forward through them
        // after a reconnect, without the stream or meta leader (source::journal's catch-up).
        allow_direct: true,
        ..Config::default()
    }
}

/// Checks an existing stream's configuration. Differences that only cost resources (replicas,
/// duplicate window, discard policy) are left to the operator; the ones that break Herald fail.
pub fn check_existing(config: &Config) -> Result<(), StreamError> {
    let incompatible = |setting, found: String, wanted: &str| StreamError::Incompatible {
        setting,
        found,
        wanted: wanted.to_owned(),
    };
    if !config
        .subjects
        .iter()
        .any(|s| s == JOURNAL_SUBJECTS || s == "herald.>" || s == ">")
    {
        return Err(incompatible(
            "subjects",
            format!("{:?}", config.subjects),
            "a list holding herald.journal.>",
        ));
    }
    if config.max_messages_per_subject != 1 {
        return Err(incompatible(
            "max_msgs_per_subject",
            config.max_messages_per_subject.to_string(),
            "1 (the stream is the latest table)",
        ));
    }
    if config.retention != RetentionPolicy::Limits {
        return Err(incompatible(
            "retention",
            format!("{:?}", config.retention),
            "limits (nothing may delete a namespace's latest SJID)",
        ));
    }
    if config.storage != StorageType::File {
        return Err(incompatible(
            "storage",
            format!("{:?}", config.storage),
            "file (a server restart must not lose the journal)",
        ));
    }
    if !config.max_age.is_zero() {
        tracing::warn!(
            max_age = ?config.max_age,
            "journal stream expires messages: namespaces idle for longer are forgotten, and \
             clients with cursors for them get RESET"
        );
    }
    Ok(())
}

/// Creates the journal stream if it is missing; leaves a compatible one as it is.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<Ensured, StreamError> {
    // Two relays may start at once: after losing a create race, look again.
    for _ in 0..3 {
        match js.get_stream(JOURNAL_STREAM).await {
            Ok(mut stream) => {
                let info = stream
                    .info()
                    .await
                    .map_err(|e| StreamError::Api(e.to_string()))?;
                check_existing(&info.config)?;
                if !info.config.allow_direct {
                    allow_direct_gets(js, info.config.clone()).await;
                }
                if info.config.num_replicas != settings.replicas
                    || info.config.duplicate_window != settings.duplicate_window
                {
                    tracing::info!(
                        replicas = info.config.num_replicas,
                        duplicate_window = ?info.config.duplicate_window,
                        "journal stream exists with other replicas or duplicate window; left as it is"
                    );
                }
                return Ok(Ensured::Existing);
            }
            Err(e) if is_not_found(&e.kind()) => {}
            Err(e) => return Err(StreamError::Api(e.to_string())),
        }
        match js.create_stream(stream_config(settings)).await {
            Ok(_) => return Ok(Ensured::Created),
            Err(e) => match e.kind() {
                CreateStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NAME_EXIST => {}
                CreateStreamErrorKind::JetStreamUnavailable => {
                    return Err(StreamError::Api(
                        "JetStream did not answer (no responders): is it enabled for this account?"
                            .into(),
                    ));
                }
                _ => return Err(StreamError::Api(format!("creating {JOURNAL_STREAM}: {e}"))),
            },
        }
    }
    Err(StreamError::Api(format!(
        "{JOURNAL_STREAM} kept appearing and disappearing while being created"
    )))
}

/// Turns on `allow_direct` on a journal stream created before it was set (older relays, or an
/// operator). Without it the reconnect catch-up finds nothing and only the consumer delivers
/// what a reconnect hid, seconds later when a JetStream leader was lost: worth a warning, not
/// a refusal.
async fn allow_direct_gets(js: &jetstream::Context, mut config: Config) {
    config.allow_direct = true;
    match js.update_stream(config).await {
        Ok(_) => tracing::info!(
            stream = JOURNAL_STREAM,
            "turned on allow_direct (direct gets)"
        ),
        Err(e) => tracing::warn!(
            stream = JOURNAL_STREAM,
            error = %e,
            "could not turn on allow_direct: after a NATS reconnect, changes published meanwhile \
             may wait for the journal consumer (seconds if a JetStream leader was lost)"
        ),
    }
}

fn is_not_found(kind: &GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn info(version: &str, jetstream: bool) -> ServerInfo {
        ServerInfo {
            version: version.into(),
            jetstream,
            ..ServerInfo::default()
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.10.0"), Some((2, 10, 0)));
        assert_eq!(parse_version("2.11.0-beta.2"), Some((2, 11, 0)));
        assert_eq!(parse_version("2.10"), Some((2, 10, 0)));
        assert_eq!(parse_version("2.x.1"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("1.2.3.4"), None);
    }

    #[test]
    fn server_checks() {
        let url = "nats://x";
        assert_eq!(check_server(&info("2.15.1", true), url), Ok(()));
        assert_eq!(check_server(&info("2.10.0", true), url), Ok(()));
        assert_eq!(check_server(&info("3.0.0", true), url), Ok(()));
        let old = check_server(&info("2.9.25", true), url).unwrap_err();
        assert!(matches!(old, StreamError::ServerTooOld { .. }));
        assert!(old.to_string().contains("2.9.25") && old.to_string().contains("2.10"));
        assert!(old.is_fatal());
        assert_eq!(
            check_server(&info("2.15.1", false), url),
            Err(StreamError::NoJetStream { url: url.into() })
        );
        assert!(matches!(
            check_server(&info("junk", true), url),
            Err(StreamError::UnknownVersion { .. })
        ));
        assert!(!StreamError::Api("timeout".into()).is_fatal());
    }

    #[test]
    fn config_and_compatibility() {
        let settings = StreamSettings {
            replicas: 3,
            duplicate_window: Duration::from_secs(10),
        };
        let config = stream_config(&settings);
        assert_eq!(config.name, "HERALD_JOURNAL");
        assert_eq!(config.max_messages_per_subject, 1);
        assert_eq!(config.num_replicas, 3);
        assert_eq!(check_existing(&config), Ok(()));
        let history = Config {
            max_messages_per_subject: 10,
            ..config.clone()
        };
        assert!(
            matches!(check_existing(&history), Err(StreamError::Incompatible { setting, .. }) if setting == "max_msgs_per_subject")
        );
        let other = Config {
            subjects: vec!["other.>".into()],
            ..config.clone()
        };
        assert!(check_existing(&other).is_err());
        let memory = Config {
            storage: StorageType::Memory,
            ..config
        };
        assert!(check_existing(&memory).is_err());
    }
}
