//! The `holds` projection: one row per hold, its account, amount and where it stands (held,
//! then captured, voided or expired).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::envelope::EventMessage;
use domain::ledger::{HoldEvent, HoldStatus};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::apply_error::ApplyError;

pub const NAME: &str = "holds";

pub const TABLES: [&str; 1] = ["holds"];

#[derive(Debug, Clone, sqlx::FromRow)]
struct HoldRow {
    hold_id: Uuid,
    account_id: String,
    currency: String,
    amount: i64,
    reference: String,
    expires_at: Option<DateTime<Utc>>,
    status: String,
    captured_amount: i64,
    captured_to: Option<String>,
    version: i64,
    placed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "hold_id, account_id, currency, amount, reference, expires_at, status,
    captured_amount, captured_to, version, placed_at, updated_at, ended_at";

pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    events: &[EventMessage],
) -> Result<(), ApplyError> {
    let mut ids = Vec::with_capacity(events.len());
    for event in events {
        ids.push(
            Uuid::parse_str(&event.aggregate_id)
                .map_err(|_| ApplyError::poison(event, "hold id is not a UUID"))?,
        );
    }
    let existing: Vec<HoldRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM holds WHERE hold_id = ANY($1)"
    ))
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut rows: HashMap<Uuid, HoldRow> = existing.into_iter().map(|r| (r.hold_id, r)).collect();
    for (event, id) in events.iter().zip(ids) {
        let payload: HoldEvent = serde::Deserialize::deserialize(&event.payload)
            .map_err(|e| ApplyError::poison(event, format!("unreadable payload: {e}")))?;
        let sequence = i64::try_from(event.sequence)
            .map_err(|_| ApplyError::poison(event, "sequence out of range"))?;
        if let HoldEvent::HoldPlaced(e) = payload {
            rows.insert(
                id,
                HoldRow {
                    hold_id: id,
                    account_id: e.account_id,
                    currency: e.currency,
                    amount: e.amount,
                    reference: e.reference,
                    expires_at: e.expires_at,
                    status: HoldStatus::Held.as_str().into(),
                    captured_amount: 0,
                    captured_to: None,
                    version: sequence,
                    placed_at: event.recorded_at,
                    updated_at: event.recorded_at,
                    ended_at: None,
                },
            );
            continue;
        }
        let row = rows
            .get_mut(&id)
            .ok_or_else(|| ApplyError::poison(event, "event for a hold never placed"))?;
        let status = match payload {
            HoldEvent::HoldPlaced(_) => HoldStatus::Held,
            HoldEvent::HoldCaptured(e) => {
                row.captured_amount = e.amount;
                row.captured_to = Some(e.to);
                HoldStatus::Captured
            }
            HoldEvent::HoldVoided(_) => HoldStatus::Voided,
            HoldEvent::HoldExpired(_) => HoldStatus::Expired,
        };
        row.status = status.as_str().into();
        row.ended_at = Some(event.recorded_at);
        row.version = sequence;
        row.updated_at = event.recorded_at;
    }

    let mut rows: Vec<HoldRow> = rows.into_values().collect();
    // Sorted, so concurrent transactions lock rows in the same order (no deadlocks).
    rows.sort_unstable_by_key(|r| r.hold_id);
    let text = |f: fn(&HoldRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    sqlx::query(&format!(
        "INSERT INTO holds ({COLUMNS})
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[],
             $6::timestamptz[], $7::text[], $8::bigint[], $9::text[], $10::bigint[],
             $11::timestamptz[], $12::timestamptz[], $13::timestamptz[])
         ON CONFLICT (hold_id) DO UPDATE SET
             status = EXCLUDED.status, captured_amount = EXCLUDED.captured_amount,
             captured_to = EXCLUDED.captured_to, version = EXCLUDED.version,
             updated_at = EXCLUDED.updated_at, ended_at = EXCLUDED.ended_at"
    ))
    .bind(rows.iter().map(|r| r.hold_id).collect::<Vec<_>>())
    .bind(text(|r| r.account_id.clone()))
    .bind(text(|r| r.currency.clone()))
    .bind(rows.iter().map(|r| r.amount).collect::<Vec<_>>())
    .bind(text(|r| r.reference.clone()))
    .bind(rows.iter().map(|r| r.expires_at).collect::<Vec<_>>())
    .bind(text(|r| r.status.clone()))
    .bind(rows.iter().map(|r| r.captured_amount).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.captured_to.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.placed_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.ended_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
