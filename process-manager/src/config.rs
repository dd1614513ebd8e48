//! `process-manager` settings: every one a flag and an environment variable.

use std::net::SocketAddr;

use platform::auth::AuthConfig;
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
    /// With an HS256 secret configured, the process manager mints its own short-lived tokens
    /// (subject `process-manager`, scope `admin`); `iss`/`aud` as configured.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// A token file to send instead (for RS256/EdDSA installations, where only the token
    /// issuer holds the private key). Read again for every command, so it can be rotated.
    #[arg(
        long = "process-manager-token-file",
        env = "TALLY_PROCESS_MANAGER_TOKEN_FILE"
    )]
    pub token_file: Option<std::path::PathBuf>,
    /// A file holding the secret (32+ bytes) the command ids of transfer steps are derived
    /// with, so that no client can use them first; the same for every instance. Default: the
    /// HS256 secret, so it must be set where there is none (a token file).
    #[arg(
        long = "process-manager-id-secret-file",
        env = "TALLY_PROCESS_MANAGER_ID_SECRET_FILE"
    )]
    pub id_secret_file: Option<std::path::PathBuf>,
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
