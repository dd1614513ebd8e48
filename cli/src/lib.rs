//! `tally`: the command-line client. Sends commands over NATS exactly as any client would
//! (subjects, headers and replies of docs/subjects.md) and prints the reply.
//!
//! Reads (`show`, `list`, `entries`, `read …`) go to the query-service over HTTP.
//!
//! Exit status: 0 accepted (or read), 1 rejected (or the read failed), 2 could not get an answer.
//!
//! A library plus a tiny main (`src/main.rs`), so that `cargo xtask docs` can read the
//! `clap` definition ([`command`]) and generate the CLI's settings table.

mod account;
mod audit;
mod batch;
mod database;
mod dlq;
mod ledger;
mod output;
mod progress;
mod projections;
mod read;
mod send;
mod token;
mod transfer;
mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tally",
    version,
    about = "Send commands to Tally and read its answers"
)]
pub struct Cli {
    #[command(flatten)]
    connection: send::Connection,
    #[command(flatten)]
    http: read::Http,
    /// Print the raw JSON reply instead of a sentence.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Account commands: open, deposit, withdraw, freeze, unfreeze, close, set-limits, watch.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Transfers between accounts: send, show, list.
    #[command(subcommand)]
    Transfer(transfer::TransferCommand),
    /// Multi-leg transactions: post (all or nothing, up to 64 legs).
    #[command(subcommand)]
    Transaction(ledger::TransactionCommand),
    /// Holds: place, capture (in full or in part), void.
    #[command(subcommand)]
    Hold(ledger::HoldCommand),
    /// Batches: submit up to 1,000 commands in one message.
    #[command(subcommand)]
    Batch(batch::BatchCommand),
    /// Ledger reads over HTTP: transaction, statement, holds, hold, system-accounts.
    #[command(subcommand)]
    Read(read::ReadCommand),
    /// Dead letters: list, retry or drop events a projection could not apply.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Audits: verify the hash chains and derived state, take digests, export history.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Projections: status and lag, zero-downtime rebuilds.
    #[command(subcommand)]
    Projections(projections::ProjectionsCommand),
    /// Tokens: mint a development token (HS256).
    #[command(subcommand)]
    Token(token::TokenCommand),
}

/// The CLI's `clap` definition: its flags, environment variables and subcommands.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Exit status of an operator command: 0 all well, 1 something found or refused, 2 failed.
fn operator_exit(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs one command line; the exit status is the module's (0, 1 or 2).
pub async fn run(cli: Cli) -> ExitCode {
    let request = match cli.command {
        Command::Account(command) => command.into_request(),
        Command::Transfer(command) => {
            return transfer::run(command, &cli.connection, &cli.http, cli.json).await;
        }
        Command::Transaction(command) => match command.into_command() {
            Ok(outgoing) => return send_one(&cli.connection, cli.json, outgoing).await,
            Err(error) => {
                eprintln!("error: {error:#}");
                return ExitCode::from(2);
            }
        },
        Command::Hold(command) => {
            return send_one(&cli.connection, cli.json, command.into_command()).await;
        }
        Command::Batch(command) => return batch::run(command, &cli.connection, cli.json).await,
        Command::Read(command) => {
            let (path, token) = command.path();
            return match read::get(&cli.http, &path, token.as_deref(), &cli.connection).await {
                Ok(body) => {
                    read::print_ledger(&command, &body, cli.json);
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Dlq(command) => return operator_exit(dlq::run(command, cli.json).await),
        Command::Audit(command) => {
            return operator_exit(audit::run(command, &cli.connection, &cli.http, cli.json).await);
        }
        Command::Token(command) => return operator_exit(token::run(command)),
        Command::Projections(command) => {
            return operator_exit(projections::run(command, &cli.connection, cli.json).await);
        }
    };
    match request {
        account::Request::Command(name, body, options) => {
            match send::send(&cli.connection, "account", name, &body, &options).await {
                Ok(reply) => output::print(&reply, cli.json),
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(2)
                }
            }
        }
        account::Request::Watch(watch) => {
            match watch::run(watch, &cli.http, &cli.connection, cli.json).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(1)
                }
            }
        }
        account::Request::Read(path, token) => {
            match read::get(&cli.http, &path, token.as_deref(), &cli.connection).await {
                Ok(body) => output::print_read(&body, cli.json),
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Sends one command and prints its reply (exit 0 accepted, 1 rejected, 2 no answer).
async fn send_one(
    connection: &send::Connection,
    json: bool,
    (aggregate, name, body, options): ledger::Outgoing,
) -> ExitCode {
    match send::send(connection, aggregate, name, &body, &options).await {
        Ok(reply) => output::print(&reply, json),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
