//! `projections` settings: every one a flag and an environment variable.

use std::net::SocketAddr;

use platform::config::{NatsConfig, PostgresConfig, TelemetryConfig};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "projections",
    version,
    about = "Builds read models in PostgreSQL from the events stream."
)]
pub struct Config {
    #[command(flatten)]
    pub postgres: PostgresConfig,
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    /// Address of the ops endpoints (`/healthz`, `/readyz`). Port 0 picks a free port.
    #[arg(
        long = "ops-addr",
        env = "TALLY_PROJECTIONS_OPS_ADDR",
        default_value = "127.0.0.1:9182"
    )]
    pub ops_addr: SocketAddr,
    /// Most events applied in one transaction.
    #[arg(
        long = "projection-batch-max",
        env = "TALLY_PROJECTION_BATCH_MAX",
        default_value_t = 500
    )]
    pub batch_max: usize,
    /// `/readyz` reports not ready while any projection (accounts, transfers) is more than this
    /// many events behind the events stream.
    #[arg(
        long = "ready-projection-lag-max",
        env = "TALLY_READY_PROJECTION_LAG_MAX",
        default_value_t = 10_000
    )]
    pub ready_projection_lag_max: u64,
    /// Deliveries of an event that cannot be applied before it goes to the dead-letter stream
    /// and its aggregate is parked (`tally dlq`).
    #[arg(
        long = "projection-poison-attempts",
        env = "TALLY_PROJECTION_POISON_ATTEMPTS",
        default_value_t = 5
    )]
    pub poison_attempts: i64,
}
