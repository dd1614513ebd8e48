//! `/v1/audit/{type}/{id}/state`: an account, a transfer, a transaction or a hold as the domain
//! folds it from its events, at a version or an instant (not read from the read models).

use audit::history::{self, HistoryError, StatePoint};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::problem::{ApiError, Problem};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StateQuery {
    /// The state after the last event accepted at or before this instant (RFC 3339).
    pub at: Option<DateTime<Utc>>,
    /// The state after this event (1-based).
    #[param(minimum = 1)]
    pub version: Option<i64>,
}

/// An account as the domain folds it from history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountState {
    pub account_id: String,
    pub owner: String,
    pub currency: String,
    /// Minor units: the posted balance.
    pub balance: i64,
    /// Minor units reserved by open holds.
    pub held: i64,
    /// `balance - held`.
    pub available: i64,
    pub overdraft_limit: i64,
    pub max_balance: Option<i64>,
    pub metadata: std::collections::BTreeMap<String, String>,
    /// `open`, `frozen` or `closed`.
    pub status: String,
}

/// A transaction as the domain folds it from history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransactionState {
    pub transaction_id: Option<uuid::Uuid>,
    #[schema(value_type = Vec<Object>)]
    pub legs: Vec<domain::ledger::Leg>,
    pub reference: String,
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// A hold as the domain folds it from history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HoldState {
    pub hold_id: Option<uuid::Uuid>,
    pub account_id: String,
    pub currency: String,
    /// Minor units held.
    pub amount: i64,
    pub expires_at: Option<DateTime<Utc>>,
    /// `held`, `captured`, `voided` or `expired`.
    pub status: String,
    /// Minor units captured.
    pub captured: i64,
}

/// A transfer as the domain folds it from history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransferState {
    pub transfer_id: Option<uuid::Uuid>,
    pub from: String,
    pub to: String,
    /// Minor units.
    pub amount: i64,
    pub currency: String,
    /// `requested`, `debited`, `credited`, `refunding`, `completed` or `failed`.
    pub status: String,
    pub refunded: bool,
    /// The refusing account's error code and message, once the transfer is failing.
    pub failure_code: Option<String>,
    pub failure_reason: Option<String>,
}

/// The folded state: an account's or a transfer's, by `aggregate_type`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum AggregateState {
    Account(AccountState),
    Transfer(TransferState),
    Transaction(TransactionState),
    Hold(HoldState),
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StateView {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The last event folded.
    pub version: i64,
    /// When that event was accepted.
    pub as_of: DateTime<Utc>,
    pub state: AggregateState,
}

/// An aggregate's state at a version or an instant, folded from its events.
#[utoipa::path(
    get,
    path = "/v1/audit/{aggregate_type}/{aggregate_id}/state",
    tag = "audit",
    params(("aggregate_type" = String, Path, description = "`account`, `transfer`, `transaction` or `hold`"), ("aggregate_id" = String, Path), StateQuery),
    responses(
        (status = 200, body = StateView),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Neither or both of `at` and `version`"),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "No such aggregate, or none yet at that point"),
    )
)]
pub async fn state(
    State(pool): State<PgPool>,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    query: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Json<StateView>, ApiError> {
    let Query(query) = query?;
    let point = match (query.at, query.version) {
        (Some(at), None) => StatePoint::At(at),
        (None, Some(v)) if v >= 1 => StatePoint::Version(v),
        (None, Some(v)) => {
            return Err(ApiError::BadRequest {
                detail: format!("version must be at least 1, got {v}"),
            });
        }
        _ => {
            return Err(ApiError::BadRequest {
                detail: "give exactly one of `at` (RFC 3339) and `version`".into(),
            });
        }
    };
    let corrupt = |e: HistoryError| match e {
        HistoryError::Db(e) => ApiError::from(e),
        corrupt @ HistoryError::Corrupt { .. } => ApiError::Corrupt {
            detail: format!("{aggregate_type} {aggregate_id}: {corrupt}; run `tally audit verify`"),
        },
    };
    let missing = || ApiError::NotFound {
        what: match point {
            StatePoint::At(at) => {
                format!("{aggregate_type} {aggregate_id} as of {}", at.to_rfc3339())
            }
            StatePoint::Version(v) => format!("{aggregate_type} {aggregate_id} version {v}"),
        },
    };
    let (version, as_of, state) = match aggregate_type.as_str() {
        "account" => {
            let f = history::account_state(&pool, &aggregate_id, point)
                .await
                .map_err(corrupt)?
                .ok_or_else(missing)?;
            let s = f.state;
            let available = s.available();
            let state = AggregateState::Account(AccountState {
                account_id: s.id,
                owner: s.owner,
                currency: s.currency,
                balance: s.balance,
                held: s.held,
                available,
                overdraft_limit: s.overdraft_limit,
                max_balance: s.max_balance,
                metadata: s.metadata,
                status: s.status.as_str().to_owned(),
            });
            (f.version, f.as_of, state)
        }
        "transfer" => {
            let f = history::transfer_state(&pool, &aggregate_id, point)
                .await
                .map_err(corrupt)?
                .ok_or_else(missing)?;
            let t = f.state;
            let (failure_code, failure_reason) = t.failure.unzip();
            let state = AggregateState::Transfer(TransferState {
                transfer_id: t.id,
                from: t.from,
                to: t.to,
                amount: t.amount,
                currency: t.currency,
                status: t.status.as_str().to_owned(),
                refunded: t.refunded,
                failure_code,
                failure_reason,
            });
            (f.version, f.as_of, state)
        }
        "transaction" => {
            let f = history::transaction_state(&pool, &aggregate_id, point)
                .await
                .map_err(corrupt)?
                .ok_or_else(missing)?;
            let t = f.state;
            let state = AggregateState::Transaction(TransactionState {
                transaction_id: t.id,
                legs: t.legs,
                reference: t.reference,
                metadata: t.metadata,
            });
            (f.version, f.as_of, state)
        }
        "hold" => {
            let f = history::hold_state(&pool, &aggregate_id, point)
                .await
                .map_err(corrupt)?
                .ok_or_else(missing)?;
            let h = f.state;
            let state = AggregateState::Hold(HoldState {
                hold_id: h.id,
                account_id: h.account_id,
                currency: h.currency,
                amount: h.amount,
                expires_at: h.expires_at,
                status: h.status.as_str().to_owned(),
                captured: h.captured,
            });
            (f.version, f.as_of, state)
        }
        _ => {
            return Err(ApiError::NotFound {
                what: format!("aggregate type {aggregate_type}"),
            });
        }
    };
    Ok(Json(StateView {
        aggregate_type,
        aggregate_id,
        version,
        as_of,
        state,
    }))
}
