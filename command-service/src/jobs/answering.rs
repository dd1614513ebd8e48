//! Answering a durable command: its sender is not waiting on a request, so the result of
//! every durable command is kept in the command log (readable later, and what a redelivery
//! answers from) and announced to the inbox the sender named, before the message is
//! acknowledged.

use async_nats::HeaderMap;
use async_nats::jetstream;
use domain::CommandReply;
use tokio_util::sync::CancellationToken;

use super::Jobs;
use super::deciding::Handled;
use super::waiting::{Backoff, Cause};
use crate::handling;
use crate::incoming::{HEADER_COMMAND_ID, HEADER_REPLY_TO};

/// The answer to a durable command, and where it is recorded.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) reply: CommandReply,
    /// Aggregate type and id the command log files it under.
    pub(super) target: (&'static str, String),
    /// The executor answered, and recorded whatever it means to keep (it keeps no refusal
    /// that says "retry": contention, another owner's account).
    pub(super) decided: bool,
}

impl Jobs {
    /// Logs the rejection of a durable command the executor did not log (refused before it
    /// was read, or an answer the executor does not log). The row is bound to no command: any
    /// later use of the id is answered `idempotency_mismatch`, so nobody learns from it what
    /// was refused.
    async fn record_unread_rejection(
        &self,
        reply: &CommandReply,
        (aggregate_type, aggregate_id): &(&'static str, String),
    ) -> Result<CommandReply, event_store::StoreError> {
        let row = event_store::LogRow::of(
            reply,
            &event_store::LogKey::unread(),
            aggregate_type,
            aggregate_id,
        )?;
        self.executor.store().log_unless_logged(row).await
    }

    /// Records the answer unless the executor did, publishes it to the sender's inbox, and
    /// acknowledges the message.
    pub(super) async fn answer(
        &self,
        lane: usize,
        message: &jetstream::Message,
        answer: &Answer,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Handled {
        let Answer {
            reply,
            target,
            decided,
        } = answer;
        let command_id = reply.command_id();
        // Rejections that never reached the executor are recorded here, so the result of every
        // durable command is readable later; refusals of the sender write nothing.
        let recordable = match reply {
            CommandReply::Rejected { error, .. } => {
                !decided && !crate::access::is_access_refusal(error.code)
            }
            CommandReply::Accepted { .. } => false,
        };
        // Not recorded is not answered: PostgreSQL is down, so this waits like any outage.
        while recordable && let Err(error) = self.record_unread_rejection(reply, target).await {
            tracing::warn!(%error, %command_id, "rejection of a durable command not recorded; trying again");
            if !self
                .wait(lane, Cause::Outage, backoff.pause(), shutdown)
                .await
            {
                return Handled::Abandoned;
            }
        }
        if let Some(inbox) = result_inbox(message.headers.as_ref(), &self.nats.new_inbox()) {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_COMMAND_ID, command_id.to_string().as_str());
            if let Err(error) = self
                .nats
                .publish_with_headers(inbox, headers, handling::reply_bytes(reply))
                .await
            {
                tracing::warn!(%error, %command_id, "result announcement not sent (the command log has it)");
            }
        }
        if let Err(error) = message.double_ack().await {
            tracing::warn!(%error, %command_id, "ack failed; a redelivery will get the logged result");
        }
        Handled::Answered
    }
}

/// Where a durable command's result goes: the inbox its sender named in `Tally-Reply-To`, and
/// only an inbox, never one of this service's own (`own_inbox` is one of them), where its
/// JetStream API answers arrive. A shared results subject would let every client read every
/// result, and any other subject would make this service publish there with its own rights.
fn result_inbox(headers: Option<&HeaderMap>, own_inbox: &str) -> Option<String> {
    let named = headers?.get(HEADER_REPLY_TO)?.as_str().trim();
    let own_prefix = own_inbox
        .rsplit_once('.')
        .map_or(own_inbox, |(prefix, _)| prefix);
    // Without a NATS user every connection shares the bare prefix: nothing is ours alone.
    let ours = own_prefix != platform::nats::INBOX_PREFIX_BASE
        && named
            .strip_prefix(own_prefix)
            .is_some_and(|rest| rest.starts_with('.'));
    (platform::nats::is_inbox_subject(named) && !ours).then(|| named.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_go_to_a_named_inbox_never_ours() {
        let own = "_INBOX_command-service.Nu1d";
        let named = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_REPLY_TO, value);
            result_inbox(Some(&headers), own)
        };
        assert_eq!(
            named("_INBOX_tally-client.a.b").as_deref(),
            Some("_INBOX_tally-client.a.b")
        );
        assert_eq!(named("_INBOX_command-service.x.y"), None);
        assert_eq!(named("tally.evt.account.x"), None);
        assert_eq!(result_inbox(None, own), None);
        // A server without users: every connection shares `_INBOX`.
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_REPLY_TO, "_INBOX.t1.x");
        assert!(result_inbox(Some(&headers), "_INBOX.Nu1d").is_some());
    }
}
