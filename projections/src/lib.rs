//! Consumes the events stream with durable consumers and builds read models in PostgreSQL, with
//! each projection's checkpoint in the same transaction as its rows (docs/design/projection-exactly-once.md).
//!
//! `runner` is the consumer loop (batches, per-aggregate sequence checks, acks after commit);
//! `projection` names the read models it maintains: `accounts` (`accounts`, `account_entries`,
//! `currency_totals`, `system_account_balances`), `transfers`, `transactions` and `holds`.
//! `figures` (their bookkeeping) and `lag` (their distance behind the stream) are what
//! `/metrics` and `/readyz` say about them, here and on the query-service.

pub mod accounts;
mod app;
pub mod apply_error;
mod config;
mod dead_letters;
pub mod figures;
pub mod holds;
pub mod lag;
pub mod partitions;
mod projection;
pub mod rebuild;
pub mod runner;
pub mod transactions;
pub mod transfers;
mod versions;
mod write_lock;

pub use app::{Application, StartupError};
pub use config::Config;
pub use projection::Projection;
