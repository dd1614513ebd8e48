//! What a decider returns: a `Decision` to write, an answer with nothing to write, or the
//! admission that it decided on memory that its write could not check.

use domain::transfer::Transfer;
use domain::{Account, CommandReply, ErrorCode};
use event_store::{Append, LogRow, NewEvent};
use serde_json::Value;

use super::{Executable, ExecuteError};
use crate::incoming::IncomingCommand;
use crate::rejection::Rejection;

/// What a decider may trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reads {
    /// The aggregates as this instance last saw them, without reading the store. Only a
    /// write can tell whether they are still current.
    Memory,
    /// The aggregates as stored.
    Fresh,
}

pub(super) enum Decided {
    /// Write this, then answer its replies.
    Write(Decision),
    /// Nothing to write: answer this (an unlogged refusal, a command that changes nothing).
    Answer(CommandReply),
    /// Decided on memory, and the outcome writes nothing that would catch a stale state (a
    /// refusal, an expected version that does not match): decide again on fresh reads.
    Unverified,
}

/// A decision over a set of aggregates: their new events, the command-log rows, the replies
/// (one per command, in the order decided), and the states to remember once it is written.
pub(super) struct Decision {
    pub(super) append: Append,
    pub(super) replies: Vec<CommandReply>,
    pub(super) states: Vec<NewState>,
    /// The answer if the write finds this transfer step already applied to the account under
    /// another command id: the step changes nothing then, which is what a repeated step must do.
    pub(super) if_step_applied: Option<CommandReply>,
}

impl Decision {
    /// A refusal that is logged (the id keeps it as its answer), writing no event.
    pub(super) fn refusal(
        incoming: &IncomingCommand,
        rejection: Rejection,
    ) -> Result<Decision, ExecuteError> {
        let reply = rejection.into_reply(incoming.command_id);
        let log = LogRow::of(
            &reply,
            &crate::idempotency::log_key(incoming),
            incoming.aggregate_type(),
            &incoming.aggregate_id(),
        )?;
        Ok(Decision {
            append: Append {
                aggregates: Vec::new(),
                log: vec![log],
            },
            replies: vec![reply],
            states: Vec::new(),
            if_step_applied: None,
        })
    }
}

/// The first rule of every decider: a command that names the version it expects is refused
/// (`conflict`, logged) unless its aggregate is there. `None` when it may go on. Decided on
/// memory, a mismatch is checked on a fresh read first.
pub(super) fn expected_version(
    incoming: &IncomingCommand,
    aggregate_type: &str,
    actual: u64,
    verified: bool,
) -> Option<Result<Decided, ExecuteError>> {
    let expected = incoming.expected_version?;
    if expected == actual {
        return None;
    }
    if !verified {
        return Some(Ok(Decided::Unverified));
    }
    let rejection = Rejection::new(
        ErrorCode::Conflict,
        format!("expected version {expected}, but the {aggregate_type} is at {actual}"),
    )
    .with_details(serde_json::json!({"expected": expected, "actual": actual}));
    Some(Decision::refusal(incoming, rejection).map(Decided::Write))
}

/// The reply an accepted command gets; a pure function of what was committed, so the command
/// log and the sender are told the same.
pub fn accepted_reply(
    command_id: uuid::Uuid,
    aggregate_type: &str,
    aggregate_id: &str,
    version: u64,
) -> CommandReply {
    CommandReply::Accepted {
        command_id,
        aggregate_id: aggregate_id.to_owned(),
        version,
        consistency_token: consistency_token(aggregate_type, aggregate_id, version),
    }
}

/// Opaque to clients: the query-service waits until the read model has applied this version of
/// this aggregate. A transfer's token waits for more: until the transfer is settled (completed
/// or failed), which is what its sender wants to know.
pub fn consistency_token(aggregate_type: &str, aggregate_id: &str, version: u64) -> String {
    if aggregate_type == <Transfer as cqrs_es::Aggregate>::TYPE {
        return format!("{aggregate_type}:{aggregate_id}:settled");
    }
    format!("{aggregate_type}:{aggregate_id}:{version}")
}

/// An aggregate's state after a decision, and the sequences it moves between.
#[derive(Debug)]
pub struct Changed<A> {
    pub(super) aggregate_id: String,
    pub(super) before: usize,
    pub(super) after: usize,
    pub(super) state: A,
}

#[derive(Debug)]
pub enum NewState {
    Account(Changed<Account>),
    Transfer(Changed<Transfer>),
    Transaction(Changed<domain::ledger::Transaction>),
    Hold(Changed<domain::ledger::Hold>),
}

/// `events` as stored after sequence `before` of `aggregate_id`, with `metadata`.
pub(super) fn stored<A: Executable>(
    aggregate_id: &str,
    before: usize,
    events: &[A::Event],
    metadata: &Value,
) -> Result<Vec<NewEvent>, ExecuteError> {
    (before + 1..)
        .zip(events)
        .map(|(sequence, event)| {
            Ok(NewEvent::of::<A>(
                aggregate_id,
                sequence_u64(sequence)?,
                event,
                metadata,
            )?)
        })
        .collect()
}

/// `events` as stored after sequence `before` of `aggregate_id`, and where they lead: `state`
/// is the aggregate with them applied.
pub(super) fn changed<A: Executable>(
    aggregate_id: &str,
    before: usize,
    events: &[A::Event],
    state: A,
    metadata: &Value,
) -> Result<(Vec<NewEvent>, Changed<A>), ExecuteError> {
    let stored = stored::<A>(aggregate_id, before, events, metadata)?;
    let changed = Changed {
        aggregate_id: aggregate_id.to_owned(),
        before,
        after: before + events.len(),
        state,
    };
    Ok((stored, changed))
}

/// The metadata of `incoming`'s events as stored: an object of strings, as postgres-es
/// writes it.
pub(super) fn stored_metadata(incoming: &IncomingCommand) -> Result<Value, ExecuteError> {
    serde_json::to_value(super::metadata(incoming).to_map())
        .map_err(|e| ExecuteError::Internal(Box::new(e)))
}

pub(super) fn sequence_u64(sequence: usize) -> Result<u64, ExecuteError> {
    u64::try_from(sequence).map_err(|e| ExecuteError::Internal(Box::new(e)))
}
