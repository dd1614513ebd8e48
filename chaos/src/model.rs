//! The pure part of a chaos run: what each command did as its client saw it, which replies are
//! worth retrying, the balances the accepted commands add up to, and the outage each fault
//! caused. No IO, so it is tested here with plain `#[test]`s.

use std::collections::{BTreeMap, HashMap, HashSet};

use domain::CommandReply;
use serde::Serialize;
use uuid::Uuid;

/// What a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Open,
    Deposit,
    Withdraw,
    Transfer,
}

impl Kind {
    pub fn subject(self) -> &'static str {
        match self {
            Kind::Open => "account.open",
            Kind::Deposit => "account.deposit",
            Kind::Withdraw => "account.withdraw",
            Kind::Transfer => "transfer.request",
        }
    }
}

/// The definite answer a client got, or that it got none in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Accepted {
        version: u64,
    },
    Rejected {
        code: String,
    },
    /// No definite answer within the answer bound (timeouts, no responders, `unavailable`…);
    /// `last` says what the last attempt got.
    NoAnswer {
        last: String,
    },
}

/// One command, from its first send to its definite answer (or giving up). Times are
/// milliseconds since the run started.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRecord {
    pub command_id: Uuid,
    pub kind: Kind,
    /// The account deposited to / withdrawn from / opened, or a transfer's source.
    pub account: String,
    /// A transfer's destination.
    pub to: Option<String>,
    pub amount: i64,
    pub transfer_id: Option<Uuid>,
    pub first_sent_ms: u64,
    /// When the attempt that got the definite answer was sent (the first send otherwise).
    pub answered_attempt_sent_ms: u64,
    pub done_ms: u64,
    pub attempts: u32,
    pub outcome: Outcome,
}

/// Whether a reply is an answer to keep, or a "not now" to resend with the same command id
/// (docs/errors.md, "same command id again"): `unavailable`, `rate_limited`, and the
/// `conflict` of an aggregate under heavy concurrent use, which records nothing. Every other
/// rejection is the command's final answer.
pub fn is_retryable(reply: &CommandReply) -> bool {
    match reply {
        CommandReply::Accepted { .. } => false,
        CommandReply::Rejected { error, .. } => match error.code.as_str() {
            "unavailable" | "rate_limited" => true,
            "conflict" => error.message.contains("retry with the same command id"),
            _ => false,
        },
    }
}

/// How a transfer ended, as the store says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferEnd {
    Completed,
    Failed,
    /// Still in this state (a finding after the settle wait).
    Unfinished(String),
    /// The store holds no such transfer.
    Absent,
}

/// The balance each account must have: the sum of its effective deposits, minus its effective
/// withdrawals, plus or minus each effective transfer that completed. "Effective" is the set of
/// commands that ran: those the client saw accepted, and those it got no answer for but the
/// command log holds as accepted. Transfers not found completed or failed are returned as
/// problems (their effect is undecided).
pub fn expected_balances(
    records: &[CommandRecord],
    effective: &HashSet<Uuid>,
    transfers: &HashMap<Uuid, TransferEnd>,
) -> (BTreeMap<String, i64>, Vec<String>) {
    let mut balances: BTreeMap<String, i64> = BTreeMap::new();
    let mut problems = Vec::new();
    for record in records {
        balances.entry(record.account.clone()).or_default();
        if let Some(to) = &record.to {
            balances.entry(to.clone()).or_default();
        }
        if !effective.contains(&record.command_id) {
            continue;
        }
        match record.kind {
            Kind::Open => {}
            Kind::Deposit => *balances.entry(record.account.clone()).or_default() += record.amount,
            Kind::Withdraw => {
                *balances.entry(record.account.clone()).or_default() -= record.amount;
            }
            Kind::Transfer => {
                let (Some(id), Some(to)) = (record.transfer_id, &record.to) else {
                    problems.push(format!(
                        "command {}: a transfer without ids",
                        record.command_id
                    ));
                    continue;
                };
                match transfers.get(&id).unwrap_or(&TransferEnd::Absent) {
                    TransferEnd::Completed => {
                        *balances.entry(record.account.clone()).or_default() -= record.amount;
                        *balances.entry(to.clone()).or_default() += record.amount;
                    }
                    TransferEnd::Failed => {}
                    TransferEnd::Unfinished(state) => {
                        problems.push(format!("transfer {id} unfinished ({state})"));
                    }
                    TransferEnd::Absent => {
                        problems.push(format!("transfer {id} accepted but not in the store"));
                    }
                }
            }
        }
    }
    (balances, problems)
}

