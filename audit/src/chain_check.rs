//! Checks one aggregate's events, fed in sequence order: the hash links, the sequence run and
//! the domain fold. Pure, so the verifier, digest checks and tests share it.

use domain::hash_chain::{self, ChainHash};

use crate::fold::{AccountFold, FoldError};
use crate::{Finding, StoredEvent};

#[derive(Debug)]
pub struct AggregateCheck {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The stored hash of the last event seen: each link is checked against what is stored
    /// before it, so one altered row is reported once, not as a cascade.
    prev_hash: ChainHash,
    pub last_sequence: i64,
    pub fold: AccountFold,
    /// The fold stops at the first unreadable or inconsistent event: state after it means
    /// nothing. Chain checks go on.
    fold_broken: bool,
}

impl AggregateCheck {
    pub fn new(aggregate_type: &str, aggregate_id: &str) -> Self {
        AggregateCheck {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            prev_hash: hash_chain::GENESIS,
            last_sequence: 0,
            fold: AccountFold::default(),
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

    pub fn check(&mut self, event: &StoredEvent, findings: &mut Vec<Finding>) {
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

        if self.fold_broken {
            return;
        }
        if self.aggregate_type == "transfer" {
            // Transfers' rules are checked across aggregates (`transfer_ledger`); here, only
            // that each event is one.
            if let Err(error) = <domain::transfer::TransferEvent as serde::Deserialize>::deserialize(
                &*event.payload,
            ) {
                self.fold_broken = true;
                findings.push(Finding::Unreadable {
                    aggregate_type: self.aggregate_type.clone(),
                    aggregate_id: self.aggregate_id.clone(),
                    sequence: event.sequence,
                    error: error.to_string(),
                });
            }
            return;
        }
        if self.aggregate_type != "account" {
            return;
        }
        if let Err(error) = self.fold.apply(event) {
            self.fold_broken = true;
            findings.push(match error {
                FoldError::Unreadable(error) => Finding::Unreadable {
                    aggregate_type: self.aggregate_type.clone(),
                    aggregate_id: self.aggregate_id.clone(),
                    sequence: event.sequence,
                    error,
                },
                FoldError::Inconsistent(reason) => Finding::Inconsistent {
                    aggregate_type: self.aggregate_type.clone(),
                    aggregate_id: self.aggregate_id.clone(),
                    sequence: event.sequence,
                    reason,
                },
            });
        }
    }
}
