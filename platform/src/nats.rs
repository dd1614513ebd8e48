//! The NATS connection, Tally's subject names, and the JetStream streams (names: docs/subjects.md; settings: docs/design/jetstream-streams.md).

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use secrecy::ExposeSecret;

use crate::config::NatsConfig;
pub use crate::inbox::{
    INBOX_PREFIX_BASE, REPLY_SUBJECT_MAX_BYTES, SERVICE_IMPORT_REPLY_PREFIX, inbox_prefix,
    is_inbox_subject,
};

/// Oldest nats-server Tally runs on: 2.9 silently ignores subject transforms, multiple filter
/// subjects and per-message TTL (see docs/design/jetstream-streams.md), and the pinned priority groups that keep
/// one durable-command consumer and one projection worker active arrived in 2.11. Older servers
/// are refused rather than trusted.
pub const SERVER_VERSION_MIN: (u64, u64) = (2, 11);

/// Published messages stay deduplicable by `Nats-Msg-Id` this long by default (2 minutes;
/// docs/design/relay-exactly-once.md); `--nats-duplicate-window-ms` sets it ([`crate::config::NatsConfig`]).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("subject prefix `{0}` must be 1 to 32 characters of A-Z, a-z, 0-9, '_' or '-'")]
    Prefix(String),
    #[error("cannot connect to NATS at {urls}")]
    Connect {
        urls: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error(
        "nats-server {found} is too old: Tally needs {}.{} or newer (older servers silently ignore JetStream features it relies on)",
        SERVER_VERSION_MIN.0,
        SERVER_VERSION_MIN.1
    )]
    ServerTooOld { found: String },
    #[error("JetStream is not enabled on the NATS server (start it with -js)")]
    JetStreamDisabled,
    #[error(
        "NATS inbox prefix `{0}` must be `_INBOX` or `_INBOX_<name>`, the name of 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-' (set --nats-inbox-prefix when the user name has others)"
    )]
    InboxPrefix(String),
    #[error("cannot create or update stream {stream}")]
    Stream {
        stream: String,
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
}

/// Every subject Tally uses, derived from one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Result<Self, NatsError> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Subjects {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(NatsError::Prefix(prefix.to_owned()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.cmd.>`: request/reply commands.
    pub fn commands(&self) -> String {
        format!("{}.cmd.>", self.prefix)
    }

    /// `<prefix>.cmd.<aggregate>.<command>`.
    pub fn command(&self, aggregate: &str, command: &str) -> String {
        format!("{}.cmd.{aggregate}.{command}", self.prefix)
    }

    /// `<prefix>.jobs.>`: durable commands.
    pub fn jobs(&self) -> String {
        format!("{}.jobs.>", self.prefix)
    }

    /// `<prefix>.jobs.<aggregate>.<command>`.
    pub fn job(&self, aggregate: &str, command: &str) -> String {
        format!("{}.jobs.{aggregate}.{command}", self.prefix)
    }

    /// `<prefix>.evt.>`.
    pub fn events(&self) -> String {
        format!("{}.evt.>", self.prefix)
    }

    /// `<prefix>.evt.<aggregate_type>.<aggregate_id>`.
    pub fn event(&self, aggregate_type: &str, aggregate_id: &str) -> String {
        format!("{}.evt.{aggregate_type}.{aggregate_id}", self.prefix)
    }

    /// `<prefix>.dlq.>`.
    pub fn dead_letters(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    /// `<prefix>.dlq.<projection>`.
    pub fn dead_letter(&self, projection: &str) -> String {
        format!("{}.dlq.{projection}", self.prefix)
    }

    /// `<prefix>.audit.digest`.
    pub fn audit_digest(&self) -> String {
        format!("{}.audit.digest", self.prefix)
    }
}

/// Stream names derived from the prefix: `tally` gives `TALLY_COMMANDS`, `TALLY_EVENTS` ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamNames {
    pub commands: String,
    pub events: String,
    pub dead_letters: String,
    pub audit: String,
}

