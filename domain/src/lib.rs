//! Tally's domain: the ledger's aggregates, their commands, events and errors.
//!
//! Pure by design: nothing in this crate does IO, reads a clock or draws randomness. Time and
//! identity arrive as data (in [`EventMetadata`]), so every rule is testable without servers and
//! every replay of history folds to the same state.

pub mod account;
pub mod batch;
pub mod envelope;
pub mod error_code;
pub mod hash_chain;
pub mod ledger;
pub mod metadata;
pub mod money;
pub mod reply;
pub mod schema;
pub mod transfer;
pub mod validate;

pub use account::{Account, AccountCommand, AccountError, AccountEvent, AccountStatus};
pub use error_code::ErrorCode;
pub use metadata::{EventMetadata, MetadataError};
pub use money::{AMOUNT_MAX_MINOR, Amount, MoneyError};
pub use reply::{CommandReply, RejectionBody};
