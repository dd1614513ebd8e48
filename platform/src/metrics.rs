//! Prometheus metrics. Each service instance registers its own on a [`Registry`] it owns (not
//! a process-wide one, so instances running side by side, as in the tests, count apart).
//! `/metrics` serves that registry, plus figures read at scrape time: the database pool, the
//! projections' bookkeeping, and the outbox backlog.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use sqlx::PgPool;

pub use prometheus::Error as MetricsError;

/// Latency buckets in seconds, from 1 ms to 10 s.
pub const LATENCY_BUCKETS_S: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 10.0,
];

pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, MetricsError> {
    let histogram = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    registry.register(Box::new(histogram.clone()))?;
    Ok(histogram)
}

/// The registry's metrics in Prometheus text.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding our own well-formed families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The connection pool, as Prometheus text.
pub fn pool_text(pool: &PgPool) -> String {
    let size = pool.size();
    let idle = u32::try_from(pool.num_idle()).unwrap_or(size);
    format!(
        "# HELP tally_db_pool_connections Pooled PostgreSQL connections by state.\n\
         # TYPE tally_db_pool_connections gauge\n\
         tally_db_pool_connections{{state=\"in_use\"}} {}\n\
         tally_db_pool_connections{{state=\"idle\"}} {idle}\n\
         # HELP tally_db_pool_connections_max Most connections the pool opens.\n\
         # TYPE tally_db_pool_connections_max gauge\n\
         tally_db_pool_connections_max {}\n",
        size.saturating_sub(idle),
        pool.options().get_max_connections()
    )
}

/// Backlogs are counted up to this many events (the gauge saturates there).
pub const BACKLOG_COUNTED_MAX: u64 = 100_000;

/// Committed events the outbox relay has not published yet, and how long the oldest waits.
#[derive(Debug, Clone)]
pub struct OutboxWatch {
    /// The events stream the relay's checkpoint is kept for.
    pub stream: String,
    /// `/readyz` is not ready while more events than this wait.
    pub backlog_max: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    pub events: i64,
    /// Seconds since the oldest waiting event was recorded (0 when none waits).
    pub oldest_age_s: f64,
}

impl OutboxWatch {
    /// Counted in index order from the relay's checkpoint, up to `BACKLOG_COUNTED_MAX` (or
    /// `backlog_max + 1` if larger): a join against the checkpoint row read every event (the
    /// planner cannot see the checkpoint's value), 0.6 s of PostgreSQL per scrape or readiness
    /// probe at 3 M events.
    pub async fn backlog(&self, pool: &PgPool) -> Result<Backlog, event_store::StoreError> {
        let cap = BACKLOG_COUNTED_MAX.max(self.backlog_max.saturating_add(1));
        let backlog = event_store::outbox::backlog(pool, &self.stream, i64::try_from(cap).unwrap_or(i64::MAX)).await?;
        Ok(Backlog {
            events: backlog.events,
            oldest_age_s: backlog.oldest_age_s,
        })
    }

    pub fn text(backlog: Backlog) -> String {
        format!(
            "# HELP tally_outbox_backlog_events Committed events not yet published to the events stream (counted up to 100000).\n\
             # TYPE tally_outbox_backlog_events gauge\n\
             tally_outbox_backlog_events {}\n\
             # HELP tally_outbox_publish_lag_seconds Age of the oldest committed event not yet published.\n\
             # TYPE tally_outbox_publish_lag_seconds gauge\n\
             tally_outbox_publish_lag_seconds {}\n",
            backlog.events, backlog.oldest_age_s
        )
    }
}
