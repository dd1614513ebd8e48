//! `<prefix>.cmd.batch.submit`: up to 1,000 commands in one message, each with its own command
//! id and its own reply. Not atomic: each runs as if sent alone (commands on one aggregate in
//! the batch's order, different aggregates at once, so they ride group commit together).
//! Atomic: all of them decided together and written in one statement, or none.
//!
//! The batch is admitted once (token; its commands count against the sender's rate as that
//! many commands); each command then needs its own scope and passes the same parsing and
//! schema check as when sent alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use domain::batch::{BATCH_BODY_MAX_BYTES, BatchReply, BatchedCommand, SubmitBatch};
use domain::{CommandReply, ErrorCode};
use platform::auth::Principal;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::access::{Access, check_body, required_scope};
use crate::executor::Executor;
use crate::handling;
use crate::incoming::{self, IncomingCommand};
use crate::rejection::Rejection;
use crate::schema_check::SchemaRegistry;

pub const BATCH_AGGREGATE: &str = "batch";
pub const BATCH_COMMAND: &str = "submit";

/// What a batch needs from its front door.
pub struct BatchRun<'a> {
    pub access: &'a Access,
    pub schemas: &'a SchemaRegistry,
    pub executor: &'a Arc<Executor>,
    pub deadline: Duration,
    /// Commands executing at once, across the service: each command of a batch holds a place
    /// until its task ends, as a command sent alone does.
    pub in_flight: &'a Arc<Semaphore>,
    pub in_flight_max: usize,
}

/// Why a batch as a whole is refused (its commands then get nothing).
type Refused = Rejection;

