//! The decider of a transfer request settled in its own write (`--transfer-settlement
//! at-once`): the transfer and both accounts are decided together
//! (`domain::transfer::decide_at_once`) and their events committed in one statement, so a
//! transfer costs one command instead of seven and no money is ever in flight between the
//! accounts.
//!
//! The three aggregates are locked in one order (by key), so two transfers between the same
//! accounts in opposite directions cannot deadlock, and a group of commands on either account
//! waits for the transfer. Another instance's concurrent write to any of them takes a sequence
//! this write needs, and the pipeline decides again on fresh reads.

use cqrs_es::Aggregate;
use domain::transfer::{RequestTransfer, Transfer, decide_at_once};
use domain::{Account, CommandReply};
use event_store::{Append, LogRow};

use super::decision::{self, Decided, Decision, Reads};
use super::pipeline::Decider;
use super::{Executable, ExecuteError, Executor, Loaded, load, pipeline};
use crate::incoming::IncomingCommand;
use crate::rejection::Rejection;

pub(super) async fn run(
    ex: &Executor,
    incoming: IncomingCommand,
    request: RequestTransfer,
) -> Result<CommandReply, ExecuteError> {
    let mut keys = vec![
        format!("{}:{}", Transfer::TYPE, request.transfer_id),
        format!("{}:{}", Account::TYPE, request.from),
        format!("{}:{}", Account::TYPE, request.to),
    ];
    keys.sort();
    keys.dedup();
    let mut _serialised = Vec::with_capacity(keys.len());
    for key in &keys {
        _serialised.push(ex.locks.lock(key).await);
    }
    pipeline::settle(ex, &incoming, Decider::TransferAtOnce(&request)).await
}

/// Decides on the in-memory aggregates unless `reads` is fresh; an outcome that writes
/// nothing to an aggregate decided from memory (a refusal, a failed transfer) is checked
/// on a fresh read first, since no sequence of that aggregate would catch a stale state.
pub(super) async fn decide(
    ex: &Executor,
    incoming: &IncomingCommand,
    request: &RequestTransfer,
    reads: Reads,
) -> Result<Decided, ExecuteError> {
    let transfer_id = request.transfer_id.to_string();
    // A transfer id is new unless it was used before: decide as if it were, and let the
    // write's key on (transfer, 1) catch one that exists (every later attempt reads fresh).
    let transfer = match reads {
        Reads::Memory => {
            load::cached::<Transfer>(ex, &transfer_id).unwrap_or_else(|| Loaded::new(&transfer_id))
        }
        Reads::Fresh => load::load::<Transfer>(ex, &transfer_id).await?,
    };
    let (from, _) = load::current::<Account>(ex, &request.from, reads).await?;
    let (to, _) = load::current::<Account>(ex, &request.to, reads).await?;
    let verified = reads == Reads::Fresh;
    let version_before = decision::sequence_u64(transfer.sequence)?;
    if let Some(refused) =
        decision::expected_version(incoming, Transfer::TYPE, version_before, verified)
    {
        return refused;
    }
    let settled = match decide_at_once(
        &transfer.aggregate,
        request,
        &from.aggregate,
        &to.aggregate,
        incoming.owner.as_deref(),
    ) {
        Ok(settled) => settled,
        Err(_) if !verified => return Ok(Decided::Unverified),
        // Another owner's source: answered as a missing one, and not logged.
        Err(error) if error.refuses_the_sender() => {
            return Ok(Decided::Answer(
                Rejection::from(&error).into_reply(incoming.command_id),
            ));
        }
        Err(error) => {
            return Decision::refusal(incoming, Rejection::from(&error)).map(Decided::Write);
        }
    };
    if !settled.completed() && !verified {
        return Ok(Decided::Unverified);
    }

    let metadata = decision::stored_metadata(incoming)?;
    let (transfer_events, transfer_after) = applied(transfer, &settled.transfer, &metadata)?;
    let (from_events, from_after) = applied(from, &settled.from, &metadata)?;
    let (to_events, to_after) = applied(to, &settled.to, &metadata)?;
    let reply = decision::accepted_reply(
        incoming.command_id,
        Transfer::TYPE,
        &transfer_id,
        decision::sequence_u64(transfer_after.after)?,
    );
    let log = LogRow::of(
        &reply,
        &crate::idempotency::log_key(incoming),
        Transfer::TYPE,
        &transfer_id,
    )?;
    Ok(Decided::Write(Decision {
        append: Append {
            aggregates: vec![transfer_events, from_events, to_events],
            log: vec![log],
        },
        replies: vec![reply],
        states: vec![
            Transfer::changed(transfer_after),
            Account::changed(from_after),
            Account::changed(to_after),
        ],
        if_step_applied: None,
    }))
}

/// `events` applied to `loaded`: the rows to store and the state they lead to.
fn applied<A: Executable>(
    loaded: Loaded<A>,
    events: &[A::Event],
    metadata: &serde_json::Value,
) -> Result<(Vec<event_store::NewEvent>, decision::Changed<A>), ExecuteError> {
    let mut state = loaded.aggregate;
    for event in events {
        state.apply(event.clone());
    }
    decision::changed(
        &loaded.aggregate_id,
        loaded.sequence,
        events,
        state,
        metadata,
    )
}
