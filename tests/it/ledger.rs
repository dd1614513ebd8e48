//! The double-entry ledger end to end over NATS (issue 24): multi-leg transactions, holds,
//! limits and batches against the real stack, each refusal checked to write nothing, and the
//! books (client and system accounts) checked to sum to zero per currency.
//!
//! Balances are folded here from the stored events with the domain's own `apply` and read as
//! postings (`domain::ledger::postings`), not read from the read models: these tests judge the
//! command side, and a projection lagging would only make them slow.

mod batches;
mod cli;
mod holds;
mod hostile;
mod limits;
mod transactions;

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use cqrs_es::Aggregate;
use domain::account::upcast::read_event;
use domain::ledger::postings;
use domain::{Account, CommandReply, ErrorCode};
use serde_json::{Value, json};
use tests::TestApp;
use tests::client::accepted;
use uuid::Uuid;

/// Opens `id` for `owner` in `currency` and deposits `deposit` (if any), as the admin.
pub async fn open(app: &TestApp, id: &str, owner: &str, currency: &str, deposit: i64) {
    accepted(
        &app.send(
            "account.open",
            json!({"account_id": id, "owner": owner, "currency": currency}),
        )
        .await,
    );
    if deposit > 0 {
        accepted(
            &app.send(
                "account.deposit",
                json!({"account_id": id, "amount": deposit}),
            )
            .await,
        );
    }
}

/// A leg as the wire has it.
pub fn leg(from: &str, to: &str, amount: i64, currency: &str) -> Value {
    json!({"from": from, "to": to, "amount": amount, "currency": currency})
}

/// `transaction.post` with a new transaction id, as the admin.
pub async fn post(app: &TestApp, legs: Vec<Value>) -> CommandReply {
    app.send(
        "transaction.post",
        json!({"transaction_id": Uuid::now_v7(), "legs": legs, "reference": "test"}),
    )
    .await
}

/// Sends `command` with `token` (`None`: the admin's).
pub async fn send_as(
    app: &TestApp,
    command: &str,
    body: &Value,
    token: Option<&str>,
) -> CommandReply {
    let mut headers = HeaderMap::new();
    if let Some(token) = token {
        headers.insert("Authorization", format!("Bearer {token}").as_str());
    }
    app.send_raw(command, headers, serde_json::to_vec(body).unwrap())
        .await
}

/// What a batch was answered with: one reply per command, or one refusal of the whole batch.
#[derive(Debug)]
pub enum BatchAnswer {
    Results(Vec<CommandReply>),
    Refused(CommandReply),
}

impl BatchAnswer {
    pub fn results(self) -> Vec<CommandReply> {
        match self {
            BatchAnswer::Results(results) => results,
            BatchAnswer::Refused(reply) => panic!("the batch was refused: {reply:?}"),
        }
    }
}

/// One batch item: a command name, its own id and body.
pub fn item(command: &str, body: Value) -> Value {
    json!({"command": command, "command_id": Uuid::now_v7(), "body": body})
}

/// Sends `items` as one `batch.submit` message with `token` (`None`: the admin's).
pub async fn submit(
    app: &TestApp,
    atomic: bool,
    items: &[Value],
    token: Option<&str>,
) -> BatchAnswer {
    let body = json!({"atomic": atomic, "commands": items});
    let mut headers = HeaderMap::new();
    headers.insert("Tally-Command-Id", Uuid::now_v7().to_string().as_str());
    let token = token.map_or_else(tests::app::admin_token, str::to_owned);
    headers.insert("Authorization", format!("Bearer {token}").as_str());
    let subject = format!("{}.cmd.batch.submit", app.subjects.prefix());
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        app.nats.request_with_headers(
            subject.clone(),
            headers,
            serde_json::to_vec(&body).unwrap().into(),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer to {subject} within 30 s"))
    .unwrap_or_else(|e| panic!("request to {subject} failed: {e}"));
    let answer: Value = serde_json::from_slice(&response.payload).unwrap_or_else(|e| {
        panic!(
            "the answer is not JSON ({e}): {}",
            String::from_utf8_lossy(&response.payload)
        )
    });
    match answer.get("results") {
        Some(results) => BatchAnswer::Results(serde_json::from_value(results.clone()).unwrap()),
        None => BatchAnswer::Refused(serde_json::from_value(answer).unwrap()),
    }
}

/// A rejection's code and details, or panic.
pub fn refusal(reply: &CommandReply) -> (ErrorCode, Value) {
    match reply {
        CommandReply::Rejected { error, .. } => (error.code, error.details.clone()),
        CommandReply::Accepted { .. } => panic!("accepted, expected a rejection: {reply:?}"),
    }
}

/// Every client account as its stored events leave it (version, state), and every account's
/// balance per currency as postings (system accounts included): the ledger as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Books {
    pub accounts: BTreeMap<String, (u64, Account)>,
    /// `(account, currency)` to balance; client accounts and system accounts (`@world:EUR`).
    pub postings: BTreeMap<(String, String), i64>,
    pub events: i64,
}

