//! Tally's test harness: real servers, isolated per test, nothing left behind.
//!
//! The first test in a process starts one nats-server (JetStream on) and one PostgreSQL on free
//! loopback ports; every test then gets its own database (cloned from a migrated template) and
//! its own subject prefix and stream names, so tests run in parallel without seeing each other.
//! The servers are children of a thread that never exits and are started with a parent-death
//! signal, so the kernel kills them when the test process ends for any reason (success, panic,
//! ctrl-c, SIGKILL).
//!
//! A test reads like a user story:
//! ```ignore
//! let app = TestApp::spawn().await;
//! let health = app.http_get("/healthz").await;
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // test glue: a failed set-up should panic loudly

pub mod app;
pub mod binaries;
pub mod child;
pub mod client;
mod database;
pub mod nats_server;
pub mod postgres_server;
pub mod servers;
pub mod tally_cli;
mod tokens;

pub use app::TestApp;
pub use servers::Servers;

/// Logs from the services under test, only when `TEST_LOG=1` (tests stay quiet otherwise).
pub fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
    }
}
