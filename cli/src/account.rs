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
        /// How the money arrived: unspecified, cash, card or bank_transfer.
        #[arg(long, default_value = "unspecified")]
        channel: String,
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
    /// Set the account's overdraft limit and maximum balance (scope `admin`; the reason is
    /// recorded).
    SetLimits {
        #[command(flatten)]
        target: Target,
        /// How far below zero the available balance may go, in minor units (0: not at all).
        #[arg(long = "overdraft-limit", default_value_t = 0)]
        overdraft_limit: i64,
        /// The highest posted balance the account may reach, in minor units; none when absent.
        #[arg(long = "max-balance")]
        max_balance: Option<i64>,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        options: SendOptions,
    },
    /// Show one account (HTTP).
    Show {
        #[command(flatten)]
        target: Target,
        /// Wait until this write (a reply's consistency_token) is visible.
        #[arg(long = "after")]
        consistency_token: Option<String>,
    },
    /// List accounts (HTTP), filtered and paginated.
    List {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        currency: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// From a previous page's `next_cursor`.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Follow an account's changes as they are applied (HTTP change feed); reconnects where
    /// it left off.
    Watch {
        #[command(flatten)]
        target: Target,
        /// Resume after this change: an event id, or a command reply's consistency token.
        #[arg(long)]
        after: Option<String>,
        /// Stop after this many changes (default: follow until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// An account's money movements (HTTP).
    Entries {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// What a subcommand asks for: a command over NATS, or a read over HTTP.
#[derive(Debug)]
pub enum Request {
    Command(&'static str, Value, SendOptions),
    /// A path and query under the API's base URL, and an optional consistency token.
    Read(String, Option<String>),
    /// The account's change feed.
    Watch(crate::watch::Watch),
}

#[derive(Debug, Args)]
pub struct Target {
    /// The account id.
    #[arg(long = "id")]
    pub account_id: String,
}

impl AccountCommand {
    pub fn into_request(self) -> Request {
        let (name, body, options) = match self {
            AccountCommand::Show {
                target,
                consistency_token,
            } => {
                return Request::Read(
                    format!("/v1/accounts/{}", target.account_id),
                    consistency_token,
                );
            }
            AccountCommand::List {
                owner,
                status,
                currency,
                limit,
                cursor,
            } => {
                let mut query = vec![format!("limit={limit}")];
                for (key, value) in [
                    ("owner", owner),
                    ("status", status),
                    ("currency", currency),
                    ("cursor", cursor),
                ] {
                    if let Some(value) = value {
                        query.push(format!("{key}={}", encode(&value)));
                    }
                }
                return Request::Read(format!("/v1/accounts?{}", query.join("&")), None);
            }
            AccountCommand::Watch {
                target,
                after,
                count,
            } => {
                return Request::Watch(crate::watch::Watch {
                    account_id: target.account_id,
                    after,
                    count,
                });
            }
            AccountCommand::Entries {
                target,
                limit,
                cursor,
            } => {
                let mut path = format!("/v1/accounts/{}/entries?limit={limit}", target.account_id);
                if let Some(cursor) = cursor {
                    path.push_str(&format!("&cursor={}", encode(&cursor)));
                }
                return Request::Read(path, None);
            }
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
                channel,
                options,
            } => (
                "deposit",
                json!({"account_id": target.account_id, "amount": amount, "reference": reference, "channel": channel}),
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
            AccountCommand::SetLimits {
                target,
                overdraft_limit,
                max_balance,
                reason,
                options,
            } => {
                let mut body = json!({
                    "account_id": target.account_id,
                    "overdraft_limit": overdraft_limit,
                    "reason": reason,
                });
                if let Some(max) = max_balance {
                    body["max_balance"] = json!(max);
                }
                ("set_limits", body, options)
            }
            AccountCommand::Close { target, options } => {
                ("close", json!({"account_id": target.account_id}), options)
            }
        };
        Request::Command(name, body, options)
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(crate) fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
