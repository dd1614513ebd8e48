//! Audit digests: a point in history (every event of a transaction below `as_of_tx`), how
//! many events it holds, and a Merkle root over every aggregate's chain head at that point.
//!
//! `as_of_tx` is the snapshot's xmin: no transaction below it is still running, so the set of
//! events it names can never grow, and per aggregate it is a prefix of the chain (a later event
//! is always written by a transaction that started after the earlier one committed).

use chrono::{DateTime, Utc};
use domain::hash_chain::{self, ChainHash};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::Finding;
use crate::verify::VerifyReport;

pub const DIGEST_FORMAT: &str = "tally-digest-v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub format: String,
    /// Covers the events of every transaction with id below this.
    pub as_of_tx: u64,
    /// The highest `global_position` covered.
    pub position: i64,
    pub event_count: i64,
    pub aggregate_count: i64,
    /// Hex SHA-256 Merkle root over the chain heads (ARCHITECTURE.md, "Digests").
    pub merkle_root: String,
    pub taken_at: DateTime<Utc>,
    /// Present when the publisher has a signing key (`TALLY_AUDIT_SIGNING_KEY_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::digest_signing::DigestSignature>,
}

/// The Merkle root over heads, sorted here by (type, id) bytes whatever order they came in.
pub fn root_of(heads: &[(String, String, u64, ChainHash)]) -> ChainHash {
    let mut sorted: Vec<&(String, String, u64, ChainHash)> = heads.iter().collect();
    sorted.sort_unstable_by(|a, b| {
        (a.0.as_bytes(), a.1.as_bytes()).cmp(&(b.0.as_bytes(), b.1.as_bytes()))
    });
    hash_chain::merkle_root(
        sorted
            .into_iter()
            .map(|(t, id, seq, head)| hash_chain::merkle_leaf(t, id, *seq, head))
            .collect(),
    )
}

#[derive(Debug, sqlx::FromRow)]
struct Head {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    hash: Option<Vec<u8>>,
}

/// Takes a digest of everything committed so far, from one consistent snapshot.
pub async fn take(pool: &PgPool) -> Result<Digest, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let (xmin, taken_at): (String, DateTime<Utc>) =
        sqlx::query_as("SELECT pg_snapshot_xmin(pg_current_snapshot())::text, now()")
            .fetch_one(&mut *tx)
            .await?;
    let (event_count, position): (i64, i64) = sqlx::query_as(
        "SELECT count(*), COALESCE(max(global_position), 0) FROM events WHERE tx_id < $1::text::xid8",
    )
    .bind(&xmin)
    .fetch_one(&mut *tx)
    .await?;
    let mut heads = Vec::new();
    {
        let mut rows = sqlx::query_as::<_, Head>(
            "SELECT DISTINCT ON (aggregate_type, aggregate_id) aggregate_type, aggregate_id, sequence, hash
             FROM events WHERE tx_id < $1::text::xid8
             ORDER BY aggregate_type, aggregate_id, sequence DESC",
        )
        .bind(&xmin)
        .fetch(&mut *tx);
        while let Some(head) = rows.try_next().await? {
            let hash = head
                .hash
                .as_deref()
                .and_then(|h| ChainHash::try_from(h).ok())
                .unwrap_or(hash_chain::GENESIS);
            heads.push((
                head.aggregate_type,
                head.aggregate_id,
                u64::try_from(head.sequence).unwrap_or(0),
                hash,
            ));
        }
    }
    tx.commit().await?;
    Ok(Digest {
        format: DIGEST_FORMAT.to_owned(),
        as_of_tx: xmin.parse().unwrap_or(0),
        position,
        event_count,
        aggregate_count: i64::try_from(heads.len()).unwrap_or(i64::MAX),
        merkle_root: hex::encode(root_of(&heads)),
        taken_at,
        signature: None,
    })
}

/// What a verify run restricted to `digest.as_of_tx` found that contradicts the digest, and
/// whether its signature holds (made with `pinned_key`, when given).
pub fn compare(digest: &Digest, report: &VerifyReport, pinned_key: Option<&str>) -> Vec<Finding> {
    let mut found = Vec::new();
    if let Err(reason) = crate::digest_signing::check(digest, pinned_key) {
        found.push(Finding::DigestSignature { reason });
    }
    let root = hex::encode(report.merkle_root());
    if root != digest.merkle_root {
        found.push(Finding::DigestMismatch {
            field: "merkle_root".into(),
            digest: digest.merkle_root.clone(),
            store: root,
        });
    }
    let count = i64::try_from(report.events).unwrap_or(i64::MAX);
    if count != digest.event_count {
        found.push(Finding::DigestMismatch {
            field: "event_count".into(),
            digest: digest.event_count.to_string(),
            store: count.to_string(),
        });
    }
    found
}
