//! The hold expiry worker: releases every hold whose `expires_at` has passed, once. It asks the
//! event store which holds are due (`event_store::holds::lapsed`) and runs `hold.expire` on each
//! through the executor, like any command; the hold's own state makes the release happen once
//! however many instances run this, and a crash loses nothing, since what is due is read from
//! the events again on the next round.
//!
//! Until the worker gets to it, a lapsed hold can no longer be captured (the domain compares its
//! expiry with the time of the decision); its funds stay reserved for at most one round more.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, TimeDelta, Utc};
use domain::CommandReply;
use domain::ledger::{HoldCommand, VoidHold};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::executor::Executor;
use crate::incoming::{Command, IncomingCommand};

/// Holds released per round at most; a full round is followed at once by the next.
const ROUND_HOLDS_MAX: i64 = 100;
/// How far back a round looks once it has caught up: room for clocks of instances that
/// differ, without walking every hold ever ended.
const LOOK_BACK: TimeDelta = TimeDelta::seconds(60);
/// The actor recorded on the release.
pub const EXPIRY_ACTOR: &str = "command-service:hold-expiry";

pub async fn run(executor: Arc<Executor>, interval: Duration, shutdown: CancellationToken) {
    // From the start of time on the first round, so holds that lapsed while no instance ran
    // are found too.
    let mut from = String::new();
    loop {
        let now = Utc::now();
        let until = now.to_rfc3339_opts(SecondsFormat::Secs, true);
        let (caught_up, unfinished) = match round(&executor, &from, &until).await {
            Ok(Round { found, unfinished }) => (found < ROUND_HOLDS_MAX, unfinished),
            Err(error) => {
                tracing::warn!(%error, "hold expiry round failed; retrying next round");
                (false, None)
            }
        };
        if caught_up {
            // Never past a hold that is still to be released (an outage, a lost race).
            let look_back = (now - LOOK_BACK).to_rfc3339_opts(SecondsFormat::Secs, true);
            from = match unfinished {
                Some(earliest) if earliest < look_back => earliest,
                _ => look_back,
            };
        }
        let pause = if caught_up {
            interval
        } else {
            Duration::from_millis(10)
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// What a round found, and the earliest expiry among the holds it could not release.
struct Round {
    found: i64,
    unfinished: Option<String>,
}

/// Expires what is due in `[from, until]`.
async fn round(
    executor: &Arc<Executor>,
    from: &str,
    until: &str,
) -> Result<Round, event_store::StoreError> {
    let due =
        event_store::holds::lapsed(executor.store().pool(), from, until, ROUND_HOLDS_MAX).await?;
    let found = i64::try_from(due.len()).unwrap_or(ROUND_HOLDS_MAX);
    let mut unfinished = None;
    for lapsed in due {
        if !expire(executor, &lapsed).await && unfinished.is_none() {
            // `due` is in expiry order: the first is the earliest.
            unfinished = Some(lapsed.expires_at.clone());
        }
    }
    Ok(Round { found, unfinished })
}

/// Runs `hold.expire` for one lapsed hold; whether the hold has ended (by this or otherwise).
async fn expire(executor: &Arc<Executor>, lapsed: &event_store::holds::LapsedHold) -> bool {
    let Ok(hold_id) = Uuid::parse_str(&lapsed.hold_id) else {
        tracing::error!(hold_id = lapsed.hold_id, "a hold's id is not a UUID");
        return true;
    };
    // A new id per attempt: a refusal (a clock behind the hold's) must not become the answer
    // to every later attempt. Exactly once is the hold's state's doing.
    let mut incoming = IncomingCommand::new(
        Uuid::now_v7(),
        Command::Hold(HoldCommand::Expire(VoidHold { hold_id })),
    );
    incoming.actor = EXPIRY_ACTOR.to_owned();
    // On a task of its own, as every command is: a panic fails this hold, not the worker.
    let executor = Arc::clone(executor);
    match tokio::spawn(async move { executor.execute(incoming).await }).await {
        Ok(Ok(CommandReply::Accepted { .. })) => {
            tracing::debug!(%hold_id, expires_at = lapsed.expires_at, "hold expired");
            true
        }
        Ok(Ok(CommandReply::Rejected { error, .. })) => {
            tracing::debug!(%hold_id, code = %error.code, "hold not expired");
            // Ended otherwise (captured, voided, expired by another instance): done.
            error.code == domain::ErrorCode::HoldEnded
        }
        Ok(Err(error)) => {
            tracing::warn!(%hold_id, %error, "hold not expired");
            false
        }
        Err(join) => {
            tracing::error!(%hold_id, error = %join, "hold expiry task panicked");
            false
        }
    }
}
