//! `GET /v1/commands/{command_id}`: the recorded result of a command (durable ones included).

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::problem::ApiError;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandRecord {
    pub command_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// `accepted` or `rejected`.
    pub status: String,
    /// The reply the command got (`schemas/replies/command-reply.json`; docs/subjects.md, "Replies").
    #[schema(value_type = Object)]
    pub reply: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

/// The recorded result of a command, durable ones included.
///
/// The record is always the first command's: a reuse of its id by another sender or for another
/// command is answered `idempotency_mismatch` (see `schemas/replies/command-reply.json`) and never
/// recorded.
#[utoipa::path(
    get,
    path = "/v1/commands/{command_id}",
    tag = "commands",
    params(("command_id" = uuid::Uuid, Path, description = "The command id")),
    responses(
        (status = 200, body = CommandRecord),
        (status = 400, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(pool): State<PgPool>,
    Path(raw): Path<String>,
) -> Result<Json<CommandRecord>, ApiError> {
    let command_id = Uuid::parse_str(&raw).map_err(|_| ApiError::BadRequest {
        detail: format!("`{raw}` is not a command id (a UUID)"),
    })?;
    let record = event_store::command_log::record(&pool, command_id).await?;
    record
        .map(|r| {
            Json(CommandRecord {
                command_id: r.command_id,
                aggregate_type: r.aggregate_type,
                aggregate_id: r.aggregate_id,
                status: r.status,
                reply: r.reply,
                recorded_at: r.recorded_at,
            })
        })
        .ok_or_else(|| ApiError::NotFound {
            what: format!("command {command_id}"),
        })
}
