//! The Transaction aggregate: one posting of up to [`LEGS_MAX`] legs, all or nothing across
//! every account it touches. Each leg moves an amount in one currency from one account to
//! another, so each currency balances by construction; an exchange is two legs through the
//! per-currency `@exchange` accounts. Legs are applied in order, each checked against the
//! limits of the accounts as the legs before it left them.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Book, LedgerError, SystemAccount};
use crate::account::{Account, AccountError, AccountEvent, AccountStatus, LegsPosted, PostedLeg};
use crate::money::{AMOUNT_MAX_MINOR, Amount};
use crate::validate::{self, CURRENCY_PATTERN, METADATA_ENTRIES_MAX, REFERENCE_LEN_MAX};

/// Most legs in one transaction.
pub const LEGS_MAX: usize = 64;

pub const TRANSACTION_EVENT_VERSION: &str = "1.0";
pub const TRANSACTION_EVENT_TYPES: [&str; 1] = ["TransactionPosted"];

/// One movement: `amount` of `currency` from `from` to `to`. Either side may be a client
/// account id or a system account (`@world:EUR`, `@fees:EUR`, `@exchange:EUR`), not both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Leg {
    #[schemars(length(min = 1, max = 64))]
    pub from: String,
    #[schemars(length(min = 1, max = 64))]
    pub to: String,
    /// Minor units, 1 to 10^15.
    #[schemars(range(min = 1, max = AMOUNT_MAX_MINOR))]
    pub amount: i64,
    #[schemars(pattern(CURRENCY_PATTERN))]
    pub currency: String,
}

/// Post a transaction of up to 64 legs, all or nothing (`tally.cmd.transaction.post`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostTransaction {
    pub transaction_id: Uuid,
    #[schemars(length(min = 1, max = LEGS_MAX))]
    pub legs: Vec<Leg>,
    #[serde(default)]
    #[schemars(length(max = REFERENCE_LEN_MAX))]
    pub reference: String,
    /// At most 16 entries; keys of `A-Z a-z 0-9 _ - .` up to 64, values up to 256 characters.
    #[serde(default)]
    #[schemars(extend("maxProperties" = METADATA_ENTRIES_MAX))]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TransactionPosted {
    pub transaction_id: Uuid,
    /// Every leg, system accounts' sides included: the transaction as posted.
    pub legs: Vec<Leg>,
    pub reference: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TransactionEvent {
    TransactionPosted(TransactionPosted),
}

impl DomainEvent for TransactionEvent {
    fn event_type(&self) -> String {
        match self {
            TransactionEvent::TransactionPosted(_) => "TransactionPosted".to_owned(),
        }
    }

    fn event_version(&self) -> String {
        TRANSACTION_EVENT_VERSION.to_owned()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: Option<Uuid>,
    pub legs: Vec<Leg>,
    pub reference: String,
    pub metadata: BTreeMap<String, String>,
}

impl Transaction {
    pub fn posted(&self) -> bool {
        self.id.is_some()
    }

    /// Decides `command` on this transaction (not yet posted) and the accounts in `book`, for a
    /// sender bound to `owner` (`None`: any). On success the accounts' events are in `book`;
    /// on failure `book` is as it was.
    pub fn post(
        &self,
        command: &PostTransaction,
        book: &mut Book,
        owner: Option<&str>,
    ) -> Result<Vec<TransactionEvent>, LedgerError> {
        if self.posted() {
            return Err(LedgerError::AlreadyExists {
                what: "transaction",
            });
        }
        post_legs(
            command,
            book,
            Sender {
                owner,
                viewer: owner,
            },
            false,
        )?;
        Ok(vec![TransactionEvent::TransactionPosted(
            TransactionPosted {
                transaction_id: command.transaction_id,
                legs: command.legs.clone(),
                reference: command.reference.clone(),
                metadata: command.metadata.clone(),
            },
        )])
    }
}

/// Who a posting is decided for: `owner`, whose accounts alone money may leave (`None`: any),
/// and `viewer`, to whom another owner's refusal is told without its figures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sender<'a> {
    pub(crate) owner: Option<&'a str>,
    pub(crate) viewer: Option<&'a str>,
}

