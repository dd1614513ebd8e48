//! The Transfer aggregate: one movement of money between two accounts, driven step by step by
//! the process manager (docs/design/transfer-saga.md): requested -> debited -> credited -> completed; or failed,
//! either when the debit is refused (nothing moved) or after the refund when the credit is
//! refused (requested -> debited -> refunding -> failed).
//!
//! Every step is idempotent: recording a step the transfer is already past writes nothing, so
//! a process manager that repeats itself after a crash changes nothing.

mod at_once;
mod commands;
mod error;
mod events;

pub use at_once::{SettledAtOnce, decide_at_once};
pub use commands::{
    AccountFacts, FailTransfer, RecordStep, RequestTransfer, StepsRecorded, TRANSFER_COMMAND_NAMES,
    TransferCommand, TransferFacts,
};
pub use error::TransferError;
pub use events::{
    CreditFailed, CreditRecorded, DebitRecorded, RefundRecorded, TRANSFER_EVENT_TYPES,
    TRANSFER_EVENT_VERSION, TransferCompleted, TransferEvent, TransferFailed, TransferRequested,
};

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::account::AccountStatus;
use crate::error_code::ErrorCode;
use crate::money::Amount;
use crate::validate;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    #[default]
    Unrequested,
    /// Waiting for the debit of the source account.
    Requested,
    /// The source was debited; waiting for the credit of the destination.
    Debited,
    /// The destination was credited; waiting for the source to settle its hold.
    Credited,
    /// The credit could not be made; waiting for the refund of the source.
    Refunding,
    Completed,
    Failed,
}

impl TransferStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Unrequested => "unrequested",
            TransferStatus::Requested => "requested",
            TransferStatus::Debited => "debited",
            TransferStatus::Credited => "credited",
            TransferStatus::Refunding => "refunding",
            TransferStatus::Completed => "completed",
            TransferStatus::Failed => "failed",
        }
    }

    /// Completed or failed: nothing more will happen.
    pub fn is_settled(self) -> bool {
        matches!(self, TransferStatus::Completed | TransferStatus::Failed)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: Option<Uuid>,
    pub from: String,
    pub to: String,
    pub amount: i64,
    pub currency: String,
    pub status: TransferStatus,
    /// The source account was debited (whatever happened next).
    pub debited: bool,
    pub refunded: bool,
    /// Why the transfer failed or is failing: the refused step's error code and message.
    pub failure: Option<(String, String)>,
}

impl Transfer {
    /// Decides which events a command produces, without changing `self`.
    pub fn decide(
        &self,
        command: &TransferCommand,
        facts: &TransferFacts,
    ) -> Result<Vec<TransferEvent>, TransferError> {
        use TransferStatus as S;
        let wrong = |action| TransferError::WrongState {
            status: self.status.as_str(),
            action,
        };
        if self.status == S::Unrequested && !matches!(command, TransferCommand::Request(_)) {
            return Err(TransferError::NotFound);
        }
        let recorded = facts.recorded;
        // A step's outcome is recorded only when the account's own history agrees.
        let unrecorded = |what: &'static str| TransferError::NotRecorded { what };
        match command {
            TransferCommand::Request(c) => {
                validate::aggregate_id("from", &c.from)?;
                validate::aggregate_id("to", &c.to)?;
                validate::optional_text("reference", &c.reference, validate::REFERENCE_LEN_MAX)?;
                let amount = Amount::new(c.amount)?;
                if self.status != S::Unrequested {
                    return Err(TransferError::AlreadyExists);
                }
                if c.from == c.to {
                    return Err(TransferError::SameAccount);
                }
                let from = visible_source(&c.from, facts.from.as_ref(), facts.owner.as_deref())
                    .and_then(|from| live_account(&c.from, from))?;
                let to = live_account(&c.to, facts.to.as_ref())?;
                if from.currency != to.currency {
                    return Err(TransferError::CurrencyMismatch {
                        from: from.currency.clone(),
                        to: to.currency.clone(),
                    });
                }
                Ok(vec![TransferEvent::TransferRequested(TransferRequested {
                    transfer_id: c.transfer_id,
                    from: c.from.clone(),
                    to: c.to.clone(),
                    amount: amount.minor(),
                    currency: from.currency.clone(),
                    reference: c.reference.clone(),
                    at_once: false,
                })])
            }
            TransferCommand::RecordDebit(_) => match self.status {
                S::Requested if !recorded.debited => Err(unrecorded("no debit of the source")),
                S::Requested => Ok(vec![TransferEvent::DebitRecorded(DebitRecorded {
                    from: self.from.clone(),
                    to: self.to.clone(),
                })]),
                _ if self.debited => Ok(vec![]),
                // Failed before any debit: a late debit is a bug in the caller, refused rather
                // than recorded (the account refuses it too).
                _ => Err(wrong("record a debit")),
            },
            TransferCommand::RecordCredit(_) => match self.status {
                S::Debited if !recorded.credited => Err(unrecorded("no credit of the destination")),
                S::Debited => Ok(vec![TransferEvent::CreditRecorded(CreditRecorded {
                    from: self.from.clone(),
                    to: self.to.clone(),
                })]),
                S::Credited | S::Completed => Ok(vec![]),
                _ => Err(wrong("record a credit")),
            },
            TransferCommand::Complete(_) => match self.status {
                S::Credited if !recorded.settled => Err(unrecorded("no settle of the source")),
                S::Credited => Ok(vec![TransferEvent::TransferCompleted(TransferCompleted {})]),
                S::Completed => Ok(vec![]),
                _ => Err(wrong("complete")),
            },
            TransferCommand::Fail(c) => {
                validate::text("code", &c.code, validate::REASON_LEN_MAX)?;
                validate::text("reason", &c.reason, validate::REASON_LEN_MAX)?;
                match self.status {
                    // The account refused the step: it must not have made it.
                    S::Requested if recorded.debited => Err(wrong("fail after the debit")),
                    S::Debited if recorded.credited => Err(wrong("fail after the credit")),
                    // The sender's reason is the account's refusal, which may state that
                    // account's balance: the transfer records the code's own wording instead.
                    S::Requested => Ok(vec![TransferEvent::TransferFailed(TransferFailed {
                        code: c.code.clone(),
                        reason: failure_reason(&c.code).to_owned(),
                    })]),
                    S::Debited => Ok(vec![TransferEvent::CreditFailed(CreditFailed {
                        from: self.from.clone(),
                        to: self.to.clone(),
                        code: c.code.clone(),
                        reason: failure_reason(&c.code).to_owned(),
                    })]),
                    S::Refunding | S::Failed => Ok(vec![]),
                    _ => Err(wrong("fail")),
                }
            }
            TransferCommand::RecordRefund(_) => match self.status {
                S::Refunding if !recorded.refunded => Err(unrecorded("no refund of the source")),
                S::Refunding => {
                    // Reworded from the code: a `CreditFailed` written before reasons were
                    // may still carry the destination's balance.
                    let (code, _) = self.failure.clone().unwrap_or_default();
                    let reason = failure_reason(&code).to_owned();
                    Ok(vec![
                        TransferEvent::RefundRecorded(RefundRecorded {}),
                        TransferEvent::TransferFailed(TransferFailed { code, reason }),
                    ])
                }
                S::Failed if self.refunded => Ok(vec![]),
                _ => Err(wrong("record a refund")),
            },
        }
    }
}

