//! Configuration shared by the services: each service's `Config` flattens these `clap` groups,
//! so every setting is a flag and an environment variable with the same documented default.
//! The defaults match what `./dev up` starts.

use std::time::Duration;

use secrecy::SecretString;

/// PostgreSQL connection settings.
#[derive(Debug, Clone, clap::Args)]
pub struct PostgresConfig {
    /// PostgreSQL URL. Holds the password, so it is never logged. May list several hosts as
    /// libpq does (what `pg_autoctl show uri` prints):
    /// `postgres://u:pw@h1:5432,h2:5432/tally?target_session_attrs=read-write`; the services
    /// then connect to the primary and follow it across a failover
    /// (`target_session_attrs` = `any`, `read-write` or `primary`).
    #[arg(
        long = "database-url",
        env = "TALLY_DATABASE_URL",
        default_value = "postgres://tally:tally@127.0.0.1:15432/tally",
        hide_default_value = true
    )]
    pub url: SecretString,
    /// Most connections the pool opens.
    #[arg(long = "db-pool-max", env = "TALLY_DB_POOL_MAX", default_value_t = 16)]
    pub pool_max: u32,
    /// How long a query waits for a pooled connection (and for the first connection) before
    /// the request fails with `unavailable`.
    #[arg(
        long = "db-acquire-timeout-ms",
        env = "TALLY_DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub acquire_timeout_ms: u64,
    /// Server-side limit on any single statement.
    #[arg(
        long = "db-statement-timeout-ms",
        env = "TALLY_DB_STATEMENT_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub statement_timeout_ms: u64,
}

impl PostgresConfig {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

/// NATS and JetStream settings.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsConfig {
    /// NATS server URLs, comma-separated (each one a separate server of one cluster).
    #[arg(
        long = "nats-url",
        env = "TALLY_NATS_URL",
        default_value = "nats://127.0.0.1:14222",
        value_delimiter = ','
    )]
    pub urls: Vec<String>,
    /// Prefix of every subject (`<prefix>.cmd.>`, `<prefix>.evt.>` ...); the stream names are
    /// derived from it (`tally` gives `TALLY_EVENTS`).
    #[arg(
        long = "subject-prefix",
        env = "TALLY_SUBJECT_PREFIX",
        default_value = "tally"
    )]
    pub subject_prefix: String,
    /// Replicas of each JetStream stream: 1 for a single server, 3 in a cluster.
    #[arg(
        long = "stream-replicas",
        env = "TALLY_STREAM_REPLICAS",
        default_value_t = 1
    )]
    pub stream_replicas: usize,
    /// How long each stream drops a re-published message by its `Nats-Msg-Id`. The server
    /// holds every id of the window in memory, hence the upper bound; below a second a retry
    /// after a slow acknowledgement could already fall outside it. Every service updates the
    /// streams at start, so set the same value on all of them.
    #[arg(
        long = "nats-duplicate-window-ms",
        env = "TALLY_NATS_DUPLICATE_WINDOW_MS",
        default_value_t = 120_000,
        value_parser = clap::value_parser!(u64).range(1_000..=86_400_000)
    )]
    pub duplicate_window_ms: u64,
    /// Partitions of the events stream (`<prefix>.evt.<type>.<id>` is stored as
    /// `<prefix>.evt.<type>.<id>.<partition>`, the partition a hash of the id): each projection
    /// runs one consumer per partition, spread over its workers. Set by whoever creates the
    /// streams (the command-service); the workers read it from the stream. A change applies to
    /// events stored from then on only: let the projections catch up first
    /// (docs/operations.md, "Projection partitions").
    #[arg(
        long = "event-partitions",
        env = "TALLY_EVENT_PARTITIONS",
        default_value_t = 4,
        value_parser = clap::value_parser!(u32).range(1..=256)
    )]
    pub event_partitions: u32,
    /// How long to wait for the NATS server when connecting.
    #[arg(
        long = "nats-connect-timeout-ms",
        env = "TALLY_NATS_CONNECT_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub connect_timeout_ms: u64,
    /// NATS user name (optional).
    #[arg(long = "nats-user", env = "TALLY_NATS_USER")]
    pub user: Option<String>,
    /// NATS password (optional; never logged).
    #[arg(
        long = "nats-password",
        env = "TALLY_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<SecretString>,
    /// Prefix of this connection's reply inboxes; default `_INBOX_<user>` (`_INBOX` without a
    /// user). One prefix per user lets the server's permissions give each user its own replies
    /// and nobody else's (`deploy/nats-server.conf`).
    #[arg(long = "nats-inbox-prefix", env = "TALLY_NATS_INBOX_PREFIX")]
    pub inbox_prefix: Option<String>,
}

/// Logging settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryConfig {
    /// Log format: `pretty` for people, `json` for log collectors.
    #[arg(
        long = "log-format",
        env = "TALLY_LOG_FORMAT",
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
    /// Log filter in `tracing` env-filter syntax.
    #[arg(long = "log", env = "TALLY_LOG", default_value = "info")]
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}
