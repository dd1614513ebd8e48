//! Prometheus metrics. Each service instance registers its own on a [`Registry`] it owns (not
//! a process-wide one, so instances running side by side, as in the tests, count apart).
//! `/metrics` serves that registry and the database pool, plus what each service reads at scrape
//! time through its own `ops_http::MetricsSource`.

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
