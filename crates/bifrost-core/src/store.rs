//! The store contract. Every backend implements [`EventStore`] and passes the conformance
//! suite in [`crate::testkit`]; the rules shared by all backends are in
//! [`crate::backend::rules`].

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::{Error, Result, VersionConflict};
use crate::event::{EventId, NewEvent, RecordedEvent};
use crate::name::{Category, StreamName};
use crate::pattern::TypePattern;
use crate::subscription::{self, EventStream};
use crate::tenant::TenantScope;
use crate::timestamp::Timestamp;

/// A place in the global log (`$all`). Strictly increasing; `0` is "before the first event".
pub type Position = u64;
/// A place in one stream: 1-based and contiguous; `0` is "before the first event".
pub type Version = u64;

/// What the writer believes about a stream before appending (optimistic concurrency).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The stream must not exist (or must have been soft-deleted).
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream must be exactly at this version; `Exact(0)` means the same as `NoStream`.
    Exact(Version),
}

impl ExpectedVersion {
    /// Checks this expectation against the stream's actual version (`None`: no stream).
    pub fn check(self, stream: &StreamName, actual: Option<Version>) -> Result<(), VersionConflict> {
        let holds = match self {
            Self::Any => true,
            Self::NoStream | Self::Exact(0) => actual.is_none(),
            Self::StreamExists => actual.is_some(),
            Self::Exact(v) => actual == Some(v),
        };
        if holds { Ok(()) } else { Err(VersionConflict { stream: stream.clone(), expected: self, actual }) }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("an existing stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// The events for one stream inside an append (which may span several streams).
#[derive(Clone, Debug, PartialEq)]
pub struct StreamAppend {
    pub stream: StreamName,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    pub fn new(stream: StreamName, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self { stream, expected, events }
    }
}

/// Where an append's events landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResult {
    pub stream: StreamName,
    pub first_version: Version,
    pub last_version: Version,
    pub first_position: Position,
    pub last_position: Position,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    #[default]
    Forward,
    Backward,
}

/// A page of one stream. `next` is the version to continue from, `None` at the end.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSlice {
    pub events: Vec<RecordedEvent>,
    pub next: Option<Version>,
}

/// A page of the global log. `next_position` is the (exclusive) position to continue
/// from: the last event returned, or the head of the log when the filter skipped the rest.
#[derive(Clone, Debug, PartialEq)]
pub struct LogSlice {
    pub events: Vec<RecordedEvent>,
    pub next_position: Position,
}

/// Which events of the global log a read or subscription wants. Empty matches everything
/// but `$` streams, which only a filter on their category (`$bifrost`) lets through.
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    /// Any of these patterns (none: every type).
    pub types: Vec<TypePattern>,
    pub category: Option<Category>,
    pub correlation_id: Option<String>,
    /// `recorded_at >= since`.
    pub since: Option<Timestamp>,
    /// `recorded_at < until`.
    pub until: Option<Timestamp>,
    /// Whose streams: every tenant's by default.
    pub tenant: TenantScope,
}

impl LogFilter {
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
            && self.category.is_none()
            && self.correlation_id.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }

    pub fn with_types<I, S>(mut self, patterns: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for p in patterns {
            self.types.push(TypePattern::new(p.as_ref())?);
        }
        Ok(self)
    }

    /// Whether the filter lets `stream` through on its name alone: the tenant scope, and
    /// `$` streams only under a `$` category. Backends that filter in a query apply it to the
    /// rows they read.
    pub fn admits(&self, stream: &StreamName) -> bool {
        (!stream.is_system() || self.category.as_ref().is_some_and(Category::is_system))
            && self.tenant.admits(stream)
    }

    pub fn matches_type(&self, event_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|p| p.matches(event_type))
    }

    /// The whole filter, given the fields it looks at.
    pub fn matches(
        &self,
        event_type: &str,
        stream: &StreamName,
        correlation_id: Option<&str>,
        recorded_at: Timestamp,
    ) -> bool {
        self.matches_type(event_type)
            && self.admits(stream)
            && self.category.as_ref().is_none_or(|c| c.as_str() == stream.category())
            && self.correlation_id.as_deref().is_none_or(|c| Some(c) == correlation_id)
            && self.since.is_none_or(|s| recorded_at >= s)
            && self.until.is_none_or(|u| recorded_at < u)
    }
}

