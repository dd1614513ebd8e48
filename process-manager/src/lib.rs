//! The transfer process manager (docs/design/transfer-saga.md): reacts to each transfer event by sending the next
//! command through the normal command path, so every step is validated, recorded and
//! idempotent like any client's command.
//!
//! It keeps no state of its own. Its position is its durable JetStream consumer; the command
//! ids it sends are derived from (transfer, step), so after a crash at any point the redelivered
//! event sends the same commands again and the command log answers with their first results.

mod app;
mod command_client;
mod config;
pub mod reactions;
mod worker;

pub use app::{Application, StartupError};
pub use config::Config;
/// The durable consumer's name, for operators and tests that look at its progress.
pub use worker::CONSUMER;
