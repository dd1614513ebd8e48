//! The one commit and the one retry loop. `commit` writes a decision through the event store
//! and then remembers what it wrote (in memory, and as a snapshot when one is due); `settle`
//! decides and commits until a decision is written or answered, deciding again on fresh reads
//! after a lost race.

use domain::transfer::RequestTransfer;
use domain::{CommandReply, ErrorCode};
use event_store::{StoreError, snapshots};

use super::decision::{Changed, Decided, Decision, NewState, Reads};
use super::{Executable, ExecuteError, Executor, backoff};
use crate::incoming::IncomingCommand;
use crate::rejection::Rejection;

/// Which decider a command alone goes to (a group has its own commit and falls back to
/// `Alone` for each of its commands).
#[derive(Debug, Clone, Copy)]
pub(super) enum Decider<'a> {
    Alone,
    TransferAtOnce(&'a RequestTransfer),
}

impl Executor {
    /// Decides `incoming` with `decide` (first on memory, then on fresh reads) and commits,
    /// under locks the caller holds. A lost race is decided again, up to the configured
    /// number of times; after that the sender is told to retry (`conflict`, not logged:
    /// contention is transient, so a retry with the same id may succeed).
    pub(super) async fn settle(
        &self,
        incoming: &IncomingCommand,
        decider: Decider<'_>,
    ) -> Result<CommandReply, ExecuteError> {
        let mut reads = Reads::Memory;
        let mut conflicts = 0;
        while conflicts <= self.limits.conflict_retries_max {
            let decided = match decider {
                Decider::Alone => self.decide_alone(incoming, reads).await?,
                Decider::TransferAtOnce(request) => {
                    self.decide_transfer_at_once(incoming, request, reads)
                        .await?
                }
            };
            let decision = match decided {
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
            match self.commit(decision).await {
                Ok(mut replies) if replies.len() == 1 => return Ok(replies.remove(0)),
                Ok(replies) => {
                    return Err(ExecuteError::internal(format!(
                        "a command's decision has {} replies",
                        replies.len()
                    )));
                }
                Err(StoreError::StepAlreadyApplied) if if_step_applied.is_some() => {
                    tracing::debug!("transfer step already applied");
                    // Under this very command id (then its logged reply stands), or under
                    // another one, and then this one changes nothing.
                    let logged = self.logged(incoming).await?;
                    return logged
                        .or(if_step_applied)
                        .ok_or_else(|| ExecuteError::internal("no reply for an applied step"));
                }
                Err(StoreError::Conflict | StoreError::StepAlreadyApplied) => {
                    // Lost a race with another instance, or with a concurrent duplicate of this
                    // very command: if the latter, its result is now in the log.
                    if let Some(reply) = self.logged(incoming).await? {
                        return Ok(reply);
                    }
                    tracing::debug!(conflicts, "optimistic-concurrency conflict; retrying");
                    if let Some(retries) = &self.conflict_retries {
                        retries.inc();
                    }
                    tokio::time::sleep(backoff(conflicts)).await;
                    conflicts += 1;
                }
                Err(other) => return Err(other.into()),
            }
        }
        let busy = match decider {
            Decider::Alone => format!(
                "the {} is under heavy concurrent use",
                incoming.aggregate_type()
            ),
            Decider::TransferAtOnce(_) => {
                "the transfer's accounts are under heavy concurrent use".to_owned()
            }
        };
        Ok(Rejection::new(
            ErrorCode::Conflict,
            format!("{busy}; retry with the same command id"),
        )
        .into_reply(incoming.command_id))
    }

    /// Writes `decision` (all of it or nothing) and remembers the states it leads to.
    pub(super) async fn commit(&self, decision: Decision) -> Result<Vec<CommandReply>, StoreError> {
        let Decision {
            append,
            replies,
            states,
            ..
        } = decision;
        self.store.append(append).await?;
        for state in states {
            match state {
                NewState::Account(changed) => self.remember(changed).await,
                NewState::Transfer(changed) => self.remember(changed).await,
            }
        }
        Ok(replies)
    }

    /// After the commit: the new state in memory, and a snapshot when one is due.
    async fn remember<A: Executable>(&self, changed: Changed<A>) {
        let Changed {
            aggregate_id,
            before,
            after,
            state,
        } = changed;
        if after == before {
            return;
        }
        if snapshots::due(before, after, self.limits.snapshot_every)
            // A failed snapshot only costs load time later; the command already succeeded.
            && let Err(error) =
                snapshots::save(self.store.pool(), &aggregate_id, after, &state).await
        {
            tracing::warn!(%error, aggregate_id, "snapshot not saved");
        }
        A::cache(self).put(&aggregate_id, state, after);
    }
}
