//! `process-manager` settings: every one a flag and an environment variable.

use std::net::SocketAddr;

use platform::config::{NatsConfig, PostgresConfig, TelemetryConfig};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "process-manager",
    version,
    about = "Drives transfers step by step: reacts to transfer events by sending the next command."
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
        env = "TALLY_PROCESS_MANAGER_OPS_ADDR",
        default_value = "127.0.0.1:9183"
    )]
    pub ops_addr: SocketAddr,
    /// Transfer events handled at once (each waits for one or two command replies).
    #[arg(
        long = "process-manager-in-flight-max",
        env = "TALLY_PROCESS_MANAGER_IN_FLIGHT_MAX",
        default_value_t = 64
    )]
    pub in_flight_max: usize,
    /// How long to wait for a command's reply before trying the event again later.
    #[arg(
        long = "process-manager-command-timeout-ms",
        env = "TALLY_PROCESS_MANAGER_COMMAND_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub command_timeout_ms: u64,
}
