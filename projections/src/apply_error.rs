//! Why an event could not be applied to a read model: the database failed, or the event can
//! never be applied as it stands (a poison event, dead-lettered). The read models return it,
//! the runner and the rebuild react to it; it depends on neither.

use domain::envelope::EventMessage;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("database")]
    Db(#[from] sqlx::Error),
    #[error("event {aggregate_id}#{sequence} cannot be applied: {reason}")]
    Poison {
        aggregate_id: String,
        sequence: u64,
        reason: String,
    },
}

impl ApplyError {
    pub fn poison(event: &EventMessage, reason: impl Into<String>) -> Self {
        ApplyError::Poison {
            aggregate_id: event.aggregate_id.clone(),
            sequence: event.sequence,
            reason: reason.into(),
        }
    }

    /// The failure as a dead letter (and the log) records it: the database's own message
    /// rather than "database", since an operator reads it to choose `tally dlq retry` or `drop`.
    pub(crate) fn dead_letter_text(&self) -> String {
        match self {
            ApplyError::Db(sqlx::Error::Database(db)) => format!("database: {}", db.message()),
            other => other.to_string(),
        }
    }
}
