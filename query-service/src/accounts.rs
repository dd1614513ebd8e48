//! `/v1/accounts...` and `/v1/totals`: the `accounts` projection's read models.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use platform::auth::Principal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use std::sync::Arc;
use std::time::Instant;

use crate::consistency;
use crate::consistency_waits::ConsistencyWaits;
use crate::pagination;
use crate::problem::{ApiError, Problem};
use crate::read_cache::ReadCache;

/// The read-your-writes headers every read accepts.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documentation only: the handlers read these from the HeaderMap
pub struct ConsistencyHeaders {
    /// A command reply's `consistency_token`: wait until the read model has applied it.
    #[param(rename = "Tally-Consistency-Token")]
    tally_consistency_token: Option<String>,
    /// How long to wait for the token, in milliseconds (default 2000, at most 5000).
    #[param(rename = "Tally-Wait-Ms", minimum = 0)]
    tally_wait_ms: Option<u64>,
}

/// The columns of [`AccountView`], in its order.
pub(crate) const ACCOUNT_COLUMNS: &str = "account_id, owner, currency, balance, held, available,
    overdraft_limit, max_balance, metadata, status, version, opened_at, updated_at";

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AccountView {
    pub account_id: String,
    pub owner: String,
    pub currency: String,
    /// The posted balance, in minor units (below zero only within an overdraft).
    pub balance: i64,
    /// Minor units reserved by open holds: part of the posted balance, not available.
    pub held: i64,
    /// `balance - held`: what withdrawals, debits and new holds may use (down to
    /// `-overdraft_limit`).
    pub available: i64,
    /// How far below zero the available balance may go (0: not at all).
    pub overdraft_limit: i64,
    /// The highest posted balance the account may reach; null when unlimited.
    pub max_balance: Option<i64>,
    /// The client's metadata, given when the account was opened.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub metadata: sqlx::types::Json<std::collections::BTreeMap<String, String>>,
    /// `open`, `frozen` or `closed`.
    pub status: String,
    /// The last event sequence applied; changes with every change of the account.
    pub version: i64,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// A command reply's token: wait until the read model has applied that write.
    pub consistency_token: Option<String>,
}

/// One account.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account_id}",
    tag = "accounts",
    params(("account_id" = String, Path), ReadQuery, ConsistencyHeaders, ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier response")),
    responses(
        (status = 200, body = AccountView, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the given ETag"),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The read model did not reach the consistency token in time"),
    )
)]
pub async fn get(
    State(pool): State<PgPool>,
    Extension(principal): Extension<Principal>,
    Extension(waits): Extension<Arc<ConsistencyWaits>>,
    Extension(cache): Extension<Arc<ReadCache>>,
    Path(account_id): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let token = consistency::requested(&headers, query.consistency_token.as_deref())?;
    let owner = principal.owner.as_deref();
    // From memory if the cached row satisfies the token; a token of anything else waits. A
    // reader bound to an owner always waits on its token: the wait is where it is told
    // nothing of what it cannot see, in what it answers and in when.
    let min_version = match &token {
        None => Some(0),
        Some(_) if owner.is_some() => None,
        Some(t) if t.aggregate_type == "account" && t.aggregate_id == account_id => {
            match t.target {
                consistency::Target::Version(v) => Some(v),
                consistency::Target::Settled => None,
            }
        }
        Some(_) => None,
    };
    let not_found = || ApiError::NotFound {
        what: format!("account {account_id}"),
    };
    let cached = min_version.and_then(|v| cache.get(&account_id, v));
    let (account, waited) = match cached {
        Some(account) => (Some(account), Ok(())),
        None => {
            let waited = consistency::wait(
                &pool,
                &waits,
                &headers,
                query.consistency_token.as_deref(),
                &principal,
            )
            .await;
            let waited = consistency::unless_bound(waited, owner)?;
            let read_at = Instant::now();
            let account: Option<AccountView> = sqlx::query_as(&format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1"
            ))
            .bind(&account_id)
            .fetch_optional(&pool)
            .await?;
            let account = account.map(Arc::new);
            if let Some(account) = &account {
                cache.offer(Arc::clone(account), read_at);
            }
            (account, waited)
        }
    };
    // Another owner's account is as absent as a missing one, whatever the token said.
    let account = account
        .filter(|account| owner.is_none_or(|owner| *owner == account.owner))
        .ok_or_else(not_found)?;
    waited?;
    let etag = format!("\"{}\"", account.version);
    // Digits in quotes are always a valid header value; were it not, a made-up ETag could
    // answer 304 for a changed account.
    let etag_value = HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(e.into()))?;
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    Ok(([(header::ETAG, etag_value)], Json(&*account)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub owner: Option<String>,
    /// `open`, `frozen` or `closed`.
    #[param(pattern = "^(open|frozen|closed)$")]
    pub status: Option<String>,
    pub currency: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    pub consistency_token: Option<String>,
}

/// Accounts, filtered, in id order, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/accounts",
    tag = "accounts",
    params(ListQuery, ConsistencyHeaders),
    responses(
        (status = 200, body = Page<AccountView>),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(pool): State<PgPool>,
    Extension(principal): Extension<Principal>,
    Extension(waits): Extension<Arc<ConsistencyWaits>>,
    query: Result<Query<ListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Page<AccountView>>, ApiError> {
    let Query(query) = query?;
    consistency::wait(
        &pool,
        &waits,
        &headers,
        query.consistency_token.as_deref(),
        &principal,
    )
    .await?;
    let limit = pagination::limit(query.limit)?;
    if let Some(status) = &query.status
        && !["open", "frozen", "closed"].contains(&status.as_str())
    {
        return Err(ApiError::BadRequest {
            detail: format!("status must be open, frozen or closed, got `{status}`"),
        });
    }
    let after = query
        .cursor
        .as_deref()
        .map(pagination::decode)
        .transpose()?;
    // A token bound to an owner lists that owner's accounts, whatever filter it asks for.
    if let (Some(bound), Some(asked)) = (&principal.owner, &query.owner)
        && bound != asked
    {
        return Ok(Json(Page {
            items: Vec::new(),
            next_cursor: None,
        }));
    }
    let owner = principal.owner.clone().or(query.owner.clone());
    let mut rows: Vec<AccountView> = sqlx::query_as(&format!(
        "SELECT {ACCOUNT_COLUMNS}
         FROM accounts
         WHERE ($1::text IS NULL OR owner = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR currency = $3)
           AND ($4::text IS NULL OR account_id > $4)
         ORDER BY account_id
         LIMIT $5"
    ))
    .bind(&owner)
    .bind(&query.status)
    .bind(&query.currency)
    .bind(&after)
    .bind(limit + 1)
    .fetch_all(&pool)
    .await?;
    let next_cursor = page_end(&mut rows, limit).map(|last| pagination::encode(&last.account_id));
    Ok(Json(Page {
        items: rows,
        next_cursor,
    }))
}

/// Trims the one extra row fetched to learn whether another page exists; returns the last kept.
pub(crate) fn page_end<T>(rows: &mut Vec<T>, limit: i64) -> Option<&T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
    } else {
        None
    }
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EntryView {
    pub sequence: i64,
    /// `credit` or `debit`.
    pub direction: String,
    pub amount: i64,
    pub reference: String,
    pub balance_after: i64,
    pub recorded_at: DateTime<Utc>,
    pub command_id: uuid::Uuid,
    /// The transfer whose step made this entry (`GET /v1/transfers/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<uuid::Uuid>,
    /// The transaction (`GET /v1/transactions/{id}`), or the captured hold
    /// (`GET /v1/holds/{id}`), whose legs made this entry; `amount` is their net.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<uuid::Uuid>,
    /// That transaction's legs touching this account.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<EntryLeg>>)]
    pub legs: Option<sqlx::types::Json<Vec<EntryLeg>>>,
}

/// One leg of a transaction as an account saw it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntryLeg {
    /// The leg's index in its transaction (0-based).
    pub leg: u16,
    /// The other side: a client account or a system account (`@world:EUR`).
    pub counterparty: String,
    /// Minor units; positive when money came in, negative when it went out.
    pub amount: i64,
}

