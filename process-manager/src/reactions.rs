//! What the process manager does about each transfer event, as data: pure, so the whole saga's
//! wiring is tested without servers.
//!
//! Every reaction is one account step followed by recording its outcome on the transfer:
//!
//! | event               | account step        | accepted -> transfer | refused -> transfer |
//! |---------------------|---------------------|----------------------|---------------------|
//! | `TransferRequested` | `debit` the source  | `record_debit`       | `fail`              |
//! | `DebitRecorded`     | `credit` the target | `record_credit`      | `fail` (refund next)|
//! | `CreditRecorded`    | `settle` the source | `complete`           | —                   |
//! | `CreditFailed`      | `refund` the source | `record_refund`      | —                   |
//!
//! A transfer requested with `at_once` (the command-service settled it in the request's own
//! write) needs nothing from the process manager.

use domain::ErrorCode;
use domain::envelope::EventMessage;
use domain::transfer::TransferEvent;
use serde_json::{Value, json};
use uuid::Uuid;

/// One command to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Send {
    pub aggregate: &'static str,
    pub command: &'static str,
    pub body: Value,
    /// Derived from (transfer, step): the same on every redelivery, so a repeat is answered
    /// from the command log instead of running again.
    pub command_id: Uuid,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reaction {
    /// The event ends nothing and starts nothing (the transfer's last events).
    Nothing,
    Step {
        transfer_id: Uuid,
        step: Send,
        then: Send,
        /// The command id of `transfer.fail` when the account may refuse the step.
        fail_command_id: Option<Uuid>,
    },
}

/// The command id of `step` of `transfer_id`.
pub fn command_id(transfer_id: Uuid, step: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("tally:transfer:{transfer_id}:{step}").as_bytes(),
    )
}

/// The reaction to one event from `<prefix>.evt.transfer.>`.
pub fn react(event: &EventMessage) -> Result<Reaction, String> {
    let transfer_id = Uuid::parse_str(&event.aggregate_id)
        .map_err(|_| format!("transfer id `{}` is not a UUID", event.aggregate_id))?;
    let payload: TransferEvent = serde_json::from_value(event.payload.clone())
        .map_err(|e| format!("unreadable transfer event: {e}"))?;
    let send = |aggregate, command: &'static str, body: Value| Send {
        aggregate,
        command,
        body,
        command_id: command_id(transfer_id, command),
    };
    let on_account = |command, account: &str| {
        send(
            "account",
            command,
            json!({"account_id": account, "transfer_id": transfer_id}),
        )
    };
    let on_transfer = |command| send("transfer", command, json!({"transfer_id": transfer_id}));
    let step = |step, then, fail_step: Option<&str>| Reaction::Step {
        transfer_id,
        step,
        then,
        fail_command_id: fail_step.map(|s| command_id(transfer_id, s)),
    };
    Ok(match payload {
        // Settled in the request's own write: its outcome follows in the same commit.
        TransferEvent::TransferRequested(e) if e.at_once => Reaction::Nothing,
        TransferEvent::TransferRequested(e) => step(
            on_account("debit", &e.from),
            on_transfer("record_debit"),
            Some("fail_debit"),
        ),
        TransferEvent::DebitRecorded(e) => step(
            on_account("credit", &e.to),
            on_transfer("record_credit"),
            Some("fail_credit"),
        ),
        TransferEvent::CreditRecorded(e) => {
            step(on_account("settle", &e.from), on_transfer("complete"), None)
        }
        TransferEvent::CreditFailed(e) => step(
            on_account("refund", &e.from),
            on_transfer("record_refund"),
            None,
        ),
        TransferEvent::TransferCompleted(_)
        | TransferEvent::RefundRecorded(_)
        | TransferEvent::TransferFailed(_) => Reaction::Nothing,
    })
}

/// Whether an account's refusal of a step is final, so the transfer fails (otherwise, like a
/// contention `conflict` or `unavailable`, the event is tried again later).
pub fn refusal_is_final(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::InsufficientFunds
            | ErrorCode::AccountFrozen
            | ErrorCode::AccountClosed
            | ErrorCode::NotFound
            | ErrorCode::AmountOutOfRange
            | ErrorCode::CurrencyMismatch
    )
}

