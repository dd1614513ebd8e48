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
