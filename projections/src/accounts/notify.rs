//! Announcing a batch's account changes to the change feed: `pg_notify` in the batch's own
//! transaction, so a listener hears of a change exactly when it becomes visible (PostgreSQL
//! delivers notifications at commit, in commit order, and drops them on rollback).

use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};

use crate::apply_error::ApplyError;

/// The channel the query-service listens on.
pub const CHANNEL: &str = "tally_account_changes";

/// PostgreSQL refuses payloads of 8000 bytes or more; a batch's announcement is split below it.
const PAYLOAD_MAX_BYTES: usize = 7_000;

/// An account the batch changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    #[serde(rename = "a")]
    pub account_id: String,
    #[serde(rename = "o")]
    pub owner: String,
}

/// One notification: changes of `partition` up to feed position `to` (absent when the batch
/// has no order), for these accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    #[serde(rename = "p")]
    pub partition: u32,
    #[serde(rename = "to", default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    #[serde(rename = "c")]
    pub changed: Vec<Changed>,
}

/// The payloads announcing `changed`, each below PostgreSQL's limit.
pub fn payloads(partition: u32, to: Option<i64>, changed: &[Changed]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut chunk: Vec<Changed> = Vec::new();
    let mut size = 0;
    let flush = |chunk: &mut Vec<Changed>, payloads: &mut Vec<String>| {
        if chunk.is_empty() {
            return;
        }
        let announcement = Announcement {
            partition,
            to,
            changed: std::mem::take(chunk),
        };
        // Strings and integers only: serialising cannot fail.
        if let Ok(json) = serde_json::to_string(&announcement) {
            payloads.push(json);
        }
    };
    for change in changed {
        // Ids and owners are bounded by the command schemas (far below the limit); JSON
        // escaping can at most sextuple a character.
        let cost = 16 + 6 * (change.account_id.len() + change.owner.len());
        if size + cost > PAYLOAD_MAX_BYTES - 64 {
            flush(&mut chunk, &mut payloads);
            size = 0;
        }
        size += cost;
        chunk.push(change.clone());
    }
    flush(&mut chunk, &mut payloads);
    payloads
}

pub(super) async fn announce(
    tx: &mut Transaction<'_, Postgres>,
    partition: u32,
    to: Option<i64>,
    changed: &[Changed],
) -> Result<(), ApplyError> {
    let payloads = payloads(partition, to, changed);
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p")
        .bind(CHANNEL)
        .bind(&payloads)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::expect_used)] // tests: a failed expectation should panic
mod tests {
    use super::*;

    #[test]
    fn a_large_batch_is_split_below_the_limit_and_loses_nothing() {
        let changed: Vec<Changed> = (0..2_000)
            .map(|i| Changed {
                account_id: format!("account-{i:05}-\"quoted\""),
                owner: format!("owner-{}", i % 7),
            })
            .collect();
        let payloads = payloads(3, Some(42), &changed);
        assert!(payloads.len() > 1, "2,000 accounts in one payload");
        let mut back = Vec::new();
        for payload in &payloads {
            assert!(payload.len() < 8_000, "payload of {} bytes", payload.len());
            let a: Announcement = serde_json::from_str(payload).expect("readable");
            assert_eq!((a.partition, a.to), (3, Some(42)));
            back.extend(a.changed);
        }
        assert_eq!(back, changed);
    }
}
