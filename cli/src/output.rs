//! Printing a reply for people (a sentence) or for scripts (`--json`).

use std::process::ExitCode;

use domain::CommandReply;

#[allow(clippy::print_stdout)] // printing the answer is this tool's job
pub fn print(reply: &CommandReply, json: bool) -> ExitCode {
    if json {
        println!("{}", serde_json::to_string(reply).unwrap_or_default());
    } else {
        match reply {
            CommandReply::Accepted {
                command_id,
                aggregate_id,
                version,
                ..
            } => {
                println!("accepted: {aggregate_id} is at version {version} (command {command_id})")
            }
            CommandReply::Rejected { command_id, error } => {
                println!(
                    "rejected: {} — {} (command {command_id})",
                    error.code, error.message
                )
            }
        }
    }
    match reply {
        CommandReply::Accepted { .. } => ExitCode::SUCCESS,
        CommandReply::Rejected { .. } => ExitCode::from(1),
    }
}

/// Prints a read: JSON as is with `--json`, otherwise one line per account or entry.
#[allow(clippy::print_stdout)]
pub fn print_read(body: &serde_json::Value, json: bool) -> ExitCode {
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    let items: Vec<&serde_json::Value> = match body.get("items").and_then(|i| i.as_array()) {
        Some(items) => items.iter().collect(),
        None => vec![body],
    };
    for item in items {
        if item.get("direction").is_some() {
            println!(
                "#{:<5} {:<6} {:>14} -> balance {:>14}  {}",
                item["sequence"],
                item["direction"].as_str().unwrap_or(""),
                item["amount"],
                item["balance_after"],
                item["reference"].as_str().unwrap_or("")
            );
        } else {
            println!(
                "{:<24} {:<10} {} {:>14}  owner {}  version {}",
                item["account_id"].as_str().unwrap_or(""),
                item["status"].as_str().unwrap_or(""),
                item["currency"].as_str().unwrap_or(""),
                item["balance"],
                item["owner"].as_str().unwrap_or(""),
                item["version"]
            );
        }
    }
    if let Some(next) = body.get("next_cursor").and_then(|c| c.as_str()) {
        println!("more: --cursor {next}");
    }
    ExitCode::SUCCESS
}
