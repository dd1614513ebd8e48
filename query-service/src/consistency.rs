//! Read-your-writes: a command reply's `consistency_token` (header `Tally-Consistency-Token` or
//! query `consistency_token`) makes a read wait, up to `Tally-Wait-Ms` (at most 5000), until the
//! read model has applied that write. Without a token the API never waits.

use std::time::Duration;

use axum::http::HeaderMap;
use sqlx::PgPool;

use crate::consistency_waits::{ConsistencyWaits, projection_of};
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
        ("account", Target::Version(_)) | ("transfer", _)
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
pub async fn wait(
    pool: &PgPool,
    waits: &ConsistencyWaits,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(), ApiError> {
    let Some(token) = requested(headers, query_token)? else {
        return Ok(());
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
    // Most reads find their write applied already: one check, and no wait to register.
    if reached(pool, &token).await?.0 {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let crowded = match waits.register(token.clone()) {
        Ok(reached) => {
            if let Ok(Ok(())) = tokio::time::timeout_at(deadline, reached).await {
                return Ok(());
            }
            false
        }
        Err(_full) => true,
    };
    let (done, position) = reached(pool, &token).await?;
    if done {
        return Ok(());
    }
    let advice = if crowded {
        format!(
            "{} reads are waiting already; retry",
            crate::consistency_waits::WAITING_MAX
        )
    } else {
        format!("within {wait_ms} ms; retry, or raise {HEADER_WAIT} (max {WAIT_MAX_MS})")
    };
    Err(ApiError::NotYetConsistent {
        detail: format!(
            "the read model has not reached {position} of {} {} {advice}",
            token.aggregate_type, token.aggregate_id,
        ),
    })
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
    }
}
