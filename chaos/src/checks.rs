//! After the load: wait (bounded) until everything settled, then check the invariants against
//! the store (the PostgreSQL primary), the `TALLY_EVENTS` stream, the read models, both
//! query-service instances and `tally audit verify`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Serialize;
use sqlx::Connection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::time::Instant;
use uuid::Uuid;

use platform::db::primary::{self, DatabaseUrl};

use crate::model::{CommandRecord, Kind, Outcome, TransferEnd, expected_balances};

/// Reading the whole events stream back is given at most this long.
const STREAM_READ_MAX: Duration = Duration::from_secs(300);
/// One message of that read may take this long (a pull across a leader change).
const STREAM_MESSAGE_WAIT: Duration = Duration::from_secs(15);
/// `tally audit verify` is given at most this long.
const VERIFY_MAX: Duration = Duration::from_secs(300);
const EVENTS_STREAM: &str = "TALLY_EVENTS";

/// One invariant's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok,
        detail: detail.into(),
    }
}

/// The primary among the hosts of a (multi-host) URL, found as the services find it
/// (`platform::db::primary`): a small pool on it.
pub async fn primary(url: &str) -> anyhow::Result<PgPool> {
    let (index, database) = primary_index(url).await?;
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(database.hosts()[index].clone())
        .await
        .with_context(|| format!("connecting to host {} of {url}", index + 1))
}

/// The position of the primary in the URL's list of hosts, and the parsed URL.
pub async fn primary_index(url: &str) -> anyhow::Result<(usize, DatabaseUrl)> {
    let database = DatabaseUrl::parse(url)?;
    let (index, conn) = primary::resolve(&database).await?;
    let _ = conn.close().await;
    Ok((index, database))
}

/// What the store says about the run's transfers: how each ended.
async fn transfer_ends(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<HashMap<Uuid, TransferEnd>> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (aggregate_id) aggregate_id, event_type FROM events
         WHERE aggregate_type = 'transfer' AND aggregate_id = ANY($1)
         ORDER BY aggregate_id, sequence DESC",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, last)| {
            let end = match last.as_str() {
                "TransferCompleted" => TransferEnd::Completed,
                "TransferFailed" => TransferEnd::Failed,
                other => TransferEnd::Unfinished(other.to_owned()),
            };
            Some((Uuid::parse_str(&id).ok()?, end))
        })
        .collect())
}

/// What is still moving: the number of events not (yet) in the stream, transfers of the run not
/// finished in the store, and run aggregates whose read-model row is behind the store.
#[derive(Debug, Default, Serialize)]
pub struct Backlog {
    pub store_events: i64,
    pub stream_messages: u64,
    pub unfinished_transfers: usize,
    pub read_models_behind: i64,
}

impl Backlog {
    pub fn settled(&self) -> bool {
        u64::try_from(self.store_events).ok() == Some(self.stream_messages)
            && self.unfinished_transfers == 0
            && self.read_models_behind == 0
    }
}

pub struct Target<'a> {
    pub database_url: &'a str,
    pub stream_reader: &'a async_nats::Client,
    pub accounts: &'a [String],
    pub transfers: &'a [Uuid],
}

async fn stream_messages(nats: &async_nats::Client) -> anyhow::Result<(u64, u64)> {
    let js = async_nats::jetstream::new(nats.clone());
    let mut stream = js.get_stream(EVENTS_STREAM).await?;
    let info = stream.info().await?;
    Ok((info.state.messages, info.state.last_sequence))
}

