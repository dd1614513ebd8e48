//! The accounts a ledger decision runs on, and the events it gave each. Decisions made one
//! after another on one `Book` see each other's effects, which is what lets an atomic batch be
//! decided as a whole.

use std::collections::BTreeMap;

use cqrs_es::Aggregate;

use crate::account::{Account, AccountCommand, AccountError, AccountEvent, AccountServices};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Book {
    accounts: BTreeMap<String, Account>,
    events: BTreeMap<String, Vec<AccountEvent>>,
}

impl Book {
    /// A book of `accounts` as loaded, keyed by the id each was loaded under (an account never
    /// opened is `Account::default()` under its id).
    pub fn new(accounts: BTreeMap<String, Account>) -> Self {
        Book {
            accounts,
            events: BTreeMap::new(),
        }
    }

    /// The account as decided so far; an id the caller did not load reads as never opened.
    pub fn account(&self, id: &str) -> Account {
        self.accounts.get(id).cloned().unwrap_or_default()
    }

    pub fn accounts(&self) -> &BTreeMap<String, Account> {
        &self.accounts
    }

    /// The events decided so far, per account, in order.
    pub fn events(&self) -> &BTreeMap<String, Vec<AccountEvent>> {
        &self.events
    }

    pub fn into_parts(
        self,
    ) -> (
        BTreeMap<String, Account>,
        BTreeMap<String, Vec<AccountEvent>>,
    ) {
        (self.accounts, self.events)
    }

    /// Records `events` on `id` and applies them to its state.
    pub(crate) fn record(&mut self, id: &str, events: Vec<AccountEvent>) {
        if events.is_empty() {
            return;
        }
        let account = self.accounts.entry(id.to_owned()).or_default();
        for event in &events {
            account.apply(event.clone());
        }
        self.events.entry(id.to_owned()).or_default().extend(events);
    }

    /// An account command decided on this book (an atomic batch's `deposit`, `open`, ...).
    pub fn decide_account(
        &mut self,
        command: &AccountCommand,
        services: &AccountServices,
    ) -> Result<(), AccountError> {
        let id = command.account_id().to_owned();
        let events = self.account(&id).decide_with(command, services)?;
        self.record(&id, events);
        Ok(())
    }
}
