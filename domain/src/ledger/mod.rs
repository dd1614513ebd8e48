//! Double entry: every movement is a set of legs, each taking an amount from one account and
//! giving it to another in one currency, so every currency sums to zero over all accounts.
//!
//! Money enters and leaves through system accounts (`system`), which are not aggregates: their
//! side of a movement is recorded on the client account's event (a deposit's `@world:EUR`) or
//! on the transaction's own event (a fee's `@fees:EUR`), never as an event of their own. So a
//! system account is never locked, never refuses, and deposits to different accounts stay
//! parallel; its balance is derived (`postings`), by the read models and by `audit verify`.
//!
//! - `transaction`: the `Transaction` aggregate, a multi-leg posting decided at once over every
//!   account it touches (`post`);
//! - `hold`: the `Hold` aggregate, funds reserved on an account and then captured, voided or
//!   expired;
//! - `book`: the working set of accounts those decisions run on, so several decisions (an
//!   atomic batch) compose on one set of states;
//! - `postings`: every account event read as the legs it stands for, old events included.

mod book;
mod error;
pub mod hold;
pub mod postings;
pub mod system;
pub mod transaction;

pub use book::Book;
pub use error::LedgerError;
pub use hold::{
    CaptureHold, HOLD_COMMAND_NAMES, HOLD_EVENT_TYPES, Hold, HoldCommand, HoldEvent, HoldStatus,
    PlaceHold, VoidHold,
};
pub use system::{SystemAccount, SystemPurpose};
pub use transaction::{
    LEGS_MAX, Leg, PostTransaction, TRANSACTION_EVENT_TYPES, Transaction, TransactionEvent,
    TransactionPosted,
};
