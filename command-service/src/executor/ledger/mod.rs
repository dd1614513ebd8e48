//! The decider of ledger commands: a multi-leg transaction or a hold command over every account
//! it touches, and an atomic batch (any mix of those and account commands) over every aggregate
//! any of its commands touches. All of it is decided on one `domain::ledger::Book`, one command
//! after the other, and committed in one statement, or none of it is.
//!
//! Locks: holds first (a capture learns its account from its hold), then accounts and
//! transactions in key order, so two decisions over the same accounts in opposite directions
//! cannot deadlock. Another instance's write to any of them takes a sequence this write needs,
//! and the decision is made again on fresh reads.

use std::collections::{BTreeMap, BTreeSet};

use cqrs_es::Aggregate;
use domain::account::AccountServices;
use domain::ledger::{Hold, HoldCommand, Transaction};
use domain::{Account, CommandReply, ErrorCode};
use event_store::StoreError;

use super::decision::{self, Decision, Reads};
use super::{ExecuteError, Executor, backoff, load, pipeline};
use working::{Working, accounts_named_now, load_all, write};

mod working;
use crate::incoming::{Command, IncomingCommand};
use crate::rejection::Rejection;

/// How a refusal is answered: a command alone is answered (and logged) as any command is; in an
/// atomic batch nothing is written and every command is told why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Alone,
    AtomicBatch,
}

enum Outcome {
    Write(Decision),
    Answer(Vec<CommandReply>),
    Unverified,
}

/// Decides and commits `commands` (one, or an atomic batch) under their locks.
pub(super) async fn run(
    ex: &Executor,
    commands: &[IncomingCommand],
    mode: Mode,
) -> Result<Vec<CommandReply>, ExecuteError> {
    let hold_keys: BTreeSet<String> = commands
        .iter()
        .filter_map(|c| match &c.command {
            Command::Hold(h) => Some(key::<Hold>(&h.hold_id().to_string())),
            _ => None,
        })
        .collect();
    let mut _serialised = Vec::new();
    for hold in &hold_keys {
        _serialised.push(ex.locks.lock(hold).await);
    }
    let mut keys = BTreeSet::new();
    for incoming in commands {
        for id in accounts_named(ex, &incoming.command).await? {
            keys.insert(key::<Account>(&id));
        }
        if let Command::Transaction(t) = &incoming.command {
            keys.insert(key::<Transaction>(&t.transaction_id.to_string()));
        }
        if keys.len() + hold_keys.len() > AGGREGATES_MAX {
            let too_many = Rejection::new(
                ErrorCode::SchemaViolation,
                format!("touches more than {AGGREGATES_MAX} accounts, holds and transactions"),
            )
            .with_details(serde_json::json!({"aggregates_max": AGGREGATES_MAX}));
            return Ok(commands
                .iter()
                .map(|c| too_many.clone().into_reply(c.command_id))
                .collect());
        }
    }
    for key in &keys {
        _serialised.push(ex.locks.lock(key).await);
    }
    settle(ex, commands, mode).await
}

/// Most aggregates one decision may lock and load: a batch of 1,000 commands each touching one
/// or two accounts fits; 1,000 transactions of 64 legs to distinct accounts does not.
const AGGREGATES_MAX: usize = 2_000;

fn key<A: Aggregate>(id: &str) -> String {
    format!("{}:{id}", A::TYPE)
}

/// The client accounts a command reads and may write. A hold's account is its own record's,
/// read under the hold's lock (held by the caller), so it cannot change under the decision.
async fn accounts_named(ex: &Executor, command: &Command) -> Result<Vec<String>, ExecuteError> {
    let Command::Hold(h) = command else {
        return Ok(accounts_named_now(command));
    };
    if matches!(h, HoldCommand::Place(_)) {
        return Ok(accounts_named_now(command));
    }
    let hold = load::load::<Hold>(ex, &h.hold_id().to_string()).await?;
    Ok(hold_accounts(&hold.aggregate, h))
}

/// The accounts a hold command on `hold` touches: the hold's own and a capture's destination.
fn hold_accounts(hold: &Hold, command: &HoldCommand) -> Vec<String> {
    let mut ids = Vec::new();
    if !hold.account_id.is_empty() {
        ids.push(hold.account_id.clone());
    }
    if let HoldCommand::Capture(c) = command
        && domain::ledger::hold::is_client_account(&c.to)
    {
        ids.push(c.to.clone());
    }
    ids
}

