//! What a feed has not delivered yet, read from the read model. Each read is complete up to a
//! point that one earlier statement fixed, so no change is skipped whatever commits meanwhile:
//! - one account: its row first (version R), then its entries up to R (committed with the row);
//! - one owner: the partitions' applied counts first (the positions committed), then the rows and
//!   entries at or below them; a row changed since is left to the next read.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgPool;

use super::cursor::Positions;
use crate::accounts::{ACCOUNT_COLUMNS, AccountView, ENTRY_COLUMNS, EntryView};
use crate::problem::ApiError;

/// Entries read per statement; a longer backlog is read in pages.
const PAGE: i64 = 500;

/// One change of one account, as the feed sends it (`event: change`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Change {
    pub account_id: String,
    pub owner: String,
    /// The account's version after this change.
    pub version: i64,
    /// `account:<id>:<version>`: a read presenting it sees this change.
    pub consistency_token: String,
    /// The posted balance after this change, in minor units.
    pub balance: i64,
    /// The money movement, when the change moved money.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryView>,
    /// The account as it stands: on the latest change read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountView>,
}

#[derive(Debug, sqlx::FromRow)]
struct AccountRow {
    feed_partition: Option<i32>,
    feed_position: Option<i64>,
    #[sqlx(flatten)]
    view: AccountView,
}

#[derive(Debug, sqlx::FromRow)]
struct EntryRow {
    account_id: String,
    feed_position: Option<i64>,
    #[sqlx(flatten)]
    entry: EntryView,
}

fn token(account_id: &str, version: i64) -> String {
    format!("account:{account_id}:{version}")
}

pub fn state(view: AccountView) -> Change {
    Change {
        consistency_token: token(&view.account_id, view.version),
        account_id: view.account_id.clone(),
        owner: view.owner.clone(),
        version: view.version,
        balance: view.balance,
        entry: None,
        account: Some(view),
    }
}

fn moved(entry: EntryView, account_id: String, owner: &str) -> Change {
    Change {
        consistency_token: token(&account_id, entry.sequence),
        account_id,
        owner: owner.to_owned(),
        version: entry.sequence,
        balance: entry.balance_after,
        entry: Some(entry),
        account: None,
    }
}

/// `account_id`'s row, if it exists.
pub async fn account(pool: &PgPool, account_id: &str) -> Result<Option<AccountView>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1"
    ))
    .bind(account_id)
    .fetch_optional(pool)
    .await?)
}

/// The changes of `account_id` after `version` (at most a page of entries, then the state):
/// in order, and the version delivered once they are. Call again while it returns changes.
pub async fn account_after(
    pool: &PgPool,
    account_id: &str,
    version: i64,
) -> Result<Vec<Change>, ApiError> {
    let Some(view) = account(pool, account_id).await? else {
        return Ok(Vec::new());
    };
    if view.version <= version {
        return Ok(Vec::new());
    }
    let entries: Vec<EntryView> = sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS} FROM account_entries
         WHERE account_id = $1 AND sequence > $2 AND sequence <= $3
         ORDER BY sequence LIMIT $4"
    ))
    .bind(account_id)
    .bind(version)
    .bind(view.version)
    .bind(PAGE)
    .fetch_all(pool)
    .await?;
    let complete = usize::try_from(PAGE).is_ok_and(|page| entries.len() < page);
    let mut changes: Vec<Change> = entries
        .into_iter()
        .map(|e| moved(e, view.account_id.clone(), &view.owner))
        .collect();
    if complete {
        match changes.last_mut() {
            Some(last) if last.version == view.version => last.account = Some(view),
            _ => changes.push(state(view)),
        }
    }
    Ok(changes)
}

/// The accounts projection's table epoch and each partition's committed position.
pub async fn positions_now(pool: &PgPool) -> Result<Positions, ApiError> {
    let rows: Vec<(i64, Option<i32>, Option<i64>)> = sqlx::query_as(
        "SELECT 'accounts'::regclass::oid::bigint, c.partition, c.events_applied
         FROM (SELECT 1) AS one
         LEFT JOIN projection_partition_checkpoints c ON c.projection = 'accounts'",
    )
    .fetch_all(pool)
    .await?;
    let mut positions = Positions::default();
    for (epoch, partition, applied) in rows {
        positions.epoch = epoch;
        if let (Some(partition), Some(applied)) = (partition, applied) {
            positions.by_partition.insert(partition, applied);
        }
    }
    Ok(positions)
}

