//! `tally account ...`: one subcommand per account command, each building the JSON body of
//! `schemas/commands/account.<name>.json`.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::send::SendOptions;

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Open an account.
    Open {
        #[command(flatten)]
        target: Target,
        /// Who owns it.
        #[arg(long)]
        owner: String,
        /// ISO 4217 code, e.g. EUR.
        #[arg(long)]
        currency: String,
        #[command(flatten)]
        options: SendOptions,
    },
    /// Add money (minor units: 1050 is 10.50).
    Deposit {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        amount: i64,
        #[arg(long, default_value = "")]
        reference: String,
        #[command(flatten)]
        options: SendOptions,
    },
    /// Take money out (minor units).
    Withdraw {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        amount: i64,
        #[arg(long, default_value = "")]
        reference: String,
        #[command(flatten)]
        options: SendOptions,
    },
    /// Stop withdrawals until unfrozen.
    Freeze {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        options: SendOptions,
    },
    /// Lift a freeze.
    Unfreeze {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        options: SendOptions,
    },
    /// Close for good (balance must be zero).
    Close {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        options: SendOptions,
    },
}

#[derive(Debug, Args)]
pub struct Target {
    /// The account id.
    #[arg(long = "id")]
    pub account_id: String,
}

impl AccountCommand {
    /// (command name, JSON body, send options).
    pub fn into_request(self) -> (&'static str, Value, SendOptions) {
        match self {
            AccountCommand::Open {
                target,
                owner,
                currency,
                options,
            } => (
                "open",
                json!({"account_id": target.account_id, "owner": owner, "currency": currency}),
                options,
            ),
            AccountCommand::Deposit {
                target,
                amount,
                reference,
                options,
            } => (
                "deposit",
                json!({"account_id": target.account_id, "amount": amount, "reference": reference}),
                options,
            ),
            AccountCommand::Withdraw {
                target,
                amount,
                reference,
                options,
            } => (
                "withdraw",
                json!({"account_id": target.account_id, "amount": amount, "reference": reference}),
                options,
            ),
            AccountCommand::Freeze {
                target,
                reason,
                options,
            } => (
                "freeze",
                json!({"account_id": target.account_id, "reason": reason}),
                options,
            ),
            AccountCommand::Unfreeze { target, options } => (
                "unfreeze",
                json!({"account_id": target.account_id}),
                options,
            ),
            AccountCommand::Close { target, options } => {
                ("close", json!({"account_id": target.account_id}), options)
            }
        }
    }
}