impl Books {
    pub async fn read(app: &TestApp) -> Books {
        let rows: Vec<(String, i64, String, String, Value)> = sqlx::query_as(
            "SELECT aggregate_id, sequence, event_type, event_version, payload FROM events
             WHERE aggregate_type = 'account' ORDER BY aggregate_id, sequence",
        )
        .fetch_all(&app.db)
        .await
        .unwrap();
        let mut accounts: BTreeMap<String, (u64, Account)> = BTreeMap::new();
        let mut sums: BTreeMap<(String, String), i64> = BTreeMap::new();
        for (id, sequence, event_type, version, payload) in rows {
            let event = read_event(&event_type, &version, &payload)
                .unwrap_or_else(|e| panic!("{id} #{sequence} {event_type}: {e}"));
            let (at, account) = accounts.entry(id.clone()).or_default();
            account.apply(event.clone());
            *at = u64::try_from(sequence).unwrap();
            for posting in postings::of_account_event(&id, &account.currency, &event) {
                let sum = sums.entry((posting.account, posting.currency)).or_default();
                *sum = sum.checked_add(posting.amount).expect("no overflow");
            }
        }
        Books {
            accounts,
            postings: sums,
            events: app.events_in_store().await,
        }
    }

    /// The posted balance of a client account.
    pub fn balance(&self, id: &str) -> i64 {
        self.accounts
            .get(id)
            .unwrap_or_else(|| panic!("no account {id}"))
            .1
            .balance
    }

    pub fn held(&self, id: &str) -> i64 {
        self.accounts[id].1.held
    }

    pub fn version(&self, id: &str) -> u64 {
        self.accounts[id].0
    }

    /// A system account's balance (`@fees:EUR`), 0 if nothing touched it.
    pub fn system(&self, name: &str) -> i64 {
        let currency = name.rsplit(':').next().unwrap().to_owned();
        self.postings
            .get(&(name.to_owned(), currency))
            .copied()
            .unwrap_or(0)
    }

    /// Every currency sums to zero over all accounts, and each client account's postings sum
    /// to its balance.
    pub fn assert_balanced(&self) {
        let mut per_currency: BTreeMap<&str, i64> = BTreeMap::new();
        for ((account, currency), amount) in &self.postings {
            *per_currency.entry(currency).or_default() += amount;
            if let Some((_, state)) = self.accounts.get(account) {
                assert_eq!(
                    *amount, state.balance,
                    "{account}: postings and balance differ"
                );
            }
        }
        for (currency, sum) in per_currency {
            assert_eq!(
                sum, 0,
                "{currency} does not sum to zero: {:?}",
                self.postings
            );
        }
    }
}

/// Sends each `(command, body)` and expects its code, then that nothing was written.
pub async fn refused_writing_nothing(
    app: &TestApp,
    cases: Vec<(&str, Value, ErrorCode)>,
    token: Option<&str>,
) {
    let before = Books::read(app).await;
    for (command, body, expected) in cases {
        let reply = send_as(app, command, &body, token).await;
        let (code, details) = refusal(&reply);
        assert_eq!(code, expected, "{command} {body}: {reply:?}");
        assert!(details.is_object(), "{command}: details {details}");
    }
    let after = Books::read(app).await;
    assert_eq!(after, before, "a refused command wrote something");
}
