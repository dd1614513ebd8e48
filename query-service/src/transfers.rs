//! `/v1/transfers/{id}` and `/v1/accounts/{id}/transfers`: the `transfers` projection.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use platform::auth::Principal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

use crate::accounts::{ConsistencyHeaders, Page, ReadQuery, page_end, visible};
use crate::consistency;
use crate::consistency_waits::ConsistencyWaits;
use crate::pagination;
use crate::problem::{ApiError, Problem};

const COLUMNS: &str = "transfer_id, from_account, to_account, amount, currency, reference, status,
    failure_code, failure_reason, version, requested_at, updated_at, settled_at";

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TransferView {
    pub transfer_id: Uuid,
    #[serde(rename = "from")]
    pub from_account: String,
    #[serde(rename = "to")]
    pub to_account: String,
    /// Minor units.
    pub amount: i64,
    pub currency: String,
    pub reference: String,
    /// `requested`, `debited`, `credited`, `refunding` (in flight), `completed` or `failed`.
    pub status: String,
    /// The refusing account's error code, when the transfer failed (or is failing).
    pub failure_code: Option<String>,
    pub failure_reason: Option<String>,
    pub version: i64,
    pub requested_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it completed or failed.
    pub settled_at: Option<DateTime<Utc>>,
}

/// One transfer. A transfer request's consistency token waits until it has settled.
#[utoipa::path(
    get,
    path = "/v1/transfers/{transfer_id}",
    tag = "transfers",
    params(("transfer_id" = Uuid, Path), ReadQuery, ConsistencyHeaders),
    responses(
        (status = 200, body = TransferView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The read model did not reach the consistency token in time"),
    )
)]
pub async fn get(
    State(pool): State<PgPool>,
    Extension(principal): Extension<Principal>,
    Extension(waits): Extension<Arc<ConsistencyWaits>>,
    Path(transfer_id): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<TransferView>, ApiError> {
    let Query(query) = query?;
    let not_found = || ApiError::NotFound {
        what: format!("transfer {transfer_id}"),
    };
    // Not a UUID: no such transfer (ids are UUIDs), not a malformed request.
    let id = Uuid::parse_str(&transfer_id).map_err(|_| not_found())?;
    let waited = consistency::wait(
        &pool,
        &waits,
        &headers,
        query.consistency_token.as_deref(),
        &principal,
    )
    .await;
    let waited = consistency::unless_bound(waited, principal.owner.as_deref())?;
    // A token bound to an owner sees the transfers of that owner's accounts, either way.
    let transfer: TransferView = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM transfers t WHERE transfer_id = $1
           AND ($2::text IS NULL OR EXISTS (
               SELECT 1 FROM accounts a
               WHERE a.account_id IN (t.from_account, t.to_account) AND a.owner = $2))"
    ))
    .bind(id)
    .bind(&principal.owner)
    .fetch_optional(&pool)
    .await?
    .ok_or_else(not_found)?;
    waited?;
    Ok(Json(transfer))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountTransfersQuery {
    /// `out` (from this account), `in` (to it), or both when absent.
    #[param(pattern = "^(in|out)$")]
    pub direction: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    pub consistency_token: Option<String>,
}

/// An account's transfers, both ways, oldest first, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account_id}/transfers",
    tag = "transfers",
    params(("account_id" = String, Path), AccountTransfersQuery, ConsistencyHeaders),
    responses(
        (status = 200, body = Page<TransferView>),
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
    query: Result<Query<AccountTransfersQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Page<TransferView>>, ApiError> {
    let Query(query) = query?;
    let (outgoing, incoming) = match query.direction.as_deref() {
        None => (true, true),
        Some("out") => (true, false),
        Some("in") => (false, true),
        Some(other) => {
            return Err(ApiError::BadRequest {
                detail: format!("direction must be in or out, got `{other}`"),
            });
        }
    };
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
    let after = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(decode_cursor(cursor)?),
    };
    if !visible(&pool, &principal, &account_id).await? {
        return Err(ApiError::NotFound {
            what: format!("account {account_id}"),
        });
    }
    waited?;
    // Two index range scans (by source, by destination) merged, rather than an OR that
    // would read every transfer.
    let mut rows: Vec<TransferView> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM (
             (SELECT {COLUMNS} FROM transfers WHERE $2 AND from_account = $1
                AND ($4::timestamptz IS NULL OR (requested_at, transfer_id) > ($4, $5))
              ORDER BY requested_at, transfer_id LIMIT $6)
             UNION
             (SELECT {COLUMNS} FROM transfers WHERE $3 AND to_account = $1
                AND ($4::timestamptz IS NULL OR (requested_at, transfer_id) > ($4, $5))
              ORDER BY requested_at, transfer_id LIMIT $6)
         ) t ORDER BY requested_at, transfer_id LIMIT $6"
    ))
    .bind(&account_id)
    .bind(outgoing)
    .bind(incoming)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .bind(limit + 1)
    .fetch_all(&pool)
    .await?;
    let next_cursor = page_end(&mut rows, limit).map(|last| {
        pagination::encode(&format!(
            "{}|{}",
            last.requested_at.to_rfc3339(),
            last.transfer_id
        ))
    });
    Ok(Json(Page {
        items: rows,
        next_cursor,
    }))
}

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
