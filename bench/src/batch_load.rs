//! Batches (`batch.submit`): deposits sent many to a NATS message, closed loop (C clients, each
//! with one batch in flight), counted per command accepted and timed per batch, to set beside
//! the one-command-per-message figure of the same run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use domain::CommandReply;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::cpu_budget::{CpuRow, Spent, measured};
use crate::report::Row;
use crate::stack::REPLY_TIMEOUT;
use crate::stats::{Latency, elapsed_us, median};

/// The command-service's bound on commands in one batch.
pub const BATCH_COMMANDS_MAX: usize = domain::batch::BATCH_COMMANDS_MAX;

/// What each batch of a scenario is.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Commands per batch, 1 to [`BATCH_COMMANDS_MAX`].
    pub size: usize,
    /// All or nothing in one database transaction.
    pub atomic: bool,
}

impl Shape {
    pub fn name(&self) -> String {
        let atomic = if self.atomic { ", atomic" } else { "" };
        format!("batches of {}{atomic}", self.size)
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct BatchRun {
    pub batches: u64,
    pub commands: u64,
    pub accepted: u64,
    /// Accepted commands per second.
    pub accepted_per_s: f64,
    /// From sending a batch to its answer.
    pub latency: Latency,
    /// Per command, by code (a refusal of a whole batch counts once per command in it).
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct Tally {
    batches: u64,
    commands: u64,
    accepted: u64,
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, size: usize, latency_us: u64, outcome: anyhow::Result<Vec<CommandReply>>) {
        self.batches += 1;
        self.commands += size as u64;
        self.latencies_us.push(latency_us);
        match outcome {
            Ok(replies) => {
                for reply in replies {
                    match reply {
                        CommandReply::Accepted { .. } => self.accepted += 1,
                        CommandReply::Rejected { error, .. } => {
                            *self
                                .errors
                                .entry(error.code.as_str().to_owned())
                                .or_default() += 1
                        }
                    }
                }
            }
            Err(error) => {
                *self
                    .errors
                    .entry(format!("transport: {error}"))
                    .or_default() += size as u64
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.batches += other.batches;
        self.commands += other.commands;
        self.accepted += other.accepted;
        self.latencies_us.extend(other.latencies_us);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }
}

/// `clients` clients, each sending its next batch of deposits of 1 (spread over `accounts`) as
/// soon as the last one is answered, for `seconds`.
pub async fn closed_loop(
    nats: &async_nats::Client,
    token: &str,
    accounts: &[String],
    shape: Shape,
    clients: usize,
    seconds: u64,
) -> BatchRun {
    let size = shape.size.clamp(1, BATCH_COMMANDS_MAX);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients.max(1) {
        let (nats, token, accounts) = (nats.clone(), token.to_owned(), accounts.to_vec());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut next = c * size;
            while Instant::now() < deadline {
                let body = deposits(&accounts, next, size, shape.atomic);
                next += clients * size;
                let started = Instant::now();
                let outcome = submit(&nats, &token, &body).await;
                tally.record(size, elapsed_us(started), outcome);
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
    BatchRun {
        batches: total.batches,
        commands: total.commands,
        accepted: total.accepted,
        accepted_per_s: total.accepted as f64 / seconds.max(1) as f64,
        latency: Latency::of(total.latencies_us),
        errors: total.errors,
    }
}

/// A batch of `size` deposits of 1, the `from`th command onwards, round the accounts.
fn deposits(accounts: &[String], from: usize, size: usize, atomic: bool) -> Value {
    let commands: Vec<Value> = (from..from + size)
        .map(|i| {
            json!({
                "command": "account.deposit",
                "command_id": Uuid::now_v7(),
                "body": {"account_id": accounts[i % accounts.len()], "amount": 1},
            })
        })
        .collect();
    json!({"atomic": atomic, "commands": commands})
}

/// Sends one batch over NATS request/reply, as a client does; its replies in order (a refusal
/// of the whole batch is that reply for each command).
pub async fn submit(
    nats: &async_nats::Client,
    token: &str,
    body: &Value,
) -> anyhow::Result<Vec<CommandReply>> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Tally-Command-Id", Uuid::now_v7().to_string().as_str());
    headers.insert("Authorization", format!("Bearer {token}").as_str());
    let reply = tokio::time::timeout(
        REPLY_TIMEOUT,
        nats.request_with_headers(
            "tally.cmd.batch.submit".to_owned(),
            headers,
            serde_json::to_vec(body)?.into(),
        ),
    )
    .await
    .context("no answer within 10 s")??;
    let mut answer: Value = serde_json::from_slice(&reply.payload)?;
    let size = body["commands"].as_array().map_or(0, Vec::len);
    match answer.get_mut("results") {
        Some(results) => Ok(serde_json::from_value(results.take())?),
        None => {
            let refusal: CommandReply = serde_json::from_value(answer)?;
            Ok(vec![refusal; size])
        }
    }
}

/// The suite's batch scenarios: each shape's runs, with the CPU each run spent.
#[derive(Debug, Default)]
pub struct Scenarios {
    runs: Vec<(Shape, Vec<BatchRun>, Vec<Spent>)>,
}

impl Scenarios {
    /// Batches of 10 and 100 one by one, and of 100 all or nothing.
    pub const SHAPES: [Shape; 3] = [
        Shape {
            size: 10,
            atomic: false,
        },
        Shape {
            size: 100,
            atomic: false,
        },
        Shape {
            size: 100,
            atomic: true,
        },
    ];

    /// One run of every shape, `seconds` each.
    pub async fn run_once(
        &mut self,
        run_dir: &std::path::Path,
        nats: &async_nats::Client,
        token: &str,
        accounts: &[String],
        clients: usize,
        seconds: u64,
    ) -> Vec<BatchRun> {
        let mut this_run = Vec::new();
        for shape in Self::SHAPES {
            let load = closed_loop(nats, token, accounts, shape, clients, seconds);
            let (run, spent) = measured(run_dir, load, |r: &BatchRun| r.accepted).await;
            match self
                .runs
                .iter_mut()
                .find(|(s, _, _)| s.name() == shape.name())
            {
                Some((_, runs, spends)) => {
                    runs.push(run.clone());
                    spends.push(spent);
                }
                None => self.runs.push((shape, vec![run.clone()], vec![spent])),
            }
            this_run.push(run);
        }
        this_run
    }

    /// One row per shape, next to the same run's one-command-per-message rate.
    pub fn rows(&self, clients: usize, one_per_message: (&str, f64)) -> Vec<Row> {
        self.runs
            .iter()
            .map(|(shape, runs, _)| {
                let latency = Latency::median(&runs.iter().map(|r| r.latency).collect::<Vec<_>>());
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                for run in runs {
                    for (code, n) in &run.errors {
                        *errors.entry(code.clone()).or_default() += n;
                    }
                }
                Row::new(
                    format!(
                        "deposits in {}, {clients} clients, max rate (latency per batch)",
                        shape.name()
                    ),
                    median(&runs.iter().map(|r| r.accepted_per_s).collect::<Vec<_>>()),
                    "commands/s",
                    "> one per message",
                )
                .latency(latency)
                .errors(errors)
                .against(one_per_message.0, one_per_message.1)
            })
            .collect()
    }

    /// CPU per accepted command of each shape.
    pub fn cpu(&self, clients: usize, cores: usize) -> Vec<CpuRow> {
        self.runs
            .iter()
            .filter_map(|(shape, _, spent)| {
                CpuRow::of(
                    format!("deposits in {}, {clients} clients", shape.name()),
                    spent,
                    cores,
                )
            })
            .collect()
    }
}

/// `name: 1,234/s p99 5.0 ms per batch` for the progress lines.
pub fn summary(run: &BatchRun, shape: Shape) -> String {
    let errors = if run.errors.is_empty() {
        String::new()
    } else {
        format!(" {:?}", run.errors)
    };
    format!(
        "{} {:.0}/s p99 {:.1} ms{errors}",
        shape.name(),
        run.accepted_per_s,
        run.latency.p99_ms
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_round_the_accounts_with_ids_of_its_own() {
        let accounts = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let body = deposits(&accounts, 2, 4, true);
        let commands = body["commands"].as_array().unwrap();
        let ids: Vec<&str> = commands
            .iter()
            .map(|c| c["body"]["account_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["c", "a", "b", "c"]);
        assert_eq!(body["atomic"], true);
        assert_ne!(commands[0]["command_id"], commands[1]["command_id"]);
    }

    #[test]
    fn a_refused_batch_counts_for_each_of_its_commands() {
        let mut tally = Tally::default();
        tally.record(10, 5_000, Err(anyhow::anyhow!("timeout")));
        tally.record(
            2,
            1_000,
            Ok(vec![
                CommandReply::Accepted {
                    command_id: Uuid::nil(),
                    aggregate_id: "a".into(),
                    version: 1,
                    consistency_token: String::new(),
                },
                CommandReply::rejected(Uuid::nil(), domain::ErrorCode::Conflict, "x", json!({})),
            ]),
        );
        assert_eq!((tally.batches, tally.commands, tally.accepted), (2, 12, 1));
        assert_eq!(tally.errors["transport: timeout"], 10);
        assert_eq!(tally.errors["conflict"], 1);
    }
}