pub async fn backlog(target: &Target<'_>) -> anyhow::Result<Backlog> {
    let pool = primary(target.database_url).await?;
    let store_events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    let (stream_messages, _) = stream_messages(target.stream_reader).await?;
    let ends = transfer_ends(&pool, target.transfers).await?;
    let unfinished_transfers = target
        .transfers
        .iter()
        .filter(|id| {
            !matches!(
                ends.get(id),
                Some(TransferEnd::Completed | TransferEnd::Failed)
            )
        })
        .count();
    let transfer_ids: Vec<String> = target.transfers.iter().map(Uuid::to_string).collect();
    let read_models_behind: i64 = sqlx::query_scalar(
        "WITH heads AS (
             SELECT aggregate_type, aggregate_id, max(sequence) AS head FROM events
             WHERE (aggregate_type = 'account' AND aggregate_id = ANY($1))
                OR (aggregate_type = 'transfer' AND aggregate_id = ANY($2))
             GROUP BY 1, 2)
         SELECT count(*) FROM heads h
         LEFT JOIN accounts a ON h.aggregate_type = 'account' AND a.account_id = h.aggregate_id
         LEFT JOIN transfers t ON h.aggregate_type = 'transfer'
                              AND t.transfer_id::text = h.aggregate_id
         WHERE coalesce(a.version, t.version, 0) < h.head",
    )
    .bind(target.accounts)
    .bind(&transfer_ids)
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(Backlog {
        store_events,
        stream_messages,
        unfinished_transfers,
        read_models_behind,
    })
}

/// Waits until [`Backlog::settled`] or `max`; the last backlog seen and how long it took.
pub async fn settle(target: &Target<'_>, max: Duration) -> (Option<Backlog>, Duration, bool) {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < max {
        match tokio::time::timeout(Duration::from_secs(30), backlog(target)).await {
            Ok(Ok(b)) if b.settled() => return (Some(b), started.elapsed(), true),
            Ok(Ok(b)) => last = Some(b),
            Ok(Err(_)) | Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    (last, started.elapsed(), false)
}

pub struct Inputs<'a> {
    pub target: Target<'a>,
    pub records: &'a [CommandRecord],
    pub tally_bin: &'a Path,
    pub http_urls: &'a [String],
    pub token: &'a str,
}

