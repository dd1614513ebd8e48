//! One attempt at a command alone: load (or take from memory) the aggregate, decide, commit.

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{AggregateError, EventStore};
use domain::{CommandReply, ErrorCode};

use super::{Attempt, Executable, ExecuteError, Executor, from_sqlx, metadata};
use crate::incoming::{Command, IncomingCommand};
use crate::rejection::Rejection;
use crate::repository::{self, TallyRepository};

impl Executor {
    /// Loads what the command needs to know and decides it: on the in-memory aggregate if it
    /// is there and `fresh` is false, else on a fresh read.
    pub(super) async fn attempt_once(
        &self,
        incoming: &IncomingCommand,
        fresh: bool,
    ) -> Result<Attempt, ExecuteError> {
        match &incoming.command {
            Command::Account(command) => {
                let services = self
                    .account_services(command, incoming.owner.as_deref())
                    .await?;
                self.attempt(&self.accounts, incoming, command.clone(), services, fresh)
                    .await
            }
            Command::Transfer(command) => {
                let facts = self
                    .transfer_facts(command, incoming.owner.as_deref())
                    .await?;
                self.attempt(&self.transfers, incoming, command.clone(), facts, fresh)
                    .await
            }
        }
    }

    async fn attempt<A: Executable>(
        &self,
        store: &PersistedEventStore<TallyRepository, A>,
        incoming: &IncomingCommand,
        command: A::Command,
        services: A::Services,
        fresh: bool,
    ) -> Result<Attempt, ExecuteError> {
        let aggregate_id = incoming.aggregate_id();
        let (mut context, verified) = match (fresh, self.cached::<A>(&aggregate_id)) {
            (false, Some(context)) => (context, false),
            _ => (self.load::<A>(&aggregate_id).await?, true),
        };
        let version_before = context.current_sequence;
        if let Some(expected) = incoming.expected_version
            && u64::try_from(version_before).ok() != Some(expected)
        {
            if !verified {
                return Ok(Attempt::Unverified);
            }
            let rejection = Rejection::new(
                ErrorCode::Conflict,
                format!(
                    "expected version {expected}, but the {} is at {version_before}",
                    A::TYPE
                ),
            )
            .with_details(serde_json::json!({"expected": expected, "actual": version_before}));
            return self.reject(incoming, rejection).await.map(Attempt::Done);
        }

        let sink = EventSink::<A>::default();
        let handled = context.aggregate.handle(command, &services, &sink).await;
        if let Err(error) = handled {
            if !verified {
                return Ok(Attempt::Unverified);
            }
            if A::refuses_the_sender(&error) {
                return Ok(Attempt::Done(
                    A::rejection(&error).into_reply(incoming.command_id),
                ));
            }
            return self
                .reject(incoming, A::rejection(&error))
                .await
                .map(Attempt::Done);
        }
        let events = sink.collect().await;
        if events.is_empty() {
            if !verified {
                return Ok(Attempt::Unverified);
            }
            // Nothing to write, so no command-log row: a repeated id must still get its first
            // reply.
            if let Some(reply) = self.logged(incoming).await? {
                return Ok(Attempt::Done(reply));
            }
        }
        let state_after = context.aggregate.clone();
        let mut metadata = metadata(incoming).to_map();
        // For the command log row `persist` writes with the events.
        metadata.extend([repository::LogKey::of(incoming).metadata_entry()]);
        let accepted = |version: usize| -> Result<Attempt, ExecuteError> {
            let version =
                u64::try_from(version).map_err(|e| ExecuteError::Internal(Box::new(e)))?;
            Ok(Attempt::Done(repository::accepted_reply(
                incoming.command_id,
                A::TYPE,
                &aggregate_id,
                version,
            )))
        };
        match store.commit(events, context, metadata).await {
            Ok(committed) => {
                let version = committed.last().map_or(version_before, |e| e.sequence);
                self.maybe_snapshot(&aggregate_id, version_before, version, &state_after)
                    .await;
                A::cache(self).put(&aggregate_id, state_after, version);
                accepted(version)
            }
            Err(AggregateError::AggregateConflict) => Ok(Attempt::Conflict),
            Err(AggregateError::UnexpectedError(error))
                if error.is::<repository::StepAlreadyApplied>() =>
            {
                // The same transfer step got there first: under this very command id (then
                // its logged reply stands), or under another one, and then this one changes
                // nothing, which is what a repeated step must do.
                tracing::debug!("transfer step already applied");
                if let Some(reply) = self.logged(incoming).await? {
                    return Ok(Attempt::Done(reply));
                }
                accepted(version_before)
            }
            Err(AggregateError::DatabaseConnectionError(e)) => Err(ExecuteError::Unavailable(e)),
            Err(other) => Err(ExecuteError::Internal(other.to_string().into())),
        }
    }

    pub(super) async fn reject(
        &self,
        incoming: &IncomingCommand,
        rejection: Rejection,
    ) -> Result<CommandReply, ExecuteError> {
        let reply = rejection.into_reply(incoming.command_id);
        self.repo
            .log_rejection_for(
                &repository::LogKey::of(incoming),
                incoming.aggregate_type(),
                &incoming.aggregate_id(),
                &reply,
            )
            .await
            .map_err(from_sqlx)
    }
}
