//! `tally transaction post` and `tally hold place|capture|void`: the double-entry commands,
//! each building the JSON body of `schemas/commands/<aggregate>.<name>.json`.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::send::SendOptions;

/// Most `--metadata` entries, as the domain allows (`validate::METADATA_ENTRIES_MAX`); more
/// are refused here rather than sent to be refused.
const METADATA_ENTRIES_MAX: usize = domain::validate::METADATA_ENTRIES_MAX;

#[derive(Debug, Subcommand)]
pub enum TransactionCommand {
    /// Post a transaction of up to 64 legs, all or nothing.
    Post {
        /// The transaction's id (a UUID, its idempotency key); a new one by default.
        #[arg(long = "id")]
        transaction_id: Option<Uuid>,
        /// A leg, repeatable: `from:to:amount:CUR` (amount in minor units). System accounts
        /// are written as they are named: `@world:EUR:alice:1000:EUR` deposits 10.00.
        #[arg(long = "leg", required = true)]
        legs: Vec<String>,
        #[arg(long, default_value = "")]
        reference: String,
        /// `key=value`, repeatable (at most 16).
        #[arg(long = "metadata")]
        metadata: Vec<String>,
        #[command(flatten)]
        options: SendOptions,
    },
}

#[derive(Debug, Subcommand)]
pub enum HoldCommand {
    /// Reserve funds on an account.
    Place {
        /// The hold's id (a UUID); a new one by default.
        #[arg(long = "hold-id")]
        hold_id: Option<Uuid>,
        /// The account the funds are reserved on.
        #[arg(long = "account")]
        account_id: String,
        /// Minor units.
        #[arg(long)]
        amount: i64,
        /// When the hold lapses by itself (RFC 3339, in the future).
        #[arg(long = "expires-at")]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, default_value = "")]
        reference: String,
        #[command(flatten)]
        options: SendOptions,
    },
    /// Turn a hold into a posting to `--to`, in full or (with `--amount`) in part.
    Capture {
        #[arg(long = "hold-id")]
        hold_id: Uuid,
        /// Minor units; the whole hold when absent, the rest released otherwise.
        #[arg(long)]
        amount: Option<i64>,
        /// A client account, or a system account (`@world:EUR`).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        options: SendOptions,
    },
    /// Release a hold.
    Void {
        #[arg(long = "hold-id")]
        hold_id: Uuid,
        #[command(flatten)]
        options: SendOptions,
    },
}

/// A command to send: its aggregate, name, body and options.
pub type Outgoing = (&'static str, &'static str, Value, SendOptions);

impl TransactionCommand {
    pub fn into_command(self) -> anyhow::Result<Outgoing> {
        let TransactionCommand::Post {
            transaction_id,
            legs,
            reference,
            metadata,
            options,
        } = self;
        let legs = legs
            .iter()
            .map(|leg| parse_leg(leg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let body = json!({
            "transaction_id": transaction_id.unwrap_or_else(Uuid::now_v7),
            "legs": legs,
            "reference": reference,
            "metadata": parse_metadata(&metadata)?,
        });
        Ok(("transaction", "post", body, options))
    }
}

impl HoldCommand {
    pub fn into_command(self) -> Outgoing {
        match self {
            HoldCommand::Place {
                hold_id,
                account_id,
                amount,
                expires_at,
                reference,
                options,
            } => {
                let mut body = json!({
                    "hold_id": hold_id.unwrap_or_else(Uuid::now_v7),
                    "account_id": account_id,
                    "amount": amount,
                    "reference": reference,
                });
                if let Some(at) = expires_at {
                    body["expires_at"] = json!(at.to_rfc3339());
                }
                ("hold", "place", body, options)
            }
            HoldCommand::Capture {
                hold_id,
                amount,
                to,
                options,
            } => {
                let mut body = json!({"hold_id": hold_id, "to": to});
                if let Some(amount) = amount {
                    body["amount"] = json!(amount);
                }
                ("hold", "capture", body, options)
            }
            HoldCommand::Void { hold_id, options } => {
                ("hold", "void", json!({"hold_id": hold_id}), options)
            }
        }
    }
}

/// `from:to:amount:CUR`, where `from` and `to` may be system accounts (`@fees:EUR`), whose own
/// `:` takes the token after it.
pub fn parse_leg(text: &str) -> anyhow::Result<Value> {
    let bad = || format!("leg `{text}`: expected from:to:amount:CUR (e.g. alice:bob:1050:EUR)");
    let mut tokens = text.split(':').peekable();
    let mut side = || -> Option<String> {
        let first = tokens.next()?;
        if first.starts_with('@') {
            let currency = tokens.next()?;
            return Some(format!("{first}:{currency}"));
        }
        Some(first.to_owned())
    };
    let (Some(from), Some(to)) = (side(), side()) else {
        bail!(bad());
    };
    let (Some(amount), Some(currency), None) = (tokens.next(), tokens.next(), tokens.next()) else {
        bail!(bad());
    };
    let amount: i64 = amount.parse().with_context(bad)?;
    Ok(json!({"from": from, "to": to, "amount": amount, "currency": currency}))
}

/// `key=value` pairs; a key given twice is refused rather than silently overwritten.
fn parse_metadata(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    if pairs.len() > METADATA_ENTRIES_MAX {
        bail!("at most {METADATA_ENTRIES_MAX} --metadata entries");
    }
    let mut out = BTreeMap::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--metadata `{pair}`: expected key=value"))?;
        if out.insert(key.to_owned(), value.to_owned()).is_some() {
            bail!("--metadata: key `{key}` given twice");
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn legs_parse_with_system_accounts_on_either_side() {
        assert_eq!(
            parse_leg("alice:bob:1050:EUR").unwrap(),
            json!({"from": "alice", "to": "bob", "amount": 1050, "currency": "EUR"})
        );
        assert_eq!(
            parse_leg("@world:EUR:alice:5:EUR").unwrap(),
            json!({"from": "@world:EUR", "to": "alice", "amount": 5, "currency": "EUR"})
        );
        assert_eq!(
            parse_leg("alice:@fees:EUR:5:EUR").unwrap()["to"],
            json!("@fees:EUR")
        );
        for bad in [
            "alice:bob:10",
            "alice:bob:ten:EUR",
            "alice:bob:1:EUR:x",
            "@world",
            "",
        ] {
            assert!(parse_leg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_pairs_parse_and_duplicates_are_refused() {
        let pairs = vec!["order=42".to_owned(), "note=a=b".to_owned()];
        let parsed = parse_metadata(&pairs).unwrap();
        assert_eq!(parsed["note"], "a=b");
        assert!(parse_metadata(&["x".to_owned()]).is_err());
        assert!(parse_metadata(&["k=1".to_owned(), "k=2".to_owned()]).is_err());
    }
}
