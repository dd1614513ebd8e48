//! The `transfers` projection: one row per transfer, its parties, amount and where it stands.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::envelope::EventMessage;
use domain::transfer::{TransferEvent, TransferStatus};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::apply_error::ApplyError;

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
        let payload: TransferEvent = serde::Deserialize::deserialize(&event.payload)
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
            // The reason shown is the code's fixed wording, never the stored text: events
            // recorded before the wording was fixed name the source's balance, which the
            // destination's owner may read here.
            TransferEvent::CreditFailed(e) => {
                row.failure_reason = Some(domain::transfer::failure_reason(&e.code).to_owned());
                row.failure_code = Some(e.code);
                TransferStatus::Refunding
            }
            // The status stays `refunding` until the failure that follows in the same commit.
            TransferEvent::RefundRecorded(_) => TransferStatus::Refunding,
            TransferEvent::TransferFailed(e) => {
                row.failure_reason = Some(domain::transfer::failure_reason(&e.code).to_owned());
                row.failure_code = Some(e.code);
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
    // Sorted, so concurrent transactions lock rows in the same order (no deadlocks). One
    // statement for the batch: each transfer appears once, so no row is upserted twice.
    rows.sort_unstable_by_key(|r| r.transfer_id);
    let column = |f: fn(&TransferRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO transfers (transfer_id, from_account, to_account, amount, currency,
             reference, status, failure_code, failure_reason, version, requested_at,
             updated_at, settled_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[],
             $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::timestamptz[],
             $12::timestamptz[], $13::timestamptz[])
         ON CONFLICT (transfer_id) DO UPDATE SET
             status = EXCLUDED.status, failure_code = EXCLUDED.failure_code,
             failure_reason = EXCLUDED.failure_reason, version = EXCLUDED.version,
             updated_at = EXCLUDED.updated_at, settled_at = EXCLUDED.settled_at",
    )
    .bind(rows.iter().map(|r| r.transfer_id).collect::<Vec<_>>())
    .bind(column(|r| r.from_account.clone()))
    .bind(column(|r| r.to_account.clone()))
    .bind(rows.iter().map(|r| r.amount).collect::<Vec<_>>())
    .bind(column(|r| r.currency.clone()))
    .bind(column(|r| r.reference.clone()))
    .bind(column(|r| r.status.clone()))
    .bind(
        rows.iter()
            .map(|r| r.failure_code.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.failure_reason.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.requested_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.settled_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