impl StreamNames {
    pub fn for_subjects(subjects: &Subjects) -> Self {
        let base = subjects.prefix().to_ascii_uppercase().replace('-', "_");
        StreamNames {
            commands: format!("{base}_COMMANDS"),
            events: format!("{base}_EVENTS"),
            dead_letters: format!("{base}_DLQ"),
            audit: format!("{base}_AUDIT"),
        }
    }
}

/// Durable commands the commands stream holds at most; beyond, a publish is refused.
pub const COMMANDS_QUEUED_MAX: i64 = 1_000_000;

/// Largest durable command message (body up to 64 KiB, headers and token included).
pub const COMMAND_MESSAGE_MAX_BYTES: i32 = 128 * 1024;

/// First pause before reconnecting after the first failed attempt; doubles from here.
pub const RECONNECT_DELAY_FIRST: Duration = Duration::from_millis(50);
/// Longest pause between reconnect attempts. async-nats's default grows to 4 s, so a service
/// whose server came back mid-pause stayed disconnected up to 4 s longer (about 3 s measured
/// after a restart). An attempt against a server that is down costs a refused TCP connect, so
/// trying twice a second costs nothing worth saving, and every second of extra outage is a
/// second of commands refused.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_millis(500);

/// The pause before reconnect attempt `attempts` (async-nats counts from 1): none before the
/// first, then [`RECONNECT_DELAY_FIRST`] doubling up to [`RECONNECT_DELAY_MAX`], each less up
/// to a fifth at random, so that many clients of one restarted server do not all knock at the
/// same instant.
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    let delay = RECONNECT_DELAY_FIRST
        .saturating_mul(1 << doublings)
        .min(RECONNECT_DELAY_MAX);
    delay - delay.mul_f64(jitter_fraction() / 5.0)
}

/// A number in `[0, 1)`, random enough for jitter: the standard library's per-process random
/// hash keys, without a dependency for it.
fn jitter_fraction() -> f64 {
    use std::hash::BuildHasher;
    let bits = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod reconnect_delay_tests {
    use super::*;

    #[test]
    fn first_attempt_at_once_then_doubling_to_the_cap_with_jitter_below() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        let bounds = |attempts: usize| {
            let full =
                (RECONNECT_DELAY_FIRST * 2u32.pow(attempts as u32 - 2)).min(RECONNECT_DELAY_MAX);
            (full.mul_f64(0.8), full)
        };
        for attempts in 2..200 {
            for _ in 0..20 {
                let delay = reconnect_delay(attempts);
                let (low, high) = bounds(attempts.min(20));
                assert!(
                    low <= delay && delay <= high,
                    "attempt {attempts}: {delay:?} not in {low:?}..={high:?}"
                );
            }
        }
        assert!(reconnect_delay(2) <= Duration::from_millis(50));
        assert!(reconnect_delay(usize::MAX) <= RECONNECT_DELAY_MAX);
        // Jittered: not every client of a restarted server waits the same.
        let delays: std::collections::HashSet<Duration> =
            (0..50).map(|_| reconnect_delay(10)).collect();
        assert!(delays.len() > 1, "no jitter: {delays:?}");
    }
}

/// Connects, and refuses servers older than [`SERVER_VERSION_MIN`] or without JetStream.
pub async fn connect(
    config: &NatsConfig,
    client_name: &str,
) -> Result<async_nats::Client, NatsError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
        .request_timeout(Some(Duration::from_secs(5)))
        .reconnect_delay_callback(reconnect_delay)
        .custom_inbox_prefix(inbox_prefix(
            config.user.as_deref(),
            config.inbox_prefix.as_deref(),
        )?);
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
    }
    let client = options
        .connect(config.urls.as_slice())
        .await
        .map_err(|source| NatsError::Connect {
            urls: config.urls.join(","),
            source,
        })?;
    let info = client.server_info();
    if !version_at_least(&info.version, SERVER_VERSION_MIN) {
        return Err(NatsError::ServerTooOld {
            found: info.version,
        });
    }
    if !info.jetstream {
        return Err(NatsError::JetStreamDisabled);
    }
    Ok(client)
}

