//! Plumbing every Tally service shares, kept in one place so the services do not copy it:
//! configuration pieces, telemetry, the Postgres pool and migrations, the NATS connection and
//! JetStream streams, the ops HTTP endpoints, shutdown signalling, and returning the allocator's
//! free memory once a service is quiet.

pub mod allocator_trim;
pub mod auth;
pub mod config;
pub mod db;
pub mod inbox;
pub mod infra;
pub mod metrics;
pub mod nats;
pub mod ops_http;
pub mod process_stat;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;
