//! Bifrost's embedded event store: one SQLite file in WAL mode.
//!
//! Writes go through one writer thread that *group-commits*: appends that arrive while a
//! commit is in progress queue up and are committed together in one transaction with one
//! fsync; each caller is answered only after its commit. The group is planned in memory
//! first (`GroupPlanner`), so an append that fails inside it (a conflict, a duplicate id) is
//! never written and fails alone.
//! Reads run on a small pool of read-only connections, each read in one snapshot.
//! Readers' state (the `state` table, see [`StateStore`]) is written by the same thread,
//! in the same group commits as appends.
//!
//! **Transactional outbox.** [`SqliteStore::transact`] runs an application's own SQL on the
//! writer's connection, inside the group's transaction, and appends the events it returns:
//! the application's rows (its tables live in the same database file) and its events commit
//! together, durably, or not at all.
//!
//! Invariants: positions are assigned by the writer in commit order and never reused, so
//! every read snapshot is a prefix of the log; `recorded_at` never decreases along the
//! log, which lets time-range filters become position ranges by binary search.

mod checkpoint;
mod codec;
mod outbox;
mod reader;
mod schema;
mod state;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use async_trait::async_trait;
use bifrost_core::backend::rules::{validate_appends, validate_state_changes};
use bifrost_core::{
    AppendResult, DeleteMode, Direction, Error, EventStore, LogFilter, LogSlice, Position, RecordedEvent,
    Result, StateChange, StateEntry, StateStore, StreamAppend, StreamInfo, StreamListQuery, StreamListing,
    StreamName, StreamSlice, Version,
};
use bytes::Bytes;
use tokio::sync::watch;
use uuid::Uuid;

use crate::checkpoint::Checkpointer;
use crate::reader::ReadPool;
use crate::writer::Writer;

pub use crate::outbox::OutboxError;
/// The driver [`SqliteStore::transact`] hands its connection from, re-exported so that an
/// application uses the same version.
pub use rusqlite;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "bifrost.db";

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// After the commit is fsynced (`synchronous=FULL`): survives power loss.
    #[default]
    Full,
    /// After the commit reaches the OS (`synchronous=NORMAL` in WAL mode): survives a
    /// process crash, may lose the last commits on power loss.
    Relaxed,
}

impl FromStr for Durability {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Self::Full),
            "relaxed" => Ok(Self::Relaxed),
            other => Err(Error::InvalidArgument(format!(
                "unknown durability {other:?}: use \"full\" or \"relaxed\""
            ))),
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "full",
            Self::Relaxed => "relaxed",
        })
    }
}

#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub durability: Durability,
    /// Read-only connections (reads beyond this many wait their turn).
    pub readers: usize,
    /// Most append requests committed in one transaction.
    pub max_batch: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self { durability: Durability::Full, readers: 4, max_batch: 1024 }
    }
}

