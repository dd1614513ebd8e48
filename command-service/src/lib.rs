//! Executes commands arriving on NATS against the event store and relays committed events to JetStream (design §1–§3). The command path itself arrives with issue 3; today the service connects, migrates, creates the streams and reports readiness.

mod app;
mod config;

pub use app::{Application, StartupError};
pub use config::Config;