/// The legs of `command` applied in order to the accounts of `book`; on success each client
/// account touched gets one `LegsPosted` (`capture`: a hold's capture, not a transaction).
pub(crate) fn post_legs(
    command: &PostTransaction,
    book: &mut Book,
    sender: Sender<'_>,
    capture: bool,
) -> Result<(), LedgerError> {
    check_shape(command)?;
    let owner = sender.owner;
    {
        // Each client account's state as the legs so far left it, and the legs it saw.
        let mut working: BTreeMap<String, (Account, Vec<PostedLeg>)> = BTreeMap::new();
        for (index, leg) in command.legs.iter().enumerate() {
            let amount = Amount::new(leg.amount)
                .map_err(|e| LedgerError::account(&leg.from, Some(index), e.into()))?;
            let leg_number = u16::try_from(index).map_err(|_| {
                LedgerError::invalid("legs", format!("must have at most {LEGS_MAX} legs"))
            })?;
            if !SystemAccount::is_system_id(&leg.from) {
                let (account, posted) = working
                    .entry(leg.from.clone())
                    .or_insert_with(|| (book.account(&leg.from), Vec::new()));
                visible(account, &leg.from, index, owner)?;
                debitable(account, &leg.from, index, leg)?;
                account.balance = account
                    .debit_within_limits(amount, "leg")
                    .map_err(|e| LedgerError::account(&leg.from, Some(index), e))?;
                posted.push(PostedLeg {
                    leg: leg_number,
                    counterparty: leg.to.clone(),
                    amount: -leg.amount,
                });
            } else if let Some(owner) = owner {
                // From the ledger's own accounts, a sender bound to an owner may only deposit
                // (`@world`) to its own account: fees, exchange and transit money is the
                // operator's to move.
                if !leg.from.starts_with("@world:") {
                    return Err(LedgerError::invalid(
                        format!("legs[{index}].from"),
                        "only an operator may take money from @fees, @exchange or @transit",
                    ));
                }
                let to = book.account(&leg.to);
                if to.status != AccountStatus::Unopened && to.owner != owner {
                    return Err(LedgerError::account(
                        &leg.to,
                        Some(index),
                        AccountError::NotVisible,
                    ));
                }
            }
            if !SystemAccount::is_system_id(&leg.to) {
                let (account, posted) = working
                    .entry(leg.to.clone())
                    .or_insert_with(|| (book.account(&leg.to), Vec::new()));
                let foreign = sender.viewer.is_some_and(|viewer| {
                    account.status != AccountStatus::Unopened && account.owner != viewer
                });
                let credited = creditable(account, &leg.to, index, leg).and_then(|()| {
                    account
                        .credit_within_limits(amount, "leg")
                        .map_err(|e| LedgerError::account(&leg.to, Some(index), e))
                });
                account.balance = credited.map_err(|e| {
                    if foreign {
                        // Another owner's account: its code, never its figures.
                        LedgerError::CounterpartyRefused {
                            leg: index,
                            account_id: leg.to.clone(),
                            code: e.code(),
                        }
                    } else {
                        e
                    }
                })?;
                posted.push(PostedLeg {
                    leg: leg_number,
                    counterparty: leg.from.clone(),
                    amount: leg.amount,
                });
            }
        }
        for (id, (account, legs)) in working {
            book.record(
                &id,
                vec![AccountEvent::LegsPosted(LegsPosted {
                    transaction_id: command.transaction_id,
                    legs,
                    balance_after: account.balance,
                    capture,
                })],
            );
        }
    }
    Ok(())
}