/// The body of `transfer.fail` after a final refusal.
pub fn fail(transfer_id: Uuid, fail_command_id: Uuid, code: ErrorCode, message: &str) -> Send {
    let code = serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "refused".to_owned());
    Send {
        aggregate: "transfer",
        command: "fail",
        body: json!({"transfer_id": transfer_id, "code": code, "reason": message}),
        command_id: fail_command_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::transfer::{CreditFailed, DebitRecorded, TransferFailed, TransferRequested};

    const T: Uuid = Uuid::from_u128(9);

    fn event(payload: TransferEvent, sequence: u64) -> EventMessage {
        EventMessage {
            aggregate_type: "transfer".into(),
            aggregate_id: T.to_string(),
            sequence,
            event_type: cqrs_es_event_type(&payload),
            event_version: "1.0".into(),
            global_position: 1,
            recorded_at: chrono_now(),
            payload: serde_json::to_value(payload).unwrap_or_default(),
            metadata: json!({}),
        }
    }

    fn cqrs_es_event_type(payload: &TransferEvent) -> String {
        serde_json::to_value(payload)
            .ok()
            .and_then(|v| v.as_object().and_then(|o| o.keys().next().cloned()))
            .unwrap_or_default()
    }

    fn chrono_now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::UNIX_EPOCH
    }

    #[test]
    fn a_request_debits_the_source_then_records_it() {
        let reaction = react(&event(
            TransferEvent::TransferRequested(TransferRequested {
                transfer_id: T,
                from: "a".into(),
                to: "b".into(),
                amount: 5,
                currency: "EUR".into(),
                reference: String::new(),
                at_once: false,
            }),
            1,
        ));
        let Ok(Reaction::Step {
            step,
            then,
            fail_command_id,
            ..
        }) = reaction
        else {
            panic!("expected a step, got {reaction:?}");
        };
        assert_eq!((step.aggregate, step.command), ("account", "debit"));
        assert_eq!(step.body["account_id"], "a");
        assert_eq!((then.aggregate, then.command), ("transfer", "record_debit"));
        assert_eq!(fail_command_id, Some(command_id(T, "fail_debit")));
    }

    #[test]
    fn a_recorded_debit_credits_the_destination_and_a_refused_credit_refunds_the_source() {
        let debited = react(&event(
            TransferEvent::DebitRecorded(DebitRecorded {
                from: "a".into(),
                to: "b".into(),
            }),
            2,
        ));
        assert!(
            matches!(debited, Ok(Reaction::Step { ref step, .. }) if step.command == "credit" && step.body["account_id"] == "b")
        );
        let failing = react(&event(
            TransferEvent::CreditFailed(CreditFailed {
                from: "a".into(),
                to: "b".into(),
                code: "account_closed".into(),
                reason: "closed".into(),
            }),
            3,
        ));
        assert!(
            matches!(failing, Ok(Reaction::Step { ref step, ref then, fail_command_id: None, .. })
            if step.command == "refund" && step.body["account_id"] == "a" && then.command == "record_refund")
        );
        let failed = react(&event(
            TransferEvent::TransferFailed(TransferFailed {
                code: "x".into(),
                reason: "y".into(),
            }),
            5,
        ));
        assert_eq!(failed, Ok(Reaction::Nothing));
    }

    #[test]
    fn a_transfer_settled_at_once_needs_no_step() {
        let requested = |at_once| {
            react(&event(
                TransferEvent::TransferRequested(TransferRequested {
                    transfer_id: T,
                    from: "a".into(),
                    to: "b".into(),
                    amount: 5,
                    currency: "EUR".into(),
                    reference: String::new(),
                    at_once,
                }),
                1,
            ))
        };
        assert_eq!(requested(true), Ok(Reaction::Nothing));
        assert!(matches!(requested(false), Ok(Reaction::Step { .. })));
    }

    #[test]
    fn command_ids_are_stable_per_transfer_and_step() {
        assert_eq!(command_id(T, "debit"), command_id(T, "debit"));
        assert_ne!(command_id(T, "debit"), command_id(T, "credit"));
        assert_ne!(
            command_id(T, "debit"),
            command_id(Uuid::from_u128(10), "debit")
        );
    }

    #[test]
    fn only_refusals_about_the_account_fail_a_transfer() {
        assert!(refusal_is_final(ErrorCode::InsufficientFunds));
        assert!(refusal_is_final(ErrorCode::AccountClosed));
        assert!(!refusal_is_final(ErrorCode::Conflict));
        assert!(!refusal_is_final(ErrorCode::Unavailable));
        let fail = fail(
            T,
            command_id(T, "fail_debit"),
            ErrorCode::InsufficientFunds,
            "short",
        );
        assert_eq!(fail.body["code"], "insufficient_funds");
    }
}
