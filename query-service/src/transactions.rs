//! `/v1/transactions/{id}`: the `transactions` projection, multi-leg transactions as posted.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use platform::auth::Principal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::types::Json as Jsonb;
use uuid::Uuid;

use crate::accounts::{ConsistencyHeaders, ReadQuery};
use crate::consistency;
use crate::consistency_waits::ConsistencyWaits;
use crate::problem::{ApiError, Problem};

/// One leg: `amount` of `currency` from `from` to `to` (client or system accounts).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LegView {
    pub from: String,
    pub to: String,
    /// Minor units.
    pub amount: i64,
    pub currency: String,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TransactionView {
    pub transaction_id: Uuid,
    /// Every leg, in the order posted (to a token bound to an owner, those touching its
    /// accounts).
    #[schema(value_type = Vec<LegView>)]
    pub legs: Jsonb<Vec<LegView>>,
    pub reference: String,
    #[schema(value_type = BTreeMap<String, String>)]
    pub metadata: Jsonb<BTreeMap<String, String>>,
    pub version: i64,
    pub posted_at: DateTime<Utc>,
}

/// One transaction. A token bound to an owner reads it only if a leg touches one of that
/// owner's accounts (any other answers as a missing one), and sees only those legs.
#[utoipa::path(
    get,
    path = "/v1/transactions/{transaction_id}",
    tag = "transactions",
    params(("transaction_id" = Uuid, Path), ReadQuery, ConsistencyHeaders),
    responses(
        (status = 200, body = TransactionView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The read model did not reach the consistency token in time"),
    )
)]
pub async fn get(
    State(pool): State<PgPool>,
    Extension(principal): Extension<Principal>,
    Extension(waits): Extension<Arc<ConsistencyWaits>>,
    Path(transaction_id): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<TransactionView>, ApiError> {
    let Query(query) = query?;
    let not_found = || ApiError::NotFound {
        what: format!("transaction {transaction_id}"),
    };
    // Not a UUID: no such transaction (ids are UUIDs), not a malformed request.
    let id = Uuid::parse_str(&transaction_id).map_err(|_| not_found())?;
    let waited = consistency::wait(
        &pool,
        &waits,
        &headers,
        query.consistency_token.as_deref(),
        &principal,
    )
    .await;
    let waited = consistency::unless_bound(waited, principal.owner.as_deref())?;
    let transaction: TransactionView = sqlx::query_as(&format!(
        "SELECT transaction_id, {LEGS_SEEN} AS legs, reference, metadata, version, posted_at
         FROM transactions t WHERE transaction_id = $1 AND ($2::text IS NULL OR {TOUCHES_OWNER})"
    ))
    .bind(id)
    .bind(&principal.owner)
    .fetch_optional(&pool)
    .await?
    .ok_or_else(not_found)?;
    waited?;
    Ok(Json(transaction))
}

/// SQL: the legs of transaction `t` owner `$2` may see: all of them to a token bound to no
/// owner, else those touching one of its accounts (another party's fee or exchange leg is not
/// its business), in the order posted.
const LEGS_SEEN: &str = "CASE WHEN $2::text IS NULL THEN t.legs ELSE (
    SELECT coalesce(jsonb_agg(l.leg ORDER BY l.n), '[]'::jsonb)
    FROM jsonb_array_elements(t.legs) WITH ORDINALITY AS l(leg, n)
    WHERE EXISTS (SELECT 1 FROM accounts a
                  WHERE a.account_id IN (l.leg ->> 'from', l.leg ->> 'to') AND a.owner = $2)) END";

/// SQL: whether a leg of transaction `t` touches an account of owner `$2` (at most 64 legs).
pub(crate) const TOUCHES_OWNER: &str = "EXISTS (
    SELECT 1 FROM jsonb_array_elements(t.legs) AS l(leg)
    JOIN accounts a ON a.account_id IN (l.leg ->> 'from', l.leg ->> 'to')
    WHERE a.owner = $2)";