impl BatchRun<'_> {
    /// Runs the batch in `body`; the refusal of the batch as a whole is an `Err`.
    /// `message` is the batch message's own place among the commands in flight: it covers
    /// reading the batch, and is given back before its commands take places of their own.
    pub async fn run(
        &self,
        headers: Option<&HeaderMap>,
        body: &[u8],
        message: OwnedSemaphorePermit,
    ) -> Result<BatchReply, Refused> {
        let principal = self.access.admit_batch(headers)?;
        let batch = self.parse_batch(body)?;
        self.access.throttle_batch(&principal, cost(&batch))?;
        distinct_ids(&batch)?;
        drop(message);
        let admitted: Vec<Result<IncomingCommand, Rejection>> = batch
            .commands
            .iter()
            .map(|command| self.admit_one(&principal, headers, command))
            .collect();
        let ids: Vec<Uuid> = batch.commands.iter().map(|c| c.command_id).collect();
        let results = if batch.atomic {
            self.run_atomic(&ids, admitted).await
        } else {
            self.run_each(&ids, admitted).await
        };
        Ok(BatchReply { results })
    }

    fn parse_batch(&self, body: &[u8]) -> Result<SubmitBatch, Refused> {
        if body.len() > BATCH_BODY_MAX_BYTES {
            return Err(Rejection::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "batch is {} bytes; the limit is {BATCH_BODY_MAX_BYTES}",
                    body.len()
                ),
            )
            .with_details(json!({"limit_bytes": BATCH_BODY_MAX_BYTES})));
        }
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            Rejection::new(
                ErrorCode::InvalidJson,
                format!("body is not valid JSON: {e}"),
            )
        })?;
        self.schemas.check(BATCH_AGGREGATE, BATCH_COMMAND, &value)?;
        serde_json::from_value(value)
            .map_err(|e| Rejection::new(ErrorCode::SchemaViolation, e.to_string()))
    }

    /// One command of the batch, admitted as if it came alone from the batch's sender.
    fn admit_one(
        &self,
        principal: &Principal,
        headers: Option<&HeaderMap>,
        command: &BatchedCommand,
    ) -> Result<IncomingCommand, Rejection> {
        let Some((aggregate, name)) = command.command.split_once('.') else {
            return Err(Rejection::new(
                ErrorCode::UnknownCommand,
                format!("`{}` is not `<aggregate>.<command>`", command.command),
            ));
        };
        if aggregate == BATCH_AGGREGATE {
            return Err(Rejection::new(
                ErrorCode::UnknownCommand,
                "a batch cannot contain a batch",
            ));
        }
        let scope = required_scope(aggregate, name);
        if !principal.allows(scope) {
            return Err(Rejection::new(
                ErrorCode::Forbidden,
                format!("`{aggregate}.{name}` needs scope {scope}"),
            )
            .with_details(json!({"scope": scope.as_str()})));
        }
        let body = serde_json::to_vec(&command.body).map_err(|e| {
            Rejection::new(
                ErrorCode::InvalidJson,
                format!("body is not valid JSON: {e}"),
            )
        })?;
        // No per-command headers: an expected version or correlation id of the batch's own
        // message is not any one command's.
        let mut incoming = incoming::parse(
            command.command_id,
            aggregate,
            name,
            None,
            &body,
            self.schemas,
        )?;
        check_body(principal, &incoming.command)?;
        incoming.actor = principal.subject.clone();
        incoming.owner = principal.owner.clone();
        (incoming.trace_id, incoming.traceparent) = incoming::trace_of(headers);
        Ok(incoming)
    }

    /// Each command as if sent alone: one aggregate's commands in order, aggregates at once.
    async fn run_each(
        &self,
        ids: &[Uuid],
        admitted: Vec<Result<IncomingCommand, Rejection>>,
    ) -> Vec<CommandReply> {
        let mut results: Vec<Option<CommandReply>> = vec![None; admitted.len()];
        let mut lanes: BTreeMap<String, Vec<(usize, IncomingCommand)>> = BTreeMap::new();
        for (index, command) in admitted.into_iter().enumerate() {
            match command {
                Ok(incoming) => {
                    let key = format!("{}:{}", incoming.aggregate_type(), incoming.aggregate_id());
                    lanes.entry(key).or_default().push((index, incoming));
                }
                Err(rejection) => results[index] = Some(rejection.into_reply(ids[index])),
            }
        }
        let lanes = lanes.into_values().map(|lane| async move {
            let mut replies = Vec::with_capacity(lane.len());
            for (index, incoming) in lane {
                let Ok(place) = Arc::clone(self.in_flight).acquire_owned().await else {
                    replies.push((
                        index,
                        Rejection::unavailable("the command-service")
                            .into_reply(incoming.command_id),
                    ));
                    continue;
                };
                let outcome =
                    handling::run(self.executor, incoming, self.deadline, Some(place)).await;
                replies.push((index, outcome.reply));
            }
            replies
        });
        for (index, reply) in futures::future::join_all(lanes).await.into_iter().flatten() {
            results[index] = Some(reply);
        }
        // Every index is filled above: admitted ones by their lane, the rest by their refusal.
        results
            .into_iter()
            .zip(ids)
            .map(|(reply, id)| reply.unwrap_or_else(|| Rejection::internal().into_reply(*id)))
            .collect()
    }

    /// All or nothing: a command that cannot even be admitted refuses the batch.
    async fn run_atomic(
        &self,
        ids: &[Uuid],
        admitted: Vec<Result<IncomingCommand, Rejection>>,
    ) -> Vec<CommandReply> {
        let mut commands = Vec::with_capacity(admitted.len());
        for (index, command) in admitted.into_iter().enumerate() {
            match command {
                Ok(incoming) => commands.push(incoming),
                Err(rejection) => return refused_at(ids, index, rejection),
            }
        }
        let executor = Arc::clone(self.executor);
        // As many places as it has commands (at most all of them), held until its task ends.
        let places = u32::try_from(commands.len().min(self.in_flight_max)).unwrap_or(u32::MAX);
        let Ok(places) = Arc::clone(self.in_flight).acquire_many_owned(places).await else {
            return ids
                .iter()
                .map(|id| Rejection::unavailable("the command-service").into_reply(*id))
                .collect();
        };
        // On a task of its own, as every command is: a caller giving up never cancels a
        // transaction midway.
        let task = tokio::spawn(async move {
            let replies = executor.execute_atomic(commands).await;
            drop(places);
            replies
        });
        let failed = |rejection: Rejection| {
            ids.iter()
                .map(|id| rejection.clone().into_reply(*id))
                .collect()
        };
        match tokio::time::timeout(self.deadline, task).await {
            Ok(Ok(Ok(replies))) => replies,
            Ok(Ok(Err(error))) => {
                tracing::warn!(error = %error, "atomic batch failed");
                failed(error.rejection())
            }
            Ok(Err(join)) => {
                tracing::error!(error = %join, "atomic batch task panicked");
                failed(Rejection::internal())
            }
            Err(_) => failed(Rejection::unavailable("the event store")),
        }
    }
}

/// What a batch counts against its sender's rate: each command, and each leg of a transaction
/// beyond its first (a leg is as much work as a command).
fn cost(batch: &SubmitBatch) -> usize {
    batch
        .commands
        .iter()
        .map(|c| {
            c.body
                .get("legs")
                .and_then(serde_json::Value::as_array)
                .map_or(1, |legs| legs.len().max(1))
        })
        .sum()
}

/// A command id twice in one batch would be one command given two bodies: refused up front.
fn distinct_ids(batch: &SubmitBatch) -> Result<(), Refused> {
    let mut seen = std::collections::HashMap::with_capacity(batch.commands.len());
    for (index, command) in batch.commands.iter().enumerate() {
        if let Some(first) = seen.insert(command.command_id, index) {
            return Err(Rejection::new(
                ErrorCode::SchemaViolation,
                format!("command {index} repeats the command id of command {first}"),
            )
            .with_details(json!({"field": "commands", "first": first, "repeated": index})));
        }
    }
    Ok(())
}

/// Every command of an atomic batch told that command `index` was refused.
fn refused_at(ids: &[Uuid], index: usize, rejection: Rejection) -> Vec<CommandReply> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            if i == index {
                return rejection.clone().into_reply(*id);
            }
            Rejection::new(
                ErrorCode::Conflict,
                format!("not applied: command {index} of the atomic batch was refused"),
            )
            .with_details(json!({"refused_index": index}))
            .into_reply(*id)
        })
        .collect()
}