/// Every invariant, in the order the report prints them.
pub async fn run_all(inputs: &Inputs<'_>) -> anyhow::Result<Vec<Check>> {
    let pool = primary(inputs.target.database_url).await?;
    let records = inputs.records;
    let mut checks = Vec::new();

    // --- the command log and the events of each command -------------------------------
    let ids: Vec<Uuid> = records.iter().map(|r| r.command_id).collect();
    let logged: Vec<(Uuid, String, serde_json::Value)> = sqlx::query_as(
        "SELECT command_id, status, reply FROM command_log WHERE command_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await?;
    let logged: HashMap<Uuid, (String, serde_json::Value)> = logged
        .into_iter()
        .map(|(id, status, reply)| (id, (status, reply)))
        .collect();
    let id_texts: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let with_events: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT metadata->>'command_id' FROM events
         WHERE metadata->>'command_id' = ANY($1)",
    )
    .bind(&id_texts)
    .fetch_all(&pool)
    .await?;
    let with_events: HashSet<Uuid> = with_events
        .iter()
        .filter_map(|s| Uuid::parse_str(s).ok())
        .collect();

    let mut accepted = 0;
    let mut lost = Vec::new();
    let mut rejected = 0;
    let mut rejected_with_effect = Vec::new();
    let mut unanswered = 0;
    let mut effective: HashSet<Uuid> = HashSet::new();
    let mut unanswered_ran = 0;
    for r in records {
        let log = logged.get(&r.command_id);
        match &r.outcome {
            Outcome::Accepted { version } => {
                accepted += 1;
                effective.insert(r.command_id);
                let logged_version = log
                    .filter(|(status, _)| status == "accepted")
                    .and_then(|(_, reply)| reply.get("version")?.as_u64());
                if logged_version != Some(*version) || !with_events.contains(&r.command_id) {
                    lost.push(format!(
                        "{} {} (log {:?}, events {})",
                        r.kind.subject(),
                        r.command_id,
                        log.map(|l| &l.0),
                        with_events.contains(&r.command_id)
                    ));
                }
            }
            Outcome::Rejected { .. } => {
                rejected += 1;
                if log.is_some_and(|(s, _)| s == "accepted") || with_events.contains(&r.command_id)
                {
                    rejected_with_effect.push(r.command_id.to_string());
                }
            }
            Outcome::NoAnswer { .. } => {
                unanswered += 1;
                if log.is_some_and(|(s, _)| s == "accepted") {
                    unanswered_ran += 1;
                    effective.insert(r.command_id);
                }
            }
        }
    }
    checks.push(check(
        "every accepted command is in the store",
        lost.is_empty(),
        format!(
            "{accepted} accepted, {} without their command-log reply or events{}",
            lost.len(),
            sample(&lost)
        ),
    ));
    checks.push(check(
        "no rejected command took effect",
        rejected_with_effect.is_empty(),
        format!(
            "{rejected} rejected, {} with an accepted log row or events{}",
            rejected_with_effect.len(),
            sample(&rejected_with_effect)
        ),
    ));
    checks.push(check(
        "commands without a definite answer (60 s)",
        true,
        format!(
            "{unanswered} (of which {unanswered_ran} ran, per the command log; counted in the balances)"
        ),
    ));

    // --- no command ran twice ----------------------------------------------------------
    // A command's events are written in one transaction: two transactions for one command id
    // is a command executed twice (the command log's primary key already rules out two rows).
    let twice: Vec<String> = sqlx::query_scalar(
        "SELECT metadata->>'command_id' FROM events GROUP BY 1
         HAVING count(DISTINCT tx_id::text) > 1 LIMIT 20",
    )
    .fetch_all(&pool)
    .await?;
    checks.push(check(
        "no command ran twice (one transaction per command id)",
        twice.is_empty(),
        format!(
            "{} command ids with events from two transactions{}",
            twice.len(),
            sample(&twice)
        ),
    ));

    // --- balances: the model vs the store's events, folded by the audit crate ----------
    let transfer_ids: Vec<Uuid> = records.iter().filter_map(|r| r.transfer_id).collect();
    let ends = transfer_ends(&pool, &transfer_ids).await?;
    let (expected, problems) = expected_balances(records, &effective, &ends);
    let far = chrono::Utc::now() + chrono::Duration::days(3650);
    let mut derived: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (account, want) in &expected {
        let state =
            audit::history::account_state(&pool, account, audit::history::StatePoint::At(far))
                .await
                .with_context(|| format!("folding {account}"))?;
        let (balance, version) = state.map_or((0, 0), |s| (s.state.balance, s.version));
        derived.insert(account.clone(), (balance, version));
        if balance != *want {
            wrong.push(format!(
                "{account}: store {balance}, accepted commands say {want}"
            ));
        }
    }
    checks.push(check(
        "balances = sum of accepted commands (re-derived from events)",
        wrong.is_empty() && problems.is_empty(),
        format!(
            "{} accounts, {} differ{}{}",
            expected.len(),
            wrong.len(),
            sample(&wrong),
            sample(&problems)
        ),
    ));

    // --- transfers: finished, and the read model agrees --------------------------------
    let unfinished_store: Vec<String> = transfer_ids
        .iter()
        .filter(|id| matches!(ends.get(id), Some(TransferEnd::Unfinished(_))))
        .map(Uuid::to_string)
        .collect();
    let unfinished_rm: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM transfers WHERE status NOT IN ('completed', 'failed')",
    )
    .fetch_one(&pool)
    .await?;
    checks.push(check(
        "no transfer left unfinished",
        unfinished_store.is_empty() && unfinished_rm == 0,
        format!(
            "{} transfers sent; unfinished: {} in the store, {unfinished_rm} in the transfers read model (whole table){}",
            transfer_ids.len(),
            unfinished_store.len(),
            sample(&unfinished_store)
        ),
    ));
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT transfer_id, status FROM transfers WHERE transfer_id = ANY($1)")
            .bind(&transfer_ids)
            .fetch_all(&pool)
            .await?;
    let rows: HashMap<Uuid, String> = rows.into_iter().collect();
    let mut transfer_mismatch = Vec::new();
    for (id, end) in &ends {
        let want = match end {
            TransferEnd::Completed => "completed",
            TransferEnd::Failed => "failed",
            TransferEnd::Unfinished(_) | TransferEnd::Absent => continue,
        };
        if rows.get(id).map(String::as_str) != Some(want) {
            transfer_mismatch.push(format!("{id}: store {want}, read model {:?}", rows.get(id)));
        }
    }
    checks.push(check(
        "transfers read model = the store",
        transfer_mismatch.is_empty(),
        format!(
            "{} compared, {} differ{}",
            ends.len(),
            transfer_mismatch.len(),
            sample(&transfer_mismatch)
        ),
    ));

    // --- entries read model: one entry per money movement, ending at the balance -------
    let accounts = inputs.target.accounts;
    let entry_rows: Vec<(String, i64, i64, Option<i64>)> = sqlx::query_as(
        "SELECT e.account_id,
                (SELECT count(*) FROM events v WHERE v.aggregate_type = 'account'
                   AND v.aggregate_id = e.account_id
                   AND v.event_type IN ('MoneyDeposited', 'MoneyWithdrawn', 'TransferDebited',
                                        'TransferCredited', 'TransferRefunded')),
                count(*),
                (SELECT balance_after FROM account_entries l WHERE l.account_id = e.account_id
                   ORDER BY sequence DESC LIMIT 1)
         FROM account_entries e WHERE e.account_id = ANY($1) GROUP BY e.account_id",
    )
    .bind(accounts)
    .fetch_all(&pool)
    .await?;
    let mut entries_wrong = Vec::new();
    for (account, movements, entries, last) in &entry_rows {
        let balance = derived.get(account).map(|d| d.0);
        if movements != entries || *last != balance {
            entries_wrong.push(format!(
                "{account}: {movements} movements, {entries} entries, last balance_after {last:?}, balance {balance:?}"
            ));
        }
    }
    if entry_rows.len() != accounts.len() {
        entries_wrong.push(format!(
            "{} of {} accounts have entries",
            entry_rows.len(),
            accounts.len()
        ));
    }
    checks.push(check(
        "entries read model = the events",
        entries_wrong.is_empty(),
        format!(
            "{} accounts compared{}",
            entry_rows.len(),
            sample(&entries_wrong)
        ),
    ));

    // --- totals read model = the sum over the accounts read model (which verify checks) --
    let totals_ok: Option<bool> = sqlx::query_scalar(
        "SELECT bool_and(t.total_balance = coalesce(s.total, 0) AND t.open_accounts = coalesce(s.open, 0))
         FROM currency_totals t LEFT JOIN (
             SELECT currency, sum(balance) AS total, count(*) AS open FROM accounts
             WHERE status <> 'closed' GROUP BY currency) s ON s.currency = t.currency",
    )
    .fetch_one(&pool)
    .await?;
    checks.push(check(
        "currency totals = sum of the accounts",
        totals_ok.unwrap_or(true),
        "per currency: open accounts and total balance",
    ));

    // --- each query-service instance answers the re-derived state ----------------------
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut http_wrong = Vec::new();
    for url in inputs.http_urls {
        for account in accounts {
            let Some((balance, version)) = derived.get(account) else {
                continue;
            };
            let got = async {
                let response = http
                    .get(format!("{url}/v1/accounts/{account}"))
                    .bearer_auth(inputs.token)
                    .send()
                    .await?
                    .error_for_status()?;
                let body: serde_json::Value = response.json().await?;
                Ok::<_, reqwest::Error>((body["balance"].as_i64(), body["version"].as_i64()))
            }
            .await;
            match got {
                Ok((Some(b), Some(v))) if b == *balance && v == *version => {}
                other => http_wrong.push(format!(
                    "{url} {account}: {other:?}, store ({balance}, v{version})"
                )),
            }
        }
    }
    checks.push(check(
        "every query-service instance answers the store's balances",
        http_wrong.is_empty(),
        format!(
            "{} instances x {} accounts{}",
            inputs.http_urls.len(),
            accounts.len(),
            sample(&http_wrong)
        ),
    ));

    // --- TALLY_EVENTS holds every event once -------------------------------------------
    checks.push(stream_check(&pool, inputs.target.stream_reader).await?);

    // --- tally audit verify ------------------------------------------------------------
    checks.push(audit_verify(inputs.tally_bin, inputs.target.database_url).await);
    pool.close().await;
    Ok(checks)
}

