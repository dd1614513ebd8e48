//! The HTTP API (axum) over the read models, plus the audit endpoints (design §6). It serves
//! `/v1/accounts`, `/v1/accounts/{id}`, `/v1/accounts/{id}/entries`, `/v1/totals`,
//! `/v1/commands/{command_id}`, `/healthz` and `/readyz`; read-your-writes waits live in
//! `consistency`.

mod accounts;
mod app;
mod audit;
mod commands;
mod config;
mod consistency;
pub mod openapi;
mod pagination;
mod problem;
mod router;

pub use app::{Application, StartupError};
pub use config::Config;
