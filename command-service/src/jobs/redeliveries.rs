//! Gathering, each time this instance becomes the pinned one (at start, or when it takes over
//! from an instance that died or lost the pin), the durable commands a predecessor still held
//! unanswered: they come back only after the ack wait, in no particular order and behind newer
//! messages (nats-server#6114), while the new pin already delivers those newer messages. So
//! they are all collected first and run in stream order.
//!
//! Which are owed is read from the commands stream itself: it is a work queue, so a message
//! leaves it when acknowledged. First deliveries come in stream order, so every message this
//! instance gets for the first time is newer than anything a predecessor was given; whatever
//! the stream still holds below the oldest of them was delivered before, and is owed. (The
//! consumer's own counters are no use here: on a replicated consumer its delivered sequence
//! lags its ack-pending count.)

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{
    ACK_PENDING_MAX, ACK_WAIT, CONSUMER_ERROR_PAUSE, KEEP_ALIVE_EVERY, ack_progress, progress_timer,
};

/// How often the stream is asked again while gathering: acknowledgements reach a replicated
/// stream a little late, so a first count can include messages already answered.
const RECOUNT_EVERY: Duration = Duration::from_millis(500);

/// Pulls, starting with `first` (the message that showed the new pin), until every message the
/// stream holds below this instance's first delivery is in hand, or until a message lost with a
/// dead predecessor would have been redelivered (`ACK_WAIT` plus a margin), keeping everything
/// gathered alive; returns it all sorted by stream sequence. What this instance's lanes still
/// hold from an earlier pin is counted as owed until they answer it (it then leaves the
/// stream, and the next count): waiting a little longer is safe, starting early is not.
pub(super) async fn gather(
    messages: &mut pull::Stream,
    stream: &jetstream::stream::Stream,
    first: jetstream::Message,
    shutdown: &CancellationToken,
) -> Vec<jetstream::Message> {
    let deadline = tokio::time::Instant::now() + ACK_WAIT + KEEP_ALIVE_EVERY;
    let mut keep_alive = progress_timer();
    let mut recount = tokio::time::interval(RECOUNT_EVERY);
    recount.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gathered: Vec<jetstream::Message> = Vec::new();
    // Stream sequences in hand: delivered before (redelivered), and the oldest delivered for
    // the first time.
    let mut redelivered: BTreeSet<u64> = BTreeSet::new();
    let mut oldest_new: Option<u64> = None;
    let mut owed: Option<u64> = None;
    note(&first, &mut redelivered, &mut oldest_new);
    gathered.push(first);
    loop {
        if let Some(owed) = owed {
            let below = oldest_new.map_or(redelivered.len(), |o| redelivered.range(..o).count());
            if u64::try_from(below).unwrap_or(u64::MAX) >= owed {
                break;
            }
        }
        if gathered.len() >= ACK_PENDING_MAX {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    ?owed,
                    redelivered = redelivered.len(),
                    "not every durable command a predecessor held came back; starting anyway"
                );
                break;
            }
            _ = keep_alive.tick() => {
                for message in &gathered {
                    ack_progress(message).await;
                }
            }
            _ = recount.tick() => {
                match stream.get_info().await {
                    Ok(info) => {
                        let state = &info.state;
                        // Everything from the oldest first delivery on is still in the stream
                        // (nothing is acknowledged while gathering); the rest is older.
                        let newer = oldest_new
                            .map_or(0, |o| state.last_sequence.saturating_add(1).saturating_sub(o));
                        owed = Some(state.messages.saturating_sub(newer));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot count the durable commands owed; asking again");
                    }
                }
            }
            next = messages.next() => match next {
                None => break,
                Some(Err(error)) => {
                    tracing::warn!(%error, "durable command consumer error");
                    tokio::time::sleep(CONSUMER_ERROR_PAUSE).await;
                }
                Some(Ok(message)) => {
                    let before = oldest_new;
                    note(&message, &mut redelivered, &mut oldest_new);
                    gathered.push(message);
                    if before != oldest_new {
                        // The count depends on where the first deliveries start.
                        owed = None;
                        recount.reset_immediately();
                    }
                }
            },
        }
    }
    gathered.sort_by_key(|m| m.info().map_or(0, |i| i.stream_sequence));
    gathered
}

/// Records where `message` stands: delivered before (its stream sequence among `redelivered`),
/// or for the first time (`oldest_new` the oldest such).
fn note(
    message: &jetstream::Message,
    redelivered: &mut BTreeSet<u64>,
    oldest_new: &mut Option<u64>,
) {
    if let Ok(info) = message.info() {
        if info.delivered > 1 {
            redelivered.insert(info.stream_sequence);
        } else {
            *oldest_new =
                Some(oldest_new.map_or(info.stream_sequence, |o| o.min(info.stream_sequence)));
        }
    }
}
