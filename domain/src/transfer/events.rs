//! Transfer events: the facts of a transfer's life, stored in `events` and published on
//! `tally.evt.transfer.<id>`.

use cqrs_es::DomainEvent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const TRANSFER_EVENT_VERSION: &str = "1.0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TransferRequested {
    pub transfer_id: Uuid,
    pub from: String,
    pub to: String,
    /// Minor units.
    pub amount: i64,
    /// Both accounts' currency, checked when requested.
    pub currency: String,
    pub reference: String,
    /// Settled in the same write as this request: the debit, the credit and the settle (or,
    /// on a refusal, the failure) were committed with it, so no step follows. Absent (false)
    /// on a transfer the process manager settles step by step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_once: bool,
}

/// The source account was debited. Step events name both accounts, so a consumer (the process
/// manager) knows where the next step goes without reading the transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DebitRecorded {
    pub from: String,
    pub to: String,
}

/// The destination account was credited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreditRecorded {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TransferCompleted {}

/// The destination refused the credit: the transfer will fail once the source is refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreditFailed {
    pub from: String,
    pub to: String,
    /// The error code the destination account refused with (e.g. `account_closed`).
    pub code: String,
    pub reason: String,
}

/// The debit was given back to the source account after the credit failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RefundRecorded {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TransferFailed {
    /// The error code of the step that was refused (e.g. `insufficient_funds`).
    pub code: String,
    pub reason: String,
}

/// Event type names as stored in `events.event_type`.
pub const TRANSFER_EVENT_TYPES: [&str; 7] = [
    "TransferRequested",
    "DebitRecorded",
    "CreditRecorded",
    "TransferCompleted",
    "CreditFailed",
    "RefundRecorded",
    "TransferFailed",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TransferEvent {
    TransferRequested(TransferRequested),
    DebitRecorded(DebitRecorded),
    CreditRecorded(CreditRecorded),
    TransferCompleted(TransferCompleted),
    CreditFailed(CreditFailed),
    RefundRecorded(RefundRecorded),
    TransferFailed(TransferFailed),
}

impl DomainEvent for TransferEvent {
    fn event_type(&self) -> String {
        match self {
            TransferEvent::TransferRequested(_) => "TransferRequested",
            TransferEvent::DebitRecorded(_) => "DebitRecorded",
            TransferEvent::CreditRecorded(_) => "CreditRecorded",
            TransferEvent::TransferCompleted(_) => "TransferCompleted",
            TransferEvent::CreditFailed(_) => "CreditFailed",
            TransferEvent::RefundRecorded(_) => "RefundRecorded",
            TransferEvent::TransferFailed(_) => "TransferFailed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        TRANSFER_EVENT_VERSION.to_owned()
    }
}
