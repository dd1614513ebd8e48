//! `tally batch submit --file commands.json [--atomic]`: up to 1,000 commands in one message
//! (`<prefix>.cmd.batch.submit`), each with its own command id and its own reply.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use domain::CommandReply;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::send::{self, Connection, SendOptions};

/// Most commands in one batch (the command-service refuses more).
pub const BATCH_COMMANDS_MAX: usize = domain::batch::BATCH_COMMANDS_MAX;
/// Largest batch file read: the command-service's body limit for a batch.
const FILE_BYTES_MAX: u64 = domain::batch::BATCH_BODY_MAX_BYTES as u64;

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Send the commands of a JSON file in one message and print one line per reply.
    /// Exit status: 0 all accepted, 1 any refused, 2 no answer.
    Submit {
        /// A JSON array of `{"command": "account.deposit", "body": {...}}` (a `command_id` per
        /// item is optional: one is generated), or `{"commands": [...]}`.
        #[arg(long)]
        file: PathBuf,
        /// All or nothing: if one command is refused, none is written.
        #[arg(long)]
        atomic: bool,
        #[command(flatten)]
        options: SendOptions,
    },
}

pub async fn run(command: BatchCommand, connection: &Connection, json_output: bool) -> ExitCode {
    let BatchCommand::Submit {
        file,
        atomic,
        options,
    } = command;
    let body = match read_batch(&file, atomic) {
        Ok(body) => body,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    let answer = match send::request(connection, "batch", "submit", &body, &options).await {
        Ok(answer) => answer,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    print(&answer, json_output)
}

/// The batch body: the file's commands, each given a command id if it has none.
pub fn read_batch(file: &std::path::Path, atomic: bool) -> anyhow::Result<Value> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    if size > FILE_BYTES_MAX {
        bail!(
            "{} is {size} bytes; a batch is at most {FILE_BYTES_MAX}",
            file.display()
        );
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let parsed: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    batch_body(parsed, atomic)
}

fn batch_body(parsed: Value, atomic: bool) -> anyhow::Result<Value> {
    let mut commands = match parsed {
        Value::Array(items) => items,
        Value::Object(mut object) => match object.remove("commands") {
            Some(Value::Array(items)) => items,
            _ => bail!("expected an array of commands or {{\"commands\": [...]}}"),
        },
        _ => bail!("expected an array of commands or {{\"commands\": [...]}}"),
    };
    if commands.is_empty() || commands.len() > BATCH_COMMANDS_MAX {
        bail!(
            "a batch has 1 to {BATCH_COMMANDS_MAX} commands, this one {}",
            commands.len()
        );
    }
    for (index, item) in commands.iter_mut().enumerate() {
        let Some(object) = item.as_object_mut() else {
            bail!("command {index} is not an object");
        };
        if !object.get("command").is_some_and(Value::is_string) {
            bail!("command {index} has no \"command\" (e.g. \"account.deposit\")");
        }
        object
            .entry("command_id")
            .or_insert_with(|| json!(Uuid::now_v7()));
    }
    Ok(json!({"atomic": atomic, "commands": commands}))
}

/// One line per reply (or the whole answer with `--json`); a refusal of the batch itself is
/// one command reply.
#[allow(clippy::print_stdout)] // printing the answer is this tool's job
fn print(answer: &[u8], json_output: bool) -> ExitCode {
    let parsed: Value = match serde_json::from_slice(answer) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("error: the answer is not JSON: {error}");
            return ExitCode::from(2);
        }
    };
    let Some(results) = parsed.get("results").and_then(Value::as_array) else {
        return match serde_json::from_value::<CommandReply>(parsed) {
            Ok(reply) => crate::output::print(&reply, json_output),
            Err(error) => {
                eprintln!("error: the answer is neither a batch's results nor a reply: {error}");
                ExitCode::from(2)
            }
        };
    };
    if json_output {
        println!("{parsed}");
    }
    let mut refused = 0_usize;
    for (index, result) in results.iter().enumerate() {
        let reply: Option<CommandReply> = serde_json::from_value(result.clone()).ok();
        if !matches!(reply, Some(CommandReply::Accepted { .. })) {
            refused += 1;
        }
        if json_output {
            continue;
        }
        match reply {
            Some(CommandReply::Accepted {
                aggregate_id,
                version,
                ..
            }) => println!("{index:>4} accepted: {aggregate_id} is at version {version}"),
            Some(CommandReply::Rejected { error, .. }) => {
                println!("{index:>4} rejected: {} — {}", error.code, error.message)
            }
            None => println!("{index:>4} unreadable: {result}"),
        }
    }
    if !json_output {
        println!("{} of {} accepted", results.len() - refused, results.len());
    }
    if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn items_get_command_ids_and_bounds_are_kept() {
        let body = batch_body(
            json!([{"command": "account.deposit", "body": {"account_id": "a", "amount": 1}}]),
            true,
        )
        .unwrap();
        assert_eq!(body["atomic"], true);
        assert!(body["commands"][0]["command_id"].is_string());
        let kept = batch_body(
            json!({"commands": [{"command": "account.deposit", "command_id": "x", "body": {}}]}),
            false,
        )
        .unwrap();
        assert_eq!(kept["commands"][0]["command_id"], "x");
        assert!(batch_body(json!([]), false).is_err());
        assert!(batch_body(json!([{"body": {}}]), false).is_err());
        let too_many: Vec<Value> = (0..=BATCH_COMMANDS_MAX)
            .map(|_| json!({"command": "account.deposit", "body": {}}))
            .collect();
        assert!(batch_body(Value::Array(too_many), false).is_err());
    }
}
