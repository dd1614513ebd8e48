//! Group commit for a hot aggregate: commands that queue behind the one running on the same
//! account are decided together, one after the other on the in-memory state, and committed in
//! one statement (their events, their accepted and rejected command-log rows), so one round
//! trip and one WAL flush serve the whole group instead of one each.
//!
//! The first command of an idle queue leads: it takes up to `GROUP_MAX` commands from the front
//! (itself first), runs them, hands each its reply, and promotes the next waiting command to
//! lead the rest. A group whose statement fails (a race with another instance, a transfer
//! step, an outage) has written nothing, and each of its commands then runs alone on the
//! ordinary path, which retries and classifies as before.

use std::collections::HashMap;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use domain::account::AccountServices;
use domain::{Account, CommandReply};
use event_store::{Append, LogKey, LogRow, NewEvent};
use uuid::Uuid;

use super::decision::{self, Decision, Reads};
use super::{Executable, ExecuteError, Executor, Loaded, alone, load, pipeline};
use crate::incoming::{Command, IncomingCommand};
use crate::rejection::Rejection;

mod queue;

pub use queue::Groups;
use queue::{HandOver, Joined, Turn, Waiting};

/// Most commands decided and committed together.
pub const GROUP_MAX: usize = 64;

/// What a command refused for a full account queue is told to wait: about one group's time.
const QUEUE_FULL_RETRY_AFTER_MS: u64 = 50;

/// Commands that may join a group: account commands that need nothing but the account (a
/// transfer step reads its transfer) and assert no version.
pub fn groupable(incoming: &IncomingCommand) -> bool {
    matches!(&incoming.command, Command::Account(c) if c.transfer_id().is_none())
        && incoming.expected_version.is_none()
}

/// Queues `incoming` on its account; the first of an idle queue leads a group, the others
/// wait for their reply or for their turn to lead.
pub(super) async fn run(
    ex: &Executor,
    incoming: IncomingCommand,
) -> Result<CommandReply, ExecuteError> {
    let key = incoming.aggregate_id();
    let command_id = incoming.command_id;
    match ex.groups.join(&key, incoming, ex.limits.account_queue_max) {
        Joined::Leads => {}
        Joined::Waits(my_turn) => match my_turn.await {
            Ok(Turn::Done(reply)) => return reply,
            Ok(Turn::Lead) => {}
            // The leader vanished without answering (it panicked): nothing of ours is
            // known to be written; the caller's retry with the same id is safe.
            Err(_) => return Err(ExecuteError::internal("command group lost")),
        },
        Joined::Full(waiting) => {
            // Not recorded: a retry with the same id runs once the queue has moved.
            return Ok(Rejection::new(
                domain::ErrorCode::RateLimited,
                format!(
                    "{waiting} commands already wait on this account; retry with the same command id"
                ),
            )
            .with_details(serde_json::json!({"retry_after_ms": QUEUE_FULL_RETRY_AFTER_MS}))
            .into_reply(command_id));
        }
    }
    // Even if this leader panics or is dropped, the queue must move on.
    let _hand_over = HandOver {
        groups: &ex.groups,
        key: &key,
    };
    let group = ex.groups.take(&key);
    run_group(ex, &key, group, command_id).await
}

/// Runs `group` and answers everyone in it but the leader, whose reply is returned.
async fn run_group(
    ex: &Executor,
    key: &str,
    group: Vec<Waiting>,
    leader: Uuid,
) -> Result<CommandReply, ExecuteError> {
    let _serialised = ex.locks.lock(&format!("account:{key}")).await;
    let commands: Vec<IncomingCommand> = group.iter().map(|w| w.incoming.clone()).collect();
    let replies = match decide_and_commit(ex, key, &commands).await {
        Ok(replies) => replies,
        Err(error) => {
            tracing::debug!(%error, size = commands.len(), "group not committed; running its commands one by one");
            drop(_serialised);
            let mut replies = Vec::with_capacity(commands.len());
            for incoming in commands {
                replies.push(Box::pin(alone::run(ex, incoming)).await);
            }
            replies
        }
    };
    let mut own = Err(ExecuteError::internal("leader's reply missing"));
    for (waiting, reply) in group.into_iter().zip(replies) {
        if waiting.incoming.command_id == leader && own.is_err() {
            own = reply;
        } else {
            let _ = waiting.turn.send(Turn::Done(reply));
        }
    }
    own
}

