//! Plumbing every Tally service shares, kept in one place so the services do not copy it:
//! configuration pieces, telemetry, the Postgres pool and migrations, the NATS connection and
//! JetStream streams, the ops HTTP endpoints, and shutdown signalling.

pub mod auth;
pub mod config;
pub mod db;
pub mod infra;
pub mod metrics;
pub mod nats;
pub mod ops_http;
pub mod projection_metrics;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;

/// Every binary that links the platform allocates with mimalloc. With glibc's allocator a
/// quarter of the command-service's CPU under load went to `malloc`/`free` (perf, `./dev bench
/// commands --rate 5000`): each command allocates many small, short-lived buffers (JSON, NATS
/// headers, rows), the case glibc's arenas handle worst.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