/// What the store knows about one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    pub stream: StreamName,
    /// The last version written (kept across a soft delete, so appends continue after it).
    pub version: Version,
    pub aggregate_type: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Soft-deleted: reads answer "not found" until the next append.
    pub deleted: bool,
}

#[derive(Clone, Debug, Default)]
pub struct StreamListQuery {
    pub prefix: Option<String>,
    pub category: Option<Category>,
    /// Exclusive: list names after this one.
    pub after: Option<String>,
    pub limit: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    pub stream: StreamName,
    pub version: Version,
    pub aggregate_type: String,
    pub updated_at: Timestamp,
}

/// Streams in name order; `next` continues the listing (`after=next`), `None` at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamListing {
    pub streams: Vec<StreamSummary>,
    pub next: Option<StreamName>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteMode {
    /// Reads answer "not found"; a later append revives the stream after its last version.
    Soft,
    /// Tombstone: the events are removed and the name can never be written again.
    Hard,
}

/// Where a subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeFrom {
    /// The first event of the log.
    Start,
    /// Only events committed after the subscription was made.
    End,
    /// Events after this position (exclusive).
    After(Position),
}

/// The event store contract.
///
/// Invariants every backend keeps (the conformance suite checks each one):
/// appends are atomic across all their streams; versions are contiguous per stream;
/// positions strictly increase in commit order, so a reader that has seen position `P`
/// never later meets a newly committed event below `P`; an append is acknowledged only
/// once it is durable (unless the user chose a relaxed mode); re-sending an acknowledged
/// append with the same event ids returns the original result and stores nothing twice.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends to several streams atomically: every event of every stream, or nothing.
    /// Each stream's expected version is checked; on any conflict the error names them all.
    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>>;

    /// Appends events to one stream atomically.
    async fn append(
        &self,
        stream: StreamName,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        let mut results = self.append_many(vec![StreamAppend::new(stream, expected, events)]).await?;
        results.pop().ok_or_else(|| Error::Internal("append returned no result".into()))
    }

    /// Reads up to `limit` events of a stream starting at version `from` (inclusive), in
    /// `direction`. Backward reads from beyond the last version start at the last version;
    /// a forward read may start at most one past the last version.
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: Version,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice>;

    /// Reads up to `limit` events of the global log after position `after` (exclusive)
    /// that match `filter`. Starting beyond the head of the log is an error.
    async fn read_all(&self, after: Position, filter: &LogFilter, limit: usize) -> Result<LogSlice>;

    /// One event by id, `None` when no such event is stored.
    async fn event(&self, id: EventId) -> Result<Option<RecordedEvent>>;

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo>;

    async fn list_streams(&self, query: &StreamListQuery) -> Result<StreamListing>;

    async fn delete_stream(&self, stream: &StreamName, mode: DeleteMode) -> Result<()>;

    /// The position of the last committed event, updated after every commit. Live
    /// subscriptions wait on it instead of polling. Copy the value out
    /// (`let head = *store.head().borrow();`): a borrow held across an `.await` blocks the
    /// store's own updates of the head.
    fn head(&self) -> watch::Receiver<Position>;

    /// Stops accepting writes, finishes those in flight and releases the storage.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Subscriptions for every store: catch-up from the log, then live, without gap or
/// duplicate, pulled by the consumer (back-pressure).
pub trait EventStoreExt: EventStore {
    fn subscribe(self: Arc<Self>, from: SubscribeFrom, filter: LogFilter) -> EventStream
    where
        Self: Sized,
    {
        subscription::subscribe(self, from, filter)
    }
}

impl<S: EventStore> EventStoreExt for S {}

/// The append rule's former path, still imported by `bifrost-client`; new code imports it
/// from [`crate::backend::rules`].
#[doc(hidden)]
pub use crate::backend::rules::validate_appends;
