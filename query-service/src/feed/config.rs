//! The change feed's limits: every one a flag and an environment variable.

/// Bounds on the change feeds one query-service instance serves.
#[derive(Debug, Clone, clap::Args)]
pub struct FeedConfig {
    /// Change feeds open at once on this instance; beyond it a new one is answered 503.
    #[arg(long = "feeds-max", env = "TALLY_FEEDS_MAX", default_value_t = 2_000)]
    pub total_max: usize,
    /// Change feeds one token (subject) may hold open at once; beyond it, 429 (an `admin`
    /// token only counts against `--feeds-max`).
    #[arg(
        long = "feeds-per-token-max",
        env = "TALLY_FEEDS_PER_TOKEN_MAX",
        default_value_t = 16
    )]
    pub per_token_max: usize,
    /// Events buffered per feed for its client to read.
    #[arg(
        long = "feed-buffer-events",
        env = "TALLY_FEED_BUFFER_EVENTS",
        default_value_t = 256,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub buffer_events: u16,
    /// A client that leaves its buffer full this long is dropped (`event: end`, `slow_reader`).
    #[arg(
        long = "feed-slow-reader-ms",
        env = "TALLY_FEED_SLOW_READER_MS",
        default_value_t = 5_000
    )]
    pub slow_reader_ms: u64,
    /// A comment line is sent on a quiet feed this often, so proxies keep it open.
    #[arg(
        long = "feed-heartbeat-ms",
        env = "TALLY_FEED_HEARTBEAT_MS",
        default_value_t = 15_000
    )]
    pub heartbeat_ms: u64,
    /// A feed ends (`event: end`, `max_age`) this long after it opened; clients reconnect
    /// with `Last-Event-ID`, which spreads them over instances again.
    #[arg(
        long = "feed-max-age-ms",
        env = "TALLY_FEED_MAX_AGE_MS",
        default_value_t = 3_600_000
    )]
    pub max_age_ms: u64,
    /// Accounts an owner's feed may cover; an owner with more is followed account by account.
    #[arg(
        long = "feed-owner-accounts-max",
        env = "TALLY_FEED_OWNER_ACCOUNTS_MAX",
        default_value_t = 1_000
    )]
    pub owner_accounts_max: usize,
}
