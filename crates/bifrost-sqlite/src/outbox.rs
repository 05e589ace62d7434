//! The transactional outbox: an application's own SQL and the events it decides on, run
//! by the writer thread inside its group transaction, under a savepoint of their own.
//!
//! The writer knows an outbox request only as a [`Job`]: run the work (returning the appends
//! to write, or nothing when it failed), and later answer the caller with the appends'
//! results. The generic [`Work`] keeps the caller's value and error types out of the writer.

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bifrost_core::backend::rules::validate_appends;
use bifrost_core::{AppendResult, Error, StreamAppend};
use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization, TransactionOperation};
use tokio::sync::oneshot;

/// Why [`SqliteStore::transact`](crate::SqliteStore::transact) kept nothing: neither the
/// application's writes nor the events.
#[derive(Debug)]
#[non_exhaustive]
pub enum OutboxError<E> {
    /// The work returned this error.
    Work(E),
    /// The work panicked; the panic's message. The store keeps working.
    Panicked(String),
    /// The store refused the appends (invalid, wrong expected version, duplicate event id)
    /// or failed to commit (then the whole group failed).
    Store(Error),
}

impl<E: fmt::Display> fmt::Display for OutboxError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Work(e) => write!(f, "the outbox work failed: {e}"),
            Self::Panicked(message) => write!(f, "the outbox work panicked: {message}"),
            Self::Store(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for OutboxError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Work(e) => Some(e),
            Self::Panicked(_) => None,
            Self::Store(e) => Some(e),
        }
    }
}

impl<E> From<Error> for OutboxError<E> {
    fn from(e: Error) -> Self {
        Self::Store(e)
    }
}

/// An outbox request as the writer thread sees it.
pub(crate) trait Job: Send {
    /// Runs the application's work on the writer's connection (inside the job's savepoint).
    /// Returns the appends to write, or `None` when the work failed, panicked, or returned
    /// invalid appends: the job keeps the reason for its answer, and the writer rolls back.
    fn run(&mut self, conn: &Connection) -> Option<Vec<StreamAppend>>;

    /// Answers the caller once the group is settled: `appended` holds the appends' results
    /// once the group committed, or why they were not stored.
    fn answer(self: Box<Self>, appended: Result<Vec<AppendResult>, Error>);
}

pub(crate) type Reply<T, E> = oneshot::Sender<Result<(Vec<AppendResult>, T), OutboxError<E>>>;

/// What runs in the writer for one [`transact`](crate::SqliteStore::transact) call.
pub(crate) struct Work<F, T, E> {
    work: Option<F>,
    /// The work's value once it succeeded, or why the request failed before its appends.
    outcome: Option<Result<T, OutboxError<E>>>,
    reply: Reply<T, E>,
}

impl<F, T, E> Work<F, T, E> {
    pub(crate) fn new(work: F, reply: Reply<T, E>) -> Self {
        Self { work: Some(work), outcome: None, reply }
    }
}

impl<F, T, E> Job for Work<F, T, E>
where
    F: FnOnce(&Connection) -> Result<(Vec<StreamAppend>, T), E> + Send,
    T: Send,
    E: Send,
{
    fn run(&mut self, conn: &Connection) -> Option<Vec<StreamAppend>> {
        let work = self.work.take()?;
        // The work's captures are dropped with it and its savepoint is rolled back: nothing
        // it touched is observed after a panic.
        let (outcome, appends) = match catch_unwind(AssertUnwindSafe(|| work(conn))) {
            Ok(Ok((appends, value))) => match validate(&appends) {
                Ok(()) => (Ok(value), Some(appends)),
                Err(e) => (Err(OutboxError::Store(e)), None),
            },
            Ok(Err(e)) => (Err(OutboxError::Work(e)), None),
            Err(panic) => (Err(OutboxError::Panicked(panic_message(panic.as_ref()))), None),
        };
        self.outcome = Some(outcome);
        appends
    }

    fn answer(self: Box<Self>, appended: Result<Vec<AppendResult>, Error>) {
        let Self { outcome, reply, .. } = *self;
        let answer = match outcome {
            Some(Err(e)) => Err(e),
            Some(Ok(value)) => appended.map(|results| (results, value)).map_err(OutboxError::Store),
            // The group failed before the work ran.
            None => Err(OutboxError::Store(
                appended.err().unwrap_or_else(|| Error::Internal("the outbox work was never run".into())),
            )),
        };
        // A caller that went away (cancelled) no longer needs it.
        let _ = reply.send(answer);
    }
}

/// No appends is allowed (the work wrote only its own rows); otherwise the rules of
/// `append_many`.
fn validate(appends: &[StreamAppend]) -> Result<(), Error> {
    if appends.is_empty() { Ok(()) } else { validate_appends(appends) }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// The savepoint each job runs under, inside the group's transaction.
pub(crate) const SAVEPOINT: &str = "bifrost_outbox";

/// The store's own tables: the work may read them, never write or alter them.
const STORE_TABLES: [&str; 5] = ["events", "streams", "meta", "state", "refinery_schema_history"];

/// Pragmas that only describe the schema; every other pragma with an argument changes the
/// connection or the database (its durability, its journal) and is refused.
const DESCRIBING_PRAGMAS: [&str; 10] = [
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
];

fn is_store_table(name: &str) -> bool {
    STORE_TABLES.iter().any(|t| t.eq_ignore_ascii_case(name))
}

/// The authorizer installed on the writer's connection while a job's work runs: SQLite
/// consults it as each statement is prepared. It refuses what would break the writer —
/// ending or committing the group's transaction, releasing or rolling back the job's
/// savepoint, writing or reshaping the store's tables (a trigger on `events` would fire on
/// the writer's own inserts), changing the connection's settings — and allows the rest:
/// the application's own tables, their DDL, reads of anything. It guards against mistakes;
/// code set on subverting the writer from inside its thread is out of its reach.
pub(crate) fn authorize(context: AuthContext<'_>) -> Authorization {
    let denied = match context.action {
        AuthAction::Transaction { .. } => true,
        AuthAction::Savepoint { savepoint_name, operation } => {
            savepoint_name.eq_ignore_ascii_case(SAVEPOINT)
                || !matches!(
                    operation,
                    TransactionOperation::Begin
                        | TransactionOperation::Release
                        | TransactionOperation::Rollback
                )
        }
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::DropTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::CreateTempTrigger { table_name, .. } => is_store_table(table_name),
        AuthAction::Pragma { pragma_name, pragma_value: Some(_) } => {
            !DESCRIBING_PRAGMAS.iter().any(|p| p.eq_ignore_ascii_case(pragma_name))
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => true,
        _ => false,
    };
    if denied { Authorization::Deny } else { Authorization::Allow }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_message_is_kept_whether_static_or_formatted() {
        assert_eq!(panic_message(&"boom"), "boom");
        assert_eq!(panic_message(&String::from("boom 2")), "boom 2");
        assert_eq!(panic_message(&42), "a panic without a message");
    }
}
