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
use domain::ledger::{Book, Hold, HoldCommand, Transaction};
use domain::{Account, CommandReply, ErrorCode};
use event_store::{Append, LogRow, NewEvent, StoreError};
use serde_json::Value;

use super::decision::{self, Changed, Decision, NewState, Reads};
use super::{Executable, ExecuteError, Executor, Loaded, backoff, load, pipeline};
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

/// The aggregates a decision read, as loaded, and what it has decided on them so far.
struct Working {
    accounts: BTreeMap<String, Loaded<Account>>,
    transactions: BTreeMap<String, Loaded<Transaction>>,
    holds: BTreeMap<String, Loaded<Hold>>,
    book: Book,
    /// Per aggregate key: its new events so far, each with the index of its command.
    transaction_events: BTreeMap<String, Vec<(usize, domain::ledger::TransactionEvent)>>,
    hold_events: BTreeMap<String, Vec<(usize, domain::ledger::HoldEvent)>>,
    account_events: BTreeMap<String, Vec<(usize, domain::AccountEvent)>>,
    /// Everything loaded was read from the store (not from memory).
    verified: bool,
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

async fn load_all(
    ex: &Executor,
    commands: &[IncomingCommand],
    reads: Reads,
) -> Result<Working, ExecuteError> {
    let mut verified = true;
    let mut holds = BTreeMap::new();
    let mut transactions = BTreeMap::new();
    let mut account_ids = BTreeSet::new();
    for incoming in commands {
        match &incoming.command {
            Command::Hold(h) => {
                let id = h.hold_id().to_string();
                if let std::collections::btree_map::Entry::Vacant(entry) = holds.entry(id) {
                    let (loaded, fresh) = load::current::<Hold>(ex, entry.key(), reads).await?;
                    verified &= fresh;
                    entry.insert(loaded);
                }
            }
            Command::Transaction(t) => {
                let id = t.transaction_id.to_string();
                if let std::collections::btree_map::Entry::Vacant(entry) = transactions.entry(id) {
                    let (loaded, fresh) =
                        load::current::<Transaction>(ex, entry.key(), reads).await?;
                    verified &= fresh;
                    entry.insert(loaded);
                }
            }
            Command::Account(_) | Command::Transfer(_) => {}
        }
    }
    for incoming in commands {
        match &incoming.command {
            // Under the hold's lock, the hold just loaded names the same account as the one
            // locked.
            Command::Hold(h) if !matches!(h, HoldCommand::Place(_)) => {
                let hold: &Hold = &holds[&h.hold_id().to_string()].aggregate;
                account_ids.extend(hold_accounts(hold, h));
            }
            other => account_ids.extend(accounts_named_now(other)),
        }
    }
    let mut accounts = BTreeMap::new();
    for id in account_ids {
        let (loaded, fresh) = load::current::<Account>(ex, &id, reads).await?;
        verified &= fresh;
        accounts.insert(id, loaded);
    }
    let book = Book::new(
        accounts
            .iter()
            .map(|(id, loaded)| (id.clone(), loaded.aggregate.clone()))
            .collect(),
    );
    Ok(Working {
        accounts,
        transactions,
        holds,
        book,
        transaction_events: BTreeMap::new(),
        hold_events: BTreeMap::new(),
        account_events: BTreeMap::new(),
        verified,
    })
}

/// The accounts of a command that names them itself (not a hold's own).
fn accounts_named_now(command: &Command) -> Vec<String> {
    match command {
        Command::Account(c) => vec![c.account_id().to_owned()],
        Command::Transaction(t) => t
            .legs
            .iter()
            .flat_map(|leg| [&leg.from, &leg.to])
            .filter(|id| domain::ledger::hold::is_client_account(id))
            .cloned()
            .collect(),
        Command::Hold(HoldCommand::Place(c)) => vec![c.account_id.clone()],
        Command::Hold(_) | Command::Transfer(_) => Vec::new(),
    }
}

impl Working {
    /// The version of an aggregate as decided so far.
    fn version(&self, aggregate_type: &str, id: &str) -> u64 {
        let (loaded, new) = match aggregate_type {
            "account" => (
                self.accounts.get(id).map(|l| l.sequence),
                self.account_events.get(id).map(Vec::len),
            ),
            "transaction" => (
                self.transactions.get(id).map(|l| l.sequence),
                self.transaction_events.get(id).map(Vec::len),
            ),
            "hold" => (
                self.holds.get(id).map(|l| l.sequence),
                self.hold_events.get(id).map(Vec::len),
            ),
            _ => (None, None),
        };
        let total = loaded.unwrap_or(0) + new.unwrap_or(0);
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    fn hold_state(&self, id: &str) -> Hold {
        let mut hold = self.holds[id].aggregate.clone();
        for (_, event) in self.hold_events.get(id).into_iter().flatten() {
            hold.apply(event.clone());
        }
        hold
    }

    fn transaction_state(&self, id: &str) -> Transaction {
        let mut transaction = self.transactions[id].aggregate.clone();
        for (_, event) in self.transaction_events.get(id).into_iter().flatten() {
            transaction.apply(event.clone());
        }
        transaction
    }

    fn record_transaction(
        &mut self,
        id: &str,
        index: usize,
        events: Vec<domain::ledger::TransactionEvent>,
    ) {
        self.transaction_events
            .entry(id.to_owned())
            .or_default()
            .extend(events.into_iter().map(|e| (index, e)));
    }

    fn record_hold(&mut self, id: &str, index: usize, events: Vec<domain::ledger::HoldEvent>) {
        self.hold_events
            .entry(id.to_owned())
            .or_default()
            .extend(events.into_iter().map(|e| (index, e)));
    }

    /// The account events command `index` added to the book since `counts`.
    fn take_account_events(&mut self, index: usize, counts: &BTreeMap<String, usize>) {
        for (id, events) in self.book.events() {
            let seen = counts.get(id).copied().unwrap_or(0);
            let list = self.account_events.entry(id.clone()).or_default();
            list.extend(events[seen..].iter().cloned().map(|e| (index, e)));
        }
    }
}

/// The decision: every aggregate's new events, each with its own command's metadata, a log
/// row and a reply per command.
fn write(
    commands: &[IncomingCommand],
    working: Working,
    replies: Vec<CommandReply>,
) -> Result<Decision, ExecuteError> {
    let metadata = commands
        .iter()
        .map(decision::stored_metadata)
        .collect::<Result<Vec<Value>, _>>()?;
    let Working {
        accounts,
        transactions,
        holds,
        transaction_events,
        hold_events,
        account_events,
        ..
    } = working;
    let mut aggregates = Vec::new();
    let mut states = Vec::new();
    for (id, loaded) in transactions {
        let events = transaction_events.get(&id).cloned().unwrap_or_default();
        push::<Transaction>(&mut aggregates, &mut states, loaded, &events, &metadata)?;
    }
    for (id, loaded) in holds {
        let events = hold_events.get(&id).cloned().unwrap_or_default();
        push::<Hold>(&mut aggregates, &mut states, loaded, &events, &metadata)?;
    }
    for (id, loaded) in accounts {
        let events = account_events.get(&id).cloned().unwrap_or_default();
        push::<Account>(&mut aggregates, &mut states, loaded, &events, &metadata)?;
    }
    let log = commands
        .iter()
        .zip(&replies)
        .map(|(incoming, reply)| {
            LogRow::of(
                reply,
                &crate::idempotency::log_key(incoming),
                incoming.aggregate_type(),
                &incoming.aggregate_id(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Decision {
        append: Append { aggregates, log },
        replies,
        states,
        if_step_applied: None,
    })
}

/// `events` (each with its command's index) stored after `loaded`, and the state they lead to.
fn push<A: Executable>(
    aggregates: &mut Vec<Vec<NewEvent>>,
    states: &mut Vec<NewState>,
    loaded: Loaded<A>,
    events: &[(usize, A::Event)],
    metadata: &[Value],
) -> Result<(), ExecuteError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut state = loaded.aggregate;
    let mut rows = Vec::with_capacity(events.len());
    for (offset, (index, event)) in events.iter().enumerate() {
        let sequence = decision::sequence_u64(loaded.sequence + offset + 1)?;
        rows.push(NewEvent::of::<A>(
            &loaded.aggregate_id,
            sequence,
            event,
            &metadata[*index],
        )?);
        state.apply(event.clone());
    }
    let changed = Changed {
        aggregate_id: loaded.aggregate_id,
        before: loaded.sequence,
        after: loaded.sequence + events.len(),
        state,
    };
    aggregates.push(rows);
    states.push(A::changed(changed));
    Ok(())
}
