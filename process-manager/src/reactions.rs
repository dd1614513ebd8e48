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
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

/// One command to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Send {
    pub aggregate: &'static str,
    pub command: &'static str,
    pub body: Value,
    /// Derived from (transfer, step) with the process manager's secret ([`StepIds`]): the same
    /// on every redelivery, so a repeat is answered from the command log instead of running
    /// again, and unknown to anyone else until sent.
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

/// Least length of the secret step ids are derived with (as for an HS256 secret).
pub const STEP_ID_SECRET_MIN_BYTES: usize = 32;

/// Derives the command ids of a transfer's steps: HMAC-SHA256 over (transfer, step) keyed with
/// a secret only the process manager holds, shaped as a UUID.
///
/// Why keyed: the command log answers an id with its first reply. Ids anyone can compute from
/// (transfer, step) could be used first by a client (a deposit of its own, even a refusal, is
/// logged as that id's answer): the process manager's step would then be refused
/// (`idempotency_mismatch`) on every try and the transfer would stay stuck with money held.
/// With a keyed id nobody can send a command under it before the process manager does, and
/// once it has, the id's answer is its own. Refusals that are never logged (`forbidden`,
/// `rate_limited`, ...) claim nothing either way. All instances must share the secret so that
/// they derive the same ids; changing it only changes the ids of the steps still to come (a
/// step repeated under a new id changes nothing: the account applies each step once per
/// transfer, the transfer records each once).
#[derive(Clone)]
pub struct StepIds {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for StepIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepIds { .. }")
    }
}

/// The secret is too short to keep the ids unguessable.
#[derive(Debug, thiserror::Error)]
#[error(
    "the secret of the process manager's command ids must be at least {STEP_ID_SECRET_MIN_BYTES} bytes"
)]
pub struct ShortSecret;

impl StepIds {
    pub fn new(secret: &[u8]) -> Result<StepIds, ShortSecret> {
        if secret.len() < STEP_ID_SECRET_MIN_BYTES {
            return Err(ShortSecret);
        }
        // HMAC takes a key of any length, so this cannot fail past the check above.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).map_err(|_| ShortSecret)?;
        Ok(StepIds { mac })
    }

    /// The command id of `step` of `transfer_id`.
    pub fn command_id(&self, transfer_id: Uuid, step: &str) -> Uuid {
        let mut mac = self.mac.clone();
        mac.update(b"tally-process-manager-step-v1");
        mac.update(transfer_id.as_bytes());
        mac.update(step.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        // A version-4-shaped UUID: 122 bits of the MAC, like any client's random id.
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// The reaction to one event from `<prefix>.evt.transfer.>`.
pub fn react(event: &EventMessage, ids: &StepIds) -> Result<Reaction, String> {
    let transfer_id = Uuid::parse_str(&event.aggregate_id)
        .map_err(|_| format!("transfer id `{}` is not a UUID", event.aggregate_id))?;
    let payload: TransferEvent = serde_json::from_value(event.payload.clone())
        .map_err(|e| format!("unreadable transfer event: {e}"))?;
    let send = |aggregate, command: &'static str, body: Value| Send {
        aggregate,
        command,
        body,
        command_id: ids.command_id(transfer_id, command),
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
        fail_command_id: fail_step.map(|s| ids.command_id(transfer_id, s)),
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
    Send {
        aggregate: "transfer",
        command: "fail",
        body: json!({"transfer_id": transfer_id, "code": code.as_str(), "reason": message}),
        command_id: fail_command_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::transfer::{CreditFailed, DebitRecorded, TransferFailed, TransferRequested};

    const T: Uuid = Uuid::from_u128(9);

    fn ids() -> StepIds {
        StepIds::new(&[7; STEP_ID_SECRET_MIN_BYTES]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn command_id(transfer_id: Uuid, step: &str) -> Uuid {
        ids().command_id(transfer_id, step)
    }

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
        let reaction = react(
            &event(
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
            ),
            &ids(),
        );
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
        let debited = react(
            &event(
                TransferEvent::DebitRecorded(DebitRecorded {
                    from: "a".into(),
                    to: "b".into(),
                }),
                2,
            ),
            &ids(),
        );
        assert!(
            matches!(debited, Ok(Reaction::Step { ref step, .. }) if step.command == "credit" && step.body["account_id"] == "b")
        );
        let failing = react(
            &event(
                TransferEvent::CreditFailed(CreditFailed {
                    from: "a".into(),
                    to: "b".into(),
                    code: "account_closed".into(),
                    reason: "closed".into(),
                }),
                3,
            ),
            &ids(),
        );
        assert!(
            matches!(failing, Ok(Reaction::Step { ref step, ref then, fail_command_id: None, .. })
            if step.command == "refund" && step.body["account_id"] == "a" && then.command == "record_refund")
        );
        let failed = react(
            &event(
                TransferEvent::TransferFailed(TransferFailed {
                    code: "x".into(),
                    reason: "y".into(),
                }),
                5,
            ),
            &ids(),
        );
        assert_eq!(failed, Ok(Reaction::Nothing));
    }

    #[test]
    fn a_transfer_settled_at_once_needs_no_step() {
        let requested = |at_once| {
            react(
                &event(
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
                ),
                &ids(),
            )
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
    fn command_ids_need_the_secret() {
        let other = StepIds::new(&[8; STEP_ID_SECRET_MIN_BYTES]).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(command_id(T, "debit"), other.command_id(T, "debit"));
        // Not the ids anyone could compute before (uuid v5 of the transfer and the step).
        let public = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("tally:transfer:{T}:debit").as_bytes(),
        );
        assert_ne!(command_id(T, "debit"), public);
        assert!(StepIds::new(&[7; STEP_ID_SECRET_MIN_BYTES - 1]).is_err());
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
