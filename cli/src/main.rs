//! `tally`: the command-line client. Sends commands over NATS exactly as any client would
//! (subjects, headers and replies of README.md) and prints the reply.
//!
//! Exit status: 0 accepted, 1 rejected, 2 could not get an answer.

mod account;
mod output;
mod send;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Send commands to Tally and read its answers"
)]
struct Cli {
    #[command(flatten)]
    connection: send::Connection,
    /// Print the raw JSON reply instead of a sentence.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Account commands: open, deposit, withdraw, freeze, unfreeze, close.
    #[command(subcommand)]
    Account(account::AccountCommand),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (name, body, options) = match cli.command {
        Command::Account(command) => command.into_request(),
    };
    match send::send(&cli.connection, "account", name, &body, &options).await {
        Ok(reply) => output::print(&reply, cli.json),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
