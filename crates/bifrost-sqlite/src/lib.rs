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
//! Invariants: positions are assigned by the writer in commit order and never reused, so
//! every read snapshot is a prefix of the log; `recorded_at` never decreases along the
//! log, which lets time-range filters become position ranges by binary search.

mod checkpoint;
mod codec;
mod reader;
mod schema;
mod state;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use async_trait::async_trait;
use bifrost_core::state::validate_state_changes;
use bifrost_core::store::validate_appends;
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
        if filter.is_empty() && limit >= PARALLEL_READ_MIN && after < head {
            return self.read_all_parallel(after, head, limit).await;
        }
        let filter = filter.clone();
        self.reads.run(move |conn| reader::read_all(conn, after, &filter, limit)).await
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
        self.writer.write_state(changes).await
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
