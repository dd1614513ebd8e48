//! Checks one aggregate's events, fed in sequence order: the hash links, the sequence run and
//! the domain fold. Pure, so the verifier, digest checks and tests share it.

use domain::account::AccountEvent;
use domain::hash_chain::{self, ChainHash};
use domain::ledger::{Hold, HoldEvent, Transaction, TransactionEvent};
use domain::transfer::TransferEvent;

use crate::fold::{self, AccountFold, FoldError};
use crate::ledger_fold::{self, HoldFold, TransactionFold};
use crate::{Finding, StoredEvent};

/// An event as the domain reads it, for the checks across aggregates.
#[derive(Debug, Clone)]
pub enum Parsed {
    Account(AccountEvent),
    Transfer(TransferEvent),
    Transaction(TransactionEvent),
    Hold(HoldEvent),
}

/// The fold of each aggregate type whose rules are checked one aggregate at a time.
#[derive(Debug)]
pub enum Fold {
    Account(AccountFold),
    Transaction(TransactionFold),
    Hold(HoldFold),
    /// Transfers' rules are checked across aggregates (`transfer_ledger`); here, only that
    /// each event is one.
    Transfer,
    /// A type no rules are checked for: chain checks only, as for any row.
    Unknown,
}

#[derive(Debug)]
pub struct AggregateCheck {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The stored hash of the last event seen: each link is checked against what is stored
    /// before it, so one altered row is reported once, not as a cascade.
    prev_hash: ChainHash,
    pub last_sequence: i64,
    pub fold: Fold,
    /// The fold stops at the first unreadable or inconsistent event: state after it means
    /// nothing. Chain checks go on.
    fold_broken: bool,
}

impl AggregateCheck {
    pub fn new(aggregate_type: &str, aggregate_id: &str) -> Self {
        let fold = match aggregate_type {
            "account" => Fold::Account(AccountFold::default()),
            "transaction" => Fold::Transaction(TransactionFold::default()),
            "hold" => Fold::Hold(HoldFold::default()),
            "transfer" => Fold::Transfer,
            _ => Fold::Unknown,
        };
        AggregateCheck {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            prev_hash: hash_chain::GENESIS,
            last_sequence: 0,
            fold,
            fold_broken: false,
        }
    }

    /// The stored hash of the last event, the aggregate's chain head.
    pub fn head(&self) -> ChainHash {
        self.prev_hash
    }

    pub fn fold_is_sound(&self) -> bool {
        !self.fold_broken
    }

    /// The account as folded so far, if this is one.
    pub fn account(&self) -> Option<&AccountFold> {
        match &self.fold {
            Fold::Account(fold) => Some(fold),
            _ => None,
        }
    }

    pub fn transaction(&self) -> Option<&Transaction> {
        match &self.fold {
            Fold::Transaction(fold) => Some(&fold.state),
            _ => None,
        }
    }

    pub fn hold(&self) -> Option<&Hold> {
        match &self.fold {
            Fold::Hold(fold) => Some(&fold.state),
            _ => None,
        }
    }

    /// The account's currency once it is opened (empty before, and for other aggregates).
    pub fn currency(&self) -> &str {
        self.account().map_or("", |f| f.state.currency.as_str())
    }

    /// Checks `event`; returns it as the domain reads it, for the checks across aggregates,
    /// unless it cannot be read (a finding, reported once).
    pub fn check(&mut self, event: &StoredEvent, findings: &mut Vec<Finding>) -> Option<Parsed> {
        self.check_chain(event, findings);
        if matches!(self.fold, Fold::Unknown) {
            return None;
        }
        let parsed = self.read(event);
        let outcome = match (&parsed, &mut self.fold) {
            (Err(error), _) => Err(error.clone()),
            (Ok(_), _) if self.fold_broken => Ok(()),
            (Ok(Parsed::Account(e)), Fold::Account(fold)) => fold.apply_parsed(e, event.sequence),
            (Ok(Parsed::Transaction(e)), Fold::Transaction(fold)) => {
                fold.apply_parsed(&self.aggregate_id, e, event.sequence)
            }
            (Ok(Parsed::Hold(e)), Fold::Hold(fold)) => {
                fold.apply_parsed(&self.aggregate_id, e, event.sequence)
            }
            (Ok(_), _) => Ok(()),
        };
        if let Err(error) = outcome {
            if !self.fold_broken {
                findings.push(self.fold_finding(event.sequence, error));
            }
            self.fold_broken = true;
        }
        parsed.ok()
    }

    fn read(&self, event: &StoredEvent) -> Result<Parsed, FoldError> {
        match self.fold {
            Fold::Account(_) => fold::read(event).map(Parsed::Account),
            Fold::Transaction(_) => ledger_fold::read(event).map(Parsed::Transaction),
            Fold::Hold(_) => ledger_fold::read(event).map(Parsed::Hold),
            Fold::Transfer => ledger_fold::read(event).map(Parsed::Transfer),
            Fold::Unknown => Err(FoldError::Unreadable("no rules for this type".into())),
        }
    }

    fn fold_finding(&self, sequence: i64, error: FoldError) -> Finding {
        match error {
            FoldError::Unreadable(error) => Finding::Unreadable {
                aggregate_type: self.aggregate_type.clone(),
                aggregate_id: self.aggregate_id.clone(),
                sequence,
                error,
            },
            FoldError::Inconsistent(reason) => Finding::Inconsistent {
                aggregate_type: self.aggregate_type.clone(),
                aggregate_id: self.aggregate_id.clone(),
                sequence,
                reason,
            },
        }
    }

    fn check_chain(&mut self, event: &StoredEvent, findings: &mut Vec<Finding>) {
        let expected_sequence = self.last_sequence + 1;
        let gap = event.sequence != expected_sequence;
        if gap {
            findings.push(Finding::SequenceGap {
                aggregate_type: self.aggregate_type.clone(),
                aggregate_id: self.aggregate_id.clone(),
                expected: expected_sequence,
                found: event.sequence,
            });
            // The state cannot be derived across a hole.
            self.fold_broken = true;
        }
        self.last_sequence = event.sequence;

        let expected = hash_chain::event_hash(&self.prev_hash, &event.chained());
        let stored = event
            .hash
            .as_deref()
            .and_then(|h| ChainHash::try_from(h).ok());
        match stored {
            None => {
                findings.push(Finding::Unchained {
                    aggregate_type: self.aggregate_type.clone(),
                    aggregate_id: self.aggregate_id.clone(),
                    sequence: event.sequence,
                });
                // A writer after an unhashed row starts the chain again (`TallyRepository`).
                self.prev_hash = hash_chain::GENESIS;
            }
            Some(found) => {
                // After a gap the link cannot match (its predecessor is missing); the gap is
                // the finding, reported at the missing sequence.
                if found != expected && !gap {
                    findings.push(Finding::BrokenLink {
                        aggregate_type: self.aggregate_type.clone(),
                        aggregate_id: self.aggregate_id.clone(),
                        sequence: event.sequence,
                        expected: hex::encode(expected),
                        found: hex::encode(found),
                    });
                }
                self.prev_hash = found;
            }
        }
    }
}