/// The owner's accounts (at most `max`; `Err` beyond), each as it stands.
pub async fn owner_accounts(
    pool: &PgPool,
    owner: &str,
    max: usize,
) -> Result<Vec<(Option<i32>, Option<i64>, AccountView)>, ApiError> {
    let rows: Vec<AccountRow> = sqlx::query_as(&format!(
        "SELECT feed_partition, feed_position, {ACCOUNT_COLUMNS}
         FROM accounts WHERE owner = $1 ORDER BY account_id LIMIT $2"
    ))
    .bind(owner)
    .bind(i64::try_from(max).unwrap_or(i64::MAX).saturating_add(1))
    .fetch_all(pool)
    .await?;
    if rows.len() > max {
        return Err(ApiError::BadRequest {
            detail: format!(
                "owner {owner} has more than {max} accounts: follow them one by one (GET /v1/accounts/{{id}}/feed)"
            ),
        });
    }
    Ok(rows
        .into_iter()
        .map(|r| (r.feed_partition, r.feed_position, r.view))
        .collect())
}

/// A fresh owner feed: the current state of each account, and the positions it reflects.
/// An account changed after `positions_now` is left out: the next read brings it with its
/// changes.
pub async fn owner_snapshot(
    pool: &PgPool,
    owner: &str,
    max: usize,
) -> Result<(Vec<Change>, Positions), ApiError> {
    let now = positions_now(pool).await?;
    let changes = owner_accounts(pool, owner, max)
        .await?
        .into_iter()
        .filter(|(p, position, _)| match (p, position) {
            (Some(p), Some(position)) => *position <= now.of(*p),
            _ => true,
        })
        .map(|(_, _, view)| state(view))
        .collect();
    Ok((changes, now))
}

/// The owner's changes after `from`, up to the positions committed now, in position order per
/// partition, and the positions they bring the feed to; `None` when the read model was
/// rebuilt since `from` (its rows carry no positions: the feed must start over).
pub async fn owner_after(
    pool: &PgPool,
    owner: &str,
    from: &Positions,
    max: usize,
) -> Result<Option<(Vec<(i32, i64, Change)>, Positions)>, ApiError> {
    let now = positions_now(pool).await?;
    if now.epoch != from.epoch {
        return Ok(None);
    }
    let accounts = owner_accounts(pool, owner, max).await?;
    let ids: Vec<String> = accounts.iter().map(|a| a.2.account_id.clone()).collect();
    let mut to = from.clone();
    let mut out = Vec::new();
    // Rows changed within each partition's window, by partition.
    let mut states: BTreeMap<i32, Vec<(i64, AccountView)>> = BTreeMap::new();
    for (p, position, view) in accounts {
        if let (Some(p), Some(position)) = (p, position)
            && position > from.of(p)
            && position <= now.of(p)
        {
            states.entry(p).or_default().push((position, view));
        }
    }
    for (&p, &upto) in &now.by_partition {
        let after = from.of(p);
        if upto <= after {
            continue;
        }
        let mut rows = states.remove(&p).unwrap_or_default();
        rows.sort_by_key(|(position, _)| *position);
        let entries: Vec<EntryRow> = sqlx::query_as(&format!(
            "SELECT account_id, feed_position, {ENTRY_COLUMNS} FROM account_entries
             WHERE feed_partition = $1 AND feed_position > $2 AND feed_position <= $3
               AND account_id = ANY($4)
             ORDER BY feed_position LIMIT $5"
        ))
        .bind(p)
        .bind(after)
        .bind(upto)
        .bind(&ids)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
        // A full page ends this round at its last entry; the rest comes on the next call.
        let reached = match entries.last() {
            Some(last) if usize::try_from(PAGE).is_ok_and(|page| entries.len() >= page) => {
                last.feed_position.unwrap_or(upto)
            }
            _ => upto,
        };
        merge(p, owner, entries, rows, reached, &mut out);
        to.by_partition.insert(p, reached);
        if reached < upto {
            break;
        }
    }
    Ok(Some((out, to)))
}

/// Entries and row states of one partition in position order; a state at the position of an
/// entry rides on that entry's change.
fn merge(
    p: i32,
    owner: &str,
    entries: Vec<EntryRow>,
    rows: Vec<(i64, AccountView)>,
    reached: i64,
    out: &mut Vec<(i32, i64, Change)>,
) {
    let mut rows = rows
        .into_iter()
        .filter(|(pos, _)| *pos <= reached)
        .peekable();
    for e in entries {
        let position = e.feed_position.unwrap_or(0);
        while let Some((at, view)) = rows.next_if(|(pos, _)| *pos < position) {
            out.push((p, at, state(view)));
        }
        let mut change = moved(e.entry, e.account_id, owner);
        if let Some((_, view)) = rows.next_if(|(pos, _)| *pos == position) {
            change.account = Some(view);
        }
        out.push((p, position, change));
    }
    out.extend(rows.map(|(at, view)| (p, at, state(view))));
}
