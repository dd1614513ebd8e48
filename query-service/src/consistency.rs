//! Read-your-writes: a command reply's `consistency_token` (header `Tally-Consistency-Token` or
//! query `consistency_token`) makes a read wait, up to `Tally-Wait-Ms` (at most 5000), until the
//! read model has applied that write. Without a token the API never waits.

use std::time::Duration;

use axum::http::HeaderMap;
use sqlx::PgPool;

use platform::auth::Principal;

use crate::consistency_waits::{ConsistencyWaits, WAITING_PER_READER_MAX, projection_of};
use crate::problem::ApiError;

pub const HEADER_TOKEN: &str = "Tally-Consistency-Token";
pub const HEADER_WAIT: &str = "Tally-Wait-Ms";
pub const WAIT_DEFAULT_MS: u64 = 2_000;
pub const WAIT_MAX_MS: u64 = 5_000;

/// The write a token names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Token {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub target: Target,
}

/// What the read model must have reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// This version of the aggregate.
    Version(i64),
    /// The transfer completed or failed (a transfer request's token).
    Settled,
}

pub fn parse(raw: &str) -> Result<Token, ApiError> {
    let invalid = || ApiError::BadRequest {
        detail: "consistency token is not one a command reply issued".into(),
    };
    let mut parts = raw.rsplitn(2, ':');
    let target = match parts.next() {
        Some("settled") => Target::Settled,
        other => Target::Version(
            other
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(invalid)?,
        ),
    };
    let (aggregate_type, aggregate_id) = parts
        .next()
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(invalid)?;
    let known = matches!(
        (aggregate_type, target),
        ("account" | "transaction" | "hold", Target::Version(_)) | ("transfer", _)
    );
    if !known {
        return Err(invalid());
    }
    Ok(Token {
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        target,
    })
}

/// Whether the read model has reached `token`, and where it is (for the error message).
async fn reached(pool: &PgPool, token: &Token) -> Result<(bool, String), sqlx::Error> {
    match token.target {
        Target::Version(version) => {
            let applied: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM projection_versions
                 WHERE projection = $1 AND aggregate_type = $2 AND aggregate_id = $3",
            )
            .bind(projection_of(&token.aggregate_type))
            .bind(&token.aggregate_type)
            .bind(&token.aggregate_id)
            .fetch_optional(pool)
            .await?;
            Ok((
                applied.is_some_and(|v| v >= version),
                format!("version {} (it is at {})", version, applied.unwrap_or(0)),
            ))
        }
        Target::Settled => {
            let Ok(id) = uuid::Uuid::parse_str(&token.aggregate_id) else {
                return Ok((false, "a settled transfer (no such transfer)".into()));
            };
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM transfers WHERE transfer_id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
            let settled = matches!(status.as_deref(), Some("completed" | "failed"));
            Ok((
                settled,
                format!(
                    "a settled transfer (it is {})",
                    status.as_deref().unwrap_or("not yet visible")
                ),
            ))
        }
    }
}

