//! Tally's test harness: real servers, isolated per test, nothing left behind.
//!
//! The first test in a process starts one nats-server (JetStream on) and one PostgreSQL on free
//! loopback ports; every test then gets its own database (cloned from a migrated template) and
//! its own subject prefix and stream names, so tests run in parallel without seeing each other.
//! The servers are children of a thread that never exits and are started with a parent-death
//! signal, so the kernel kills them when the test process ends for any reason (success, panic,
//! ctrl-c, SIGKILL).
//!
//! A test that needs replicated streams or kills a NATS node starts a cluster of its own
//! (`nats_server::NatsCluster`: three nodes, SIGKILLed when dropped) and the services on it
//! (`TestApp::spawn_with_nats_and_flags`); `TestApp::start_binary` adds instances of a service
//! as real processes a test can SIGKILL.
//!
//! A test reads like a user story:
//! ```ignore
//! let app = TestApp::spawn().await;
//! let health = app.http_get("/healthz").await;
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // test glue: a failed set-up should panic loudly

pub mod app;
pub mod binaries;
pub mod browser;
pub mod child;
pub mod client;
mod database;
pub mod nats_server;
pub mod postgres_server;
pub mod servers;
pub mod span_capture;
pub mod sse;
pub mod tally_cli;
mod tokens;

pub use app::TestApp;
pub use servers::Servers;

/// Installs the test process's subscriber once: span capture always (see `span_capture`),
/// service logs only when `TEST_LOG=1` (tests stay quiet otherwise).
pub fn init_test_logging() {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let hops = tracing_subscriber::filter::Targets::new()
            .with_target("command_service", tracing::Level::DEBUG)
            .with_target("projections", tracing::Level::DEBUG)
            .with_target("process_manager", tracing::Level::DEBUG)
            .with_target("query_service", tracing::Level::DEBUG)
            .with_target("tower_http", tracing::Level::DEBUG);
        let logs = std::env::var_os("TEST_LOG").is_some().then(|| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(
                    tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
        });
        let _ = tracing_subscriber::registry()
            .with(span_capture::CaptureLayer.with_filter(hops))
            .with(logs)
            .try_init();
    });
}
