//! The JSON Schemas (2020-12) of every wire type, generated from the Rust types.
//!
//! `cargo xtask schemas` writes them under `schemas/`; a test fails when the checked-in files
//! differ from what this module generates, so clients never read a stale contract.

use schemars::{JsonSchema, generate::SchemaSettings};

use crate::account::{
    AccountClosed, AccountFrozen, AccountOpened, AccountUnfrozen, Close, Deposit, Freeze,
    FundsHeld, FundsReleased, LegsPosted, LimitsSet, MoneyDeposited, MoneyWithdrawn, OpenAccount,
    SetLimits, TransferCredited, TransferDebited, TransferRefunded, TransferSettled, TransferStep,
    Unfreeze, Withdraw,
};
use crate::batch::SubmitBatch;
use crate::envelope::EventMessage;
use crate::ledger::hold::{HoldCaptured, HoldExpired, HoldPlaced, HoldVoided};
use crate::ledger::{CaptureHold, PlaceHold, PostTransaction, TransactionPosted, VoidHold};
use crate::metadata::EventMetadata;
use crate::reply::CommandReply;
use crate::transfer::{
    CreditFailed, CreditRecorded, DebitRecorded, FailTransfer, RecordStep, RefundRecorded,
    RequestTransfer, TransferCompleted, TransferFailed, TransferRequested,
};

/// One generated schema file: its path under `schemas/` and its exact contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFile {
    pub path: String,
    pub contents: String,
}

fn render<T: JsonSchema>(path: &str) -> SchemaFile {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<T>();
    schema.insert(
        "$id".into(),
        format!("https://tally.dev/schemas/{path}").into(),
    );
    // Serializing a schema (a JSON value) cannot fail.
    let mut contents = serde_json::to_string_pretty(&schema).unwrap_or_default();
    contents.push('\n');
    SchemaFile {
        path: path.to_owned(),
        contents,
    }
}

/// The schema a command body must match, by aggregate and command name.
pub fn command_schema_path(aggregate: &str, command: &str) -> String {
    format!("commands/{aggregate}.{command}.json")
}

