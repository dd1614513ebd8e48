//! `/v1/accounts/{id}/statement`: an account's entries over a period with the posted balance
//! at its start and at its end, read in one snapshot so that the opening balance plus the
//! period's movements is the closing balance.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use chrono::{DateTime, TimeDelta, Utc};
use platform::auth::Principal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::accounts::{ConsistencyHeaders, ENTRY_COLUMNS, EntryView, page_end};
use crate::consistency;
use crate::consistency_waits::ConsistencyWaits;
use crate::pagination;
use crate::problem::{ApiError, Problem};

/// The longest period one statement covers.
pub const PERIOD_DAYS_MAX: i64 = 366;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatementQuery {
    /// The period's start, included (RFC 3339, e.g. `2026-01-01T00:00:00Z`; percent-encode a
    /// `+` offset as `%2B`).
    #[param(value_type = DateTime<Utc>)]
    pub from: String,
    /// The period's end, excluded (RFC 3339); after `from`, at most 366 days later.
    #[param(value_type = DateTime<Utc>)]
    pub to: String,
    /// Entries per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    pub cursor: Option<String>,
    pub consistency_token: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatementView {
    pub account_id: String,
    pub currency: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The posted balance at `from` (minor units): after every entry before it.
    pub opening_balance: i64,
    /// The posted balance at `to`: the opening balance plus every entry of the period.
    pub closing_balance: i64,
    /// This page of the period's entries, oldest first.
    pub entries: Vec<EntryView>,
    /// Pass as `cursor` (with the same `from` and `to`) for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// An account's statement for `[from, to)`: opening balance, entries, closing balance.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account_id}/statement",
    tag = "accounts",
    params(("account_id" = String, Path), StatementQuery, ConsistencyHeaders),
    responses(
        (status = 200, body = StatementView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn statement(
    State(pool): State<PgPool>,
    Extension(principal): Extension<Principal>,
    Extension(waits): Extension<Arc<ConsistencyWaits>>,
    Path(account_id): Path<String>,
    query: Result<Query<StatementQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<StatementView>, ApiError> {
    let Query(query) = query?;
    let from = instant("from", &query.from)?;
    let to = instant("to", &query.to)?;
    if to <= from || to - from > TimeDelta::days(PERIOD_DAYS_MAX) {
        return Err(ApiError::BadRequest {
            detail: format!(
                "to must be after from and at most {PERIOD_DAYS_MAX} days later; ask for longer periods a statement at a time"
            ),
        });
    }
    let limit = pagination::limit(query.limit)?;
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let waited = consistency::wait(
        &pool,
        &waits,
        &headers,
        query.consistency_token.as_deref(),
        &principal,
    )
    .await;
    let waited = consistency::unless_bound(waited, principal.owner.as_deref())?;
    // One snapshot: the balances and the entries agree even while the projection writes.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let currency: Option<String> = sqlx::query_scalar(
        "SELECT currency FROM accounts WHERE account_id = $1 AND ($2::text IS NULL OR owner = $2)",
    )
    .bind(&account_id)
    .bind(&principal.owner)
    .fetch_optional(&mut *tx)
    .await?;
    // Another owner's account is as absent as a missing one.
    let currency = currency.ok_or_else(|| ApiError::NotFound {
        what: format!("account {account_id}"),
    })?;
    waited?;
    // The balance at an instant: after the last entry before it (the time index, backwards).
    let (opening_balance, closing_balance): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE((SELECT balance_after FROM account_entries
                          WHERE account_id = $1 AND recorded_at < $2
                          ORDER BY recorded_at DESC, sequence DESC LIMIT 1), 0),
                COALESCE((SELECT balance_after FROM account_entries
                          WHERE account_id = $1 AND recorded_at < $3
                          ORDER BY recorded_at DESC, sequence DESC LIMIT 1), 0)",
    )
    .bind(&account_id)
    .bind(from)
    .bind(to)
    .fetch_one(&mut *tx)
    .await?;
    let mut entries: Vec<EntryView> = sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS} FROM account_entries
         WHERE account_id = $1 AND recorded_at >= $2 AND recorded_at < $3
           AND ($4::timestamptz IS NULL OR (recorded_at, sequence) > ($4, $5))
         ORDER BY recorded_at, sequence
         LIMIT $6"
    ))
    .bind(&account_id)
    .bind(from)
    .bind(to)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, sequence)| sequence))
    .bind(limit + 1)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let next_cursor = page_end(&mut entries, limit).map(|last| {
        pagination::encode(&format!(
            "{}|{}",
            last.recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            last.sequence
        ))
    });
    Ok(Json(StatementView {
        account_id,
        currency,
        from,
        to,
        opening_balance,
        closing_balance,
        entries,
        next_cursor,
    }))
}

/// `raw` as an RFC 3339 instant, or a 400 that says what was expected.
fn instant(name: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| ApiError::BadRequest {
            detail: format!(
                "{name} must be an RFC 3339 instant such as 2026-01-31T00:00:00Z (percent-encode a `+` offset as %2B), got `{}`",
                raw.chars().take(64).collect::<String>()
            ),
        })
}

/// A cursor of [`statement`]: the last entry's time and sequence.
fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, i64), ApiError> {
    let invalid = || ApiError::BadRequest {
        detail: "cursor is not one this API issued".into(),
    };
    let raw = pagination::decode(cursor)?;
    let (at, sequence) = raw.split_once('|').ok_or_else(invalid)?;
    let at = DateTime::parse_from_rfc3339(at)
        .map_err(|_| invalid())?
        .with_timezone(&Utc);
    let sequence = sequence.parse().map_err(|_| invalid())?;
    Ok((at, sequence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_parse_or_say_what_was_expected() {
        assert!(instant("from", "2026-01-31T00:00:00Z").is_ok());
        assert!(instant("from", "2026-01-31T01:00:00+01:00").is_ok());
        for bad in ["", "yesterday", "2026-01-31", "2026-01-31T00:00:00 01:00"] {
            let Err(ApiError::BadRequest { detail }) = instant("from", bad) else {
                panic!("{bad} accepted");
            };
            assert!(
                detail.starts_with("from must be an RFC 3339 instant"),
                "{detail}"
            );
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = pagination::encode("2026-01-31T00:00:00.123456Z|7");
        let (at, sequence) = decode_cursor(&cursor).unwrap_or_else(|_| panic!("refused"));
        assert_eq!(sequence, 7);
        assert_eq!(at.timestamp_subsec_micros(), 123_456);
        for bad in [
            "c1",
            "zz",
            &pagination::encode("x|1"),
            &pagination::encode("2026-01-31T00:00:00Z|x"),
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
