//! Executes commands arriving on NATS against the event store and relays committed events to
//! JetStream (ARCHITECTURE.md, "command-service"; docs/design/one-decision-pipeline.md).
//!
//! Two front doors share one executor: request/reply on `<prefix>.cmd.>` (`ingress`) and the
//! durable `<prefix>.jobs.>` stream (`jobs`). The `executor` loads an aggregate (snapshot +
//! later events), lets the domain decide, and commits the decision through the `event-store`
//! crate, which writes the events and the command log in one statement. The `relay` publishes committed events to the
//! events stream in commit-safe order.

mod access;
mod aggregate_cache;
mod aggregate_locks;
mod app;
mod audit_digests;
mod batch;
mod config;
#[cfg(test)]
mod decode_fuzz;
pub mod executor;
mod handling;
mod hold_expiry;
pub mod idempotency;
pub mod incoming;
mod ingress;
mod jobs;
mod metrics;
mod outbox_watch;
mod rejection;
mod relay;
mod schema_check;

pub use app::{Application, StartupError};
pub use config::Config;
