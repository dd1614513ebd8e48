//! Gathering, at start, the durable commands a predecessor held unanswered: they are
//! redelivered in no particular order and can arrive behind newer messages
//! (nats-server#6114), so they are collected first and run in stream order.

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{
    ACK_PENDING_MAX, ACK_WAIT, CONSUMER_ERROR_PAUSE, KEEP_ALIVE_EVERY, ack_progress, progress_timer,
};

/// Pulls until `owed` redelivered messages (deliveries after the first) are in hand, or until
/// a message lost with a dead predecessor would have been redelivered (`ACK_WAIT` plus a
/// margin), keeping everything gathered alive; returns it all sorted by stream sequence.
pub(super) async fn gather(
    messages: &mut pull::Stream,
    owed: usize,
    shutdown: &CancellationToken,
) -> Vec<jetstream::Message> {
    let deadline = tokio::time::Instant::now() + ACK_WAIT + KEEP_ALIVE_EVERY;
    let mut keep_alive = progress_timer();
    let mut gathered: Vec<jetstream::Message> = Vec::new();
    let mut redelivered = 0;
    while redelivered < owed && gathered.len() < ACK_PENDING_MAX {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(owed, redelivered, "not every owed durable command came back; starting anyway");
                break;
            }
            _ = keep_alive.tick() => {
                for message in &gathered {
                    ack_progress(message).await;
                }
            }
            next = messages.next() => match next {
                None => break,
                Some(Err(error)) => {
                    tracing::warn!(%error, "durable command consumer error");
                    tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                }
                Some(Ok(message)) => {
                    if message.info().is_ok_and(|i| i.delivered > 1) {
                        redelivered += 1;
                    }
                    gathered.push(message);
                }
            },
        }
    }
    gathered.sort_by_key(|m| m.info().map_or(0, |i| i.stream_sequence));
    gathered
}