/// The reason a transfer records for a refused step, from the refusal's code alone. Both
/// parties read the transfer (`GET /v1/transfers/{id}`), and an account's own refusal names
/// its state: a refused debit's message states the source's balance, a refused credit's the
/// destination's. The code says what went wrong; this says it in words, and nothing more.
pub fn failure_reason(code: &str) -> &'static str {
    let code = serde_json::from_value::<ErrorCode>(serde_json::Value::from(code));
    match code {
        Ok(ErrorCode::InsufficientFunds) => {
            "the source account's balance does not cover the amount"
        }
        Ok(ErrorCode::AccountFrozen) => "account is frozen",
        Ok(ErrorCode::AccountClosed) => "account is closed",
        Ok(ErrorCode::NotFound) => "account or transfer does not exist",
        Ok(ErrorCode::AmountOutOfRange) => "the amount is more than the account can take",
        Ok(ErrorCode::CurrencyMismatch) => "the accounts' currencies differ",
        Ok(ErrorCode::Conflict) => "the account's state does not allow this step",
        _ => "the account refused the step",
    }
}

/// To a requester bound to an owner, another owner's source is an account that does not
/// exist: checked where a missing source is (after the transfer's own checks, before the
/// source's status and the destination), so every answer is a missing account's.
fn visible_source<'a>(
    id: &str,
    from: Option<&'a AccountFacts>,
    owner: Option<&str>,
) -> Result<Option<&'a AccountFacts>, TransferError> {
    match (from, owner) {
        (Some(facts), Some(owner))
            if facts.status != AccountStatus::Unopened && facts.owner != owner =>
        {
            Err(TransferError::SourceNotVisible(id.to_owned()))
        }
        _ => Ok(from),
    }
}

/// The account must exist and not be closed when a transfer is requested (a later closure
/// shows up as a failed step).
fn live_account<'a>(
    id: &str,
    facts: Option<&'a AccountFacts>,
) -> Result<&'a AccountFacts, TransferError> {
    match facts {
        None
        | Some(AccountFacts {
            status: AccountStatus::Unopened,
            ..
        }) => Err(TransferError::AccountNotFound(id.to_owned())),
        Some(AccountFacts {
            status: AccountStatus::Closed,
            ..
        }) => Err(TransferError::AccountClosed(id.to_owned())),
        Some(facts) => Ok(facts),
    }
}

impl Aggregate for Transfer {
    const TYPE: &'static str = "transfer";
    type Command = TransferCommand;
    type Event = TransferEvent;
    type Error = TransferError;
    type Services = TransferFacts;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(&command, services)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TransferEvent::TransferRequested(e) => {
                self.id = Some(e.transfer_id);
                self.from = e.from;
                self.to = e.to;
                self.amount = e.amount;
                self.currency = e.currency;
                self.status = TransferStatus::Requested;
            }
            TransferEvent::DebitRecorded(_) => {
                self.debited = true;
                self.status = TransferStatus::Debited;
            }
            TransferEvent::CreditRecorded(_) => self.status = TransferStatus::Credited,
            TransferEvent::TransferCompleted(_) => {
                // Completion implies the debit, also when it was written at once.
                self.debited = true;
                self.status = TransferStatus::Completed;
            }
            TransferEvent::CreditFailed(e) => {
                self.failure = Some((e.code, e.reason));
                self.status = TransferStatus::Refunding;
            }
            TransferEvent::RefundRecorded(_) => self.refunded = true,
            TransferEvent::TransferFailed(e) => {
                self.failure = Some((e.code, e.reason));
                self.status = TransferStatus::Failed;
            }
        }
    }
}
