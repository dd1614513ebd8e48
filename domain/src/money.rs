//! Money as integer minor units (cents, pence): never floats, overflow is an error.
//!
//! Below the aggregates: its refusals are [`MoneyError`]s, which each aggregate maps into its own
//! error (and so onto a wire code).

/// The largest amount one command may move: 10^15 minor units.
pub const AMOUNT_MAX_MINOR: i64 = 1_000_000_000_000_000;

/// Why an amount or a balance change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount {amount} is outside 1..={AMOUNT_MAX_MINOR} minor units")]
    AmountOutOfRange { amount: i64 },
    #[error("balance {balance} plus {amount} exceeds the largest balance an account can hold")]
    BalanceOverflow { balance: i64, amount: i64 },
    #[error("balance {balance} is less than the {requested} requested")]
    InsufficientFunds { balance: i64, requested: i64 },
}

/// An amount a command moves: always in `1..=AMOUNT_MAX_MINOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(i64);

impl Amount {
    pub fn new(minor: i64) -> Result<Self, MoneyError> {
        if (1..=AMOUNT_MAX_MINOR).contains(&minor) {
            Ok(Amount(minor))
        } else {
            Err(MoneyError::AmountOutOfRange { amount: minor })
        }
    }

    pub fn minor(self) -> i64 {
        self.0
    }
}

/// `balance + amount`, or an error instead of a wrap.
pub fn credit(balance: i64, amount: Amount) -> Result<i64, MoneyError> {
    balance
        .checked_add(amount.minor())
        .ok_or(MoneyError::BalanceOverflow {
            balance,
            amount: amount.minor(),
        })
}

/// `balance - amount`, refusing to go below zero.
pub fn debit(balance: i64, amount: Amount) -> Result<i64, MoneyError> {
    if amount.minor() > balance {
        return Err(MoneyError::InsufficientFunds {
            balance,
            requested: amount.minor(),
        });
    }
    // Cannot underflow: 0 <= amount <= balance.
    Ok(balance - amount.minor())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_bounds() {
        assert!(Amount::new(0).is_err());
        assert!(Amount::new(-1).is_err());
        assert!(Amount::new(i64::MIN).is_err());
        assert!(Amount::new(AMOUNT_MAX_MINOR + 1).is_err());
        assert_eq!(Amount::new(1).map(Amount::minor), Ok(1));
        assert_eq!(
            Amount::new(AMOUNT_MAX_MINOR).map(Amount::minor),
            Ok(AMOUNT_MAX_MINOR)
        );
    }

    #[test]
    fn credit_overflow_is_an_error_not_a_wrap() {
        let max = Amount::new(AMOUNT_MAX_MINOR).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            credit(i64::MAX - 5, max),
            Err(MoneyError::BalanceOverflow { .. })
        ));
        assert_eq!(credit(5, max), Ok(5 + AMOUNT_MAX_MINOR));
    }

    #[test]
    fn debit_never_goes_negative() {
        let ten = Amount::new(10).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(debit(10, ten), Ok(0));
        assert!(matches!(
            debit(9, ten),
            Err(MoneyError::InsufficientFunds {
                balance: 9,
                requested: 10
            })
        ));
    }
}
