//! `command-service` settings: every one a flag and an environment variable.

use std::net::SocketAddr;

use platform::auth::AuthConfig;
use platform::config::{NatsConfig, PostgresConfig, TelemetryConfig};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "command-service",
    version,
    about = "Executes commands from NATS on the event store and relays committed events to JetStream."
)]
pub struct Config {
    #[command(flatten)]
    pub postgres: PostgresConfig,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Commands per second one actor (token subject) may send on average; 0: unlimited.
    /// Tokens with the `admin` scope are not limited.
    #[arg(
        long = "command-rate-per-s",
        env = "TALLY_COMMAND_RATE_PER_S",
        default_value_t = 1_000
    )]
    pub command_rate_per_s: u32,
    /// Commands one actor may send in a burst above the average rate.
    #[arg(
        long = "command-rate-burst",
        env = "TALLY_COMMAND_RATE_BURST",
        default_value_t = 2_000
    )]
    pub command_rate_burst: u32,
    /// `/readyz` reports not ready while more committed events than this wait for the relay.
    #[arg(
        long = "ready-outbox-backlog-max",
        env = "TALLY_READY_OUTBOX_BACKLOG_MAX",
        default_value_t = 10_000
    )]
    pub ready_outbox_backlog_max: u64,
    /// Address of the ops endpoints (`/healthz`, `/readyz`). Port 0 picks a free port.
    #[arg(
        long = "ops-addr",
        env = "TALLY_COMMAND_OPS_ADDR",
        default_value = "127.0.0.1:9181"
    )]
    pub ops_addr: SocketAddr,
    /// A command not finished within this answers `unavailable` (its work is not cancelled:
    /// a retry with the same command id gets the eventual result).
    #[arg(
        long = "command-timeout-ms",
        env = "TALLY_COMMAND_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub command_timeout_ms: u64,
    /// Commands executing at once in this instance; more wait (backpressure).
    #[arg(
        long = "commands-in-flight-max",
        env = "TALLY_COMMANDS_IN_FLIGHT_MAX",
        default_value_t = 512
    )]
    pub commands_in_flight_max: usize,
    /// Retries of a command that lost an optimistic-concurrency race (with jittered backoff).
    #[arg(
        long = "conflict-retries-max",
        env = "TALLY_CONFLICT_RETRIES_MAX",
        default_value_t = 30
    )]
    pub conflict_retries_max: u32,
    /// Take a snapshot of an aggregate every this many events (0 turns snapshots off).
    #[arg(
        long = "snapshot-every",
        env = "TALLY_SNAPSHOT_EVERY",
        default_value_t = 100
    )]
    pub snapshot_every: u64,
    /// Aggregates of each type kept in memory between commands, so a warm aggregate is not
    /// reloaded (the events after the cached one are still read); 0 turns the cache off.
    #[arg(
        long = "aggregate-cache-max",
        env = "TALLY_AGGREGATE_CACHE_MAX",
        default_value_t = 10_000
    )]
    pub aggregate_cache_max: usize,
    /// Commit the commands queued on one account together: one statement and one WAL flush
    /// for the whole group (its commands are still decided one after the other).
    #[arg(
        long = "group-commit",
        env = "TALLY_GROUP_COMMIT",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub group_commit: bool,
    /// Commands queued on one account at once (group commit); more are refused
    /// `rate_limited` at once, unrecorded. Below `commands-in-flight-max`, one hot account
    /// cannot hold every place; the default keeps a burst of that many on one account whole.
    #[arg(
        long = "account-queue-max",
        env = "TALLY_ACCOUNT_QUEUE_MAX",
        default_value_t = 512,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub account_queue_max: u32,
    /// Write statements in flight at once. Whatever queues while they run goes out together in
    /// the next one: fewer means bigger statements (less PostgreSQL CPU per command), more
    /// means less waiting at low load. Values below 1 count as 1.
    #[arg(
        long = "write-statements-max",
        env = "TALLY_WRITE_STATEMENTS_MAX",
        default_value_t = event_store::WRITE_STATEMENTS_DEFAULT
    )]
    pub write_statements_max: usize,
    /// How a transfer request is settled: `at-once` decides the debit, the credit and the
    /// settle with the request and commits all three aggregates in one transaction;
    /// `steps` records the request and leaves each step to the process manager (docs/design/transfer-saga.md).
    #[arg(
        long = "transfer-settlement",
        env = "TALLY_TRANSFER_SETTLEMENT",
        value_enum,
        default_value_t = TransferSettlement::AtOnce
    )]
    pub transfer_settlement: TransferSettlement,
    /// Most events the outbox relay publishes per batch (one checkpoint write per batch).
    #[arg(
        long = "relay-batch-max",
        env = "TALLY_RELAY_BATCH_MAX",
        default_value_t = 500
    )]
    pub relay_batch_max: i64,
    /// How often the relay looks for events when no NOTIFY woke it.
    #[arg(
        long = "relay-poll-ms",
        env = "TALLY_RELAY_POLL_MS",
        default_value_t = 200
    )]
    pub relay_poll_ms: u64,
    /// Tests only, and no flag or variable on purpose: the relay's Nth publication (1-based,
    /// counted from its start) is sent so that JetStream rejects it, once. Lets a test fail one
    /// publish in the middle of a pipelined batch against a real server.
    #[arg(skip)]
    pub relay_fail_publish: Option<u64>,
    /// Attempts of a durable command that may end in an internal error, or with no answer at
    /// all (the process died in them), before it is answered `internal`. Waiting out an outage
    /// (PostgreSQL down or too slow) never counts: that is never an answer.
    #[arg(
        long = "jobs-max-deliver",
        env = "TALLY_JOBS_MAX_DELIVER",
        default_value_t = 20
    )]
    pub jobs_max_deliver: i64,
    /// Longest pause between two attempts of a durable command that could not be decided
    /// (the pauses double from 100 ms up to this).
    #[arg(
        long = "jobs-retry-max-ms",
        env = "TALLY_JOBS_RETRY_MAX_MS",
        default_value_t = 2_000
    )]
    pub jobs_retry_max_ms: u64,
    /// Publish an audit digest (Merkle root over the hash-chain heads) to
    /// `<prefix>.audit.digest` this often; 0 turns digests off.
    #[arg(
        long = "audit-digest-interval-s",
        env = "TALLY_AUDIT_DIGEST_INTERVAL_S",
        default_value_t = 60
    )]
    pub audit_digest_interval_s: u64,
    /// A file holding an ed25519 secret key (64 hex digits, e.g. from `tally audit keygen`):
    /// digests are then signed with it. Unset: digests are published unsigned.
    #[arg(long = "audit-signing-key-file", env = "TALLY_AUDIT_SIGNING_KEY_FILE")]
    pub audit_signing_key_file: Option<std::path::PathBuf>,
    /// How often the hold expiry worker looks for holds whose `expires_at` has passed and
    /// releases them (at most 100 per round; a full round is followed at once by the next).
    #[arg(
        long = "hold-expiry-interval-ms",
        env = "TALLY_HOLD_EXPIRY_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub hold_expiry_interval_ms: u64,
}

/// How the command-service settles a transfer request (`--transfer-settlement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransferSettlement {
    /// In the request's own transaction, on all three aggregates.
    AtOnce,
    /// Step by step, by the process manager.
    Steps,
}
