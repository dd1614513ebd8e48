//! `tally transfer send|show|list`: move money between two accounts and follow it.

use std::process::ExitCode;

use clap::Subcommand;
use domain::CommandReply;
use serde_json::json;
use uuid::Uuid;

use crate::read::{self, Http};
use crate::send::{self, Connection, SendOptions};

#[derive(Debug, Subcommand)]
pub enum TransferCommand {
    /// Request a transfer and (unless --no-wait) wait until it completed or failed.
    /// Exit status: 0 completed, 1 refused or failed, 2 no answer.
    Send {
        /// The source account.
        #[arg(long)]
        from: String,
        /// The destination account (same currency).
        #[arg(long)]
        to: String,
        /// Minor units (1050 is 10.50).
        #[arg(long)]
        amount: i64,
        #[arg(long, default_value = "")]
        reference: String,
        /// The transfer's id (its idempotency key); a new one by default.
        #[arg(long = "transfer-id")]
        transfer_id: Option<Uuid>,
        /// Return once the request is accepted, without waiting for the outcome.
        #[arg(long = "no-wait")]
        no_wait: bool,
        #[command(flatten)]
        options: SendOptions,
    },
    /// Show one transfer (HTTP).
    Show {
        transfer_id: Uuid,
        /// Wait until this write (a reply's consistency_token) is visible.
        #[arg(long = "after")]
        consistency_token: Option<String>,
    },
    /// An account's transfers, both ways (HTTP).
    List {
        /// The account id.
        #[arg(long = "id")]
        account_id: String,
        /// `in` or `out`; both when absent.
        #[arg(long)]
        direction: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
    },
}

pub async fn run(
    command: TransferCommand,
    connection: &Connection,
    http: &Http,
    json_output: bool,
) -> ExitCode {
    let (path, token) = match command {
        TransferCommand::Send {
            from,
            to,
            amount,
            reference,
            transfer_id,
            no_wait,
            options,
        } => {
            let id = transfer_id.unwrap_or_else(Uuid::now_v7);
            let body = json!({"transfer_id": id, "from": from, "to": to, "amount": amount, "reference": reference});
            let reply = match send::send(connection, "transfer", "request", &body, &options).await {
                Ok(reply) => reply,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    return ExitCode::from(2);
                }
            };
            let CommandReply::Accepted {
                consistency_token, ..
            } = &reply
            else {
                return crate::output::print(&reply, json_output);
            };
            if no_wait {
                if !json_output {
                    eprintln!("transfer {id} requested; follow it with `tally transfer show {id}`");
                }
                return crate::output::print(&reply, json_output);
            }
            (
                format!("/v1/transfers/{id}"),
                Some(consistency_token.clone()),
            )
        }
        TransferCommand::Show {
            transfer_id,
            consistency_token,
        } => (format!("/v1/transfers/{transfer_id}"), consistency_token),
        TransferCommand::List {
            account_id,
            direction,
            limit,
            cursor,
        } => {
            let mut path = format!("/v1/accounts/{account_id}/transfers?limit={limit}");
            for (key, value) in [("direction", direction), ("cursor", cursor)] {
                if let Some(value) = value {
                    path.push_str(&format!("&{key}={}", crate::account::encode(&value)));
                }
            }
            (path, None)
        }
    };
    match read::get(http, &path, token.as_deref(), connection).await {
        Ok(body) => print(&body, json_output),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// One line per transfer; a failed transfer (or a failed page) exits 1 when it is a single one.
#[allow(clippy::print_stdout)] // printing the answer is this tool's job
fn print(body: &serde_json::Value, json_output: bool) -> ExitCode {
    let single = body.get("items").is_none();
    if json_output {
        println!("{body}");
    } else {
        let items: Vec<&serde_json::Value> = match body.get("items").and_then(|i| i.as_array()) {
            Some(items) => items.iter().collect(),
            None => vec![body],
        };
        for t in items {
            let failure = t["failure_code"]
                .as_str()
                .map(|code| format!("  ({code}: {})", t["failure_reason"].as_str().unwrap_or("")))
                .unwrap_or_default();
            println!(
                "{} {:<10} {} -> {} {:>14} {}{failure}",
                t["transfer_id"].as_str().unwrap_or(""),
                t["status"].as_str().unwrap_or(""),
                t["from"].as_str().unwrap_or(""),
                t["to"].as_str().unwrap_or(""),
                t["amount"],
                t["currency"].as_str().unwrap_or(""),
            );
        }
        if let Some(next) = body.get("next_cursor").and_then(|c| c.as_str()) {
            println!("more: --cursor {next}");
        }
    }
    if single && body["status"] == "failed" {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
