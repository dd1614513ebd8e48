//! One open feed: reads what its client has not had yet (from the read model, from the cursor
//! it carries), sends it, sleeps until the hub wakes it, and so on until it ends. The client's
//! connection drains a bounded buffer of events; a client that leaves the buffer full for
//! longer than `slow_reader` is dropped (the buffer, not the server, absorbs its slowness).

use std::time::Duration;

use axum::response::sse::Event;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::cursor::Positions;
use super::hub::Subscription;
use super::read::{self, Change};
use crate::problem::ApiError;

/// Why a feed ended (`event: end`, `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    SlowReader,
    MaxAge,
    Shutdown,
    Unavailable,
    /// The client went away: nothing to tell it.
    ClientGone,
}

impl End {
    pub fn reason(self) -> &'static str {
        match self {
            End::SlowReader => "slow_reader",
            End::MaxAge => "max_age",
            End::Shutdown => "shutdown",
            End::Unavailable => "unavailable",
            End::ClientGone => "client_gone",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            End::SlowReader => {
                "the client read too slowly: its buffer stayed full; reconnect with Last-Event-ID"
            }
            End::MaxAge => "the feed reached its maximum age; reconnect with Last-Event-ID",
            End::Shutdown => "the server is shutting down; reconnect with Last-Event-ID",
            End::Unavailable => "the read model could not be read; reconnect with Last-Event-ID",
            End::ClientGone => "",
        }
    }
}

/// What one feed follows, and from where.
#[derive(Debug)]
pub enum Follow {
    /// One account, after this version (`None`: a fresh feed, starting with its state).
    Account { id: String, after: Option<i64> },
    /// One owner's accounts, after these positions (`None`: fresh).
    Owner {
        owner: String,
        after: Option<Positions>,
        accounts_max: usize,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub slow_reader: Duration,
    pub max_age: Duration,
}

/// Sends events to the client's buffer; `Err` ends the feed.
struct Sender {
    out: mpsc::Sender<Event>,
    slow_reader: Duration,
}

impl Sender {
    async fn send(&self, event: Event) -> Result<(), End> {
        self.out
            .send_timeout(event, self.slow_reader)
            .await
            .map_err(|error| match error {
                mpsc::error::SendTimeoutError::Timeout(_) => End::SlowReader,
                mpsc::error::SendTimeoutError::Closed(_) => End::ClientGone,
            })
    }

    async fn change(&self, id: Option<String>, change: &Change) -> Result<(), End> {
        let mut event = json_event("change", change);
        if let Some(id) = id {
            event = event.id(id);
        }
        self.send(event).await
    }
}

pub fn json_event(name: &str, data: &impl Serialize) -> Event {
    // Our own structs of strings and integers: serialising cannot fail.
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(name).data("{}"))
}

#[derive(Serialize)]
struct Reason<'a> {
    reason: &'a str,
    detail: &'a str,
}

/// Runs a feed until it ends; its last event (if the client is still there) goes to `last`.
#[allow(clippy::too_many_arguments)] // the feed's whole context, passed once at its start
pub async fn run(
    pool: PgPool,
    subscription: Subscription,
    follow: Follow,
    timing: Timing,
    out: mpsc::Sender<Event>,
    last: oneshot::Sender<Event>,
    shutdown: CancellationToken,
    ended: prometheus::IntCounterVec,
) {
    let sender = Sender {
        out,
        slow_reader: timing.slow_reader,
    };
    let deadline = tokio::time::Instant::now() + timing.max_age;
    let end = follow_until_end(&pool, &subscription, follow, &sender, deadline, &shutdown).await;
    ended.with_label_values(&[end.reason()]).inc();
    drop(subscription);
    if end != End::ClientGone {
        let reason = Reason {
            reason: end.reason(),
            detail: end.detail(),
        };
        let _ = last.send(json_event("end", &reason));
    }
}

