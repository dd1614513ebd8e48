//! The load: clients sending deposits, withdrawals and transfers over NATS request/reply, each
//! command with its own command id, a missing answer resent with the same id until a definite
//! answer or the answer bound.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use domain::CommandReply;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use crate::model::{CommandRecord, Kind, Outcome, is_retryable};

/// Each attempt waits at most this long for its reply before it is resent.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a missing answer, doubling up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Money each account starts with: most withdrawals and transfers fit, a few sent on purpose
/// with [`TOO_MUCH`] are refused (a definite rejection, or a transfer that fails).
const OPENING_DEPOSIT: i64 = 10_000_000;
const TOO_MUCH: i64 = 1_000_000_000_000;
/// Out of 100 commands: deposits, withdrawals, the rest transfers.
const DEPOSIT_PERCENT: u32 = 35;
const WITHDRAW_PERCENT: u32 = 35;

#[derive(Debug, Clone)]
pub struct Sender {
    pub nats: async_nats::Client,
    pub token: Arc<str>,
    /// The answer bound: a command without a definite answer this long after its first send
    /// is recorded as unanswered.
    pub answer_within: Duration,
    /// The run's clock (ms in records are since then).
    pub start: Instant,
}

fn ms(start: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

impl Sender {
    /// Sends one command until a definite answer or the answer bound; what happened.
    pub async fn send(
        &self,
        kind: Kind,
        account: &str,
        to: Option<&str>,
        amount: i64,
        body: serde_json::Value,
        transfer_id: Option<Uuid>,
    ) -> CommandRecord {
        let command_id = Uuid::now_v7();
        let subject = format!("tally.cmd.{}", kind.subject());
        let payload: bytes::Bytes = serde_json::to_vec(&body).unwrap_or_default().into();
        let first = Instant::now();
        let deadline = first + self.answer_within;
        let mut backoff = BACKOFF_MIN;
        let mut attempts = 0;
        let (outcome, answered_attempt) = loop {
            attempts += 1;
            let attempt = Instant::now();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Tally-Command-Id", command_id.to_string().as_str());
            headers.insert("Authorization", format!("Bearer {}", self.token).as_str());
            let wait = ATTEMPT_TIMEOUT.min(deadline.saturating_duration_since(attempt));
            let last = match tokio::time::timeout(
                wait,
                self.nats
                    .request_with_headers(subject.clone(), headers, payload.clone()),
            )
            .await
            {
                Ok(Ok(message)) => match serde_json::from_slice::<CommandReply>(&message.payload) {
                    Ok(reply) if !is_retryable(&reply) => {
                        break (
                            match reply {
                                CommandReply::Accepted { version, .. } => {
                                    Outcome::Accepted { version }
                                }
                                CommandReply::Rejected { error, .. } => Outcome::Rejected {
                                    code: error.code.as_str().to_owned(),
                                },
                            },
                            attempt,
                        );
                    }
                    Ok(CommandReply::Rejected { error, .. }) => error.code.as_str().to_owned(),
                    Ok(CommandReply::Accepted { .. }) => "accepted".into(),
                    Err(e) => format!("unreadable reply: {e}"),
                },
                Ok(Err(e)) => format!("{:?}", e.kind()),
                Err(_) => "timed out".into(),
            };
            let now = Instant::now();
            if now >= deadline {
                break (Outcome::NoAnswer { last }, first);
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        };
        CommandRecord {
            command_id,
            kind,
            account: account.to_owned(),
            to: to.map(str::to_owned),
            amount,
            transfer_id,
            first_sent_ms: ms(self.start, first),
            answered_attempt_sent_ms: ms(self.start, answered_attempt),
            done_ms: ms(self.start, Instant::now()),
            attempts,
            outcome,
        }
    }
}

/// Opens `n` accounts named `<prefix>-<i>` and funds each; the records (part of the model:
/// the opening deposits count like any other).
pub async fn open_accounts(
    sender: &Sender,
    prefix: &str,
    n: usize,
) -> anyhow::Result<(Vec<String>, Vec<CommandRecord>)> {
    let accounts: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let mut records = Vec::new();
    for account in &accounts {
        let open = sender
            .send(
                Kind::Open,
                account,
                None,
                0,
                json!({"account_id": account, "owner": "chaos", "currency": "EUR"}),
                None,
            )
            .await;
        let fund = sender
            .send(
                Kind::Deposit,
                account,
                None,
                OPENING_DEPOSIT,
                json!({"account_id": account, "amount": OPENING_DEPOSIT, "reference": "chaos opening"}),
                None,
            )
            .await;
        for r in [&open, &fund] {
            if !matches!(r.outcome, Outcome::Accepted { .. }) {
                bail!(
                    "setting up {account}: {} got {:?} (is the cluster up and the token valid?)",
                    r.kind.subject(),
                    r.outcome
                );
            }
        }
        records.push(open);
        records.push(fund);
    }
    Ok((accounts, records))
}

/// One client: sends random commands at most `rate_per_s` per second until `stop`, each to its
/// definite answer or the answer bound; every command's record.
pub async fn run_client(
    sender: Sender,
    accounts: Arc<Vec<String>>,
    seed: u64,
    rate_per_s: u32,
    stop: Instant,
) -> Vec<CommandRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pace = Duration::from_micros(1_000_000 / u64::from(rate_per_s.max(1)));
    let mut records = Vec::new();
    let mut next = Instant::now();
    while Instant::now() < stop {
        tokio::time::sleep_until(next).await;
        next = Instant::now() + pace;
        let n = accounts.len();
        let account = &accounts[rng.random_range(0..n)];
        let roll = rng.random_range(0..100u32);
        let excessive = rng.random_range(0..20u32) == 0;
        let record = if roll < DEPOSIT_PERCENT {
            let amount = rng.random_range(1..=1_000i64);
            let body = json!({"account_id": account, "amount": amount, "reference": "chaos"});
            sender
                .send(Kind::Deposit, account, None, amount, body, None)
                .await
        } else if roll < DEPOSIT_PERCENT + WITHDRAW_PERCENT {
            let amount = if excessive {
                TOO_MUCH
            } else {
                rng.random_range(1..=1_000i64)
            };
            let body = json!({"account_id": account, "amount": amount, "reference": "chaos"});
            sender
                .send(Kind::Withdraw, account, None, amount, body, None)
                .await
        } else {
            let mut to = &accounts[rng.random_range(0..n)];
            if to == account {
                to = &accounts[(accounts.iter().position(|a| a == account).unwrap_or(0) + 1) % n];
            }
            let amount = if excessive {
                TOO_MUCH
            } else {
                rng.random_range(1..=1_000i64)
            };
            let transfer_id = Uuid::now_v7();
            let body = json!({"transfer_id": transfer_id, "from": account, "to": to, "amount": amount, "reference": "chaos"});
            sender
                .send(
                    Kind::Transfer,
                    account,
                    Some(to),
                    amount,
                    body,
                    Some(transfer_id),
                )
                .await
        };
        records.push(record);
    }
    records
}

/// Connects to every NATS URL given, with a reconnect pause that stays short: the outage a
/// client sees must be the cluster's, not a backoff of the client's own.
pub async fn connect(
    urls: &[String],
    user: &str,
    password: &str,
) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::with_user_and_password(user.to_owned(), password.to_owned())
        .custom_inbox_prefix(format!("_INBOX_{user}"))
        .request_timeout(Some(ATTEMPT_TIMEOUT))
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(500))
        })
        .connect(urls)
        .await
        .with_context(|| format!("connecting to NATS at {} as {user}", urls.join(",")))
}
