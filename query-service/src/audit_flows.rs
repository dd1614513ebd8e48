//! `/v1/audit/correlations/{id}/events`: one flow's events across aggregates, such as a
//! transfer's own events and its steps on both accounts, with who/why and hashes.

use audit::history;
use axum::Json;
use axum::extract::{Path, State};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::AuditEvent;
use crate::problem::{ApiError, Problem};

/// Every event whose `correlation_id` is the given id (a transfer's id), in the order stored;
/// at most 1,000.
#[utoipa::path(
    get,
    path = "/v1/audit/correlations/{correlation_id}/events",
    tag = "audit",
    params(("correlation_id" = Uuid, Path)),
    responses(
        (status = 200, body = Vec<AuditEvent>),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn events(
    State(pool): State<PgPool>,
    Path(correlation_id): Path<String>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    let not_found = || ApiError::NotFound {
        what: format!("events correlated with {correlation_id}"),
    };
    let id = Uuid::parse_str(&correlation_id).map_err(|_| not_found())?;
    let rows = history::correlated_events(&pool, id).await?;
    if rows.is_empty() {
        return Err(not_found());
    }
    Ok(Json(rows.into_iter().map(AuditEvent::from).collect()))
}
