//! The read models this crate maintains, each fed by one aggregate type's events and each with
//! its own durable consumer, checkpoint, write lock, dead letters and rebuild.

use domain::envelope::EventMessage;
use sqlx::{Postgres, Transaction};

use crate::apply_error::ApplyError;
use crate::{accounts, transfers};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    /// `accounts`, `account_entries`, `currency_totals`, from account events.
    Accounts,
    /// `transfers`, from transfer events.
    Transfers,
}

impl Projection {
    pub const ALL: [Projection; 2] = [Projection::Accounts, Projection::Transfers];

    pub fn name(self) -> &'static str {
        match self {
            Projection::Accounts => accounts::NAME,
            Projection::Transfers => transfers::NAME,
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
        }
    }

    /// The tables it owns (and a rebuild replaces).
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Projection::Accounts => &accounts::TABLES,
            Projection::Transfers => &transfers::TABLES,
        }
    }

    /// Applies `events` (already checked to be the next ones per aggregate, in order).
    pub async fn apply(
        self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[EventMessage],
    ) -> Result<(), ApplyError> {
        match self {
            Projection::Accounts => accounts::apply(tx, events).await,
            Projection::Transfers => transfers::apply(tx, events).await,
        }
    }
}
