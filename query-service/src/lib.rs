//! The HTTP API (axum) over the read models, plus the audit endpoints (design §6). Today it
//! serves `/healthz`, `/readyz` and `/v1/commands/{command_id}`; the read models arrive with
//! issue 4.

mod app;
mod commands;
mod config;
mod problem;
mod router;

pub use app::{Application, StartupError};
pub use config::Config;
