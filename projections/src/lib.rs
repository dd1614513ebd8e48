//! Consumes the events stream with durable consumers and builds read models in PostgreSQL, checkpoint in the same transaction (design §1, §5). The consumers arrive with issue 4; today the worker connects, migrates, and reports readiness.

mod app;
mod config;

pub use app::{Application, StartupError};
pub use config::Config;
