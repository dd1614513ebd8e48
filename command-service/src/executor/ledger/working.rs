//! The working set of a ledger decision: every aggregate it reads, loaded once, the events
//! each command adds to them, and the one `Decision` they become.

use std::collections::{BTreeMap, BTreeSet};

use cqrs_es::Aggregate;
use domain::ledger::{Book, Hold, HoldCommand, Transaction};
use domain::{Account, CommandReply};
use event_store::{Append, LogRow, NewEvent};
use serde_json::Value;

use super::super::decision::{self, Changed, Decision, NewState, Reads};
use super::super::{Executable, ExecuteError, Executor, Loaded, load};
use super::hold_accounts;
use crate::incoming::{Command, IncomingCommand};

/// The aggregates a decision read, as loaded, and what it has decided on them so far.
pub(super) struct Working {
    pub(super) accounts: BTreeMap<String, Loaded<Account>>,
    pub(super) transactions: BTreeMap<String, Loaded<Transaction>>,
    pub(super) holds: BTreeMap<String, Loaded<Hold>>,
    pub(super) book: Book,
    /// Per aggregate key: its new events so far, each with the index of its command.
    pub(super) transaction_events: BTreeMap<String, Vec<(usize, domain::ledger::TransactionEvent)>>,
    pub(super) hold_events: BTreeMap<String, Vec<(usize, domain::ledger::HoldEvent)>>,
    pub(super) account_events: BTreeMap<String, Vec<(usize, domain::AccountEvent)>>,
    /// Everything loaded was read from the store (not from memory).
    pub(super) verified: bool,
}

pub(super) async fn load_all(
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
pub(super) fn accounts_named_now(command: &Command) -> Vec<String> {
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
    pub(super) fn version(&self, aggregate_type: &str, id: &str) -> u64 {
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

    pub(super) fn hold_state(&self, id: &str) -> Hold {
        let mut hold = self.holds[id].aggregate.clone();
        for (_, event) in self.hold_events.get(id).into_iter().flatten() {
            hold.apply(event.clone());
        }
        hold
    }

    pub(super) fn transaction_state(&self, id: &str) -> Transaction {
        let mut transaction = self.transactions[id].aggregate.clone();
        for (_, event) in self.transaction_events.get(id).into_iter().flatten() {
            transaction.apply(event.clone());
        }
        transaction
    }

    pub(super) fn record_transaction(
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

    pub(super) fn record_hold(
        &mut self,
        id: &str,
        index: usize,
        events: Vec<domain::ledger::HoldEvent>,
    ) {
        self.hold_events
            .entry(id.to_owned())
            .or_default()
            .extend(events.into_iter().map(|e| (index, e)));
    }

    /// The account events command `index` added to the book since `counts`.
    pub(super) fn take_account_events(&mut self, index: usize, counts: &BTreeMap<String, usize>) {
        for (id, events) in self.book.events() {
            let seen = counts.get(id).copied().unwrap_or(0);
            let list = self.account_events.entry(id.clone()).or_default();
            list.extend(events[seen..].iter().cloned().map(|e| (index, e)));
        }
    }
}

/// The decision: every aggregate's new events, each with its own command's metadata, a log
/// row and a reply per command.
pub(super) fn write(
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