/// The outage clients saw after a kill at `kill_ms`: until the first accepted reply to an
/// attempt sent at or after the kill. `None`: no command was accepted after it.
pub fn outage_ms(kill_ms: u64, records: &[CommandRecord]) -> Option<u64> {
    records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Accepted { .. }))
        .filter(|r| r.answered_attempt_sent_ms >= kill_ms)
        .map(|r| r.done_ms.saturating_sub(kill_ms))
        .min()
}

/// The longest a command that was waiting at some point in `[from_ms, to_ms]` waited for its
/// answer (first send to definite answer or giving up).
pub fn longest_wait_ms(from_ms: u64, to_ms: u64, records: &[CommandRecord]) -> u64 {
    records
        .iter()
        .filter(|r| r.first_sent_ms <= to_ms && r.done_ms >= from_ms)
        .map(|r| r.done_ms.saturating_sub(r.first_sent_ms))
        .max()
        .unwrap_or(0)
}

/// Commands without a definite answer whose wait overlapped `[from_ms, to_ms]`.
pub fn unanswered_during(from_ms: u64, to_ms: u64, records: &[CommandRecord]) -> Vec<Uuid> {
    records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::NoAnswer { .. }))
        .filter(|r| r.first_sent_ms <= to_ms && r.done_ms >= from_ms)
        .map(|r| r.command_id)
        .collect()
}

/// One line of `./dev cluster ps`: `<name> <pid or -> <role>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsLine {
    pub name: String,
    pub pid: Option<u32>,
    pub role: String,
}

pub fn parse_ps(text: &str) -> Vec<PsLine> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let pid = fields.next()?;
            let role = fields.next()?;
            Some(PsLine {
                name: name.to_owned(),
                pid: pid.parse().ok(),
                role: role.to_owned(),
            })
        })
        .collect()
}

