//! The `transfers` projection: one row per transfer, its parties, amount and where it stands.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::envelope::EventMessage;
use domain::transfer::{TransferEvent, TransferStatus};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::runner::ApplyError;

pub const NAME: &str = "transfers";

pub const TABLES: [&str; 1] = ["transfers"];

#[derive(Debug, Clone, sqlx::FromRow)]
struct TransferRow {
    transfer_id: Uuid,
    from_account: String,
    to_account: String,
    amount: i64,
    currency: String,
    reference: String,
    status: String,
    failure_code: Option<String>,
    failure_reason: Option<String>,
    version: i64,
    requested_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    settled_at: Option<DateTime<Utc>>,
}

pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    events: &[EventMessage],
) -> Result<(), ApplyError> {
    let mut ids = Vec::with_capacity(events.len());
    for event in events {
        ids.push(
            Uuid::parse_str(&event.aggregate_id)
                .map_err(|_| ApplyError::poison(event, "transfer id is not a UUID"))?,
        );
    }
    let existing: Vec<TransferRow> = sqlx::query_as(
        "SELECT transfer_id, from_account, to_account, amount, currency, reference, status,
                failure_code, failure_reason, version, requested_at, updated_at, settled_at
         FROM transfers WHERE transfer_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut rows: HashMap<Uuid, TransferRow> =
        existing.into_iter().map(|r| (r.transfer_id, r)).collect();

    for (event, id) in events.iter().zip(ids) {
        let payload: TransferEvent = serde_json::from_value(event.payload.clone())
            .map_err(|e| ApplyError::poison(event, format!("unreadable payload: {e}")))?;
        let sequence = i64::try_from(event.sequence)
            .map_err(|_| ApplyError::poison(event, "sequence out of range"))?;
        if let TransferEvent::TransferRequested(e) = &payload {
            rows.insert(
                id,
                TransferRow {
                    transfer_id: id,
                    from_account: e.from.clone(),
                    to_account: e.to.clone(),
                    amount: e.amount,
                    currency: e.currency.clone(),
                    reference: e.reference.clone(),
                    status: TransferStatus::Requested.as_str().into(),
                    failure_code: None,
                    failure_reason: None,
                    version: sequence,
                    requested_at: event.recorded_at,
                    updated_at: event.recorded_at,
                    settled_at: None,
                },
            );
            continue;
        }
        let row = rows
            .get_mut(&id)
            .ok_or_else(|| ApplyError::poison(event, "event for a transfer never requested"))?;
        let status = match payload {
            TransferEvent::TransferRequested(_) => TransferStatus::Requested,
            TransferEvent::DebitRecorded(_) => TransferStatus::Debited,
            TransferEvent::CreditRecorded(_) => TransferStatus::Credited,
            TransferEvent::TransferCompleted(_) => TransferStatus::Completed,
            TransferEvent::CreditFailed(e) => {
                row.failure_code = Some(e.code);
                row.failure_reason = Some(e.reason);
                TransferStatus::Refunding
            }
            // The status stays `refunding` until the failure that follows in the same commit.
            TransferEvent::RefundRecorded(_) => TransferStatus::Refunding,
            TransferEvent::TransferFailed(e) => {
                row.failure_code = Some(e.code);
                row.failure_reason = Some(e.reason);
                TransferStatus::Failed
            }
        };
        row.status = status.as_str().into();
        if status.is_settled() {
            row.settled_at = Some(event.recorded_at);
        }
        row.version = sequence;
        row.updated_at = event.recorded_at;
    }

    let mut rows: Vec<TransferRow> = rows.into_values().collect();
    // Sorted, so concurrent transactions lock rows in the same order (no deadlocks).
    rows.sort_unstable_by_key(|r| r.transfer_id);
    for r in rows {
        sqlx::query(
            "INSERT INTO transfers (transfer_id, from_account, to_account, amount, currency,
                 reference, status, failure_code, failure_reason, version, requested_at,
                 updated_at, settled_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (transfer_id) DO UPDATE SET
                 status = EXCLUDED.status, failure_code = EXCLUDED.failure_code,
                 failure_reason = EXCLUDED.failure_reason, version = EXCLUDED.version,
                 updated_at = EXCLUDED.updated_at, settled_at = EXCLUDED.settled_at",
        )
        .bind(r.transfer_id)
        .bind(r.from_account)
        .bind(r.to_account)
        .bind(r.amount)
        .bind(r.currency)
        .bind(r.reference)
        .bind(r.status)
        .bind(r.failure_code)
        .bind(r.failure_reason)
        .bind(r.version)
        .bind(r.requested_at)
        .bind(r.updated_at)
        .bind(r.settled_at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
