//! Projection health figures, read from the projections' own transactional bookkeeping
//! (`projection_checkpoints`, `projection_versions`, `projection_parked`), so they are exact and
//! per database. Rendered as Prometheus text on `/metrics`.

use platform::ops_http::{CHECK_TIMEOUT, MetricsSource};
use sqlx::PgPool;

#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct ProjectionFigures {
    pub projection: String,
    pub events_applied: i64,
    pub events_dropped: i64,
    /// Versions reached but neither applied nor dropped by an operator: an event jumped over.
    /// Zero by construction; a non-zero value is a bug.
    pub events_skipped: i64,
    pub parked_aggregates: i64,
    pub stream_sequence: i64,
}

/// Every projection's figures, by name.
pub async fn read(pool: &PgPool) -> Result<Vec<ProjectionFigures>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.projection, c.events_applied, c.events_dropped,
                COALESCE((SELECT sum(v.version) FROM projection_versions v WHERE v.projection = c.projection), 0)::bigint
                  - c.events_applied - c.events_dropped AS events_skipped,
                (SELECT count(*) FROM projection_parked p WHERE p.projection = c.projection) AS parked_aggregates,
                c.stream_sequence
         FROM projection_checkpoints c ORDER BY c.projection",
    )
    .fetch_all(pool)
    .await
}

/// Prometheus text exposition of `figures`.
pub fn render(figures: &[ProjectionFigures]) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: fn(&ProjectionFigures) -> i64| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for f in figures {
            out.push_str(&format!(
                "{name}{{projection=\"{}\"}} {}\n",
                f.projection,
                value(f)
            ));
        }
    };
    metric(
        "tally_projection_events_applied_total",
        "counter",
        "Events applied to the read models.",
        |f| f.events_applied,
    );
    metric(
        "tally_projection_events_dropped_total",
        "counter",
        "Dead-lettered events an operator dropped.",
        |f| f.events_dropped,
    );
    metric(
        "tally_projection_events_skipped_total",
        "counter",
        "Events jumped over without being applied or dropped (must stay 0).",
        |f| f.events_skipped,
    );
    metric(
        "tally_projection_parked_aggregates",
        "gauge",
        "Aggregates held back behind a dead-lettered event.",
        |f| f.parked_aggregates,
    );
    metric(
        "tally_projection_stream_sequence",
        "gauge",
        "Events-stream sequence the projection reached.",
        |f| f.stream_sequence,
    );
    out
}

/// The figures on `/metrics`; left out, not failed, while PostgreSQL is down or slow: the rest
/// of the page still matters then.
#[derive(Debug, Clone)]
pub struct FiguresSource {
    pub pool: PgPool,
}

#[platform::ops_http::async_trait]
impl MetricsSource for FiguresSource {
    async fn render(&self) -> String {
        match tokio::time::timeout(CHECK_TIMEOUT, read(&self.pool)).await {
            Ok(Ok(figures)) => render(&figures),
            Ok(Err(_)) | Err(_) => String::new(),
        }
    }
}
