//! The HTTP API (axum) over the read models, plus the audit endpoints (docs/http-api.md). It serves
//! `/v1/accounts`, `/v1/accounts/{id}` and its `entries`, `statement`, `transfers` and `holds`,
//! `/v1/transfers/{id}`, `/v1/transactions/{id}`, `/v1/holds/{id}`, `/v1/totals`,
//! `/v1/system-accounts`, `/v1/commands/{id}`, the audit endpoints, `/healthz` and `/readyz`;
//! read-your-writes waits live in `consistency` (checked together by `consistency_waits`), and
//! the in-memory account rows in `read_cache`.

mod access;
mod accounts;
mod app;
mod audit;
mod audit_flows;
mod audit_state;
mod books;
mod commands;
mod config;
mod consistency;
mod consistency_waits;
mod console;
mod feed;
mod holds;
mod http_metrics;
mod input;
pub mod openapi;
mod ops;
mod pagination;
mod problem;
mod read_cache;
mod router;
mod statement;
mod transactions;
mod transfers;

pub use app::{Application, StartupError};
pub use config::Config;
