//! One aggregate's history as stored, and its state at any version or instant, folded with the
//! domain's own `apply` and the audit's rules checked on the way (what the audit endpoints
//! serve): accounts (balances, holds and limits), transfers, transactions and holds.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::Account;
use domain::ledger::{Hold, Transaction};
use domain::transfer::{Transfer, TransferEvent};
use event_store::StoreError;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::PgPool;

use crate::fold::AccountFold;
use crate::ledger_fold::{HoldFold, TransactionFold};
use crate::{StoredEvent, StoredEventExt};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Db(#[from] StoreError),
    /// Stored history that the domain cannot fold: `tally audit verify` names the event.
    #[error("event {sequence} cannot be folded: {reason}")]
    Corrupt { sequence: i64, reason: String },
}

/// Most events one flow lookup returns: a transfer has about a dozen.
pub const CORRELATED_MAX: i64 = 1_000;

/// The events of one flow across aggregates (e.g. a transfer and its steps on both accounts),
/// in insertion order, at most [`CORRELATED_MAX`].
pub async fn correlated_events(
    pool: &PgPool,
    correlation_id: uuid::Uuid,
) -> Result<Vec<StoredEvent>, StoreError> {
    event_store::audit::correlated_events(pool, &correlation_id.to_string(), CORRELATED_MAX).await
}

/// Every event of one aggregate, oldest first, streamed (exports of long histories).
pub fn events_stream(
    pool: PgPool,
    aggregate_type: String,
    aggregate_id: String,
) -> BoxStream<'static, Result<StoredEvent, StoreError>> {
    async_stream(pool, aggregate_type, aggregate_id).boxed()
}

fn async_stream(
    pool: PgPool,
    aggregate_type: String,
    aggregate_id: String,
) -> impl futures::Stream<Item = Result<StoredEvent, StoreError>> {
    // Pages of a bounded size rather than one long cursor: a slow client never holds a
    // connection (or a snapshot) open for the length of its download.
    const PAGE: i64 = 500;
    futures::stream::try_unfold(
        (pool, aggregate_type, aggregate_id, 0i64, false),
        |(pool, t, id, after, done)| async move {
            if done {
                return Ok::<_, StoreError>(None);
            }
            let page = event_store::audit::events_page(&pool, &t, &id, after, PAGE).await?;
            let last = page.last().map_or(after, |e| e.sequence);
            let done = i64::try_from(page.len()).unwrap_or(0) < PAGE;
            Ok(Some((
                futures::stream::iter(page.into_iter().map(Ok)),
                (pool, t, id, last, done),
            )))
        },
    )
    .try_flatten()
}

/// Which point of history to fold to.
#[derive(Debug, Clone, Copy)]
pub enum StatePoint {
    /// After the last event accepted at or before this instant.
    At(DateTime<Utc>),
    /// After this event.
    Version(i64),
}

#[derive(Debug, Clone)]
pub struct FoldedState<S = Account> {
    pub version: i64,
    /// When the last folded event was accepted.
    pub as_of: DateTime<Utc>,
    pub state: S,
}

/// Folds one aggregate's events up to `point` with `apply`; `None` if it had no events by then
/// (or has no such version).
async fn fold_to<S: Default>(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    point: StatePoint,
    mut apply: impl FnMut(&mut S, &StoredEvent) -> Result<(), String>,
) -> Result<Option<FoldedState<S>>, HistoryError> {
    let mut events = events_stream(pool.clone(), aggregate_type.into(), aggregate_id.into());
    let mut state = S::default();
    let mut folded: Option<(i64, DateTime<Utc>)> = None;
    while let Some(event) = events.try_next().await? {
        let past = match point {
            StatePoint::At(at) => event.occurred_at() > at,
            StatePoint::Version(v) => event.sequence > v,
        };
        if past {
            break;
        }
        apply(&mut state, &event).map_err(|reason| HistoryError::Corrupt {
            sequence: event.sequence,
            reason,
        })?;
        folded = Some((event.sequence, event.occurred_at()));
    }
    let Some((version, as_of)) = folded else {
        return Ok(None);
    };
    if let StatePoint::Version(v) = point
        && version != v
    {
        return Ok(None);
    }
    Ok(Some(FoldedState {
        version,
        as_of,
        state,
    }))
}

/// The account at `point`, folded with the domain's rules checked on the way.
pub async fn account_state(
    pool: &PgPool,
    aggregate_id: &str,
    point: StatePoint,
) -> Result<Option<FoldedState>, HistoryError> {
    let folded = fold_to(
        pool,
        "account",
        aggregate_id,
        point,
        |fold: &mut AccountFold, event| fold.apply(event).map_err(|e| e.reason()),
    )
    .await?;
    Ok(folded.map(|f| FoldedState {
        version: f.version,
        as_of: f.as_of,
        state: f.state.state,
    }))
}

/// The transfer at `point`.
pub async fn transfer_state(
    pool: &PgPool,
    aggregate_id: &str,
    point: StatePoint,
) -> Result<Option<FoldedState<Transfer>>, HistoryError> {
    fold_to(
        pool,
        "transfer",
        aggregate_id,
        point,
        |transfer: &mut Transfer, event| {
            let parsed: TransferEvent = serde::Deserialize::deserialize(&*event.payload)
                .map_err(|e| format!("unreadable payload: {e}"))?;
            transfer.apply(parsed);
            Ok(())
        },
    )
    .await
}

/// The transaction at `point` (it has one event: posted, or not yet).
pub async fn transaction_state(
    pool: &PgPool,
    aggregate_id: &str,
    point: StatePoint,
) -> Result<Option<FoldedState<Transaction>>, HistoryError> {
    let folded = fold_to(
        pool,
        "transaction",
        aggregate_id,
        point,
        |fold: &mut TransactionFold, event| fold.apply(event).map_err(|e| e.reason()),
    )
    .await?;
    Ok(folded.map(|f| FoldedState {
        version: f.version,
        as_of: f.as_of,
        state: f.state.state,
    }))
}

/// The hold at `point`: held, or how it ended.
pub async fn hold_state(
    pool: &PgPool,
    aggregate_id: &str,
    point: StatePoint,
) -> Result<Option<FoldedState<Hold>>, HistoryError> {
    let folded = fold_to(
        pool,
        "hold",
        aggregate_id,
        point,
        |fold: &mut HoldFold, event| fold.apply(event).map_err(|e| e.reason()),
    )
    .await?;
    Ok(folded.map(|f| FoldedState {
        version: f.version,
        as_of: f.as_of,
        state: f.state.state,
    }))
}