async fn follow_until_end(
    pool: &PgPool,
    subscription: &Subscription,
    follow: Follow,
    sender: &Sender,
    deadline: tokio::time::Instant,
    shutdown: &CancellationToken,
) -> End {
    let mut state = match start(pool, follow, sender).await {
        Ok(state) => state,
        Err(end) => return end,
    };
    loop {
        if let Err(end) = catch_up(pool, &mut state, sender).await {
            return end;
        }
        tokio::select! {
            () = shutdown.cancelled() => return End::Shutdown,
            () = tokio::time::sleep_until(deadline) => return End::MaxAge,
            () = sender.out.closed() => return End::ClientGone,
            () = subscription.wake.notified() => {}
        }
    }
}

/// Where a running feed stands.
enum State {
    Account {
        id: String,
        version: i64,
    },
    Owner {
        owner: String,
        positions: Positions,
        accounts_max: usize,
    },
}

fn unavailable(error: ApiError) -> End {
    tracing::warn!(%error, "change feed read failed; ending the feed");
    End::Unavailable
}

/// The first events: a fresh feed's current state.
async fn start(pool: &PgPool, follow: Follow, sender: &Sender) -> Result<State, End> {
    match follow {
        Follow::Account {
            id,
            after: Some(version),
        } => Ok(State::Account { id, version }),
        Follow::Account { id, after: None } => {
            let view = read::account(pool, &id).await.map_err(unavailable)?;
            let version = view.as_ref().map_or(0, |v| v.version);
            if let Some(view) = view {
                let change = read::state(view);
                sender
                    .change(Some(change.consistency_token.clone()), &change)
                    .await?;
            }
            Ok(State::Account { id, version })
        }
        Follow::Owner {
            owner,
            after,
            accounts_max,
        } => {
            // A cursor from before a rebuild is found stale by the first catch-up.
            let positions = match after {
                Some(positions) => positions,
                None => snapshot(pool, &owner, accounts_max, false, sender).await?,
            };
            Ok(State::Owner {
                owner,
                positions,
                accounts_max,
            })
        }
    }
}

/// A fresh owner feed's first burst (after a `reset` when the client's cursor is of a read
/// model since rebuilt): each account's current state, and the positions it reflects.
async fn snapshot(
    pool: &PgPool,
    owner: &str,
    accounts_max: usize,
    reset: bool,
    sender: &Sender,
) -> Result<Positions, End> {
    if reset {
        let reason = Reason {
            reason: "cursor_stale",
            detail: "the accounts read model was rebuilt since this cursor: the changes that follow carry each account's current state",
        };
        sender.send(json_event("reset", &reason)).await?;
    }
    let (changes, positions) = read::owner_snapshot(pool, owner, accounts_max)
        .await
        .map_err(unavailable)?;
    let count = changes.len();
    for (index, change) in changes.iter().enumerate() {
        // Only the last carries the cursor: a client cut off mid-snapshot reconnects without
        // one and gets the whole snapshot again.
        let id = (index + 1 == count).then(|| positions.to_id());
        sender.change(id, change).await?;
    }
    Ok(positions)
}

/// Sends everything the read model has beyond the feed's cursor.
async fn catch_up(pool: &PgPool, state: &mut State, sender: &Sender) -> Result<(), End> {
    match state {
        State::Account { id, version } => loop {
            let changes = read::account_after(pool, id, *version)
                .await
                .map_err(unavailable)?;
            if changes.is_empty() {
                return Ok(());
            }
            for change in &changes {
                sender
                    .change(Some(change.consistency_token.clone()), change)
                    .await?;
                *version = change.version;
            }
        },
        State::Owner {
            owner,
            positions,
            accounts_max,
        } => loop {
            let read = read::owner_after(pool, owner, positions, *accounts_max)
                .await
                .map_err(unavailable)?;
            let Some((changes, reached)) = read else {
                // Rebuilt while the feed ran: start over, as a client with that cursor would.
                *positions = snapshot(pool, owner, *accounts_max, true, sender).await?;
                return Ok(());
            };
            let mut running = positions.clone();
            for (partition, position, change) in &changes {
                running.by_partition.insert(*partition, *position);
                sender.change(Some(running.to_id()), change).await?;
            }
            let more = !changes.is_empty();
            *positions = reached;
            if !more {
                return Ok(());
            }
        },
    }
}
