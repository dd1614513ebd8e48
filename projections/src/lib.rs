//! Consumes the events stream with durable consumers and builds read models in PostgreSQL, with
//! each projection's checkpoint in the same transaction as its rows (design §1, §5).
//!
//! `runner` is the consumer loop (batches, per-aggregate sequence checks, acks after commit);
//! `accounts` is the read model it maintains (`accounts`, `account_entries`, `currency_totals`).

pub mod accounts;
mod app;
mod config;
mod dead_letters;
mod event_store_reader;
pub mod rebuild;
pub mod runner;
mod versions;
mod write_lock;

pub use app::{Application, StartupError};
pub use config::Config;