/// `"2.15.1"` (or `"v2.15.1"`) >= `(2, 10)`.
pub fn version_at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

/// Creates the streams, or updates them to this configuration, idempotently, with the default
/// [`DUPLICATE_WINDOW`].
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> Result<StreamNames, NatsError> {
    ensure_streams_with_window(js, subjects, replicas, DUPLICATE_WINDOW).await
}

/// Partitions of the events stream unless configured (`--event-partitions`).
pub const EVENT_PARTITIONS_DEFAULT: u32 = 4;

/// [`ensure_streams`] with the configured duplicate window (`--nats-duplicate-window-ms`). The
/// relay's exactly-once start-up does not depend on it (see `command-service/src/relay`); it
/// only decides how long a blind re-publication is dropped. The events stream gets
/// [`EVENT_PARTITIONS_DEFAULT`] partitions; [`ensure_streams_partitioned`] takes the setting.
pub async fn ensure_streams_with_window(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
    duplicate_window: Duration,
) -> Result<StreamNames, NatsError> {
    ensure_streams_partitioned(
        js,
        subjects,
        replicas,
        duplicate_window,
        EVENT_PARTITIONS_DEFAULT,
    )
    .await
}

/// The events stream's subject transform: `<prefix>.evt.<type>.<id>` is stored as
/// `<prefix>.evt.<type>.<id>.<partition>`, the partition a hash of the aggregate id (NATS
/// deterministic partitioning), so each projection can run one consumer per partition and every
/// aggregate's events stay in one of them, in order. Subscribers of the published subject
/// (core NATS) see it unchanged; only what the stream stores and its consumers filter on
/// changes.
pub fn event_partitioning(subjects: &Subjects, partitions: u32) -> stream::SubjectTransform {
    let prefix = subjects.prefix();
    stream::SubjectTransform {
        source: format!("{prefix}.evt.*.*"),
        destination: format!(
            "{prefix}.evt.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({partitions},2)}}}}"
        ),
    }
}

/// The partition count of an events stream's configuration (from its subject transform); `None`
/// for a stream without one (created before partitions, or not Tally's).
pub fn event_partitions_of(config: &stream::Config) -> Option<u32> {
    let destination = &config.subject_transform.as_ref()?.destination;
    let start = destination.find("{{partition(")? + "{{partition(".len();
    let rest = &destination[start..];
    rest[..rest.find(',')?].trim().parse().ok()
}

