//! The read models this crate maintains, each fed by one aggregate type's events and each with
//! its own durable consumer, checkpoint, write lock, dead letters and rebuild.

use domain::envelope::EventMessage;
use sqlx::{Postgres, Transaction};

use crate::apply_error::ApplyError;
use crate::{accounts, holds, transactions, transfers};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    /// `accounts`, `account_entries`, `currency_totals`, `system_account_balances`, from
    /// account events.
    Accounts,
    /// `transfers`, from transfer events.
    Transfers,
    /// `transactions`, from transaction events.
    Transactions,
    /// `holds`, from hold events.
    Holds,
}

impl Projection {
    pub const ALL: [Projection; 4] = [
        Projection::Accounts,
        Projection::Transfers,
        Projection::Transactions,
        Projection::Holds,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Projection::Accounts => accounts::NAME,
            Projection::Transfers => transfers::NAME,
            Projection::Transactions => transactions::NAME,
            Projection::Holds => holds::NAME,
        }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The aggregate type whose events feed it (one per projection, so a projection's
    /// per-aggregate rows are keyed by the aggregate id alone).
    pub fn aggregate_type(self) -> &'static str {
        match self {
            Projection::Accounts => "account",
            Projection::Transfers => "transfer",
            Projection::Transactions => "transaction",
            Projection::Holds => "hold",
        }
    }

    /// The tables it owns (and a rebuild replaces).
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Projection::Accounts => &accounts::TABLES,
            Projection::Transfers => &transfers::TABLES,
            Projection::Transactions => &transactions::TABLES,
            Projection::Holds => &holds::TABLES,
        }
    }

    /// Applies `events` (already checked to be the next ones per aggregate, in order) for
    /// `partition` of the projection (a rebuild, which has none, passes 0).
    pub async fn apply(
        self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[EventMessage],
        partition: u32,
        order: accounts::FeedOrder,
    ) -> Result<(), ApplyError> {
        match self {
            Projection::Accounts => accounts::apply(tx, events, partition, order).await,
            Projection::Transfers => transfers::apply(tx, events).await,
            Projection::Transactions => transactions::apply(tx, events).await,
            Projection::Holds => holds::apply(tx, events).await,
        }
    }
}