/// The columns of [`EntryView`], in its order.
pub(crate) const ENTRY_COLUMNS: &str = "sequence, direction, amount, reference, balance_after,
    recorded_at, command_id, transfer_id, transaction_id, legs";

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntriesQuery {
    /// Entries at or after this instant (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Entries before this instant (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    pub consistency_token: Option<String>,
}

/// An account's money movements, oldest first, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account_id}/entries",
    tag = "accounts",
    params(("account_id" = String, Path), EntriesQuery, ConsistencyHeaders),
    responses(
        (status = 200, body = Page<EntryView>),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn entries(
    State(pool): State<PgPool>,
    Extension(principal): Extension<Principal>,
    Extension(waits): Extension<Arc<ConsistencyWaits>>,
    Path(account_id): Path<String>,
    query: Result<Query<EntriesQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Page<EntryView>>, ApiError> {
    let Query(query) = query?;
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
    let after: Option<i64> = match query
        .cursor
        .as_deref()
        .map(pagination::decode)
        .transpose()?
    {
        None => None,
        Some(raw) => Some(raw.parse().map_err(|_| ApiError::BadRequest {
            detail: "cursor is not one this API issued".into(),
        })?),
    };
    if !visible(&pool, &principal, &account_id).await? {
        return Err(ApiError::NotFound {
            what: format!("account {account_id}"),
        });
    }
    waited?;
    let mut rows: Vec<EntryView> = sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS}
         FROM account_entries
         WHERE account_id = $1
           AND ($2::timestamptz IS NULL OR recorded_at >= $2)
           AND ($3::timestamptz IS NULL OR recorded_at < $3)
           AND ($4::bigint IS NULL OR sequence > $4)
         ORDER BY sequence
         LIMIT $5"
    ))
    .bind(&account_id)
    .bind(query.from)
    .bind(query.to)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&pool)
    .await?;
    let next_cursor =
        page_end(&mut rows, limit).map(|last| pagination::encode(&last.sequence.to_string()));
    Ok(Json(Page {
        items: rows,
        next_cursor,
    }))
}

/// Whether the account exists and the principal may see it (a token bound to another owner
/// gets the same answer as for a missing account).
pub(crate) async fn visible(
    pool: &PgPool,
    principal: &Principal,
    account_id: &str,
) -> Result<bool, ApiError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM accounts
                        WHERE account_id = $1 AND ($2::text IS NULL OR owner = $2))",
    )
    .bind(account_id)
    .bind(&principal.owner)
    .fetch_one(pool)
    .await?)
}
