//! The HTTP API (axum) over the read models, plus the audit endpoints (design §6). Today it
//! serves `/healthz` and `/readyz`; the read models arrive with issue 4.

mod app;
mod config;
mod router;

pub use app::{Application, StartupError};
pub use config::Config;