/// Every schema file, in a stable order.
pub fn all() -> Vec<SchemaFile> {
    vec![
        render::<OpenAccount>(&command_schema_path("account", "open")),
        render::<Deposit>(&command_schema_path("account", "deposit")),
        render::<Withdraw>(&command_schema_path("account", "withdraw")),
        render::<Freeze>(&command_schema_path("account", "freeze")),
        render::<Unfreeze>(&command_schema_path("account", "unfreeze")),
        render::<Close>(&command_schema_path("account", "close")),
        render::<SetLimits>(&command_schema_path("account", "set_limits")),
        render::<PostTransaction>(&command_schema_path("transaction", "post")),
        render::<PlaceHold>(&command_schema_path("hold", "place")),
        render::<CaptureHold>(&command_schema_path("hold", "capture")),
        render::<VoidHold>(&command_schema_path("hold", "void")),
        render::<VoidHold>(&command_schema_path("hold", "expire")),
        render::<SubmitBatch>(&command_schema_path("batch", "submit")),
        render::<TransferStep>(&command_schema_path("account", "debit")),
        render::<TransferStep>(&command_schema_path("account", "credit")),
        render::<TransferStep>(&command_schema_path("account", "refund")),
        render::<TransferStep>(&command_schema_path("account", "settle")),
        render::<RequestTransfer>(&command_schema_path("transfer", "request")),
        render::<RecordStep>(&command_schema_path("transfer", "record_debit")),
        render::<RecordStep>(&command_schema_path("transfer", "record_credit")),
        render::<RecordStep>(&command_schema_path("transfer", "complete")),
        render::<FailTransfer>(&command_schema_path("transfer", "fail")),
        render::<RecordStep>(&command_schema_path("transfer", "record_refund")),
        render::<AccountOpened>("events/account.AccountOpened.v1.json"),
        // Kept: rows written before 2.0 still hold this shape.
        render::<crate::account::upcast::MoneyDepositedV1>("events/account.MoneyDeposited.v1.json"),
        render::<MoneyDeposited>("events/account.MoneyDeposited.v2.json"),
        render::<MoneyWithdrawn>("events/account.MoneyWithdrawn.v1.json"),
        render::<AccountFrozen>("events/account.AccountFrozen.v1.json"),
        render::<AccountUnfrozen>("events/account.AccountUnfrozen.v1.json"),
        render::<AccountClosed>("events/account.AccountClosed.v1.json"),
        render::<TransferDebited>("events/account.TransferDebited.v1.json"),
        render::<TransferCredited>("events/account.TransferCredited.v1.json"),
        render::<TransferRefunded>("events/account.TransferRefunded.v1.json"),
        render::<TransferSettled>("events/account.TransferSettled.v1.json"),
        render::<LegsPosted>("events/account.LegsPosted.v1.json"),
        render::<FundsHeld>("events/account.FundsHeld.v1.json"),
        render::<FundsReleased>("events/account.FundsReleased.v1.json"),
        render::<LimitsSet>("events/account.LimitsSet.v1.json"),
        render::<TransactionPosted>("events/transaction.TransactionPosted.v1.json"),
        render::<HoldPlaced>("events/hold.HoldPlaced.v1.json"),
        render::<HoldCaptured>("events/hold.HoldCaptured.v1.json"),
        render::<HoldVoided>("events/hold.HoldVoided.v1.json"),
        render::<HoldExpired>("events/hold.HoldExpired.v1.json"),
        render::<TransferRequested>("events/transfer.TransferRequested.v1.json"),
        render::<DebitRecorded>("events/transfer.DebitRecorded.v1.json"),
        render::<CreditRecorded>("events/transfer.CreditRecorded.v1.json"),
        render::<TransferCompleted>("events/transfer.TransferCompleted.v1.json"),
        render::<CreditFailed>("events/transfer.CreditFailed.v1.json"),
        render::<RefundRecorded>("events/transfer.RefundRecorded.v1.json"),
        render::<TransferFailed>("events/transfer.TransferFailed.v1.json"),
        render::<EventMetadata>("events/metadata.v1.json"),
        render::<EventMessage>("events/envelope.v1.json"),
        render::<CommandReply>("replies/command-reply.json"),
        render::<crate::batch::BatchReply>("replies/batch-reply.json"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_and_event_has_a_schema() {
        let files = all();
        for name in crate::account::ACCOUNT_COMMAND_NAMES {
            let path = command_schema_path("account", name);
            assert!(files.iter().any(|f| f.path == path), "{path} missing");
        }
        for event in crate::account::ACCOUNT_EVENT_TYPES {
            let major = if event == "MoneyDeposited" { 2 } else { 1 };
            let path = format!("events/account.{event}.v{major}.json");
            assert!(files.iter().any(|f| f.path == path), "{path} missing");
        }
        for name in crate::transfer::TRANSFER_COMMAND_NAMES {
            let path = command_schema_path("transfer", name);
            assert!(files.iter().any(|f| f.path == path), "{path} missing");
        }
        for name in crate::ledger::HOLD_COMMAND_NAMES {
            let path = command_schema_path("hold", name);
            assert!(files.iter().any(|f| f.path == path), "{path} missing");
        }
        for event in crate::ledger::HOLD_EVENT_TYPES {
            let path = format!("events/hold.{event}.v1.json");
            assert!(files.iter().any(|f| f.path == path), "{path} missing");
        }
        for event in crate::transfer::TRANSFER_EVENT_TYPES {
            let path = format!("events/transfer.{event}.v1.json");
            assert!(files.iter().any(|f| f.path == path), "{path} missing");
        }
    }

    #[test]
    fn schemas_are_draft_2020_12_and_carry_limits() {
        let deposit = all()
            .into_iter()
            .find(|f| f.path == "commands/account.deposit.json")
            .map(|f| f.contents)
            .unwrap_or_default();
        let value: serde_json::Value = serde_json::from_str(&deposit).unwrap_or_default();
        assert_eq!(
            value["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(value["properties"]["amount"]["minimum"], 1);
        assert_eq!(
            value["properties"]["amount"]["maximum"],
            crate::AMOUNT_MAX_MINOR
        );
        assert_eq!(value["additionalProperties"], false);
    }
}
