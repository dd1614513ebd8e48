//! The `transactions` projection: one row per posted multi-leg transaction, its legs as
//! posted (system accounts' sides included), reference and metadata.

use domain::envelope::EventMessage;
use domain::ledger::TransactionEvent;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::apply_error::ApplyError;

pub const NAME: &str = "transactions";

pub const TABLES: [&str; 1] = ["transactions"];

pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    events: &[EventMessage],
) -> Result<(), ApplyError> {
    let (mut ids, mut legs, mut references, mut metadata, mut versions, mut posted_at) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for event in events {
        let id = Uuid::parse_str(&event.aggregate_id)
            .map_err(|_| ApplyError::poison(event, "transaction id is not a UUID"))?;
        let payload: TransactionEvent = serde::Deserialize::deserialize(&event.payload)
            .map_err(|e| ApplyError::poison(event, format!("unreadable payload: {e}")))?;
        let sequence = i64::try_from(event.sequence)
            .map_err(|_| ApplyError::poison(event, "sequence out of range"))?;
        let TransactionEvent::TransactionPosted(posted) = payload;
        let json = |value: Result<serde_json::Value, serde_json::Error>| {
            value.map_err(|e| ApplyError::poison(event, format!("unwritable payload: {e}")))
        };
        ids.push(id);
        legs.push(json(serde_json::to_value(&posted.legs))?);
        references.push(posted.reference);
        metadata.push(json(serde_json::to_value(&posted.metadata))?);
        versions.push(sequence);
        posted_at.push(event.recorded_at);
    }
    // A transaction has one event, so each id appears once in a batch (the version check
    // upstream drops a duplicate); the update only keeps a redelivery harmless.
    sqlx::query(
        "INSERT INTO transactions (transaction_id, legs, reference, metadata, version, posted_at)
         SELECT * FROM UNNEST($1::uuid[], $2::jsonb[], $3::text[], $4::jsonb[], $5::bigint[],
             $6::timestamptz[])
         ON CONFLICT (transaction_id) DO UPDATE SET version = EXCLUDED.version",
    )
    .bind(ids)
    .bind(legs)
    .bind(references)
    .bind(metadata)
    .bind(versions)
    .bind(posted_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
