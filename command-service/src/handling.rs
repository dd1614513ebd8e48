//! What both front doors share: run a parsed command on its own task under a deadline.

use std::sync::Arc;
use std::time::Duration;

use domain::CommandReply;

use crate::executor::Executor;
use crate::incoming::IncomingCommand;
use crate::rejection::Rejection;

/// The outcome, and whether it is final (worth recording as the durable command's result).
#[derive(Debug)]
pub struct Outcome {
    pub reply: CommandReply,
    pub transient: bool,
}

/// Executes `incoming` on a task of its own, so that a caller giving up (deadline, client gone,
/// shutdown) can never cancel it in the middle of a database transaction (see the sqlx
/// cancellation bug in docs/design/commands-on-own-task.md). After `deadline` the caller gets `unavailable`;
/// the work still finishes and its result is in the command log for a retry with the same id.
///
/// `permit` (a place among the commands executing at once) is held until the command has
/// finished, not merely until its caller stopped waiting: a command whose caller timed out
/// still runs, and must still count against the limit.
pub async fn run(
    executor: &Arc<Executor>,
    incoming: IncomingCommand,
    deadline: Duration,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Outcome {
    let command_id = incoming.command_id;
    let executor = Arc::clone(executor);
    let task = tokio::spawn(async move {
        let executed = executor.execute(incoming).await;
        drop(permit);
        executed
    });
    match tokio::time::timeout(deadline, task).await {
        Ok(Ok(Ok(reply))) => Outcome {
            reply,
            transient: false,
        },
        Ok(Ok(Err(error))) => {
            tracing::warn!(%command_id, error = %error, cause = ?std::error::Error::source(&error), "command failed");
            Outcome {
                reply: error.rejection().into_reply(command_id),
                transient: true,
            }
        }
        Ok(Err(join)) => {
            tracing::error!(%command_id, error = %join, "command task panicked");
            Outcome {
                reply: Rejection::internal().into_reply(command_id),
                transient: true,
            }
        }
        Err(_) => {
            tracing::warn!(%command_id, deadline_ms = deadline.as_millis() as u64, "command timed out");
            Outcome {
                reply: Rejection::unavailable("the event store").into_reply(command_id),
                transient: true,
            }
        }
    }
}

/// A reply as sent. Plain data always serialises; should one ever not, its sender is told
/// `internal` (with its command id) rather than sent nothing or an empty body.
pub fn reply_bytes(reply: &CommandReply) -> bytes::Bytes {
    match serde_json::to_vec(reply) {
        Ok(bytes) => bytes.into(),
        Err(error) => {
            let command_id = reply.command_id();
            tracing::error!(%error, %command_id, "a reply did not serialise; answering internal");
            internal_reply_text(command_id).into()
        }
    }
}

/// `internal` for `command_id`, written without serde.
fn internal_reply_text(command_id: uuid::Uuid) -> String {
    format!(
        r#"{{"status":"rejected","command_id":"{command_id}","error":{{"code":"internal","message":"unexpected failure","details":{{}}}}}}"#
    )
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    #[test]
    fn the_fallback_reply_is_an_internal_rejection() {
        let id = uuid::Uuid::from_u128(7);
        let read: domain::CommandReply =
            serde_json::from_str(&super::internal_reply_text(id)).expect("a command reply");
        assert_eq!(
            read,
            domain::CommandReply::rejected(
                id,
                domain::ErrorCode::Internal,
                "unexpected failure",
                serde_json::json!({})
            )
        );
    }
}
