//! The decider of a command alone: its aggregate (from memory or the store), what else it
//! needs to know (`facts`), and the domain's `handle`.

use cqrs_es::event_sink::EventSink;
use domain::transfer::Transfer;
use domain::{Account, CommandReply};
use event_store::{Append, LogRow};

use super::decision::{self, Decided, Decision, Reads};
use super::pipeline::Decider;
use super::{Executable, ExecuteError, Executor, facts, load, pipeline};
use crate::incoming::{Command, IncomingCommand};

/// Under the aggregate's lock: decide, commit, and decide again after a lost race.
pub(super) async fn run(
    ex: &Executor,
    incoming: IncomingCommand,
) -> Result<CommandReply, ExecuteError> {
    let _serialised = ex
        .locks
        .lock(&format!(
            "{}:{}",
            incoming.aggregate_type(),
            incoming.aggregate_id()
        ))
        .await;
    pipeline::settle(ex, &incoming, Decider::Alone).await
}

pub(super) async fn decide(
    ex: &Executor,
    incoming: &IncomingCommand,
    reads: Reads,
) -> Result<Decided, ExecuteError> {
    match &incoming.command {
        Command::Account(command) => {
            let services = facts::account_services(ex, command, incoming.owner.as_deref()).await?;
            decide_one::<Account>(ex, incoming, command.clone(), services, reads).await
        }
        Command::Transfer(command) => {
            let facts = facts::transfer_facts(ex, command, incoming.owner.as_deref()).await?;
            decide_one::<Transfer>(ex, incoming, command.clone(), facts, reads).await
        }
        // `Executor::execute` sends these to `ledger`; here would be a routing bug.
        Command::Transaction(_) | Command::Hold(_) => Err(super::ExecuteError::internal(
            "a ledger command reached the single-aggregate decider",
        )),
    }
}

async fn decide_one<A: Executable>(
    ex: &Executor,
    incoming: &IncomingCommand,
    command: A::Command,
    services: A::Services,
    reads: Reads,
) -> Result<Decided, ExecuteError> {
    let aggregate_id = incoming.aggregate_id();
    let (loaded, verified) = load::current::<A>(ex, &aggregate_id, reads).await?;
    let version_before = decision::sequence_u64(loaded.sequence)?;
    if let Some(refused) = decision::expected_version(incoming, A::TYPE, version_before, verified) {
        return refused;
    }

    let before = loaded.sequence;
    let mut state = loaded.aggregate;
    let sink = EventSink::<A>::default();
    if let Err(error) = state.handle(command, &services, &sink).await {
        if !verified {
            return Ok(Decided::Unverified);
        }
        if A::refuses_the_sender(&error) {
            return Ok(Decided::Answer(
                A::rejection(&error).into_reply(incoming.command_id),
            ));
        }
        return Decision::refusal(incoming, A::rejection(&error)).map(Decided::Write);
    }
    let events = sink.collect().await;
    let accepted =
        |version| decision::accepted_reply(incoming.command_id, A::TYPE, &aggregate_id, version);
    if events.is_empty() {
        if !verified {
            return Ok(Decided::Unverified);
        }
        // Nothing to write, so no command-log row: a repeated id must still get its first
        // reply.
        let logged = ex.logged(incoming).await?;
        return Ok(Decided::Answer(
            logged.unwrap_or_else(|| accepted(version_before)),
        ));
    }
    let metadata = decision::stored_metadata(incoming)?;
    let (stored, changed) = decision::changed(&aggregate_id, before, &events, state, &metadata)?;
    let reply = accepted(decision::sequence_u64(changed.after)?);
    let log = LogRow::of(
        &reply,
        &crate::idempotency::log_key(incoming),
        A::TYPE,
        &aggregate_id,
    )?;
    Ok(Decided::Write(Decision {
        append: Append {
            aggregates: vec![stored],
            log: vec![log],
        },
        replies: vec![reply],
        states: vec![A::changed(changed)],
        if_step_applied: Some(accepted(version_before)),
    }))
}
