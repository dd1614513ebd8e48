//! `command-service` settings: every one a flag and an environment variable.

use std::net::SocketAddr;

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
    /// Address of the ops endpoints (`/healthz`, `/readyz`). Port 0 picks a free port.
    #[arg(
        long = "ops-addr",
        env = "TALLY_COMMAND_OPS_ADDR",
        default_value = "127.0.0.1:9181"
    )]
    pub ops_addr: SocketAddr,
}
