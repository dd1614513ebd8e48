//! Per-account lanes: what keeps one aggregate's durable commands in publication order while
//! different aggregates run in parallel. A lane runs its commands one after another and holds
//! everything queued behind a command that waits, keeping all of it alive, so nothing held is
//! redelivered (and so nothing can come back out of order).

use std::collections::VecDeque;

use async_nats::jetstream::{self, AckKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::deciding::Handled;
use super::{ACK_PENDING_MAX, Jobs, ack_progress, progress_timer};

/// Parallel lanes; an aggregate always maps to the same lane.
pub(super) const LANES: usize = 16;

/// The lanes' queues and the tasks that run them.
#[derive(Debug)]
pub(super) struct Lanes {
    queues: Vec<mpsc::Sender<jetstream::Message>>,
    tasks: TaskTracker,
}

impl Lanes {
    pub(super) fn spawn(jobs: &Jobs, shutdown: &CancellationToken) -> Lanes {
        let tasks = TaskTracker::new();
        let mut queues = Vec::with_capacity(LANES);
        for lane in 0..LANES {
            let (tx, rx) = mpsc::channel::<jetstream::Message>(ACK_PENDING_MAX);
            tasks.spawn(jobs.clone().run_lane(lane, rx, shutdown.clone()));
            queues.push(tx);
        }
        Lanes { queues, tasks }
    }

    /// Queues `message` on its account's lane; `false` if that lane has stopped.
    pub(super) async fn dispatch(&self, message: jetstream::Message) -> bool {
        let lane = lane_of(&message.payload);
        self.queues[lane].send(message).await.is_ok()
    }

    /// Closes the queues and waits until each lane has finished what it holds.
    pub(super) async fn finish(self) {
        drop(self.queues);
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Jobs {
    /// One lane: its messages in arrival order, one at a time. Everything it holds is kept
    /// alive while the head runs or waits, so no held message is redelivered (and so none can
    /// come back out of order). At shutdown it finishes what it holds, unless the head is
    /// waiting: then the head and everything behind it are given back, in order, with a nak.
    async fn run_lane(
        self,
        lane: usize,
        mut incoming: mpsc::Receiver<jetstream::Message>,
        shutdown: CancellationToken,
    ) {
        let mut queue: VecDeque<jetstream::Message> = VecDeque::new();
        let mut open = true;
        let mut keep_alive = progress_timer();
        loop {
            let Some(head) = queue.pop_front() else {
                if !open {
                    return;
                }
                match incoming.recv().await {
                    Some(message) => queue.push_back(message),
                    None => open = false,
                }
                continue;
            };
            let handled = self.handle(lane, &head, &shutdown);
            tokio::pin!(handled);
            let outcome = loop {
                tokio::select! {
                    biased;
                    outcome = &mut handled => break outcome,
                    message = incoming.recv(), if open && queue.len() < ACK_PENDING_MAX => {
                        match message {
                            Some(message) => queue.push_back(message),
                            None => open = false,
                        }
                    }
                    _ = keep_alive.tick() => {
                        for message in std::iter::once(&head).chain(queue.iter()) {
                            ack_progress(message).await;
                        }
                    }
                }
            };
            self.waiting.done(lane);
            if outcome == Handled::Abandoned {
                give_back(lane, &head, queue, incoming).await;
                return;
            }
        }
    }
}

/// Nothing behind the head may be decided before it, so none of it is run here: it all goes
/// back now (a nak, in order) rather than after ACK_WAIT. A successor may still get them
/// behind newer messages (nats-server#6114).
async fn give_back(
    lane: usize,
    head: &jetstream::Message,
    mut queue: VecDeque<jetstream::Message>,
    mut incoming: mpsc::Receiver<jetstream::Message>,
) {
    incoming.close();
    while let Some(message) = incoming.recv().await {
        queue.push_back(message);
    }
    for message in std::iter::once(head).chain(queue.iter()) {
        if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
            tracing::debug!(%error, "nak at shutdown failed; redelivered after the ack wait");
        }
    }
    tracing::info!(
        lane,
        given_back = queue.len() + 1,
        "durable commands waiting at shutdown given back to the stream"
    );
}

/// The lane of a command: by its `account_id`, so one aggregate's commands stay in order.
fn lane_of(payload: &[u8]) -> usize {
    #[derive(serde::Deserialize)]
    struct Target {
        account_id: Option<String>,
    }
    let key = serde_json::from_slice::<Target>(payload)
        .ok()
        .and_then(|t| t.account_id)
        .unwrap_or_default();
    // FNV-1a: stable and cheap; the lane only has to be the same for the same id.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % LANES as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::lane_of;

    #[test]
    fn one_account_one_lane() {
        let a = lane_of(br#"{"account_id":"acc-1","amount":5}"#);
        assert_eq!(a, lane_of(br#"{"amount":7,"account_id":"acc-1"}"#));
        assert!(a < super::LANES);
        assert_eq!(lane_of(b"not json"), lane_of(b"{}"));
    }
}
