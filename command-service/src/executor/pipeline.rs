//! The one commit and the one retry loop. `commit` writes a decision through the event store
//! and then remembers what it wrote (in memory, and as a snapshot when one is due); `settle`
//! decides and commits until a decision is written or answered, deciding again on fresh reads
//! after a lost race.

use domain::transfer::RequestTransfer;
use domain::{CommandReply, ErrorCode};
use event_store::{StoreError, snapshots};

use super::decision::{Changed, Decided, Decision, NewState, Reads};
use super::{Executable, ExecuteError, Executor, alone, backoff, transfer_at_once};
use crate::incoming::IncomingCommand;
use crate::rejection::Rejection;

/// Which decider a command alone goes to (a group has its own commit and falls back to
/// `Alone` for each of its commands).
#[derive(Debug, Clone, Copy)]
pub(super) enum Decider<'a> {
    Alone,
    TransferAtOnce(&'a RequestTransfer),
}

/// Decides `incoming` with `decider` (first on memory, then on fresh reads) and commits,
/// under locks the caller holds. A lost race is decided again, up to the configured number of
/// times; after that the sender is told to retry (`conflict`, not logged: contention is
/// transient, so a retry with the same id may succeed).
pub(super) async fn settle(
    ex: &Executor,
    incoming: &IncomingCommand,
    decider: Decider<'_>,
) -> Result<CommandReply, ExecuteError> {
    let mut reads = Reads::Memory;
    let mut conflicts = 0;
    while conflicts <= ex.limits.conflict_retries_max {
        let decision = match decide(ex, incoming, decider, reads).await? {
            Decided::Write(decision) => decision,
            Decided::Answer(reply) => return Ok(reply),
            Decided::Unverified if reads == Reads::Memory => {
                reads = Reads::Fresh;
                continue;
            }
            Decided::Unverified => {
                return Err(ExecuteError::internal(
                    "decided on fresh reads, yet unverified",
                ));
            }
        };
        reads = Reads::Fresh;
        let if_step_applied = decision.if_step_applied.clone();
        let lost = match commit(ex, decision).await {
            Ok(replies) => return only_reply(replies),
            Err(lost @ (StoreError::Conflict | StoreError::StepAlreadyApplied)) => lost,
            Err(other) => return Err(other.into()),
        };
        // Lost a race with another instance, or with a concurrent duplicate of this very
        // command: if the latter, its result is now in the log.
        if let Some(reply) = ex.logged(incoming).await? {
            return Ok(reply);
        }
        if let StoreError::StepAlreadyApplied = lost {
            tracing::debug!("transfer step already applied");
            // The same step applied under another command id: this one changes nothing. A
            // decision that is not one step (a transfer settled at once) never meets this: the
            // transfer's own first event is taken first.
            return if_step_applied.ok_or_else(|| ExecuteError::from(lost));
        }
        tracing::debug!(conflicts, "optimistic-concurrency conflict; retrying");
        if let Some(retries) = &ex.conflict_retries {
            retries.inc();
        }
        tokio::time::sleep(backoff(conflicts)).await;
        conflicts += 1;
    }
    let busy = match decider {
        Decider::Alone => format!(
            "the {} is under heavy concurrent use",
            incoming.aggregate_type()
        ),
        Decider::TransferAtOnce(_) => {
            "the transfer's accounts are under heavy concurrent use".into()
        }
    };
    Ok(Rejection::new(
        ErrorCode::Conflict,
        format!("{busy}; retry with the same command id"),
    )
    .into_reply(incoming.command_id))
}

async fn decide(
    ex: &Executor,
    incoming: &IncomingCommand,
    decider: Decider<'_>,
    reads: Reads,
) -> Result<Decided, ExecuteError> {
    match decider {
        Decider::Alone => alone::decide(ex, incoming, reads).await,
        Decider::TransferAtOnce(request) => {
            transfer_at_once::decide(ex, incoming, request, reads).await
        }
    }
}

/// The reply of a one-command decision.
fn only_reply(mut replies: Vec<CommandReply>) -> Result<CommandReply, ExecuteError> {
    match (replies.pop(), replies.is_empty()) {
        (Some(reply), true) => Ok(reply),
        _ => Err(ExecuteError::internal(format!(
            "a command's decision has {} replies",
            replies.len() + 1
        ))),
    }
}

/// Writes `decision` (all of it or nothing) and remembers the states it leads to.
pub(super) async fn commit(
    ex: &Executor,
    decision: Decision,
) -> Result<Vec<CommandReply>, StoreError> {
    let Decision {
        append,
        replies,
        states,
        ..
    } = decision;
    ex.store.append(append).await?;
    for state in states {
        match state {
            NewState::Account(changed) => remember(ex, changed).await,
            NewState::Transfer(changed) => remember(ex, changed).await,
            NewState::Transaction(changed) => remember(ex, changed).await,
            NewState::Hold(changed) => remember(ex, changed).await,
        }
    }
    Ok(replies)
}

/// After the commit: the new state in memory, and a snapshot when one is due.
async fn remember<A: Executable>(ex: &Executor, changed: Changed<A>) {
    let Changed {
        aggregate_id,
        before,
        after,
        state,
    } = changed;
    if after == before {
        return;
    }
    if snapshots::due(before, after, ex.limits.snapshot_every)
        // A failed snapshot only costs load time later; the command already succeeded.
        && let Err(error) =
            snapshots::save(ex.store.pool(), &aggregate_id, after, &state).await
    {
        tracing::warn!(%error, aggregate_id, "snapshot not saved");
    }
    A::cache(ex).put(&aggregate_id, state, after);
}
