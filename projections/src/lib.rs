//! Consumes the events stream with durable consumers and builds read models in PostgreSQL, with
//! each projection's checkpoint in the same transaction as its rows (design §1, §5).
//!
//! `runner` is the consumer loop (batches, per-aggregate sequence checks, acks after commit);
//! `projection` names the read models it maintains: `accounts` (`accounts`, `account_entries`,
//! `currency_totals`) and `transfers`.

pub mod accounts;
mod app;
mod config;
mod dead_letters;
mod event_store_reader;
mod projection;
pub mod rebuild;
pub mod runner;
pub mod transfers;
mod versions;
mod write_lock;

pub use app::{Application, StartupError};
pub use config::Config;
pub use projection::Projection;
