//! `tally audit verify`: streams the event store in (aggregate, sequence) order inside one
//! repeatable-read snapshot, checks every chain link and fold (limits included), compares each
//! account with its read model, and across aggregates checks that every transfer's movements
//! add up, that every transaction's and captured hold's legs are on its accounts, that every
//! hold was reserved and released once, and that every currency sums to zero over all
//! accounts, system ones included. Memory stays bounded: one aggregate's state, one batch of
//! read-model lookups, and a few numbers per transfer, transaction, hold and currency.

use domain::hash_chain::ChainHash;
use event_store::{Horizon, StoreError};
use futures::TryStreamExt;
use sqlx::PgPool;

use crate::Finding;
use crate::chain_check::{AggregateCheck, Parsed};
use crate::ledger_totals::{CurrencyBalance, CurrencyTotals};
use crate::transaction_ledger::TransactionLedger;
use crate::transfer_ledger::TransferLedger;

/// Read-model rows looked up per round trip.
const READ_MODEL_BATCH: usize = 1_000;
/// Progress is reported every this many events.
const PROGRESS_EVERY: u64 = 10_000;

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only this aggregate (type and id).
    pub aggregate: Option<(String, String)>,
    /// Only events of transactions below this id (a digest's `as_of_tx`).
    pub as_of_tx: Option<u64>,
    /// Compare re-derived accounts with the `accounts` read model.
    pub compare_read_model: bool,
    /// Stop collecting findings after this many (the count goes on).
    pub findings_max: usize,
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub events: u64,
    pub aggregates: u64,
    pub findings: Vec<Finding>,
    pub findings_total: u64,
    /// Accounts whose read model was at the same version and compared.
    pub read_models_compared: u64,
    /// Accounts whose read model had not caught up yet (not a finding).
    pub read_models_behind: u64,
    /// (aggregate type, id, last sequence, stored head hash) per aggregate, for digests.
    pub heads: Vec<(String, String, u64, ChainHash)>,
    /// Each currency's books, client and system accounts; only over the whole store.
    pub currencies: Vec<CurrencyBalance>,
}

impl VerifyReport {
    fn add(&mut self, found: Vec<Finding>, max: usize) {
        for finding in found {
            self.findings_total += 1;
            if self.findings.len() < max {
                self.findings.push(finding);
            }
        }
    }

    pub fn merkle_root(&self) -> ChainHash {
        crate::digest::root_of(&self.heads)
    }
}

pub async fn verify(
    pool: &PgPool,
    options: &VerifyOptions,
    mut on_progress: impl FnMut(u64),
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let aggregate = options
        .aggregate
        .as_ref()
        .map(|(t, id)| (t.as_str(), id.as_str()));
    // Transaction ids stay far below 2^63: a bound beyond it excludes nothing, as i64::MAX does.
    let below = options
        .as_of_tx
        .map(|tx| Horizon(i64::try_from(tx).unwrap_or(i64::MAX)));

    let mut tx = event_store::audit::begin_snapshot(pool).await?;
    let mut rows = event_store::audit::events_in_chain_order(&mut tx, aggregate, below);

    // Across aggregates, so only over the whole store.
    let mut ledger = options.aggregate.is_none().then(Books::default);
    let mut current: Option<AggregateCheck> = None;
    let mut pending: Vec<AggregateCheck> = Vec::new();
    let mut found = Vec::new();
    while let Some(event) = rows.try_next().await? {
        let same = current.as_ref().is_some_and(|c| {
            c.aggregate_id == event.aggregate_id && c.aggregate_type == event.aggregate_type
        });
        if !same {
            if let Some(done) = current.take() {
                finish(done, &mut report, &mut pending);
                if options.compare_read_model && pending.len() >= READ_MODEL_BATCH {
                    compare(pool, std::mem::take(&mut pending), &mut found, &mut report).await?;
                }
            }
            current = Some(AggregateCheck::new(
                &event.aggregate_type,
                &event.aggregate_id,
            ));
        }
        if let Some(check) = current.as_mut() {
            let parsed = check.check(&event, &mut found);
            if let (Some(ledger), Some(parsed)) = (ledger.as_mut(), parsed) {
                ledger.observe(check, &event, &parsed);
            }
        }
        report.add(std::mem::take(&mut found), options.findings_max);
        report.events += 1;
        if report.events % PROGRESS_EVERY == 0 {
            on_progress(report.events);
        }
    }
    drop(rows);
    tx.commit().await?;
    if let Some(done) = current.take() {
        finish(done, &mut report, &mut pending);
    }
    if options.compare_read_model && !pending.is_empty() {
        compare(pool, pending, &mut found, &mut report).await?;
    }
    if let Some(ledger) = ledger {
        found.extend(ledger.transfers.findings());
        found.extend(ledger.transactions.findings());
        found.extend(ledger.totals.findings());
        report.currencies = ledger.totals.balances();
    }
    report.add(found, options.findings_max);
    on_progress(report.events);
    Ok(report)
}

