//! `query-service` settings: every one a flag and an environment variable.

use std::net::SocketAddr;

use platform::auth::AuthConfig;
use platform::config::{NatsConfig, PostgresConfig, TelemetryConfig};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "query-service",
    version,
    about = "Tally's HTTP API over the read models."
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
    #[command(flatten)]
    pub feeds: crate::feed::FeedConfig,
    /// Requests per second one token (or, unauthenticated, one client address) may make on
    /// average; 0: unlimited.
    #[arg(
        long = "http-rate-per-s",
        env = "TALLY_HTTP_RATE_PER_S",
        default_value_t = 1_000
    )]
    pub rate_per_s: u32,
    /// Requests one token may make in a burst above the average rate.
    #[arg(
        long = "http-rate-burst",
        env = "TALLY_HTTP_RATE_BURST",
        default_value_t = 2_000
    )]
    pub rate_burst: u32,
    /// Tokens, and apart from them client addresses, whose rates are tracked at once; while
    /// that many are inside their burst window, a new one is answered `rate_limited`.
    #[arg(
        long = "http-rate-keys-max",
        env = "TALLY_HTTP_RATE_KEYS_MAX",
        default_value_t = platform::auth::RATE_KEYS_MAX_DEFAULT
    )]
    pub rate_keys_max: usize,
    /// Origins allowed to call the API from a browser (CORS), comma-separated; empty: CORS off.
    #[arg(
        long = "http-cors-origins",
        env = "TALLY_HTTP_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub cors_origins: Vec<String>,
    /// Address the HTTP API listens on. Port 0 picks a free port.
    #[arg(
        long = "http-addr",
        env = "TALLY_HTTP_ADDR",
        default_value = "127.0.0.1:8480"
    )]
    pub http_addr: SocketAddr,
    /// A request taking longer than this is answered 408 and its work cancelled.
    #[arg(
        long = "http-request-timeout-ms",
        env = "TALLY_HTTP_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub request_timeout_ms: u64,
    /// Largest request body accepted.
    #[arg(
        long = "http-body-max-bytes",
        env = "TALLY_HTTP_BODY_MAX_BYTES",
        default_value_t = 65_536
    )]
    pub body_max_bytes: usize,
    /// `/readyz` reports not ready while any projection (accounts, transfers) is more than this
    /// many events behind the events stream.
    #[arg(
        long = "ready-projection-lag-max",
        env = "TALLY_READY_PROJECTION_LAG_MAX",
        default_value_t = 10_000
    )]
    pub ready_projection_lag_max: u64,
    /// The ed25519 public key (64 hex digits, from `tally audit keygen`) audit digests must be
    /// signed with: `/v1/ops/digest` checks the latest digest against it. Unset: a signed
    /// digest is checked against the key it names, and an unsigned one passes.
    #[arg(long = "audit-public-key", env = "TALLY_AUDIT_PUBLIC_KEY")]
    pub audit_public_key: Option<String>,
    /// Accounts whose last read row `GET /v1/accounts/{id}` keeps in memory (0: none).
    #[arg(
        long = "read-cache-max",
        env = "TALLY_READ_CACHE_MAX",
        default_value_t = 50_000
    )]
    pub read_cache_max: usize,
    /// Longest a row is served from memory after it was read, should an event notification
    /// be lost; normally an account's next event retires its row at once.
    #[arg(
        long = "read-cache-ttl-ms",
        env = "TALLY_READ_CACHE_TTL_MS",
        default_value_t = 1_000
    )]
    pub read_cache_ttl_ms: u64,
}
