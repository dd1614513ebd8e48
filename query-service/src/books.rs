//! `/v1/totals` and `/v1/system-accounts`: the ledger as a whole, across owners (a token bound
//! to an owner may read neither, `access`).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::accounts::{Page, page_end};
use crate::pagination;
use crate::problem::{ApiError, Problem};

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TotalView {
    pub currency: String,
    /// Accounts not closed (open or frozen).
    pub open_accounts: i64,
    /// Sum of their balances in minor units, as a decimal string (it can exceed 64 bits).
    pub total_balance: String,
}

/// Per currency: accounts not closed and the sum of their balances.
#[utoipa::path(
    get,
    path = "/v1/totals",
    tag = "accounts",
    responses((status = 200, body = Vec<TotalView>))
)]
pub async fn totals(State(pool): State<PgPool>) -> Result<Json<Vec<TotalView>>, ApiError> {
    let rows = sqlx::query_as(
        "SELECT currency, open_accounts, total_balance::text AS total_balance
         FROM currency_totals ORDER BY currency",
    )
    .fetch_all(&pool)
    .await?;
    Ok(Json(rows))
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SystemAccountView {
    /// `@<purpose>:<currency>`, e.g. `@world:EUR`.
    pub account: String,
    /// `world` (deposits and withdrawals), `fees`, `exchange` or `transit` (transfers between
    /// their debit and their credit).
    pub purpose: String,
    pub currency: String,
    /// Minor units as a decimal string (it can exceed 64 bits): the opposite of what the
    /// client accounts received through it, so `@world` is negative after deposits.
    pub balance: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SystemAccountsQuery {
    /// Only this currency's system accounts.
    pub currency: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// The system accounts' balances (where money enters and leaves the ledger), derived from
/// every client account's movements, in account order, one page at a time. With the client
/// accounts' balances (`/v1/totals`), each currency sums to zero once the read model has
/// caught up.
#[utoipa::path(
    get,
    path = "/v1/system-accounts",
    tag = "accounts",
    params(SystemAccountsQuery),
    responses(
        (status = 200, body = Page<SystemAccountView>),
        (status = 400, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn system_accounts(
    State(pool): State<PgPool>,
    query: Result<Query<SystemAccountsQuery>, QueryRejection>,
) -> Result<Json<Page<SystemAccountView>>, ApiError> {
    let Query(query) = query?;
    let limit = pagination::limit(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(pagination::decode)
        .transpose()?;
    // Summed over the partitions' rows (one writer each, so none waits on another).
    let mut rows: Vec<SystemAccountView> = sqlx::query_as(
        "SELECT account, split_part(substr(account, 2), ':', 1) AS purpose, currency,
                sum(balance)::text AS balance
         FROM system_account_balances
         WHERE ($1::text IS NULL OR currency = $1)
           AND ($2::text IS NULL OR account > $2)
         GROUP BY account, currency
         ORDER BY account
         LIMIT $3",
    )
    .bind(&query.currency)
    .bind(&after)
    .bind(limit + 1)
    .fetch_all(&pool)
    .await?;
    let next_cursor = page_end(&mut rows, limit).map(|last| pagination::encode(&last.account));
    Ok(Json(Page {
        items: rows,
        next_cursor,
    }))
}