/// The process of `prefix` (`nats-`, `pg-`) that has `role`.
pub fn with_role<'a>(ps: &'a [PsLine], prefix: &str, role: &str) -> Option<&'a PsLine> {
    ps.iter()
        .find(|l| l.name.starts_with(prefix) && l.role == role)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use domain::{ErrorCode, RejectionBody};

    fn record(kind: Kind, account: &str, amount: i64, outcome: Outcome) -> CommandRecord {
        CommandRecord {
            command_id: Uuid::new_v4(),
            kind,
            account: account.into(),
            to: None,
            amount,
            transfer_id: None,
            first_sent_ms: 0,
            answered_attempt_sent_ms: 0,
            done_ms: 0,
            attempts: 1,
            outcome,
        }
    }

    fn transfer(from: &str, to: &str, amount: i64) -> CommandRecord {
        let mut r = record(
            Kind::Transfer,
            from,
            amount,
            Outcome::Accepted { version: 1 },
        );
        r.to = Some(to.into());
        r.transfer_id = Some(Uuid::new_v4());
        r
    }

    fn rejected(code: ErrorCode, message: &str) -> CommandReply {
        CommandReply::Rejected {
            command_id: Uuid::nil(),
            error: RejectionBody {
                code,
                message: message.into(),
                details: serde_json::json!({}),
            },
        }
    }

    #[test]
    fn only_not_now_answers_are_retried() {
        assert!(is_retryable(&rejected(ErrorCode::Unavailable, "db down")));
        assert!(is_retryable(&rejected(ErrorCode::RateLimited, "slow down")));
        assert!(is_retryable(&rejected(
            ErrorCode::Conflict,
            "the account is under heavy concurrent use; retry with the same command id"
        )));
        assert!(!is_retryable(&rejected(
            ErrorCode::Conflict,
            "frozen twice"
        )));
        assert!(!is_retryable(&rejected(ErrorCode::InsufficientFunds, "no")));
        assert!(!is_retryable(&CommandReply::Accepted {
            command_id: Uuid::nil(),
            aggregate_id: "a".into(),
            version: 1,
            consistency_token: "t".into(),
        }));
    }

    #[test]
    fn balances_count_effective_commands_and_completed_transfers_only() {
        let deposit = record(Kind::Deposit, "a", 100, Outcome::Accepted { version: 2 });
        let withdraw = record(Kind::Withdraw, "a", 30, Outcome::Accepted { version: 3 });
        let refused = record(
            Kind::Withdraw,
            "a",
            1_000,
            Outcome::Rejected {
                code: "insufficient_funds".into(),
            },
        );
        // No answer, but the command log says it ran: it counts.
        let unanswered_ran = record(
            Kind::Deposit,
            "b",
            7,
            Outcome::NoAnswer { last: "t".into() },
        );
        // No answer and never ran: it does not.
        let unanswered_lost = record(
            Kind::Deposit,
            "b",
            1_000,
            Outcome::NoAnswer { last: "t".into() },
        );
        let done = transfer("a", "b", 20);
        let failed = transfer("a", "b", 50);
        let records = vec![
            deposit.clone(),
            withdraw.clone(),
            refused,
            unanswered_ran.clone(),
            unanswered_lost,
            done.clone(),
            failed.clone(),
        ];
        let effective: HashSet<Uuid> = [&deposit, &withdraw, &unanswered_ran, &done, &failed]
            .iter()
            .map(|r| r.command_id)
            .collect();
        let ends: HashMap<Uuid, TransferEnd> = [
            (done.transfer_id.unwrap(), TransferEnd::Completed),
            (failed.transfer_id.unwrap(), TransferEnd::Failed),
        ]
        .into();
        let (balances, problems) = expected_balances(&records, &effective, &ends);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(balances["a"], 100 - 30 - 20);
        assert_eq!(balances["b"], 7 + 20);
    }

    #[test]
    fn an_unfinished_or_missing_transfer_is_a_problem() {
        let stuck = transfer("a", "b", 5);
        let missing = transfer("a", "b", 6);
        let effective: HashSet<Uuid> = [stuck.command_id, missing.command_id].into();
        let ends: HashMap<Uuid, TransferEnd> = [(
            stuck.transfer_id.unwrap(),
            TransferEnd::Unfinished("debited".into()),
        )]
        .into();
        let (balances, problems) = expected_balances(&[stuck, missing], &effective, &ends);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(balances["a"], 0);
    }

    #[test]
    fn outage_runs_from_the_kill_to_the_first_accept_of_a_later_attempt() {
        let mut before = record(Kind::Deposit, "a", 1, Outcome::Accepted { version: 1 });
        // Sent before the kill, answered after it: it says nothing about the outage.
        before.answered_attempt_sent_ms = 900;
        before.done_ms = 1_100;
        let mut retried = record(Kind::Deposit, "a", 1, Outcome::Accepted { version: 2 });
        retried.first_sent_ms = 950;
        retried.answered_attempt_sent_ms = 4_000;
        retried.done_ms = 4_200;
        let mut later = record(Kind::Deposit, "a", 1, Outcome::Accepted { version: 3 });
        later.first_sent_ms = 5_000;
        later.answered_attempt_sent_ms = 5_000;
        later.done_ms = 5_010;
        let records = [before, retried, later];
        assert_eq!(outage_ms(1_000, &records), Some(3_200));
        assert_eq!(outage_ms(6_000, &records), None);
        assert_eq!(longest_wait_ms(1_000, 2_000, &records), 3_250);
    }

    #[test]
    fn unanswered_commands_are_attributed_to_the_faults_they_overlap() {
        let mut lost = record(
            Kind::Deposit,
            "a",
            1,
            Outcome::NoAnswer { last: "t".into() },
        );
        lost.first_sent_ms = 10_000;
        lost.done_ms = 70_000;
        let id = lost.command_id;
        let records = [lost];
        assert_eq!(unanswered_during(60_000, 61_000, &records), vec![id]);
        assert!(unanswered_during(80_000, 90_000, &records).is_empty());
    }

    #[test]
    fn ps_lines_name_the_leader_and_the_primary() {
        let ps = parse_ps(
            "nats-1 101 follower\nnats-2 102 leader\nnats-3 - down\npg-monitor 7 up\n\
             pg-1 201 standby\npg-2 202 primary\ncommand-service-1 301 up\n",
        );
        assert_eq!(ps.len(), 7);
        assert_eq!(with_role(&ps, "nats-", "leader").unwrap().name, "nats-2");
        assert_eq!(with_role(&ps, "pg-", "primary").unwrap().name, "pg-2");
        assert_eq!(ps[2].pid, None);
    }
}
