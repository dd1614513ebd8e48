//! A transfer settled in the same write as its request: what the process manager would do step
//! by step (debit the source, credit the destination, settle the source), decided in one go on
//! the three aggregates, so the command-service can commit it as one transaction. The source's
//! debit is final (`TransferDebited::settled`), so it needs no settle event of its own.
//!
//! Every step is decided by the same rules as the process manager's commands
//! ([`Account::decide_with`] with the transfer as it would be at that step), so the accounts
//! end in the state the steps would have left them in. The transfer records only its request and
//! its outcome: there are no steps in between to record. A refused debit or credit fails the
//! transfer with that refusal's code, and nothing moves: unlike the step-by-step path, a
//! refused credit needs no refund, since nothing was debited.

use cqrs_es::Aggregate;

use super::{
    AccountFacts, RequestTransfer, StepsRecorded, Transfer, TransferCommand, TransferCompleted,
    TransferError, TransferEvent, TransferFacts, TransferFailed, failure_reason,
};
use crate::account::{
    Account, AccountCommand, AccountError, AccountEvent, AccountServices, TransferStep,
};

/// The events of a transfer settled at once, per aggregate; all of them or none are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledAtOnce {
    pub transfer: Vec<TransferEvent>,
    /// Empty when the transfer failed.
    pub from: Vec<AccountEvent>,
    pub to: Vec<AccountEvent>,
}

impl SettledAtOnce {
    pub fn completed(&self) -> bool {
        matches!(
            self.transfer.last(),
            Some(TransferEvent::TransferCompleted(_))
        )
    }
}

/// Decides `request` on the transfer (not yet requested) and both accounts as they are now,
/// for a requester bound to `owner` (`None`: any owner). An impossible request (unknown or
/// closed account, a source of another owner, same account, currencies differ, a bad amount)
/// is an error and writes nothing, as on the step-by-step path; a refused step is a failed
/// transfer.
pub fn decide_at_once(
    transfer: &Transfer,
    request: &RequestTransfer,
    from: &Account,
    to: &Account,
    owner: Option<&str>,
) -> Result<SettledAtOnce, TransferError> {
    let facts = TransferFacts {
        from: AccountFacts::of(from),
        to: AccountFacts::of(to),
        recorded: StepsRecorded::default(),
        owner: owner.map(str::to_owned),
    };
    let mut requested = transfer.decide(&TransferCommand::Request(request.clone()), &facts)?;
    for event in &mut requested {
        if let TransferEvent::TransferRequested(e) = event {
            e.at_once = true;
        }
    }
    let mut state = transfer.clone();
    for event in requested.clone() {
        state.apply(event);
    }
    let step = |account: &Account| TransferStep {
        account_id: account.id.clone(),
        transfer_id: request.transfer_id,
    };
    let failed = |error: AccountError| {
        let mut events = requested.clone();
        let code = error.code().as_str();
        // Not `error`'s message: it may state an account's balance, and both parties read
        // the transfer.
        events.push(TransferEvent::TransferFailed(TransferFailed {
            code: code.to_owned(),
            reason: failure_reason(code).to_owned(),
        }));
        SettledAtOnce {
            transfer: events,
            from: Vec::new(),
            to: Vec::new(),
        }
    };

    // The steps are the service's own, as the process manager's are (no owner): the request
    // above already required the source to be the requester's, and the destination need not.
    let debit = match from.decide_with(
        &AccountCommand::Debit(step(from)),
        &AccountServices {
            transfer: Some(state.clone()),
            owner: None,
        },
    ) {
        Ok(events) => events,
        Err(error) => return Ok(failed(error)),
    };
    state.status = super::TransferStatus::Debited;
    let credit = match to.decide_with(
        &AccountCommand::Credit(step(to)),
        &AccountServices {
            transfer: Some(state),
            owner: None,
        },
    ) {
        Ok(events) => events,
        Err(error) => return Ok(failed(error)),
    };

    let mut transfer_events = requested;
    transfer_events.push(TransferEvent::TransferCompleted(TransferCompleted {}));
    // Debited in the same write as the credit, so there is no hold to settle afterwards: one
    // event on the source where the steps write two (`TransferDebited`, `TransferSettled`).
    let mut from_events = debit;
    for event in &mut from_events {
        if let AccountEvent::TransferDebited(debited) = event {
            debited.settled = true;
        }
    }
    Ok(SettledAtOnce {
        transfer: transfer_events,
        from: from_events,
        to: credit,
    })
}