/// Decides every command on the account in order and commits all of it in one write.
///
/// A warm account is decided on its in-memory state without reading the store: if another
/// instance wrote to it meanwhile, our first event's sequence is taken and the write fails,
/// and the commands run again on the path alone, which reads what was missed. A group with
/// a refusal is decided again on a fresh read first, since a refusal writes no event whose
/// sequence could catch the stale state.
async fn decide_and_commit(
    ex: &Executor,
    aggregate_id: &str,
    commands: &[IncomingCommand],
) -> Result<Vec<Result<CommandReply, ExecuteError>>, ExecuteError> {
    let (loaded, verified) = load::current::<Account>(ex, aggregate_id, Reads::Memory).await?;
    let mut decided = decide(&loaded, commands).await?;
    if decided.refused_any && !verified {
        let loaded = load::load::<Account>(ex, aggregate_id).await?;
        decided = decide(&loaded, commands).await?;
    }
    let replies = pipeline::commit(ex, decided.decision).await?;
    Ok(replies.into_iter().map(Ok).collect())
}

/// A group's decision on one state of the account, and whether any command was refused.
struct Decided {
    decision: Decision,
    refused_any: bool,
}

/// Runs `commands` in order on a copy of `loaded`'s account.
async fn decide(
    loaded: &Loaded<Account>,
    commands: &[IncomingCommand],
) -> Result<Decided, ExecuteError> {
    let mut deciding = Deciding::on(loaded, commands.len());
    for incoming in commands {
        deciding.next(incoming).await?;
    }
    Ok(deciding.finish(loaded.sequence))
}

/// A group's decision as it grows, one command at a time, on one copy of the account.
struct Deciding<'a> {
    aggregate_id: &'a str,
    state: Account,
    sequence: usize,
    events: Vec<NewEvent>,
    log: Vec<LogRow>,
    /// Each id decided so far, with its key and reply.
    decided: HashMap<Uuid, (LogKey, CommandReply)>,
    replies: Vec<CommandReply>,
    refused_any: bool,
}

impl<'a> Deciding<'a> {
    fn on(loaded: &'a Loaded<Account>, commands: usize) -> Self {
        Deciding {
            aggregate_id: &loaded.aggregate_id,
            state: loaded.aggregate.clone(),
            sequence: loaded.sequence,
            events: Vec::new(),
            log: Vec::new(),
            decided: HashMap::new(),
            replies: Vec::with_capacity(commands),
            refused_any: false,
        }
    }

    /// Decides `incoming` on the state the commands before it left.
    async fn next(&mut self, incoming: &IncomingCommand) -> Result<(), ExecuteError> {
        let key = crate::idempotency::log_key(incoming);
        // The same id twice in one group (a client's concurrent retry): one execution; the
        // id used by another sender or for another command: refused, as the log would.
        if let Some((first, reply)) = self.decided.get(&incoming.command_id) {
            self.replies.push(if first.retried_by(&key) {
                reply.clone()
            } else {
                event_store::command_log::mismatch(incoming.command_id)
            });
            return Ok(());
        }
        let Command::Account(command) = &incoming.command else {
            return Err(ExecuteError::internal("ungroupable command in a group"));
        };
        let sink = EventSink::<Account>::default();
        let services = AccountServices {
            transfer: None,
            owner: incoming.owner.clone(),
        };
        let mut logged = true;
        let reply = match self.state.handle(command.clone(), &services, &sink).await {
            Ok(()) => {
                let metadata = decision::stored_metadata(incoming)?;
                let new_events = sink.collect().await;
                self.events.extend(decision::stored::<Account>(
                    self.aggregate_id,
                    self.sequence,
                    &new_events,
                    &metadata,
                )?);
                self.sequence += new_events.len();
                decision::accepted_reply(
                    incoming.command_id,
                    Account::TYPE,
                    self.aggregate_id,
                    decision::sequence_u64(self.sequence)?,
                )
            }
            Err(error) => {
                self.refused_any = true;
                // Another owner's account: answered as a missing one, and not logged.
                logged = !error.refuses_the_sender();
                Rejection::from(&error).into_reply(incoming.command_id)
            }
        };
        if logged {
            self.log
                .push(LogRow::of(&reply, &key, Account::TYPE, self.aggregate_id)?);
        }
        self.decided
            .insert(incoming.command_id, (key, reply.clone()));
        self.replies.push(reply);
        Ok(())
    }

    /// The decision, from sequence `before` of the account.
    fn finish(self, before: usize) -> Decided {
        Decided {
            decision: Decision {
                append: Append {
                    aggregates: vec![self.events],
                    log: self.log,
                },
                replies: self.replies,
                states: vec![Account::changed(decision::Changed {
                    aggregate_id: self.aggregate_id.to_owned(),
                    before,
                    after: self.sequence,
                    state: self.state,
                })],
                if_step_applied: None,
            },
            refused_any: self.refused_any,
        }
    }
}
