//! The per-account queues of group commit: who leads, who waits, and the hand-over from one
//! group's leader to the next. No decision is made here (see the module above).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use domain::CommandReply;
use tokio::sync::oneshot;

use super::GROUP_MAX;
use crate::executor::ExecuteError;
use crate::incoming::IncomingCommand;

pub(super) enum Turn {
    Done(Result<CommandReply, ExecuteError>),
    /// Your turn to lead the queue.
    Lead,
}

pub(super) struct Waiting {
    pub(super) incoming: IncomingCommand,
    pub(super) turn: oneshot::Sender<Turn>,
}

/// How a command joined its account's queue.
pub(super) enum Joined {
    /// The queue was idle: lead it now.
    Leads,
    /// Wait for a reply, or for the turn to lead.
    Waits(oneshot::Receiver<Turn>),
    /// The queue holds this many already: refused.
    Full(usize),
}

/// Per account, the commands waiting for the group in progress.
#[derive(Default)]
pub struct Groups {
    queues: Mutex<HashMap<String, VecDeque<Waiting>>>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").finish_non_exhaustive()
    }
}

impl Groups {
    /// Queues `incoming` on account `key`, unless `queue_max` commands already wait there.
    pub(super) fn join(&self, key: &str, incoming: IncomingCommand, queue_max: usize) -> Joined {
        let (turn, my_turn) = oneshot::channel();
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues.entry(key.to_owned()).or_default();
        if queue.len() >= queue_max {
            return Joined::Full(queue.len());
        }
        queue.push_back(Waiting { incoming, turn });
        if queue.len() == 1 {
            Joined::Leads
        } else {
            Joined::Waits(my_turn)
        }
    }

    /// The front of the queue (the leader is first), still queued until answered.
    pub(super) fn take(&self, key: &str) -> Vec<Waiting> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queues.get_mut(key) else {
            return Vec::new();
        };
        let n = queue.len().min(GROUP_MAX);
        // The leader's entry stays at the front as the "group in progress" marker, so that
        // newcomers queue behind it instead of leading themselves.
        let mut group: Vec<Waiting> = queue.drain(1..n).collect();
        if let Some(front) = queue.front_mut() {
            let (placeholder, _) = oneshot::channel();
            let leader = Waiting {
                incoming: front.incoming.clone(),
                turn: std::mem::replace(&mut front.turn, placeholder),
            };
            group.insert(0, leader);
        }
        group
    }

    /// Drops the finished leader's marker and wakes the next command, if any, to lead.
    fn promote_next(&self, key: &str) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queues.get_mut(key) else {
            return;
        };
        queue.pop_front();
        while let Some(next) = queue.front_mut() {
            let (placeholder, _) = oneshot::channel();
            let turn = std::mem::replace(&mut next.turn, placeholder);
            if turn.send(Turn::Lead).is_ok() {
                return;
            }
            // Its caller has gone; nobody waits for that command's reply.
            queue.pop_front();
        }
        queues.remove(key);
    }
}

/// Promotes the next waiting command when the leader is done, however it ends.
pub(super) struct HandOver<'a> {
    pub(super) groups: &'a Groups,
    pub(super) key: &'a str,
}

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        self.groups.promote_next(self.key);
    }
}