/// The embedded store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    path: PathBuf,
    /// Held until close: two processes writing one log would each number positions on
    /// their own.
    lock: std::sync::Mutex<Option<std::fs::File>>,
    writer: Writer,
    reads: ReadPool,
    head: watch::Receiver<Position>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`, migrating its schema to this version.
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::storage(format!("cannot create data directory {}", dir.display()), e))?;
        let lock = lock_dir(dir)?;
        let path = dir.join(DB_FILE);
        let conn = schema::open_writer(&path, options.durability)?;
        let checkpointer = Checkpointer::start(&path, options.durability)?;
        let (writer, head) = Writer::start(conn, checkpointer, options.max_batch)?;
        let reads = ReadPool::open(&path, options.readers.max(1))?;
        Ok(Self { path, lock: std::sync::Mutex::new(Some(lock)), writer, reads, head })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The transactional outbox: runs `work` on the writer's connection inside the store's
    /// own transaction, then appends the events it returns. The application's SQL and those
    /// appends commit together, durably (like any append, the answer comes after the group's
    /// fsync), or not at all; the head watch then moves like after any append.
    ///
    /// `work` runs under a savepoint of its own within the writer's group commit. If it
    /// returns `Err`, panics, or any of its appends fails — invalid, wrong expected version,
    /// an event id used by another event: the rules of [`EventStore::append_many`], checked
    /// against everything committed before it — the savepoint is rolled back, its rows with
    /// its events, and the other writes of the group are unaffected — unless its SQL ends
    /// the whole transaction itself (`INSERT OR ROLLBACK`, `RAISE(ROLLBACK)` in a trigger) or
    /// the disk fails, which fails every write of the group, none half-stored. Its appends form one
    /// atomic multi-stream append; returning none is allowed (only the rows are written).
    /// Re-sending appends already stored (same ids, same streams and order) stores nothing
    /// twice and answers with the original results, while `work`'s SQL runs and commits
    /// again: make it idempotent too (`INSERT … ON CONFLICT`) if it may be re-sent.
    ///
    /// The application's tables live in the store's database file, created by `work` itself
    /// (`CREATE TABLE IF NOT EXISTS …` is allowed, DDL is transactional in SQLite). Name them
    /// so they cannot meet Bifrost's (`events`, `streams`, `meta`, `state`,
    /// `refinery_schema_history`), for instance with a prefix of the application's. Read them
    /// through a connection of the application's own on [`path`](Self::path) (WAL: readers
    /// never block the writer); write them only through `transact`, since a second writing
    /// connection would make the writer wait for SQLite's write lock.
    ///
    /// `work` runs on the writer's thread: every append of the store waits while it runs, so
    /// keep it to a few statements — no network calls, no sleeping. While it runs, an
    /// authorizer refuses (as a `rusqlite` error) what would break the writer: ending the
    /// transaction (`COMMIT`, `ROLLBACK`, `BEGIN`), touching the job's savepoint, writing or
    /// altering the store's tables (reading them is fine), setting pragmas, `ATTACH`. A panic
    /// is caught and answered as [`OutboxError::Panicked`] (this needs the default
    /// `panic = "unwind"`). Once queued, the work runs even if the returned future is
    /// dropped; the caller then does not learn the outcome.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use bifrost_core::{EventType, ExpectedVersion, NewEvent, StreamAppend, StreamName};
    /// use bifrost_sqlite::{SqliteOptions, SqliteStore, rusqlite};
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let store = SqliteStore::open(dir.path(), SqliteOptions::default())?;
    /// let placed = NewEvent::new(EventType::new("order.placed")?, r#"{"total":42}"#);
    /// let append = StreamAppend::new(StreamName::new("order-o1")?, ExpectedVersion::NoStream, vec![placed]);
    /// let (results, rows) = store
    ///     .transact(move |conn| {
    ///         conn.execute_batch("CREATE TABLE IF NOT EXISTS app_orders (id TEXT PRIMARY KEY, total INTEGER)")?;
    ///         let rows = conn.execute("INSERT INTO app_orders (id, total) VALUES ('o1', 42)", [])?;
    ///         Ok::<_, rusqlite::Error>((vec![append], rows))
    ///     })
    ///     .await?;
    /// assert_eq!((results[0].last_version, rows), (1, 1));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn transact<F, T, E>(&self, work: F) -> Result<(Vec<AppendResult>, T), OutboxError<E>>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<(Vec<StreamAppend>, T), E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer.transact(Box::new(outbox::Work::new(work, reply)))?;
        answer.await.map_err(|_| OutboxError::Store(Error::Unavailable("the store is closed".into())))?
    }
}

/// Unfiltered reads at least this large are split across read connections.
const PARALLEL_READ_MIN: usize = 4096;

impl SqliteStore {
    /// A large unfiltered page read as position ranges on several connections at once:
    /// decoding rows is the cost, and it parallelises. Every position up to `head` (the
    /// head watch, moved only after commits) is committed, so each connection's snapshot
    /// holds its whole range and the pieces join without gap or overlap.
    async fn read_all_parallel(&self, after: Position, head: Position, limit: usize) -> Result<LogSlice> {
        let upper = head.min(after.saturating_add(limit as u64));
        let parts = self.reads.size().min(2) as u64;
        let span = (upper - after).div_ceil(parts);
        let reads = (0..parts).map(|i| {
            let low = after + i * span;
            let high = upper.min(low + span);
            self.reads.run(move |conn| reader::read_range(conn, low, high))
        });
        let mut events = Vec::with_capacity((upper - after) as usize);
        for part in futures::future::try_join_all(reads).await? {
            events.extend(part);
        }
        Ok(LogSlice { events, next_position: upper })
    }
}

fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("bifrost.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::storage(format!("cannot open {}", path.display()), e))?;
    file.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => Error::Unavailable(format!(
            "the data directory {} is in use by another Bifrost process",
            dir.display()
        )),
        std::fs::TryLockError::Error(e) => Error::storage(format!("cannot lock {}", path.display()), e),
    })?;
    Ok(file)
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        validate_appends(&appends)?;
        self.writer.append(appends).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: Version,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice> {
        let stream = stream.clone();
        self.reads.run(move |conn| reader::read_stream(conn, &stream, from, direction, limit)).await
    }

    async fn read_all(&self, after: Position, filter: &LogFilter, limit: usize) -> Result<LogSlice> {
        let head = *self.head.borrow();
        let mut slice = if filter.is_empty() && limit >= PARALLEL_READ_MIN && after < head {
            self.read_all_parallel(after, head, limit).await?
        } else {
            let owned = filter.clone();
            self.reads.run(move |conn| reader::read_all(conn, after, &owned, limit)).await?
        };
        // The name rules (tenant, `$` streams) after the query: a page may come back short,
        // its `next_position` still past every row read.
        slice.events.retain(|e| filter.admits(&e.stream));
        Ok(slice)
    }

    async fn event(&self, id: Uuid) -> Result<Option<RecordedEvent>> {
        self.reads.run(move |conn| reader::event(conn, id)).await
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo> {
        let stream = stream.clone();
        self.reads.run(move |conn| reader::stream_info(conn, &stream)).await
    }

    async fn list_streams(&self, query: &StreamListQuery) -> Result<StreamListing> {
        let query = query.clone();
        self.reads.run(move |conn| reader::list_streams(conn, &query)).await
    }

    async fn delete_stream(&self, stream: &StreamName, mode: DeleteMode) -> Result<()> {
        self.writer.delete(stream.clone(), mode).await
    }

    fn head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }

    async fn close(&self) -> Result<()> {
        self.writer.close().await?;
        self.reads.close();
        drop(self.lock.lock().unwrap_or_else(|p| p.into_inner()).take());
        Ok(())
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn write_state(&self, changes: Vec<StateChange>) -> Result<()> {
        validate_state_changes(&changes)?;
        self.writer.write_state(changes, true).await
    }

    /// Rides in a commit without an fsync when every write of its group allows it.
    async fn write_state_unflushed(&self, changes: Vec<StateChange>) -> Result<()> {
        validate_state_changes(&changes)?;
        self.writer.write_state(changes, false).await
    }

    async fn read_state(&self, scope: &str, key: &str) -> Result<Option<Bytes>> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.reads.run(move |conn| state::read(conn, &scope, &key)).await
    }

    async fn scan_state(&self, scope: &str, after: Option<&str>, limit: usize) -> Result<Vec<StateEntry>> {
        let (scope, after) = (scope.to_owned(), after.map(str::to_owned));
        self.reads.run(move |conn| state::scan(conn, &scope, after.as_deref(), limit)).await
    }
}