/// Decide (on memory, then on fresh reads), commit, and decide again after a lost race.
async fn settle(
    ex: &Executor,
    commands: &[IncomingCommand],
    mode: Mode,
) -> Result<Vec<CommandReply>, ExecuteError> {
    let mut reads = Reads::Memory;
    let mut conflicts = 0;
    while conflicts <= ex.limits.conflict_retries_max {
        let decision = match decide(ex, commands, mode, reads).await? {
            Outcome::Write(decision) => decision,
            // A refused atomic batch may be the retry of one that was written: its commands'
            // ids then stand in the log, and their first answers are the answers.
            Outcome::Answer(replies) if mode == Mode::AtomicBatch => {
                return Ok(answered_from_log(ex, commands).await?.unwrap_or(replies));
            }
            Outcome::Answer(replies) => return Ok(replies),
            Outcome::Unverified if reads == Reads::Memory => {
                reads = Reads::Fresh;
                continue;
            }
            Outcome::Unverified => {
                return Err(ExecuteError::internal(
                    "decided on fresh reads, yet unverified",
                ));
            }
        };
        reads = Reads::Fresh;
        match pipeline::commit(ex, decision).await {
            Ok(replies) => return Ok(replies),
            Err(StoreError::Conflict) => {}
            Err(other) => return Err(other.into()),
        }
        // A retry of these very commands wrote first: their results are in the log. In an
        // atomic batch, one id in the log is enough to make the write impossible.
        let answered = match mode {
            Mode::Alone => logged_all(ex, commands).await?,
            Mode::AtomicBatch => answered_from_log(ex, commands).await?,
        };
        if let Some(replies) = answered {
            return Ok(replies);
        }
        if let Some(retries) = &ex.conflict_retries {
            retries.inc();
        }
        tokio::time::sleep(backoff(conflicts)).await;
        conflicts += 1;
    }
    let busy = Rejection::new(
        ErrorCode::Conflict,
        "the accounts are under heavy concurrent use; retry with the same command ids",
    );
    Ok(commands
        .iter()
        .map(|c| busy.clone().into_reply(c.command_id))
        .collect())
}

/// If any command of an atomic batch has its id in the log, nothing can be written (the ids are
/// the log's key): each logged command gets its logged answer (its first reply, or
/// `idempotency_mismatch` for an id used by another command), every other `conflict`.
async fn answered_from_log(
    ex: &Executor,
    commands: &[IncomingCommand],
) -> Result<Option<Vec<CommandReply>>, ExecuteError> {
    let mut logged = Vec::with_capacity(commands.len());
    for incoming in commands {
        logged.push(ex.logged(incoming).await?);
    }
    let Some(first) = logged.iter().position(Option::is_some) else {
        return Ok(None);
    };
    let replies = commands
        .iter()
        .zip(logged)
        .map(|(incoming, logged)| {
            logged.unwrap_or_else(|| {
                Rejection::new(
                    ErrorCode::Conflict,
                    format!("not applied: command {first} of the atomic batch was used before"),
                )
                .with_details(serde_json::json!({"refused_index": first}))
                .into_reply(incoming.command_id)
            })
        })
        .collect();
    Ok(Some(replies))
}

/// Every command's logged answer, if every one was logged (they are written together).
async fn logged_all(
    ex: &Executor,
    commands: &[IncomingCommand],
) -> Result<Option<Vec<CommandReply>>, ExecuteError> {
    let mut replies = Vec::with_capacity(commands.len());
    for incoming in commands {
        match ex.logged(incoming).await? {
            Some(reply) => replies.push(reply),
            None => return Ok(None),
        }
    }
    Ok(Some(replies))
}

async fn decide(
    ex: &Executor,
    commands: &[IncomingCommand],
    mode: Mode,
    reads: Reads,
) -> Result<Outcome, ExecuteError> {
    let mut working = load_all(ex, commands, reads).await?;
    let now = chrono::Utc::now();
    let mut replies = Vec::with_capacity(commands.len());
    for (index, incoming) in commands.iter().enumerate() {
        let outcome = decide_one(&mut working, index, incoming, now);
        let refusal = match outcome {
            Ok(reply) => {
                replies.push(reply);
                continue;
            }
            Err(refusal) => refusal,
        };
        if !working.verified {
            return Ok(Outcome::Unverified);
        }
        return refused(commands, index, incoming, refusal, mode);
    }
    write(commands, working, replies).map(Outcome::Write)
}

