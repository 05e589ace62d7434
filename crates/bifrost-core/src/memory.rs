//! An in-memory store: the reference implementation of the contract, for tests and for
//! embedding where durability is not wanted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use crate::backend::plan::{GroupPlanner, PlanLookup, Planned};
use crate::backend::rules::{
    StoredEventRef, StreamState, aggregate_type_of, check_log_start, stream_window, validate_appends,
};
use crate::error::{Error, Result};
use crate::event::{EventId, NewEvent, RecordedEvent};
use crate::name::StreamName;
use crate::state::{MemoryState, StateChange, StateEntry, StateStore};
use crate::store::{
    AppendResult, DeleteMode, Direction, EventStore, LogFilter, LogSlice, Position, StreamAppend, StreamInfo,
    StreamListQuery, StreamListing, StreamSlice, StreamSummary, Version,
};
use crate::timestamp::Timestamp;

struct Stored {
    event: RecordedEvent,
    correlation_id: Option<String>,
}

struct StreamRow {
    version: Version,
    aggregate_type: String,
    created_at: Timestamp,
    updated_at: Timestamp,
    state: StreamState,
    /// Positions of this stream's events, by version - 1.
    positions: Vec<Position>,
}

#[derive(Default)]
struct Inner {
    /// The log, by position.
    log: BTreeMap<Position, Stored>,
    by_id: HashMap<EventId, Position>,
    streams: BTreeMap<StreamName, StreamRow>,
    last_position: Position,
    last_recorded: Timestamp,
    closed: bool,
}

