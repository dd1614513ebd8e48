//! Reads over the query-service's HTTP API.

use anyhow::{Context, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct Http {
    /// Base URL of the query-service.
    #[arg(
        long = "api-url",
        env = "TALLY_API_URL",
        default_value = "http://127.0.0.1:8480",
        global = true
    )]
    pub base: String,
}

/// GETs `path`; returns the JSON body, or an error carrying the API's problem detail.
pub async fn get(
    http: &Http,
    path: &str,
    consistency_token: Option<&str>,
    connection: &crate::send::Connection,
) -> anyhow::Result<serde_json::Value> {
    let timeout_ms = connection.timeout_ms;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(timeout_ms))
        .build()?;
    let mut request = client.get(format!("{}{path}", http.base.trim_end_matches('/')));
    if let Some(value) = crate::send::authorization(connection.token.as_deref()) {
        request = request.header("Authorization", value);
    }
    if let Some(token) = consistency_token {
        request = request
            .header("Tally-Consistency-Token", token)
            .header("Tally-Wait-Ms", "5000");
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the API at {}", http.base))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let detail = body["detail"].as_str().unwrap_or("no detail");
        bail!(
            "{} {}: {detail}",
            status.as_u16(),
            body["code"].as_str().unwrap_or("")
        );
    }
    Ok(body)
}

/// `tally read …`: the double-entry reads (transactions, statements, holds, system accounts).
#[derive(Debug, clap::Subcommand)]
pub enum ReadCommand {
    /// One transaction with its legs.
    Transaction {
        transaction_id: uuid::Uuid,
        /// Wait until this write (a reply's consistency_token) is visible.
        #[arg(long = "after")]
        consistency_token: Option<String>,
    },
    /// An account's entries for a period, with opening and closing balances.
    Statement {
        /// The account id.
        account_id: String,
        /// Start of the period (RFC 3339), inclusive.
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
        /// End of the period (RFC 3339), exclusive.
        #[arg(long)]
        to: chrono::DateTime<chrono::Utc>,
        /// From a previous page's `next_cursor`.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// An account's holds.
    Holds {
        /// The account id.
        account_id: String,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One hold.
    Hold {
        hold_id: uuid::Uuid,
        #[arg(long = "after")]
        consistency_token: Option<String>,
    },
    /// The system accounts' balances (`@world:EUR`, `@fees:EUR`, ...).
    SystemAccounts,
}

impl ReadCommand {
    /// The path and query under the API's base URL, and the consistency token to wait for.
    pub fn path(&self) -> (String, Option<String>) {
        use crate::account::encode;
        let with_cursor = |path: String, cursor: &Option<String>| match cursor {
            Some(cursor) => {
                let joiner = if path.contains('?') { '&' } else { '?' };
                format!("{path}{joiner}cursor={}", encode(cursor))
            }
            None => path,
        };
        match self {
            ReadCommand::Transaction {
                transaction_id,
                consistency_token,
            } => (
                format!("/v1/transactions/{transaction_id}"),
                consistency_token.clone(),
            ),
            ReadCommand::Statement {
                account_id,
                from,
                to,
                cursor,
            } => {
                let path = format!(
                    "/v1/accounts/{}/statement?from={}&to={}",
                    encode(account_id),
                    encode(&from.to_rfc3339()),
                    encode(&to.to_rfc3339())
                );
                (with_cursor(path, cursor), None)
            }
            ReadCommand::Holds { account_id, cursor } => (
                with_cursor(format!("/v1/accounts/{}/holds", encode(account_id)), cursor),
                None,
            ),
            ReadCommand::Hold {
                hold_id,
                consistency_token,
            } => (format!("/v1/holds/{hold_id}"), consistency_token.clone()),
            ReadCommand::SystemAccounts => ("/v1/system-accounts".to_owned(), None),
        }
    }
}

/// Prints a ledger read: JSON as is with `--json`, otherwise a few lines for people.
#[allow(clippy::print_stdout)] // printing the answer is this tool's job
pub fn print_ledger(command: &ReadCommand, body: &serde_json::Value, json: bool) {
    if json {
        println!("{body}");
        return;
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let items = |key: &str| -> Vec<serde_json::Value> {
        body.get(key)
            .and_then(|i| i.as_array())
            .cloned()
            .unwrap_or_default()
    };
    match command {
        ReadCommand::Transaction { .. } => {
            println!(
                "transaction {}  {}",
                text(&body["transaction_id"]),
                text(&body["reference"])
            );
            for (i, leg) in items("legs").iter().enumerate() {
                println!(
                    "  leg {i:<2} {} -> {} {:>14} {}",
                    text(&leg["from"]),
                    text(&leg["to"]),
                    text(&leg["amount"]),
                    text(&leg["currency"])
                );
            }
        }
        ReadCommand::Statement { account_id, .. } => {
            println!(
                "statement of {account_id} ({}) from {} to {}",
                text(&body["currency"]),
                text(&body["from"]),
                text(&body["to"])
            );
            println!("  opening balance {:>14}", text(&body["opening_balance"]));
            for entry in items("entries") {
                println!(
                    "  {} {:<6} {:>14} -> {:>14}  {}",
                    text(&entry["recorded_at"]),
                    text(&entry["direction"]),
                    text(&entry["amount"]),
                    text(&entry["balance_after"]),
                    text(&entry["reference"])
                );
            }
            println!("  closing balance {:>14}", text(&body["closing_balance"]));
        }
        ReadCommand::Holds { .. } | ReadCommand::Hold { .. } => {
            let mut holds = items("items");
            if holds.is_empty() && body.get("hold_id").is_some() {
                holds.push(body.clone());
            }
            for hold in holds {
                println!(
                    "{} {:<9} {} {:>14} {}  captured {}  expires {}",
                    text(&hold["hold_id"]),
                    text(&hold["status"]),
                    text(&hold["account_id"]),
                    text(&hold["amount"]),
                    text(&hold["currency"]),
                    text(&hold["captured_amount"]),
                    text(&hold["expires_at"])
                );
            }
        }
        ReadCommand::SystemAccounts => {
            for account in items("items") {
                // Balances are strings: a system account's sum may pass i64.
                println!(
                    "{:<24} {:>20}",
                    text(&account["account"]),
                    text(&account["balance"])
                );
            }
        }
    }
    if let Some(next) = body.get("next_cursor").and_then(|c| c.as_str()) {
        println!("more: --cursor {next}");
    }
}