/// The token the request presents (header first, then query), if any.
pub fn requested(
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<Token>, ApiError> {
    headers
        .get(HEADER_TOKEN)
        .and_then(|v| v.to_str().ok())
        .or(query_token)
        .map(parse)
        .transpose()
}

/// Waits until the read model has applied the write named by the request's token, if any.
///
/// A reader bound to `owner` waits only on what that owner may see: a token naming another
/// owner's aggregate is answered exactly as one naming an aggregate that does not exist (yet),
/// after the same wait, so neither the answer nor its timing tells of the other's existence or
/// version.
///
/// One reader (token subject) holds at most `WAITING_PER_READER_MAX` waits at once, so no
/// reader can take every place of the shared watcher from the others.
pub async fn wait(
    pool: &PgPool,
    waits: &ConsistencyWaits,
    headers: &HeaderMap,
    query_token: Option<&str>,
    principal: &Principal,
) -> Result<(), ApiError> {
    let owner = principal.owner.as_deref();
    let Some(token) = requested(headers, query_token)? else {
        return Ok(());
    };
    let Ok(_place) = waits.hold(&principal.subject) else {
        return Err(ApiError::NotYetConsistent {
            detail: format!(
                "{WAITING_PER_READER_MAX} reads of this token's subject already wait for a consistency token; retry once they are answered"
            ),
        });
    };
    let wait_ms = match headers.get(HEADER_WAIT) {
        None => WAIT_DEFAULT_MS,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| ApiError::BadRequest {
                detail: format!("{HEADER_WAIT} must be a number of milliseconds"),
            })?
            .min(WAIT_MAX_MS),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    match owner {
        Some(owner) if !visible_to(pool, &token, owner).await? => {
            wait_unseen(pool, waits, &token, owner, wait_ms, deadline).await
        }
        _ => wait_seen(pool, waits, &token, wait_ms, deadline).await,
    }
}

/// The outcome of [`wait`] for a read of one account or transfer, to return at once or to hold
/// until after the visibility check: an unbound reader is told that its write is not applied
/// yet before "not found"; a reader bound to an owner gets "not found" first, whatever the
/// token, so that another owner's account answers exactly as a missing one.
pub fn unless_bound(
    waited: Result<(), ApiError>,
    owner: Option<&str>,
) -> Result<Result<(), ApiError>, ApiError> {
    match (waited, owner) {
        (Err(error), None) => Err(error),
        (waited, _) => Ok(waited),
    }
}

/// The wait on a token whose aggregate the reader may see.
async fn wait_seen(
    pool: &PgPool,
    waits: &ConsistencyWaits,
    token: &Token,
    wait_ms: u64,
    deadline: tokio::time::Instant,
) -> Result<(), ApiError> {
    // Most reads find their write applied already: one check, and no wait to register.
    if reached(pool, token).await?.0 {
        return Ok(());
    }
    let crowded = match waits.register(token.clone()) {
        Ok(reached) => {
            if let Ok(Ok(())) = tokio::time::timeout_at(deadline, reached).await {
                return Ok(());
            }
            false
        }
        Err(_full) => true,
    };
    let (done, position) = reached(pool, token).await?;
    if done {
        return Ok(());
    }
    Err(ApiError::NotYetConsistent {
        detail: format!(
            "the read model has not reached {position} of {} {} {}",
            token.aggregate_type,
            token.aggregate_id,
            advice(crowded, wait_ms),
        ),
    })
}

/// The wait of a reader bound to `owner` on a token naming what it cannot see now: another
/// owner's aggregate, or one not in the read model (yet; possibly the owner's own, just
/// written). It lasts until the aggregate is visible to the owner at the token's write, or
/// else the whole wait, and then says nothing of where the read model is.
async fn wait_unseen(
    pool: &PgPool,
    waits: &ConsistencyWaits,
    token: &Token,
    owner: &str,
    wait_ms: u64,
    deadline: tokio::time::Instant,
) -> Result<(), ApiError> {
    let crowded = match waits.register(token.clone()) {
        Ok(signal) => {
            // Reached (or not) says nothing yet: another owner's aggregate may well be there.
            let _ = tokio::time::timeout_at(deadline, signal).await;
            if visible_to(pool, token, owner).await? && reached(pool, token).await?.0 {
                return Ok(());
            }
            tokio::time::sleep_until(deadline).await;
            false
        }
        // Crowded: answered at once, whoever's the aggregate.
        Err(_full) => true,
    };
    Err(ApiError::NotYetConsistent {
        detail: format!(
            "the read model does not show {} {} at the token's write {}",
            token.aggregate_type,
            token.aggregate_id,
            advice(crowded, wait_ms),
        ),
    })
}

fn advice(crowded: bool, wait_ms: u64) -> String {
    if crowded {
        format!(
            "{} reads are waiting already; retry",
            crate::consistency_waits::WAITING_MAX
        )
    } else {
        format!("within {wait_ms} ms; retry, or raise {HEADER_WAIT} (max {WAIT_MAX_MS})")
    }
}

/// Whether the aggregate a token names is in the read model and `owner`'s: an account of
/// theirs, a transfer from or to one, a transaction with a leg touching one, or a hold on one.
async fn visible_to(pool: &PgPool, token: &Token, owner: &str) -> Result<bool, ApiError> {
    let visible = match token.aggregate_type.as_str() {
        "account" => {
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM accounts WHERE account_id = $1 AND owner = $2)",
            )
            .bind(&token.aggregate_id)
            .bind(owner)
            .fetch_one(pool)
            .await?
        }
        "transfer" => {
            let Ok(id) = uuid::Uuid::parse_str(&token.aggregate_id) else {
                return Ok(false);
            };
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM transfers t JOIN accounts a
                                  ON a.account_id IN (t.from_account, t.to_account)
                                WHERE t.transfer_id = $1 AND a.owner = $2)",
            )
            .bind(id)
            .bind(owner)
            .fetch_one(pool)
            .await?
        }
        "transaction" => {
            let Ok(id) = uuid::Uuid::parse_str(&token.aggregate_id) else {
                return Ok(false);
            };
            sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM transactions t
                                WHERE t.transaction_id = $1 AND {})",
                crate::transactions::TOUCHES_OWNER
            ))
            .bind(id)
            .bind(owner)
            .fetch_one(pool)
            .await?
        }
        "hold" => {
            let Ok(id) = uuid::Uuid::parse_str(&token.aggregate_id) else {
                return Ok(false);
            };
            sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM holds h JOIN accounts a ON a.account_id = h.account_id
                                WHERE h.hold_id = $1 AND a.owner = $2)",
            )
            .bind(id)
            .bind(owner)
            .fetch_one(pool)
            .await?
        }
        _ => false,
    };
    Ok(visible)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse() {
        assert_eq!(
            parse("account:acc-1:7").ok(),
            Some(Token {
                aggregate_type: "account".into(),
                aggregate_id: "acc-1".into(),
                target: Target::Version(7)
            })
        );
        let transfer = "transfer:0190b6a4-0000-7000-8000-000000000001:settled";
        assert_eq!(
            parse(transfer).map(|t| t.target).ok(),
            Some(Target::Settled)
        );
        assert!(parse("garbage").is_err());
        assert!(parse("account:acc:x").is_err());
        assert!(parse("account:acc:settled").is_err());
        assert!(parse("ledger:x:1").is_err());
        let hold = "hold:0190b6a4-0000-7000-8000-000000000001:2";
        assert_eq!(parse(hold).map(|t| t.target).ok(), Some(Target::Version(2)));
        let transaction = "transaction:0190b6a4-0000-7000-8000-000000000001:1";
        assert_eq!(
            parse(transaction).map(|t| t.aggregate_type).ok().as_deref(),
            Some("transaction")
        );
        assert!(parse("hold:x:settled").is_err());
        assert!(parse("transaction:x:settled").is_err());
    }
}