pub struct InMemoryStore {
    inner: RwLock<Inner>,
    state: MemoryState,
    /// Dropped on close, which ends every subscription.
    head_tx: std::sync::Mutex<Option<watch::Sender<Position>>>,
    head: watch::Receiver<Position>,
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryStore {
    pub fn new() -> Self {
        let (head_tx, head) = watch::channel(0);
        Self {
            inner: RwLock::new(Inner::default()),
            state: MemoryState::new(),
            head_tx: std::sync::Mutex::new(Some(head_tx)),
            head,
        }
    }

    pub fn shared() -> Arc<Self> {
        Arc::new(Self::new())
    }

    /// The log for reading; `Unavailable` once closed.
    fn read(&self) -> Result<RwLockReadGuard<'_, Inner>> {
        // A panic while holding the lock cannot leave the log half-written: appends build
        // everything first and mutate only after every check has passed.
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if inner.closed {
            return Err(Error::Unavailable("the store is closed".into()));
        }
        Ok(inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn lookup(&self, id: &EventId) -> Option<StoredEventRef> {
        let e = &self.log.get(self.by_id.get(id)?)?.event;
        Some(StoredEventRef {
            stream: e.stream.clone(),
            version: e.version,
            position: e.position,
            event_type: e.event_type.clone(),
            data: e.data.clone(),
        })
    }

    fn record(
        &mut self,
        stream: &StreamName,
        start: Version,
        events: Vec<NewEvent>,
        now: Timestamp,
    ) -> AppendResult {
        let first_position = self.last_position + 1;
        let aggregate_type = aggregate_type_of(&events[0], stream).to_owned();
        let row = self.streams.entry(stream.clone()).or_insert_with(|| StreamRow {
            version: 0,
            aggregate_type,
            created_at: now,
            updated_at: now,
            state: StreamState::Live,
            positions: Vec::new(),
        });
        row.state = StreamState::Live;
        row.updated_at = now;
        let mut version = start;
        for event in events {
            version += 1;
            self.last_position += 1;
            let position = self.last_position;
            let recorded = RecordedEvent {
                id: event.id,
                stream: stream.clone(),
                aggregate_type: aggregate_type_of(&event, stream).to_owned(),
                event_type: event.event_type,
                schema_version: event.schema_version,
                version,
                position,
                data: event.data,
                metadata: event.metadata.to_json_bytes(),
                occurred_at: event.occurred_at.unwrap_or(now),
                recorded_at: now,
            };
            row.positions.push(position);
            self.by_id.insert(event.id, position);
            self.log
                .insert(position, Stored { event: recorded, correlation_id: event.metadata.correlation_id });
        }
        row.version = version;
        AppendResult {
            stream: stream.clone(),
            first_version: start + 1,
            last_version: version,
            first_position,
            last_position: self.last_position,
        }
    }
}

impl PlanLookup for &Inner {
    fn event(&mut self, id: &EventId) -> Result<Option<StoredEventRef>> {
        Ok(self.lookup(id))
    }

    fn stream(&mut self, stream: &StreamName) -> Result<Option<(Version, StreamState)>> {
        Ok(self.streams.get(stream).map(|s| (s.version, s.state)))
    }
}

#[async_trait]
impl StateStore for InMemoryStore {
    async fn write_state(&self, changes: Vec<StateChange>) -> Result<()> {
        self.state.write_state(changes).await
    }

    async fn read_state(&self, scope: &str, key: &str) -> Result<Option<Bytes>> {
        self.state.read_state(scope, key).await
    }

    async fn scan_state(&self, scope: &str, after: Option<&str>, limit: usize) -> Result<Vec<StateEntry>> {
        self.state.scan_state(scope, after, limit).await
    }
}

#[async_trait]
impl EventStore for InMemoryStore {
    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        validate_appends(&appends)?;
        let mut inner = self.write();
        if inner.closed {
            return Err(Error::Unavailable("the store is closed".into()));
        }
        // Plan everything first; mutate only when all of it holds (atomicity). Every id is
        // checked, so nothing can fail while recording.
        let plans = GroupPlanner::new(&*inner, inner.last_position).plan(&appends, true)?;
        let now = Timestamp::now().max(inner.last_recorded);
        inner.last_recorded = now;
        let results = appends
            .into_iter()
            .zip(plans)
            .map(|(append, plan)| match plan {
                Planned::Replay(original) => original,
                Planned::Write { after, .. } => inner.record(&append.stream, after, append.events, now),
            })
            .collect();
        let head = inner.last_position;
        drop(inner);
        if let Some(tx) = self.head_tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            tx.send_if_modified(|h| std::mem::replace(h, head) != head);
        }
        Ok(results)
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: Version,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice> {
        let inner = self.read()?;
        let row = match inner.streams.get(stream) {
            None => return Err(Error::StreamNotFound(stream.clone())),
            Some(r) if r.state == StreamState::Tombstoned => {
                return Err(Error::StreamDeleted(stream.clone()));
            }
            Some(r) if r.state == StreamState::SoftDeleted => {
                return Err(Error::StreamNotFound(stream.clone()));
            }
            Some(r) => r,
        };
        let versions = stream_window(stream, row.version, from, direction, limit)?;
        let events = versions
            .iter()
            .filter_map(|v| row.positions.get(usize::try_from(v - 1).ok()?))
            .filter_map(|p| inner.log.get(p))
            .map(|s| s.event.clone())
            .collect();
        Ok(StreamSlice { events, next: versions.next })
    }

    async fn read_all(&self, after: Position, filter: &LogFilter, limit: usize) -> Result<LogSlice> {
        let inner = self.read()?;
        check_log_start(after, inner.last_position)?;
        let mut events = Vec::new();
        let mut next_position = inner.last_position;
        for (position, stored) in inner.log.range(after + 1..) {
            let e = &stored.event;
            if filter.matches(&e.event_type, &e.stream, stored.correlation_id.as_deref(), e.recorded_at) {
                events.push(e.clone());
                if events.len() >= limit.max(1) {
                    next_position = *position;
                    break;
                }
            }
        }
        Ok(LogSlice { events, next_position })
    }

    async fn event(&self, id: EventId) -> Result<Option<RecordedEvent>> {
        let inner = self.read()?;
        Ok(inner.by_id.get(&id).and_then(|p| inner.log.get(p)).map(|s| s.event.clone()))
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo> {
        let inner = self.read()?;
        match inner.streams.get(stream) {
            None => Err(Error::StreamNotFound(stream.clone())),
            Some(r) if r.state == StreamState::Tombstoned => Err(Error::StreamDeleted(stream.clone())),
            Some(r) => Ok(StreamInfo {
                stream: stream.clone(),
                version: r.version,
                aggregate_type: r.aggregate_type.clone(),
                created_at: r.created_at,
                updated_at: r.updated_at,
                deleted: r.state == StreamState::SoftDeleted,
            }),
        }
    }

    async fn list_streams(&self, query: &StreamListQuery) -> Result<StreamListing> {
        let inner = self.read()?;
        let limit = query.limit.max(1);
        let mut streams = Vec::new();
        let mut more = false;
        for (name, row) in &inner.streams {
            if query.after.as_deref().is_some_and(|a| name.as_str() <= a)
                || query.prefix.as_deref().is_some_and(|p| !name.starts_with(p))
                || query.category.as_ref().is_some_and(|c| name.category() != c.as_str())
                || row.state != StreamState::Live
            {
                continue;
            }
            if streams.len() == limit {
                more = true;
                break;
            }
            streams.push(StreamSummary {
                stream: name.clone(),
                version: row.version,
                aggregate_type: row.aggregate_type.clone(),
                updated_at: row.updated_at,
            });
        }
        let next = if more { streams.last().map(|s| s.stream.clone()) } else { None };
        Ok(StreamListing { streams, next })
    }

    async fn delete_stream(&self, stream: &StreamName, mode: DeleteMode) -> Result<()> {
        let mut inner = self.write();
        if inner.closed {
            return Err(Error::Unavailable("the store is closed".into()));
        }
        let inner = &mut *inner;
        let row = match inner.streams.get_mut(stream) {
            None => return Err(Error::StreamNotFound(stream.clone())),
            Some(r) if r.state == StreamState::Tombstoned => {
                return Err(Error::StreamDeleted(stream.clone()));
            }
            Some(r) if r.state == StreamState::SoftDeleted && mode == DeleteMode::Soft => {
                return Err(Error::StreamNotFound(stream.clone()));
            }
            Some(r) => r,
        };
        row.updated_at = Timestamp::now();
        match mode {
            DeleteMode::Soft => row.state = StreamState::SoftDeleted,
            DeleteMode::Hard => {
                row.state = StreamState::Tombstoned;
                for p in row.positions.drain(..) {
                    if let Some(s) = inner.log.remove(&p) {
                        inner.by_id.remove(&s.event.id);
                    }
                }
            }
        }
        Ok(())
    }

    fn head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }

    async fn close(&self) -> Result<()> {
        self.write().closed = true;
        drop(self.head_tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        Ok(())
    }
}
