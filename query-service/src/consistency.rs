//! Read-your-writes: a command reply's `consistency_token` (header `Tally-Consistency-Token` or
//! query `consistency_token`) makes a read wait, up to `Tally-Wait-Ms` (at most 5000), until the
//! read model has applied that write. Without a token the API never waits.

use std::time::Duration;

use axum::http::HeaderMap;
use sqlx::PgPool;

use crate::problem::ApiError;

pub const HEADER_TOKEN: &str = "Tally-Consistency-Token";
pub const HEADER_WAIT: &str = "Tally-Wait-Ms";
pub const WAIT_DEFAULT_MS: u64 = 2_000;
pub const WAIT_MAX_MS: u64 = 5_000;
/// How often the read model is checked while waiting.
const POLL: Duration = Duration::from_millis(5);

/// The write a token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub version: i64,
}

pub fn parse(raw: &str) -> Result<Token, ApiError> {
    let invalid = || ApiError::BadRequest {
        detail: "consistency token is not one a command reply issued".into(),
    };
    let mut parts = raw.rsplitn(2, ':');
    let version = parts
        .next()
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(invalid)?;
    let (aggregate_type, aggregate_id) = parts
        .next()
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(invalid)?;
    Ok(Token {
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        version,
    })
}

/// Waits until the projection has applied the write named by the request's token, if any.
pub async fn wait(
    pool: &PgPool,
    projection: &str,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(), ApiError> {
    let raw = headers
        .get(HEADER_TOKEN)
        .and_then(|v| v.to_str().ok())
        .or(query_token);
    let Some(raw) = raw else {
        return Ok(());
    };
    let token = parse(raw)?;
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
    loop {
        let applied: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM projection_versions
             WHERE projection = $1 AND aggregate_type = $2 AND aggregate_id = $3",
        )
        .bind(projection)
        .bind(&token.aggregate_type)
        .bind(&token.aggregate_id)
        .fetch_optional(pool)
        .await?;
        if applied.is_some_and(|v| v >= token.version) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::NotYetConsistent {
                detail: format!(
                    "the read model has not applied version {} of {} {} within {wait_ms} ms (it is at {}); retry, or raise {HEADER_WAIT} (max {WAIT_MAX_MS})",
                    token.version,
                    token.aggregate_type,
                    token.aggregate_id,
                    applied.unwrap_or(0)
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
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
                version: 7
            })
        );
        assert!(parse("garbage").is_err());
        assert!(parse("account:acc:x").is_err());
    }
}
