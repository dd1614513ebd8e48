//! The one classification of database errors, for writers and readers alike: a lost race, an
//! outage, or a bug. Every caller maps these three (and only these) to wire codes, so the same
//! PostgreSQL outage is `unavailable` whoever meets it.

/// SQL state of a unique violation: a lost optimistic-concurrency race (the events' primary
/// key) or a concurrent duplicate of the same command id (the command log's primary key).
const UNIQUE_VIOLATION: &str = "23505";

/// The index that allows one debit, credit, refund and settle per (account, transfer)
/// (migration 0006).
const TRANSFER_STEP_INDEX: &str = "events_transfer_step";

/// What went wrong with a statement, as its caller must react to it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another write took a key this one needed (a sequence, a command id), or the server
    /// rolled the statement back to break a deadlock. Nothing was written: decide again.
    #[error("lost a race with a concurrent write")]
    Conflict,
    /// This transfer step was already applied to the account (under another command id).
    #[error("this transfer step was already applied to the account")]
    StepAlreadyApplied,
    /// PostgreSQL cannot be reached or refuses work for now; a retry later may succeed.
    #[error("PostgreSQL is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else: a bug, or stored data that breaks an invariant.
    #[error("unexpected event store failure: {context}")]
    Internal {
        context: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    /// An invariant of stored data does not hold (`context` says which).
    pub fn corrupt(context: impl Into<String>) -> StoreError {
        StoreError::Internal {
            context: context.into(),
            source: None,
        }
    }

    /// An unexpected failure of `context`, with its cause.
    pub fn internal(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::Internal {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// Whether the database is the cause and a retry later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        classify(error)
    }
}

/// Sorts a database error into the three kinds callers react to.
pub fn classify(error: sqlx::Error) -> StoreError {
    if let Some(db) = error.as_database_error()
        && db.code().as_deref() == Some(UNIQUE_VIOLATION)
    {
        if db.constraint() == Some(TRANSFER_STEP_INDEX) {
            return StoreError::StepAlreadyApplied;
        }
        return StoreError::Conflict;
    }
    // The statement wrote nothing, so it is a lost race like any other.
    if is_rolled_back(&error) {
        return StoreError::Conflict;
    }
    if is_outage(&error) {
        return StoreError::Unavailable(error);
    }
    StoreError::internal("database statement", error)
}

/// Whether PostgreSQL cannot be reached or refuses work for now: connection exceptions (SQL
/// state class 08), insufficient resources (53), operator intervention such as a shutdown or
/// recovery in progress (57), and the client side's I/O, TLS, pool and worker failures.
pub fn is_outage(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        other => {
            sql_state_class(other).is_some_and(|class| ["08", "53", "57"].contains(&class))
                || other
                    .as_database_error()
                    .and_then(|e| e.code())
                    .is_some_and(|code| code == READ_ONLY_TRANSACTION)
        }
    }
}

/// A write met a server that is a standby: the primary moved (a failover) after this session
/// was opened, or the session was opened read-only. Nothing was written, and the pool finds the
/// new primary (`platform::db`), so it is an outage to wait out, not a bug to report.
const READ_ONLY_TRANSACTION: &str = "25006";

/// Whether the server rolled the transaction back (class 40): a deadlock (40P01) between two
/// writers waiting on each other's keys, or a serialization failure. Nothing was written.
pub fn is_rolled_back(error: &sqlx::Error) -> bool {
    sql_state_class(error) == Some("40")
}

fn sql_state_class(error: &sqlx::Error) -> Option<&'static str> {
    let code = error.as_database_error()?.code()?;
    ["08", "40", "53", "57"]
        .into_iter()
        .find(|class| code.starts_with(class))
}

/// postgres-es's errors (it reads aggregates' history) in the same kinds: it boxes the
/// `sqlx::Error` it met, which is classified like any other.
pub fn from_postgres_es(error: cqrs_es::persist::PersistenceError) -> StoreError {
    use cqrs_es::persist::PersistenceError;
    match error {
        PersistenceError::OptimisticLockError => StoreError::Conflict,
        PersistenceError::ConnectionError(source) | PersistenceError::UnknownError(source) => {
            match source.downcast::<sqlx::Error>() {
                Ok(sqlx) => classify(*sqlx),
                Err(other) => StoreError::Internal {
                    context: "reading an aggregate's events".into(),
                    source: Some(other),
                },
            }
        }
        PersistenceError::DeserializationError(source) => StoreError::Internal {
            context: "an unreadable stored event".into(),
            source: Some(source),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_unavailable_and_the_rest_internal() {
        assert!(classify(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(classify(sqlx::Error::PoolClosed).is_unavailable());
        assert!(matches!(
            classify(sqlx::Error::RowNotFound),
            StoreError::Internal { .. }
        ));
    }
}
