//! `/v1/ops/dead-letters...`: parked aggregates and the event each is parked behind, and an
//! admin's retry or drop, set exactly as `tally dlq retry|drop` sets it (the projection worker
//! carries it out within a second).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use platform::auth::Principal;
use projections::Projection;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::problem::{ApiError, Problem};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ParkedQuery {
    /// `accounts`, `transfers`, `transactions` or `holds`; every projection when absent.
    pub projection: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ParkedList {
    pub items: Vec<ParkedAggregate>,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ParkedAggregate {
    pub projection: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The dead-lettered event's sequence in its aggregate.
    pub sequence: i64,
    pub event_type: Option<String>,
    /// Why it could not be applied (the last attempt's error).
    pub error: String,
    pub attempts: i32,
    pub parked_at: DateTime<Utc>,
    /// Later events of the aggregate waiting behind it.
    pub waiting: i64,
    /// `retry` or `drop` while an operator's request waits for the worker.
    pub action: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActionAccepted {
    pub projection: String,
    pub aggregate_id: String,
    /// `retry` or `drop`.
    pub action: String,
    /// `requested`: the worker carries it out; the aggregate leaves the list once released,
    /// or stays with a new error.
    pub status: String,
}

fn projection(name: &str) -> Result<Projection, ApiError> {
    Projection::by_name(name).ok_or_else(|| ApiError::BadRequest {
        detail: format!(
            "unknown projection `{name}` (known: {})",
            Projection::ALL.map(|p| p.name()).join(", ")
        ),
    })
}

/// Parked aggregates, oldest first, with the dead-lettered event each waits behind.
#[utoipa::path(
    get,
    path = "/v1/ops/dead-letters",
    tag = "ops",
    params(ParkedQuery),
    responses(
        (status = 200, body = ParkedList),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Unknown projection"),
    )
)]
pub async fn list(
    State(pool): State<PgPool>,
    query: Result<Query<ParkedQuery>, QueryRejection>,
) -> Result<Json<ParkedList>, ApiError> {
    let Query(query) = query?;
    let name = query.projection.as_deref().map(projection).transpose()?;
    let items = sqlx::query_as(
        "SELECT p.projection, p.aggregate_type, p.aggregate_id, p.sequence,
                p.event->>'event_type' AS event_type, p.error, p.attempts, p.parked_at,
                (SELECT count(*) FROM projection_parked_events e
                  WHERE e.projection = p.projection AND e.aggregate_type = p.aggregate_type
                    AND e.aggregate_id = p.aggregate_id) AS waiting,
                p.action
         FROM projection_parked p
         WHERE $1::text IS NULL OR p.projection = $1
         ORDER BY p.parked_at, p.projection, p.aggregate_id
         LIMIT 1000",
    )
    .bind(name.map(Projection::name))
    .fetch_all(&pool)
    .await?;
    Ok(Json(ParkedList { items }))
}

/// Apply the dead-lettered event again, then those parked behind it (admin only).
#[utoipa::path(
    post,
    path = "/v1/ops/dead-letters/{projection}/{aggregate_id}/retry",
    tag = "ops",
    params(("projection" = String, Path), ("aggregate_id" = String, Path)),
    responses(
        (status = 202, body = ActionAccepted),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Unknown projection"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not an admin token"),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "Not parked"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn retry(
    State(pool): State<PgPool>,
    Extension(principal): Extension<Principal>,
    Path((projection, aggregate_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<ActionAccepted>), ApiError> {
    act(&pool, &principal, &projection, aggregate_id, "retry").await
}

/// Skip the dead-lettered event for good and apply those parked behind it (admin only).
#[utoipa::path(
    post,
    path = "/v1/ops/dead-letters/{projection}/{aggregate_id}/drop",
    tag = "ops",
    params(("projection" = String, Path), ("aggregate_id" = String, Path)),
    responses(
        (status = 202, body = ActionAccepted),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Unknown projection"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "Not an admin token"),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "Not parked"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn drop(
    State(pool): State<PgPool>,
    Extension(principal): Extension<Principal>,
    Path((projection, aggregate_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<ActionAccepted>), ApiError> {
    act(&pool, &principal, &projection, aggregate_id, "drop").await
}

async fn act(
    pool: &PgPool,
    principal: &Principal,
    name: &str,
    aggregate_id: String,
    action: &str,
) -> Result<(StatusCode, Json<ActionAccepted>), ApiError> {
    // Before anything else: a reader learns nothing about which aggregates are parked.
    if !principal.is_admin() {
        return Err(ApiError::Forbidden {
            detail: format!("{action} of a parked aggregate needs scope admin"),
        });
    }
    let projection = projection(name)?;
    let updated = sqlx::query(
        "UPDATE projection_parked SET action = $4
         WHERE projection = $1 AND aggregate_type = $2 AND aggregate_id = $3",
    )
    .bind(projection.name())
    .bind(projection.aggregate_type())
    .bind(&aggregate_id)
    .bind(action)
    .execute(pool)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(ApiError::NotFound {
            what: format!(
                "parked aggregate {aggregate_id} in projection {}",
                projection.name()
            ),
        });
    }
    // An operator decision over the read models: who asked, in the log.
    tracing::warn!(
        actor = %principal.subject,
        projection = projection.name(),
        aggregate_id,
        action,
        "dead-letter action requested over HTTP"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(ActionAccepted {
            projection: projection.name().to_owned(),
            aggregate_id,
            action: action.to_owned(),
            status: "requested".to_owned(),
        }),
    ))
}
