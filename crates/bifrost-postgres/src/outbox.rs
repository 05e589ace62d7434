//! The transactional outbox: one PostgreSQL transaction for the application's own
//! statements and its appends, so that a business row and its events commit together or
//! not at all.

use std::sync::{Arc, Weak};

use bifrost_core::backend::rules::validate_appends;
use bifrost_core::{
    AppendResult, Error, ExpectedVersion, NewEvent, Position, Result, StreamAppend, StreamName,
};
use deadpool_postgres::{Object, Pool};
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::codec::{pg, pool as pool_error};
use crate::external::HeadAnnouncer;
use crate::schema::{OUTBOX_SETTING, Sql};
use crate::writer::{Head, advance, finish, prepare_writes, write_locked};

/// An open PostgreSQL transaction of the application's, on a connection taken from the
/// store's pool, in which it runs its own statements ([`client`](Self::client)) and queues appends
/// ([`append`](Self::append), [`append_many`](Self::append_many)) that
/// [`commit`](Self::commit) writes before committing everything at once. Dropped without
/// `commit`, it rolls back: neither the application's rows nor the events are kept.
///
/// **Order.** `commit` appends exactly as the store's writer does — on any node: it locks
/// the `head` row (`SELECT … FOR UPDATE`), plans the queued appends against what is
/// committed (expected versions, replays of ids already stored, duplicate ids), numbers the
/// events after the stored head, writes them, moves the head, sends the notification, and
/// commits while still holding the lock. So positions commit in order across every writer
/// and readers never see a hole, as for any append.
///
/// **When the lock is held.** Only inside `commit`, for the same few round trips as a
/// group commit of the writer — never during the application's own statements, which run
/// before it. Locking at commit time is sound because the appends are planned under the
/// lock, in the same transaction that then commits; holding it from the first `append` on
/// would stall every writer of the cluster while the application works, and would let an
/// application row lock and the head lock deadlock. The price: positions and versions are
/// known only once `commit` returns, and a wrong expected version is reported by `commit`
/// (which then rolls everything back), not by `append`.
///
/// **Where the application's tables live.** Its statements run with the connection's own
/// `search_path` (what the connection string or the role sets: by default `"$user",
/// public`), never Bifrost's schema: Bifrost's statements name their schema explicitly,
/// and table names inside it (`events`, `streams`, `head`, `state`) are Bifrost's to change.
/// Keep the application's tables in `public` or a schema of its own.
///
/// **Rules of the transaction.** It is `READ COMMITTED` (the appends are planned on fresh
/// snapshots taken after the lock; `commit` refuses to append in any other isolation). Do
/// not end it through `client()` (`COMMIT`, `ROLLBACK`, `BEGIN`): `commit` detects that and
/// appends nothing. Its connection leaves the pool for good and is closed when the
/// transaction ends (the pool opens another), so nothing the application sets on it can
/// reach the store's own writes; a dropped transaction closes it, which rolls back. The
/// commit is as durable as the store's own (`synchronous_commit` is reset for it). The
/// store's session settings apply: a transaction idle for 60 s is ended by the server
/// (`idle_in_transaction_session_timeout`), and a lock wait longer than 30 s fails
/// (`lock_timeout`) — keep the application's work short.
///
/// ```no_run
/// # async fn place(store: &bifrost_postgres::PostgresStore) -> Result<(), Box<dyn std::error::Error>> {
/// use bifrost_core::{EventType, ExpectedVersion, NewEvent, StreamName};
///
/// let mut tx = store.begin().await?;
/// tx.client().execute("INSERT INTO orders (id, total) VALUES ($1, $2)", &[&"o1", &42i32]).await?;
/// let placed = NewEvent::new(EventType::new("order.placed")?, r#"{"total":42}"#);
/// tx.append(StreamName::new("order-o1")?, ExpectedVersion::NoStream, vec![placed])?;
/// let results = tx.commit().await?; // both or neither
/// # Ok(())
/// # }
/// ```
pub struct OutboxTransaction {
    /// Never handed back to the pool: the application may leave session state on it
    /// (settings, roles, advisory locks, temporary tables) that must never reach the store's
    /// writer. Every way out [`close`]s it, which also rolls back whatever is still open.
    /// `None` only once `commit` or `rollback` took it.
    client: Option<Object>,
    sql: Arc<Sql>,
    /// The store's head watch, gone once the store is closed.
    head: Weak<watch::Sender<Position>>,
    /// Tells the other nodes of the commit, when the head travels on an external bus.
    announcer: Option<Arc<HeadAnnouncer>>,
    /// This transaction's mark (`SET LOCAL`), so that `commit` knows it still runs in it.
    token: String,
    appends: Vec<Vec<StreamAppend>>,
}

impl OutboxTransaction {
    pub(crate) async fn begin(
        pool: &Pool,
        sql: Arc<Sql>,
        head: Weak<watch::Sender<Position>>,
        announcer: Option<Arc<HeadAnnouncer>>,
    ) -> Result<Self> {
        let client = pool.get().await.map_err(pool_error)?;
        let token = Uuid::new_v4().simple().to_string();
        let begin = format!("BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL {OUTBOX_SETTING} = '{token}'");
        if let Err(e) = client.batch_execute(&begin).await {
            close(client);
            return Err(pg(e));
        }
        Ok(Self { client: Some(client), sql, head, announcer, token, appends: Vec::new() })
    }

