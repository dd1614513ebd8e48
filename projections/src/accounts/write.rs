//! The accounts projection's one write per batch: accounts, entries, currency totals and
//! system-account balances in one statement, one round trip instead of one per table, which
//! under load (every round trip waits for a busy CPU) was most of a batch's time.

use std::collections::HashMap;

use sqlx::{Postgres, Transaction};

use super::{AccountRow, CurrencyDelta, Entry, SystemDelta};
use crate::apply_error::ApplyError;

// Totals: increments, not read-modify-write, so concurrent batches on one currency row
// serialise on its row lock and both deltas count. A zero delta is still written: whether
// the row exists must not depend on how events were batched, or a rebuild would differ
// from the live model. Existing rows are updated; only a currency seen for the first time
// is inserted, with its first delta. Not a plain upsert: PostgreSQL checks constraints on the
// proposed INSERT row before resolving the conflict.
// System accounts: one row per (account, partition), and a partition has one writer (its apply
// lock), so the upsert never waits on another partition's batch.
// Entries are plain inserts: the per-aggregate version check, in this transaction and
// under the apply lock, already excludes a duplicate. A second guard (ON CONFLICT DO
// NOTHING) cost half as much again per entry (speculative insertion) and would hide an
// entry that exists without its version; now that fails the batch and the event is
// dead-lettered, where an operator sees it.
const WRITE: &str = "WITH written_accounts AS (
         INSERT INTO accounts (account_id, owner, currency, balance, held, overdraft_limit,
             max_balance, metadata, status, version, opened_at, updated_at, feed_partition,
             feed_position)
         SELECT i, o, c, b, h, l, m, d, s, v, oa, ua, CASE WHEN f IS NOT NULL THEN $31::integer END, f
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
             $6::bigint[], $7::bigint[], $8::jsonb[], $9::text[], $10::bigint[],
             $11::timestamptz[], $12::timestamptz[], $32::bigint[]) AS a(i, o, c, b, h, l, m, d, s, v, oa, ua, f)
         ON CONFLICT (account_id) DO UPDATE SET
             balance = EXCLUDED.balance, held = EXCLUDED.held,
             overdraft_limit = EXCLUDED.overdraft_limit, max_balance = EXCLUDED.max_balance,
             status = EXCLUDED.status, version = EXCLUDED.version,
             updated_at = EXCLUDED.updated_at, feed_partition = EXCLUDED.feed_partition,
             feed_position = EXCLUDED.feed_position
     ), written_entries AS (
         INSERT INTO account_entries (account_id, sequence, direction, amount, reference,
             balance_after, recorded_at, command_id, transfer_id, transaction_id, legs,
             feed_partition, feed_position)
         SELECT i, s, d, a, r, b, t, c, tr, tx, l, CASE WHEN f IS NOT NULL THEN $31::integer END, f
         FROM UNNEST($13::text[], $14::bigint[], $15::text[], $16::bigint[],
             $17::text[], $18::bigint[], $19::timestamptz[], $20::uuid[], $21::uuid[],
             $22::uuid[], $23::jsonb[], $33::bigint[]) AS e(i, s, d, a, r, b, t, c, tr, tx, l, f)
     ), written_system AS (
         INSERT INTO system_account_balances AS s (account, currency, partition, balance)
         SELECT a, c, $27, b FROM UNNEST($24::text[], $25::text[], $26::text[]::numeric[]) AS d(a, c, b)
         ON CONFLICT (account, partition) DO UPDATE SET balance = s.balance + EXCLUDED.balance
     ), delta (currency, open_accounts, total_balance) AS (
         SELECT * FROM UNNEST($28::text[], $29::bigint[], $30::text[]::numeric[])
     ), updated AS (
         UPDATE currency_totals t
         SET open_accounts = t.open_accounts + d.open_accounts,
             total_balance = t.total_balance + d.total_balance
         FROM delta d WHERE t.currency = d.currency
         RETURNING t.currency
     )
     INSERT INTO currency_totals (currency, open_accounts, total_balance)
     SELECT currency, open_accounts, total_balance FROM delta
     WHERE currency NOT IN (SELECT currency FROM updated)
     -- Another worker inserted it meanwhile (a hand-over): add to it all the same.
     ON CONFLICT (currency) DO UPDATE SET
         open_accounts = currency_totals.open_accounts + EXCLUDED.open_accounts,
         total_balance = currency_totals.total_balance + EXCLUDED.total_balance";

pub(super) async fn write(
    tx: &mut Transaction<'_, Postgres>,
    rows: Vec<AccountRow>,
    entries: Vec<Entry>,
    deltas: HashMap<String, CurrencyDelta>,
    system: HashMap<String, SystemDelta>,
    partition: u32,
) -> Result<(), ApplyError> {
    let feed_positions: Vec<Option<i64>> = rows.iter().map(|r| r.feed_position).collect();
    let entry_positions: Vec<Option<i64>> = entries.iter().map(|e| e.feed_position).collect();
    let mut query = sqlx::query(WRITE)
        .bind(
            rows.iter()
                .map(|r| r.account_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.owner.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.currency.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.balance).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.held).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.overdraft_limit).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.max_balance).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.metadata.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.opened_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>());
    query = query
        .bind(
            entries
                .iter()
                .map(|e| e.account_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(entries.iter().map(|e| e.sequence).collect::<Vec<_>>())
        .bind(
            entries
                .iter()
                .map(|e| e.direction.to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(entries.iter().map(|e| e.amount).collect::<Vec<_>>())
        .bind(
            entries
                .iter()
                .map(|e| e.reference.clone())
                .collect::<Vec<_>>(),
        )
        .bind(entries.iter().map(|e| e.balance_after).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.recorded_at).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.command_id).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.transfer_id).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.transaction_id).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.legs.clone()).collect::<Vec<_>>());
    // Sorted, so two batches touching the same rows lock them in the same order.
    let mut system: Vec<_> = system.into_iter().collect();
    system.sort_by(|x, y| x.0.cmp(&y.0));
    query = query
        .bind(system.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>())
        .bind(
            system
                .iter()
                .map(|(_, d)| d.currency.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            system
                .iter()
                .map(|(_, d)| d.balance.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(i32::try_from(partition).unwrap_or(i32::MAX));
    let mut deltas: Vec<_> = deltas.into_iter().collect();
    deltas.sort_by(|x, y| x.0.cmp(&y.0));
    query
        .bind(deltas.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>())
        .bind(
            deltas
                .iter()
                .map(|(_, d)| d.open_accounts)
                .collect::<Vec<_>>(),
        )
        .bind(
            deltas
                .iter()
                .map(|(_, d)| d.balance.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(i32::try_from(partition).unwrap_or(i32::MAX))
        .bind(feed_positions)
        .bind(entry_positions)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