fn sample(items: &[String]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = items.iter().take(3).map(String::as_str).collect();
    format!("; e.g. {}", shown.join("; "))
}

/// The stream's message count and `Nats-Msg-Id`s against the store's events
/// (`<aggregate_type>:<aggregate_id>:<sequence>`, command-service/src/relay/message.rs).
async fn stream_check(pool: &PgPool, nats: &async_nats::Client) -> anyhow::Result<Check> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    let js = async_nats::jetstream::new(nats.clone());
    let stream = js.get_stream(EVENTS_STREAM).await?;
    let (messages, last_sequence) = stream_messages(nats).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            // Only the headers: the ids are there, and the bodies would be most of the bytes.
            headers_only: true,
            ..Default::default()
        })
        .await?;
    let mut seen: HashMap<String, u32> = HashMap::with_capacity(messages as usize);
    let mut no_id = 0u64;
    let started = Instant::now();
    if last_sequence > 0 {
        let mut delivered = consumer.messages().await?;
        loop {
            if started.elapsed() > STREAM_READ_MAX {
                bail!("reading {EVENTS_STREAM} took over {STREAM_READ_MAX:?}");
            }
            let message = tokio::time::timeout(STREAM_MESSAGE_WAIT, delivered.next())
                .await
                .with_context(|| {
                    format!("no message from {EVENTS_STREAM} in {STREAM_MESSAGE_WAIT:?}")
                })?
                .context("the ordered consumer ended")??;
            match message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
                Some(id) => *seen.entry(id.as_str().to_owned()).or_default() += 1,
                None => no_id += 1,
            }
            let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            if sequence >= last_sequence {
                break;
            }
        }
    }
    let mut store: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT aggregate_type, aggregate_id, sequence FROM events")
            .fetch_all(pool)
            .await?;
    let store_count = store.len();
    let store_ids: HashSet<String> = store
        .drain(..)
        .map(|(t, id, seq)| format!("{t}:{id}:{seq}"))
        .collect();
    let twice: Vec<String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| format!("{id} x{n}"))
        .collect();
    let missing: Vec<String> = store_ids
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .cloned()
        .collect();
    let extra: Vec<String> = seen
        .keys()
        .filter(|id| !store_ids.contains(*id))
        .cloned()
        .collect();
    let ok = twice.is_empty()
        && missing.is_empty()
        && extra.is_empty()
        && no_id == 0
        && messages == store_count as u64;
    Ok(check(
        "TALLY_EVENTS holds every stored event once",
        ok,
        format!(
            "stream {messages} messages, store {store_count} events; missing {}, not in the store {}, duplicated {}, without Nats-Msg-Id {no_id}{}{}{}",
            missing.len(),
            extra.len(),
            twice.len(),
            sample(&missing),
            sample(&extra),
            sample(&twice)
        ),
    ))
}

