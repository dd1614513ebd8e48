//! Command load over NATS request/reply, as clients send it: closed loop (C clients, each with
//! one command in flight: the maximum rate) and open loop (a fixed offered rate, latencies
//! measured from each command's scheduled send time so a stall is not hidden by the client
//! waiting on it), with the time until each sampled write is visible over HTTP.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::CommandReply;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::stack::{self, StackArgs};
use crate::stats::{Latency, elapsed_us};

/// Open-loop commands in flight at most; above it the client itself is the bottleneck and says so.
const IN_FLIGHT_MAX: usize = 4_096;
/// Projection-lag probes per second at most (each one is an HTTP wait).
const LAG_SAMPLES_PER_S: u64 = 100;
/// The error counted when the open loop's commands in flight reach [`IN_FLIGHT_MAX`].
pub const CLIENT_BACKLOG: &str = "client_backlog";

/// What a scenario sends.
#[derive(Debug, Clone)]
pub struct Mix {
    pub accounts: Vec<String>,
    /// Out of 100 commands, how many are transfer requests between two different accounts.
    pub transfer_percent: u64,
}

impl Mix {
    /// The `i`th command: deposits and withdrawals of 1 alternating, and a share of transfers.
    fn command(&self, i: u64) -> (&'static str, String, serde_json::Value) {
        let n = self.accounts.len() as u64;
        let account = &self.accounts[(i % n) as usize];
        if self.accounts.len() > 1 && i % 100 < self.transfer_percent {
            let to = &self.accounts[((i + 1 + i / n) % n) as usize];
            let to = if to == account {
                &self.accounts[((i + 1) % n) as usize]
            } else {
                to
            };
            let body =
                json!({"transfer_id": Uuid::now_v7(), "from": account, "to": to, "amount": 1});
            return ("transfer.request", account.clone(), body);
        }
        let command = if i.is_multiple_of(2) {
            "account.deposit"
        } else {
            "account.withdraw"
        };
        let body = json!({"account_id": account, "amount": 1});
        (command, account.clone(), body)
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct LoadRun {
    pub sent: u64,
    pub accepted: u64,
    pub accepted_per_s: f64,
    pub latency: Latency,
    pub errors: BTreeMap<String, u64>,
    /// Reply to visible over HTTP, for the sampled accepted account commands.
    pub visible: Option<Latency>,
    pub visible_samples: u64,
    pub visible_timeouts: u64,
}

#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    accepted: u64,
    latencies_us: Vec<u64>,
    visible_us: Vec<u64>,
    visible_timeouts: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, latency_us: u64, outcome: &anyhow::Result<CommandReply>) {
        self.sent += 1;
        self.latencies_us.push(latency_us);
        match outcome {
            Ok(CommandReply::Accepted { .. }) => self.accepted += 1,
            Ok(CommandReply::Rejected { error, .. }) => {
                *self
                    .errors
                    .entry(error.code.as_str().to_owned())
                    .or_default() += 1;
            }
            Err(error) => {
                *self
                    .errors
                    .entry(format!("transport: {error}"))
                    .or_default() += 1
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        self.latencies_us.extend(other.latencies_us);
        self.visible_us.extend(other.visible_us);
        self.visible_timeouts += other.visible_timeouts;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }

    fn finish(self, seconds: f64) -> LoadRun {
        let visible_samples = self.visible_us.len() as u64;
        LoadRun {
            sent: self.sent,
            accepted: self.accepted,
            accepted_per_s: self.accepted as f64 / seconds,
            latency: Latency::of(self.latencies_us),
            errors: self.errors,
            visible: (visible_samples > 0).then(|| Latency::of(self.visible_us)),
            visible_samples,
            visible_timeouts: self.visible_timeouts,
        }
    }
}

/// `clients` clients, each sending its next command as soon as the last one is answered.
pub async fn closed_loop(
    nats: &async_nats::Client,
    token: &str,
    mix: &Mix,
    clients: usize,
    seconds: u64,
) -> LoadRun {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients.max(1) {
        let (nats, token, mix) = (nats.clone(), token.to_owned(), mix.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut i = c as u64;
            while Instant::now() < deadline {
                let (command, _, body) = mix.command(i);
                i += clients as u64;
                let started = Instant::now();
                let outcome = stack::send(&nats, &token, command, &body).await;
                tally.record(elapsed_us(started), &outcome);
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(done) = tasks.join_next().await {
        if let Ok(tally) = done {
            total.merge(tally);
        }
    }
    total.finish(seconds as f64)
}

/// `rate` commands per second for `seconds`, whatever the replies do, and for a sample of the
/// accepted account commands the time from the reply until a read with its consistency token
/// answers over HTTP.
pub async fn open_loop(
    nats: &async_nats::Client,
    http: &reqwest::Client,
    stack: &StackArgs,
    mix: &Mix,
    rate: u64,
    seconds: u64,
) -> LoadRun {
    let rate = rate.max(1);
    let total = rate * seconds;
    let sample_every = (rate / LAG_SAMPLES_PER_S).max(1);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let scheduled = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(scheduled).await;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            t.sent += 1;
            *t.errors.entry(CLIENT_BACKLOG.into()).or_default() += 1;
            continue;
        };
        let (nats, http, token, tally) = (
            nats.clone(),
            http.clone(),
            stack.token.clone(),
            Arc::clone(&tally),
        );
        let http_url = stack.http_url.clone();
        let (command, account, body) = mix.command(i);
        let probe = i % sample_every == 0 && command.starts_with("account.");
        tasks.spawn(async move {
            let _permit = permit;
            let outcome = stack::send(&nats, &token, command, &body).await;
            let latency_us = u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX);
            let visible = match (&outcome, probe) {
                (
                    Ok(CommandReply::Accepted {
                        consistency_token, ..
                    }),
                    true,
                ) => {
                    Some(visible_after(&http, &http_url, &token, &account, consistency_token).await)
                }
                _ => None,
            };
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            t.record(latency_us, &outcome);
            match visible {
                Some(Some(us)) => t.visible_us.push(us),
                Some(None) => t.visible_timeouts += 1,
                None => {}
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    let drain = tokio::time::timeout(stack::REPLY_TIMEOUT * 2, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        tasks.abort_all();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    tally.finish(seconds as f64)
}

/// Microseconds from now until the account read with `consistency_token` answers 200.
async fn visible_after(
    http: &reqwest::Client,
    http_url: &str,
    token: &str,
    account: &str,
    consistency_token: &str,
) -> Option<u64> {
    let started = Instant::now();
    let response = http
        .get(format!("{http_url}/v1/accounts/{account}"))
        .bearer_auth(token)
        .header("Tally-Consistency-Token", consistency_token)
        .header("Tally-Wait-Ms", "5000")
        .send()
        .await
        .ok()?;
    response.status().is_success().then(|| elapsed_us(started))
}