/// One command decided on `working`: its reply, or why it was refused.
fn decide_one(
    working: &mut Working,
    index: usize,
    incoming: &IncomingCommand,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<CommandReply, Refusal> {
    let owner = incoming.owner.as_deref();
    let aggregate_id = incoming.aggregate_id();
    let before = working.version(incoming.aggregate_type(), &aggregate_id);
    if let Some(expected) = incoming.expected_version
        && expected != before
    {
        return Err(Refusal::logged(
            Rejection::new(
                ErrorCode::Conflict,
                format!(
                    "expected version {expected}, but the {} is at {before}",
                    incoming.aggregate_type()
                ),
            )
            .with_details(serde_json::json!({"expected": expected, "actual": before})),
        ));
    }
    let counts: BTreeMap<String, usize> = working
        .book
        .events()
        .iter()
        .map(|(id, events)| (id.clone(), events.len()))
        .collect();
    match &incoming.command {
        Command::Account(command) => {
            if command.transfer_id().is_some() {
                return Err(Refusal::logged(Rejection::new(
                    ErrorCode::UnknownCommand,
                    "a transfer's steps cannot be batched",
                )));
            }
            let services = AccountServices {
                transfer: None,
                owner: owner.map(str::to_owned),
            };
            working
                .book
                .decide_account(command, &services)
                .map_err(|e| Refusal::of(e.refuses_the_sender(), Rejection::from(&e)))?;
        }
        Command::Transaction(post) => {
            let transaction = working.transaction_state(&aggregate_id);
            let events = transaction
                .post(post, &mut working.book, owner)
                .map_err(|e| Refusal::of(e.refuses_the_sender(), Rejection::from(&e)))?;
            working.record_transaction(&aggregate_id, index, events);
        }
        Command::Hold(command) => {
            let hold = working.hold_state(&aggregate_id);
            let events = hold
                .decide(command, &mut working.book, owner, now)
                .map_err(|e| Refusal::of(e.refuses_the_sender(), Rejection::from(&e)))?;
            working.record_hold(&aggregate_id, index, events);
        }
        Command::Transfer(_) => {
            return Err(Refusal::logged(Rejection::new(
                ErrorCode::UnknownCommand,
                "a transfer cannot be part of an atomic batch: post a transaction instead",
            )));
        }
    }
    working.take_account_events(index, &counts);
    let after = working.version(incoming.aggregate_type(), &aggregate_id);
    Ok(decision::accepted_reply(
        incoming.command_id,
        incoming.aggregate_type(),
        &aggregate_id,
        after,
    ))
}

/// A command's refusal, and whether it refuses the sender (never logged).
struct Refusal {
    rejection: Rejection,
    of_the_sender: bool,
}

impl Refusal {
    fn of(of_the_sender: bool, rejection: Rejection) -> Self {
        Refusal {
            rejection,
            of_the_sender,
        }
    }

    fn logged(rejection: Rejection) -> Self {
        Refusal::of(false, rejection)
    }
}

/// What a refusal of command `index` leads to: alone, its logged refusal (or an unlogged
/// answer to a refusal of the sender); in an atomic batch, nothing written, every command
/// told.
fn refused(
    commands: &[IncomingCommand],
    index: usize,
    incoming: &IncomingCommand,
    refusal: Refusal,
    mode: Mode,
) -> Result<Outcome, ExecuteError> {
    if mode == Mode::Alone {
        if refusal.of_the_sender {
            return Ok(Outcome::Answer(vec![
                refusal.rejection.into_reply(incoming.command_id),
            ]));
        }
        return Decision::refusal(incoming, refusal.rejection).map(Outcome::Write);
    }
    let replies = commands
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i == index {
                return refusal.rejection.clone().into_reply(c.command_id);
            }
            Rejection::new(
                ErrorCode::Conflict,
                format!("not applied: command {index} of the atomic batch was refused"),
            )
            .with_details(serde_json::json!({"refused_index": index}))
            .into_reply(c.command_id)
        })
        .collect();
    Ok(Outcome::Answer(replies))
}