/// The rules that need no account: leg count, ids, currencies, a leg to itself, text bounds.
fn check_shape(command: &PostTransaction) -> Result<(), LedgerError> {
    if command.legs.is_empty() || command.legs.len() > LEGS_MAX {
        return Err(LedgerError::invalid(
            "legs",
            format!("must have 1 to {LEGS_MAX} legs"),
        ));
    }
    validate::optional_text("reference", &command.reference, REFERENCE_LEN_MAX)
        .map_err(|e| LedgerError::account("", None, e))?;
    validate::metadata("metadata", &command.metadata)
        .map_err(|e| LedgerError::account("", None, e))?;
    for (index, leg) in command.legs.iter().enumerate() {
        validate::currency("currency", &leg.currency)
            .map_err(|e| LedgerError::account("", Some(index), e))?;
        for (field, id) in [("from", &leg.from), ("to", &leg.to)] {
            endpoint(index, field, id, &leg.currency)?;
        }
        if leg.from == leg.to {
            return Err(LedgerError::invalid(
                format!("legs[{index}].to"),
                "must differ from `from`: a leg from an account to itself",
            ));
        }
        if SystemAccount::is_system_id(&leg.from) && SystemAccount::is_system_id(&leg.to) {
            return Err(LedgerError::invalid(
                format!("legs[{index}]"),
                "moves money between two system accounts; one side must be a client account",
            ));
        }
    }
    Ok(())
}

/// A leg's side: a client id, or a system account in the leg's currency.
fn endpoint(index: usize, field: &str, id: &str, currency: &str) -> Result<(), LedgerError> {
    if !SystemAccount::is_system_id(id) {
        return validate::aggregate_id("account_id", id).map_err(|e| match e {
            AccountError::InvalidField { reason, .. } => {
                LedgerError::invalid(format!("legs[{index}].{field}"), reason)
            }
            other => LedgerError::account(id, Some(index), other),
        });
    }
    let system: SystemAccount = id.parse().map_err(|e: super::system::NotASystemAccount| {
        LedgerError::invalid(format!("legs[{index}].{field}"), e.to_string())
    })?;
    if system.currency != currency {
        return Err(LedgerError::CurrencyMismatch {
            leg: index,
            account_id: id.to_owned(),
            account_currency: system.currency,
            leg_currency: currency.to_owned(),
        });
    }
    Ok(())
}

/// To a sender bound to an owner, another owner's source is an account nobody opened.
fn visible(
    account: &Account,
    id: &str,
    leg: usize,
    owner: Option<&str>,
) -> Result<(), LedgerError> {
    if let Some(owner) = owner
        && account.status != AccountStatus::Unopened
        && account.owner != owner
    {
        return Err(LedgerError::account(
            id,
            Some(leg),
            AccountError::NotVisible,
        ));
    }
    Ok(())
}

fn debitable(account: &Account, id: &str, index: usize, leg: &Leg) -> Result<(), LedgerError> {
    account
        .require_live()
        .map_err(|e| LedgerError::account(id, Some(index), e))?;
    if account.status == AccountStatus::Frozen {
        return Err(LedgerError::account(id, Some(index), AccountError::Frozen));
    }
    same_currency(account, id, index, leg)
}

/// Frozen accounts take money in, as they take deposits.
fn creditable(account: &Account, id: &str, index: usize, leg: &Leg) -> Result<(), LedgerError> {
    account
        .require_live()
        .map_err(|e| LedgerError::account(id, Some(index), e))?;
    same_currency(account, id, index, leg)
}

fn same_currency(account: &Account, id: &str, index: usize, leg: &Leg) -> Result<(), LedgerError> {
    if account.currency != leg.currency {
        return Err(LedgerError::CurrencyMismatch {
            leg: index,
            account_id: id.to_owned(),
            account_currency: account.currency.clone(),
            leg_currency: leg.currency.clone(),
        });
    }
    Ok(())
}

impl Aggregate for Transaction {
    const TYPE: &'static str = "transaction";
    type Command = PostTransaction;
    type Event = TransactionEvent;
    type Error = LedgerError;
    type Services = ();

    /// A transaction is decided with its accounts ([`Transaction::post`]); alone, only whether
    /// its id is free can be.
    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        _sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        if self.posted() {
            return Err(LedgerError::AlreadyExists {
                what: "transaction",
            });
        }
        Err(LedgerError::invalid(
            "transaction_id",
            format!(
                "{} must be decided with its accounts",
                command.transaction_id
            ),
        ))
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TransactionEvent::TransactionPosted(e) => {
                self.id = Some(e.transaction_id);
                self.legs = e.legs;
                self.reference = e.reference;
                self.metadata = e.metadata;
            }
        }
    }
}