    /// The transaction's connection, for the application's own statements.
    pub fn client(&self) -> &tokio_postgres::Client {
        self.connection()
    }

    fn connection(&self) -> &Object {
        match &self.client {
            Some(client) => client,
            // Taken only by `commit` and `rollback`, which consume the transaction.
            None => unreachable!("an outbox transaction is used after it ended"),
        }
    }

    /// Queues an append to one stream for [`commit`](Self::commit). Checked at once like an
    /// append of the store (events valid, ids distinct); the expected version is checked by
    /// `commit`, under the head lock.
    pub fn append(
        &mut self,
        stream: StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<()> {
        self.append_many(vec![StreamAppend::new(stream, expected, events)])
    }

    /// Queues an atomic multi-stream append for [`commit`](Self::commit), with the checks of
    /// [`EventStore::append_many`](bifrost_core::EventStore::append_many).
    pub fn append_many(&mut self, appends: Vec<StreamAppend>) -> Result<()> {
        validate_appends(&appends)?;
        self.appends.push(appends);
        Ok(())
    }

    /// Writes the queued appends and commits the transaction: the application's statements
    /// and the events, or — on any error — neither. Returns the appends' results in the
    /// order they were queued; appends already stored (same ids, same streams and order)
    /// answer with their original results and store nothing twice. Once it returns, the
    /// store's head watch has moved past the new events.
    ///
    /// If any queued append is refused (a wrong expected version, an event id used by
    /// another event), everything is rolled back and that error is returned.
    pub async fn commit(mut self) -> Result<Vec<AppendResult>> {
        match self.try_commit().await {
            Ok(results) => {
                if let Some(client) = self.client.take() {
                    close(client);
                }
                Ok(results)
            }
            Err(e) => {
                let _ = self.end().await;
                Err(e)
            }
        }
    }

    /// Rolls the transaction back: neither the application's statements nor the queued
    /// appends are kept. Dropping the transaction does the same (closing its connection).
    pub async fn rollback(mut self) -> Result<()> {
        self.end().await
    }

    /// Everything of `commit` but handing the connection back. Keeps the connection inside
    /// `self` throughout, so that a cancelled commit still rolls back on drop.
    async fn try_commit(&self) -> Result<Vec<AppendResult>> {
        let client = self.connection();
        let sql = &self.sql;
        if self.appends.is_empty() {
            // No events: no need for the head lock. Checked before the commit: a transaction
            // the application replaced through the client must not be committed.
            let check = client.prepare_cached(&sql.check_outbox).await.map_err(pg)?;
            let token: [&(dyn ToSql + Sync); 1] = [&self.token];
            let row = client.query_one(&check, &token).await.map_err(pg)?;
            if !row.try_get::<_, bool>(0).map_err(pg)? {
                return Err(ended());
            }
            client.batch_execute(COMMIT).await.map_err(pg)?;
            return Ok(Vec::new());
        }
        prepare_writes(client, sql).await?;
        // The serialization point, as for the writer: until this transaction commits, no
        // other writer on any node can number events.
        let lock = client.prepare_cached(&sql.lock_head_outbox).await.map_err(pg)?;
        let row = client.query_one(&lock, &[&self.token]).await.map_err(pg)?;
        if !row.try_get::<_, bool>(2).map_err(pg)? {
            return Err(ended());
        }
        let (plans, written) = write_locked(client, sql, Head::from_row(&row)?, &self.appends).await?;
        let mut results = Vec::with_capacity(self.appends.iter().map(Vec::len).sum());
        for appended in finish(&self.appends, plans) {
            results.extend(appended?);
        }
        client.batch_execute(COMMIT).await.map_err(pg)?;
        if let (Some(last), Some(head)) = (written, self.head.upgrade()) {
            head.send_if_modified(|h| advance(h, last));
            if let Some(announcer) = &self.announcer {
                announcer.committed(last);
            }
        }
        Ok(results)
    }

    /// Ends the transaction with a rollback and closes the connection.
    async fn end(&mut self) -> Result<()> {
        let Some(client) = self.client.take() else { return Ok(()) };
        let rolled_back = client.batch_execute("ROLLBACK").await.map_err(pg);
        close(client);
        rolled_back
    }
}

impl Drop for OutboxTransaction {
    /// Closing the connection rolls back on the server; nothing to wait for.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            close(client);
        }
    }
}

/// Takes a connection out of the pool for good and closes it (the pool opens another when
/// it needs one); the server rolls back whatever transaction it had open.
fn close(client: Object) {
    drop(Object::take(client));
}

/// The commit of an outbox transaction is as durable as the store's own: the application
/// may have relaxed `synchronous_commit` inside its transaction, and an acknowledged event
/// must not vanish in a crash (its position would be handed out again).
const COMMIT: &str = "SET LOCAL synchronous_commit TO DEFAULT; COMMIT";

impl std::fmt::Debug for OutboxTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxTransaction")
            .field("open", &self.client.is_some())
            .field("queued_appends", &self.appends.len())
            .finish_non_exhaustive()
    }
}

fn ended() -> Error {
    Error::InvalidArgument(
        "the outbox transaction was ended through its client (COMMIT, ROLLBACK or BEGIN), or is not \
         READ COMMITTED: nothing was appended"
            .into(),
    )
}
