//! Audits over the event store: recompute each aggregate's hash chain, re-derive its state
//! with the domain's own `apply`, compare it with the read model, fold history to any instant,
//! and take or check digests (Merkle roots over the chain heads).
//!
//! Shared by the `tally` CLI (`audit verify`), the query-service (audit endpoints) and the
//! command-service (digest publisher). `chain_check` and `fold` are pure; the rest reads
//! PostgreSQL: the event store through `event_store::audit`, the read models directly.

pub mod backfill;
pub mod chain_check;
pub mod digest;
pub mod digest_signing;
pub mod finding;
pub mod fold;
pub mod history;
pub mod ledger_fold;
pub mod ledger_totals;
pub mod stored_event;
pub mod transaction_ledger;
pub mod transfer_ledger;
pub mod verify;

pub use event_store::StoredEvent;
pub use finding::Finding;
pub use stored_event::StoredEventExt;