/// `tally --json audit verify` on the primary: clean, and no account's read model behind.
async fn audit_verify(tally: &Path, database_url: &str) -> Check {
    let name = "tally audit verify: chains, folds, transfers, accounts read model";
    let mut command = tokio::process::Command::new(tally);
    command
        .args(["--json", "audit", "verify", "--database-url", database_url])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(VERIFY_MAX, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return check(name, false, format!("cannot run {}: {e}", tally.display())),
        Err(_) => return check(name, false, format!("took over {VERIFY_MAX:?}")),
    };
    let report: serde_json::Value = match serde_json::from_slice(&output.stdout) {
        Ok(v) => v,
        Err(_) => {
            return check(
                name,
                false,
                format!(
                    "exit {}, no JSON report: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            );
        }
    };
    let findings = report["findings_total"].as_u64().unwrap_or(u64::MAX);
    let behind = report["read_models_behind"].as_u64().unwrap_or(u64::MAX);
    let first: Vec<String> = report["findings"]
        .as_array()
        .map(|f| f.iter().take(3).map(|x| x.to_string()).collect())
        .unwrap_or_default();
    check(
        name,
        output.status.success() && findings == 0 && behind == 0,
        format!(
            "{} events, {} aggregates, {} accounts compared, {behind} behind, {findings} findings{}",
            report["events"],
            report["aggregates"],
            report["read_models_compared"],
            sample(&first)
        ),
    )
}

/// The transfers the settle wait waits for: those whose request was answered accepted.
pub fn accepted_transfers(records: &[CommandRecord]) -> Vec<Uuid> {
    records
        .iter()
        .filter(|r| r.kind == Kind::Transfer && matches!(r.outcome, Outcome::Accepted { .. }))
        .filter_map(|r| r.transfer_id)
        .collect()
}
