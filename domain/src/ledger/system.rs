//! System accounts: where money enters and leaves the ledger, one per purpose and currency,
//! named `@<purpose>:<CUR>`. Client ids are `[A-Za-z0-9_-]` only, so no client id can be one.

use std::fmt;
use std::str::FromStr;

use crate::validate;

/// What a system account stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SystemPurpose {
    /// Outside the ledger: deposits come from it, withdrawals go to it.
    World,
    /// Fees charged by the ledger's operator.
    Fees,
    /// Currency exchange: one per currency, so each currency of an exchange balances alone.
    Exchange,
    /// Transfers settled step by step, between their debit and their credit or refund.
    Transit,
}

impl SystemPurpose {
    pub const ALL: [SystemPurpose; 4] = [
        SystemPurpose::World,
        SystemPurpose::Fees,
        SystemPurpose::Exchange,
        SystemPurpose::Transit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SystemPurpose::World => "world",
            SystemPurpose::Fees => "fees",
            SystemPurpose::Exchange => "exchange",
            SystemPurpose::Transit => "transit",
        }
    }
}

/// A system account: a purpose in a currency.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SystemAccount {
    pub purpose: SystemPurpose,
    pub currency: String,
}

impl SystemAccount {
    pub fn new(purpose: SystemPurpose, currency: &str) -> Self {
        SystemAccount {
            purpose,
            currency: currency.to_owned(),
        }
    }

    /// The outside world in `currency`: the other side of deposits and withdrawals.
    pub fn world(currency: &str) -> Self {
        SystemAccount::new(SystemPurpose::World, currency)
    }

    /// Whether `id` is written as a system account (`@...`), well formed or not.
    pub fn is_system_id(id: &str) -> bool {
        id.starts_with('@')
    }
}

impl fmt::Display for SystemAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}:{}", self.purpose.as_str(), self.currency)
    }
}

/// Why a name is not a system account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a system account: expected @world, @fees, @exchange or @transit, then `:` and a currency"
)]
pub struct NotASystemAccount(pub String);

impl FromStr for SystemAccount {
    type Err = NotASystemAccount;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let bad = || NotASystemAccount(id.to_owned());
        let rest = id.strip_prefix('@').ok_or_else(bad)?;
        let (purpose, currency) = rest.split_once(':').ok_or_else(bad)?;
        let purpose = SystemPurpose::ALL
            .into_iter()
            .find(|p| p.as_str() == purpose)
            .ok_or_else(bad)?;
        validate::currency("currency", currency).map_err(|_| bad())?;
        Ok(SystemAccount::new(purpose, currency))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nothing_else_parses() {
        for purpose in SystemPurpose::ALL {
            let account = SystemAccount::new(purpose, "EUR");
            assert_eq!(account.to_string().parse::<SystemAccount>(), Ok(account));
        }
        for bad in [
            "world:EUR",
            "@world",
            "@world:eur",
            "@bank:EUR",
            "@world:EURO",
            "alice",
        ] {
            assert!(bad.parse::<SystemAccount>().is_err(), "{bad}");
        }
    }

    #[test]
    fn no_client_id_is_a_system_account() {
        assert!(validate::aggregate_id("account_id", "@world:EUR").is_err());
    }
}