/// The checks across aggregates.
#[derive(Debug, Default)]
struct Books {
    transfers: TransferLedger,
    transactions: TransactionLedger,
    totals: CurrencyTotals,
}

impl Books {
    fn observe(&mut self, check: &AggregateCheck, event: &crate::StoredEvent, parsed: &Parsed) {
        match parsed {
            Parsed::Account(e) => {
                // The currency is the account's as folded so far (its `AccountOpened` is its
                // first event); an account never opened has none, and is the fold's finding.
                let (id, currency) = (&check.aggregate_id, check.currency());
                self.totals.observe(id, currency, e);
                self.transactions.observe_account(id, currency, e);
                self.transfers.observe(event);
            }
            Parsed::Transfer(_) => self.transfers.observe(event),
            Parsed::Transaction(e) => self.transactions.observe_transaction(e),
            Parsed::Hold(e) => {
                if let Ok(id) = uuid::Uuid::parse_str(&check.aggregate_id) {
                    self.transactions.observe_hold(id, e);
                }
            }
        }
    }
}

fn finish(done: AggregateCheck, report: &mut VerifyReport, pending: &mut Vec<AggregateCheck>) {
    report.aggregates += 1;
    report.heads.push((
        done.aggregate_type.clone(),
        done.aggregate_id.clone(),
        u64::try_from(done.last_sequence).unwrap_or(0),
        done.head(),
    ));
    if done.account().is_some() && done.fold_is_sound() {
        pending.push(done);
    }
}

/// A nullable number as the findings show it.
fn number(value: Option<i64>) -> String {
    value.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

#[derive(Debug, sqlx::FromRow)]
struct ReadModelRow {
    id: String,
    applied: Option<i64>,
    version: Option<i64>,
    owner: Option<String>,
    currency: Option<String>,
    balance: Option<i64>,
    status: Option<String>,
    held: Option<i64>,
    overdraft_limit: Option<i64>,
    max_balance: Option<i64>,
}

/// Compares re-derived accounts with the read model where the projection has applied exactly
/// the events verified; a projection that is behind is counted, not reported.
async fn compare(
    pool: &PgPool,
    checks: Vec<AggregateCheck>,
    found: &mut Vec<Finding>,
    report: &mut VerifyReport,
) -> Result<(), StoreError> {
    let ids: Vec<&str> = checks.iter().map(|c| c.aggregate_id.as_str()).collect();
    let rows: Vec<ReadModelRow> = sqlx::query_as(
        // The version as a scalar subquery on the full primary key: as a join, stale statistics
        // (a table just swapped in by a rebuild) let the planner pick a prefix scan per id.
        "SELECT ids.id,
                (SELECT v.version FROM projection_versions v
                 WHERE v.projection = 'accounts' AND v.aggregate_type = 'account'
                   AND v.aggregate_id = ids.id) AS applied,
                a.version, a.owner, a.currency, a.balance, a.status,
                a.held, a.overdraft_limit, a.max_balance
         FROM UNNEST($1::text[]) AS ids(id)
         LEFT JOIN accounts a ON a.account_id = ids.id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let rows: std::collections::HashMap<String, ReadModelRow> =
        rows.into_iter().map(|r| (r.id.clone(), r)).collect();
    for check in checks {
        let Some(derived) = check.account() else {
            continue;
        };
        let row = rows.get(&check.aggregate_id);
        let applied = row.and_then(|r| r.applied).unwrap_or(0);
        if applied < derived.version {
            report.read_models_behind += 1;
            continue;
        }
        report.read_models_compared += 1;
        let mismatch =
            |field: &str, derived: String, read_model: String| Finding::ReadModelMismatch {
                aggregate_type: check.aggregate_type.clone(),
                aggregate_id: check.aggregate_id.clone(),
                field: field.to_owned(),
                derived,
                read_model,
            };
        if applied > derived.version {
            found.push(mismatch(
                "version",
                derived.version.to_string(),
                applied.to_string(),
            ));
            continue;
        }
        let Some(row) = row.filter(|r| r.version.is_some()) else {
            found.push(mismatch("row", "present".into(), "missing".into()));
            continue;
        };
        let show = |v: &Option<String>| v.clone().unwrap_or_default();
        let state = &derived.state;
        let pairs = [
            (
                "version",
                derived.version.to_string(),
                row.version.unwrap_or(0).to_string(),
            ),
            (
                "balance",
                state.balance.to_string(),
                row.balance.unwrap_or(0).to_string(),
            ),
            (
                "status",
                state.status.as_str().to_owned(),
                show(&row.status),
            ),
            ("owner", state.owner.clone(), show(&row.owner)),
            ("currency", state.currency.clone(), show(&row.currency)),
            ("held", state.held.to_string(), number(row.held)),
            (
                "overdraft_limit",
                state.overdraft_limit.to_string(),
                number(row.overdraft_limit),
            ),
            (
                "max_balance",
                number(state.max_balance),
                number(row.max_balance),
            ),
        ];
        for (field, want, have) in pairs {
            if want != have {
                found.push(mismatch(field, want, have));
            }
        }
    }
    Ok(())
}
