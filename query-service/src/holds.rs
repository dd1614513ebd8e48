//! `/v1/holds/{id}` and `/v1/accounts/{id}/holds`: the `holds` projection. A hold is seen by
//! whoever may see its account.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use platform::auth::Principal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::accounts::{ConsistencyHeaders, Page, ReadQuery, page_end, visible};
use crate::consistency;
use crate::consistency_waits::ConsistencyWaits;
use crate::pagination;
use crate::problem::{ApiError, Problem};

const COLUMNS: &str = "hold_id, account_id, currency, amount, reference, expires_at, status,
    captured_amount, captured_to, version, placed_at, updated_at, ended_at";

const STATUSES: [&str; 4] = ["held", "captured", "voided", "expired"];

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct HoldView {
    pub hold_id: Uuid,
    pub account_id: String,
    pub currency: String,
    /// Minor units reserved.
    pub amount: i64,
    pub reference: String,
    /// When it lapses by itself; null when never.
    pub expires_at: Option<DateTime<Utc>>,
    /// `held`, `captured`, `voided` or `expired`.
    pub status: String,
    /// Minor units posted by the capture (the rest was released); 0 unless captured.
    pub captured_amount: i64,
    /// Where the capture went; null unless captured.
    pub captured_to: Option<String>,
    pub version: i64,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it was captured, voided or expired.
    pub ended_at: Option<DateTime<Utc>>,
}

/// One hold.
#[utoipa::path(
    get,
    path = "/v1/holds/{hold_id}",
    tag = "holds",
    params(("hold_id" = Uuid, Path), ReadQuery, ConsistencyHeaders),
    responses(
        (status = 200, body = HoldView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The read model did not reach the consistency token in time"),
    )
)]
pub async fn get(
    State(pool): State<PgPool>,
    Extension(principal): Extension<Principal>,
    Extension(waits): Extension<Arc<ConsistencyWaits>>,
    Path(hold_id): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<HoldView>, ApiError> {
    let Query(query) = query?;
    let not_found = || ApiError::NotFound {
        what: format!("hold {hold_id}"),
    };
    // Not a UUID: no such hold (ids are UUIDs), not a malformed request.
    let id = Uuid::parse_str(&hold_id).map_err(|_| not_found())?;
    let waited = consistency::wait(
        &pool,
        &waits,
        &headers,
        query.consistency_token.as_deref(),
        &principal,
    )
    .await;
    let waited = consistency::unless_bound(waited, principal.owner.as_deref())?;
    let hold: HoldView = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM holds h WHERE hold_id = $1
           AND ($2::text IS NULL OR EXISTS (
               SELECT 1 FROM accounts a WHERE a.account_id = h.account_id AND a.owner = $2))"
    ))
    .bind(id)
    .bind(&principal.owner)
    .fetch_optional(&pool)
    .await?
    .ok_or_else(not_found)?;
    waited?;
    Ok(Json(hold))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountHoldsQuery {
    /// Only holds in this state: `held`, `captured`, `voided` or `expired`.
    #[param(pattern = "^(held|captured|voided|expired)$")]
    pub status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    pub consistency_token: Option<String>,
}

/// An account's holds, oldest first, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account_id}/holds",
    tag = "holds",
    params(("account_id" = String, Path), AccountHoldsQuery, ConsistencyHeaders),
    responses(
        (status = 200, body = Page<HoldView>),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn of_account(
    State(pool): State<PgPool>,
    Extension(principal): Extension<Principal>,
    Extension(waits): Extension<Arc<ConsistencyWaits>>,
    Path(account_id): Path<String>,
    query: Result<Query<AccountHoldsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Page<HoldView>>, ApiError> {
    let Query(query) = query?;
    if let Some(status) = &query.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::BadRequest {
            detail: format!("status must be held, captured, voided or expired, got `{status}`"),
        });
    }
    let waited = consistency::wait(
        &pool,
        &waits,
        &headers,
        query.consistency_token.as_deref(),
        &principal,
    )
    .await;
    let waited = consistency::unless_bound(waited, principal.owner.as_deref())?;
    let limit = pagination::limit(query.limit)?;
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    if !visible(&pool, &principal, &account_id).await? {
        return Err(ApiError::NotFound {
            what: format!("account {account_id}"),
        });
    }
    waited?;
    let mut rows: Vec<HoldView> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM holds
         WHERE account_id = $1
           AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR (placed_at, hold_id) > ($3, $4))
         ORDER BY placed_at, hold_id
         LIMIT $5"
    ))
    .bind(&account_id)
    .bind(&query.status)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .bind(limit + 1)
    .fetch_all(&pool)
    .await?;
    let next_cursor = page_end(&mut rows, limit).map(|last| {
        pagination::encode(&format!(
            "{}|{}",
            last.placed_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            last.hold_id
        ))
    });
    Ok(Json(Page {
        items: rows,
        next_cursor,
    }))
}

/// A cursor of [`of_account`]: the last hold's `placed_at` and id.
fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let invalid = || ApiError::BadRequest {
        detail: "cursor is not one this API issued".into(),
    };
    let raw = pagination::decode(cursor)?;
    let (at, id) = raw.split_once('|').ok_or_else(invalid)?;
    let at = DateTime::parse_from_rfc3339(at)
        .map_err(|_| invalid())?
        .with_timezone(&Utc);
    let id = Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok((at, id))
}