/// [`ensure_streams_with_window`] with the events stream's partition count
/// (`--event-partitions`). Changing it on an existing stream changes the subjects of events
/// stored from then on only (docs/operations.md, "Projection partitions").
pub async fn ensure_streams_partitioned(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
    duplicate_window: Duration,
    event_partitions: u32,
) -> Result<StreamNames, NatsError> {
    let names = StreamNames::for_subjects(subjects);
    let stream = |name: &str, description: &str, subject: String, retention| stream::Config {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        subjects: vec![subject],
        retention,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window,
        // Nobody, whatever their rights, may purge a stream or erase a message through the
        // JetStream API: the events stream is the ledger's published history.
        deny_purge: true,
        deny_delete: true,
        ..Default::default()
    };
    let configs = [
        stream::Config {
            // Clients write here: bounded, and refusing new messages when full rather than
            // dropping queued commands. A body is at most 64 KiB; the rest is for headers.
            max_messages: COMMANDS_QUEUED_MAX,
            max_message_size: COMMAND_MESSAGE_MAX_BYTES,
            discard: stream::DiscardPolicy::New,
            ..stream(
                &names.commands,
                "Durable commands; removed once executed (results live in the command log)",
                subjects.jobs(),
                stream::RetentionPolicy::WorkQueue,
            )
        },
        stream::Config {
            subject_transform: Some(event_partitioning(subjects, event_partitions.max(1))),
            ..stream(
                &names.events,
                "Every committed event, once, in per-aggregate order",
                subjects.events(),
                stream::RetentionPolicy::Limits,
            )
        },
        stream(
            &names.dead_letters,
            "Events a projection could not apply, with the error",
            subjects.dead_letters(),
            stream::RetentionPolicy::Limits,
        ),
        stream(
            &names.audit,
            "Signed digests of the hash-chain heads",
            subjects.audit_digest(),
            stream::RetentionPolicy::Limits,
        ),
    ];
    for config in configs {
        // A stream already as configured is left alone, so a service whose NATS user may not
        // change streams (only the command-service may, `deploy/nats-server.conf`) starts once
        // the streams exist; one that finds them different tries to update them and, without
        // the right, fails at start rather than run on other settings.
        if let Ok(mut existing) = js.get_stream(&config.name).await
            && let Ok(info) = existing.info().await
            && same_settings(&info.config, &config)
        {
            continue;
        }
        let stream = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|source| NatsError::Stream { stream, source })?;
    }
    Ok(names)
}

/// Whether `existing` has every setting Tally gives its streams as `wanted` has it (the server
/// reports "no limit" as -1 where the request said 0).
fn same_settings(existing: &stream::Config, wanted: &stream::Config) -> bool {
    let limit = |value: i64| if value <= 0 { -1 } else { value };
    existing.subjects == wanted.subjects
        && existing.retention == wanted.retention
        && existing.storage == wanted.storage
        && existing.num_replicas == wanted.num_replicas
        && existing.duplicate_window == wanted.duplicate_window
        && existing.deny_purge == wanted.deny_purge
        && existing.deny_delete == wanted.deny_delete
        && limit(existing.max_messages) == limit(wanted.max_messages)
        && limit(existing.max_message_size.into()) == limit(wanted.max_message_size.into())
        && existing.discard == wanted.discard
        && existing.description == wanted.description
        && existing.subject_transform == wanted.subject_transform
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_count_reads_back_from_the_transform() {
        let Ok(subjects) = Subjects::new("tally") else {
            panic!("a valid prefix")
        };
        let transform = event_partitioning(&subjects, 8);
        assert_eq!(transform.source, "tally.evt.*.*");
        assert_eq!(
            transform.destination,
            "tally.evt.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(8,2)}}"
        );
        let config = stream::Config {
            subject_transform: Some(transform),
            ..Default::default()
        };
        assert_eq!(event_partitions_of(&config), Some(8));
        assert_eq!(event_partitions_of(&stream::Config::default()), None);
    }

    #[test]
    fn versions() {
        assert!(version_at_least("2.15.1", (2, 10)));
        assert!(version_at_least("v2.10.0", (2, 10)));
        assert!(version_at_least("3.0.0", (2, 10)));
        assert!(!version_at_least("2.9.10", (2, 10)));
        assert!(!version_at_least("garbage", (2, 10)));
    }

    #[test]
    fn names_follow_the_prefix() {
        let subjects = Subjects::new("tally").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            subjects.command("account", "deposit"),
            "tally.cmd.account.deposit"
        );
        assert_eq!(subjects.event("account", "a1"), "tally.evt.account.a1");
        let names = StreamNames::for_subjects(&subjects);
        assert_eq!(names.events, "TALLY_EVENTS");
        assert_eq!(names.commands, "TALLY_COMMANDS");
        let test = Subjects::new("t-42").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(StreamNames::for_subjects(&test).dead_letters, "T_42_DLQ");
        assert!(Subjects::new("a.b").is_err());
        assert!(Subjects::new("").is_err());
    }
}
