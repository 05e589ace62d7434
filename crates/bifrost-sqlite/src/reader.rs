//! Reads: a pool of read-only connections, each read inside one snapshot.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bifrost_core::backend::codec::{corrupt, i64_from, u64_from};
use bifrost_core::backend::rules::{StreamState, check_log_start, stream_window};
use bifrost_core::{
    Direction, Error, LogFilter, LogSlice, NameCache, Position, RecordedEvent, Result, StreamInfo,
    StreamListQuery, StreamListing, StreamName, StreamSlice, StreamSummary, Timestamp, Version,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Transaction, params, params_from_iter};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::codec::{EVENT_COLUMNS, event_from_row, sql};
use crate::schema::open_reader;

/// Rows a filtered global read examines before it returns what it has (with
/// `next_position` where it stopped), so one request never scans an unbounded log.
const SCAN_BUDGET: usize = 100_000;

pub(crate) struct ReadPool {
    size: usize,
    connections: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
}

/// Puts the connection back even if the read panicked.
struct Lease {
    conn: Option<Connection>,
    pool: Arc<Mutex<Vec<Connection>>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        }
    }
}

impl ReadPool {
    pub(crate) fn open(path: &Path, size: usize) -> Result<Self> {
        let connections = (0..size).map(|_| open_reader(path)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            size,
            connections: Arc::new(Mutex::new(connections)),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// Runs `read` on a pooled connection, on the blocking thread pool, in one transaction.
    pub(crate) async fn run<T, F>(&self, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("the store is closed".into()))?;
        let pool = self.connections.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut lease = Lease { conn, pool };
            let conn = lease.conn.as_mut().ok_or_else(|| Error::Unavailable("no read connection".into()))?;
            let tx = conn.transaction().map_err(sql)?;
            let result = read(&tx);
            // Read-only: ending the snapshot cannot lose anything.
            drop(tx);
            result
        })
        .await
        .map_err(|e| Error::storage("a read task failed", e))?
    }

    /// How many connections the pool holds.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn close(&self) {
        self.permits.close();
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// A stream's head version and state, as committed (or as written so far by the writer's
/// open transaction).
pub(crate) fn stored_stream(
    conn: &Connection,
    stream: &StreamName,
) -> Result<Option<(Version, StreamState)>> {
    let row = conn
        .prepare_cached("SELECT version, state FROM streams WHERE name = ?1")
        .map_err(sql)?
        .query_row([stream.as_str()], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .optional()
        .map_err(sql)?;
    row.map(|(v, s)| Ok((u64_from(v, "version")?, StreamState::from_i64(s)?))).transpose()
}

pub(crate) fn read_stream(
    conn: &Connection,
    stream: &StreamName,
    from: Version,
    direction: Direction,
    limit: usize,
) -> Result<StreamSlice> {
    let last = match stored_stream(conn, stream)? {
        None | Some((_, StreamState::SoftDeleted)) => return Err(Error::StreamNotFound(stream.clone())),
        Some((_, StreamState::Tombstoned)) => return Err(Error::StreamDeleted(stream.clone())),
        Some((v, StreamState::Live)) => v,
    };
    let window = stream_window(stream, last, from, direction, limit)?;
    if window.count == 0 {
        return Ok(StreamSlice { events: Vec::new(), next: window.next });
    }
    let (low, high, order) = match direction {
        Direction::Forward => (window.first, window.first + window.count as u64 - 1, "ASC"),
        Direction::Backward => (window.first + 1 - window.count as u64, window.first, "DESC"),
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream = ?1 AND version BETWEEN ?2 AND ?3 \
             ORDER BY version {order}"
        ))
        .map_err(sql)?;
    let mut rows = stmt.query(params![stream.as_str(), i64_from(low)?, i64_from(high)?]).map_err(sql)?;
    let mut events = Vec::with_capacity(window.count);
    let mut names = NameCache::default();
    while let Some(row) = rows.next().map_err(sql)? {
        events.push(event_from_row(row, &mut names)?);
    }
    Ok(StreamSlice { events, next: window.next })
}

fn last_position(conn: &Connection) -> Result<Position> {
    let v: i64 = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'last_position'")
        .map_err(sql)?
        .query_row([], |r| r.get(0))
        .map_err(sql)?;
    u64_from(v, "last position")
}

/// The first position whose `recorded_at` is at or after `at` (or `head + 1`): a binary
/// search over positions, exact because `recorded_at` never decreases along the log.
fn first_position_at(conn: &Connection, at: Timestamp, head: Position) -> Result<Position> {
    let mut probe = conn
        .prepare_cached(
            "SELECT position, recorded_at FROM events WHERE position >= ?1 ORDER BY position LIMIT 1",
        )
        .map_err(sql)?;
    let (mut lo, mut hi) = (1u64, head + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let found: Option<(i64, i64)> =
            probe.query_row([i64_from(mid)?], |r| Ok((r.get(0)?, r.get(1)?))).optional().map_err(sql)?;
        match found {
            Some((position, recorded_at)) if recorded_at < at.as_micros() => {
                lo = u64_from(position, "position")? + 1;
            }
            _ => hi = mid,
        }
    }
    Ok(lo)
}

pub(crate) fn read_all(
    conn: &Connection,
    after: Position,
    filter: &LogFilter,
    limit: usize,
) -> Result<LogSlice> {
    let head = last_position(conn)?;
    check_log_start(after, head)?;
    let limit = limit.max(1);
    let mut low = after + 1;
    let mut high = head + 1; // exclusive
    if let Some(since) = filter.since {
        low = low.max(first_position_at(conn, since, head)?);
    }
    if let Some(until) = filter.until {
        high = high.min(first_position_at(conn, until, head)?);
    }
    if low >= high {
        return Ok(LogSlice { events: Vec::new(), next_position: head });
    }
    let mut sql_text = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position >= ?1 AND position < ?2");
    let mut args: Vec<Value> = vec![Value::Integer(i64_from(low)?), Value::Integer(i64_from(high)?)];
    if let Some(category) = &filter.category {
        args.push(Value::Text(category.as_str().to_owned()));
        sql_text.push_str(&format!(" AND category = ?{}", args.len()));
    }
    if let Some(correlation_id) = &filter.correlation_id {
        args.push(Value::Text(correlation_id.clone()));
        sql_text.push_str(&format!(" AND correlation_id = ?{}", args.len()));
    }
    // Exact types go into SQL; wildcard patterns are matched on the type column before
    // the rest of the row is decoded.
    let exact: Option<Vec<&str>> = filter.types.iter().map(|p| p.as_exact()).collect();
    if let Some(types) = exact.filter(|t| !t.is_empty()) {
        let first = args.len() + 1;
        let placeholders: Vec<String> = (first..first + types.len()).map(|i| format!("?{i}")).collect();
        args.extend(types.iter().map(|t| Value::Text((*t).to_owned())));
        sql_text.push_str(&format!(" AND type IN ({})", placeholders.join(", ")));
    }
    sql_text.push_str(" ORDER BY position");
    let mut stmt = conn.prepare_cached(&sql_text).map_err(sql)?;
    let mut rows = stmt.query(params_from_iter(args)).map_err(sql)?;
    let mut events: Vec<RecordedEvent> =
        Vec::with_capacity(if filter.is_empty() { limit.min(16_384) } else { limit.min(1024) });
    let mut names = NameCache::default();
    let mut scanned = 0;
    let mut last_seen = after;
    while let Some(row) = rows.next().map_err(sql)? {
        scanned += 1;
        let position = u64_from(row.get(0).map_err(sql)?, "position")?;
        last_seen = position;
        let type_ok = filter.types.is_empty() || {
            let t = row.get_ref(5).map_err(sql)?.as_str().map_err(|e| corrupt("event type", e))?;
            filter.matches_type(t)
        };
        if type_ok {
            events.push(event_from_row(row, &mut names)?);
            if events.len() == limit {
                return Ok(LogSlice { events, next_position: position });
            }
        }
        if scanned >= SCAN_BUDGET {
            return Ok(LogSlice { events, next_position: last_seen });
        }
    }
    // Nothing more matched up to the snapshot's head (or the time range's end).
    let next_position = if high > head { head } else { last_seen.max(high - 1) };
    Ok(LogSlice { events, next_position })
}

/// Every event with `low < position <= high`, in order: the unfiltered page read.
pub(crate) fn read_range(conn: &Connection, low: Position, high: Position) -> Result<Vec<RecordedEvent>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > ?1 AND position <= ?2 ORDER BY position"
        ))
        .map_err(sql)?;
    let mut rows = stmt.query(params![i64_from(low)?, i64_from(high)?]).map_err(sql)?;
    let mut events = Vec::with_capacity(usize::try_from(high - low).unwrap_or(0).min(16_384));
    let mut names = NameCache::default();
    while let Some(row) = rows.next().map_err(sql)? {
        events.push(event_from_row(row, &mut names)?);
    }
    Ok(events)
}

pub(crate) fn event(conn: &Connection, id: Uuid) -> Result<Option<RecordedEvent>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1")).map_err(sql)?;
    let mut rows = stmt.query([id.as_bytes().as_slice()]).map_err(sql)?;
    rows.next().map_err(sql)?.map(|row| event_from_row(row, &mut NameCache::default())).transpose()
}

pub(crate) fn stream_info(conn: &Connection, stream: &StreamName) -> Result<StreamInfo> {
    let row = conn
        .prepare_cached(
            "SELECT version, aggregate_type, created_at, updated_at, state FROM streams WHERE name = ?1",
        )
        .map_err(sql)?
        .query_row([stream.as_str()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()
        .map_err(sql)?;
    let Some((version, aggregate_type, created_at, updated_at, state)) = row else {
        return Err(Error::StreamNotFound(stream.clone()));
    };
    let state = StreamState::from_i64(state)?;
    if state == StreamState::Tombstoned {
        return Err(Error::StreamDeleted(stream.clone()));
    }
    Ok(StreamInfo {
        stream: stream.clone(),
        version: u64_from(version, "version")?,
        aggregate_type,
        created_at: Timestamp::from_micros(created_at),
        updated_at: Timestamp::from_micros(updated_at),
        deleted: state == StreamState::SoftDeleted,
    })
}

pub(crate) fn list_streams(conn: &Connection, query: &StreamListQuery) -> Result<StreamListing> {
    let limit = query.limit.max(1);
    let mut sql_text =
        String::from("SELECT name, version, aggregate_type, updated_at FROM streams WHERE state = 0");
    let mut args: Vec<Value> = Vec::new();
    if let Some(after) = &query.after {
        args.push(Value::Text(after.clone()));
        sql_text.push_str(&format!(" AND name > ?{}", args.len()));
    }
    if let Some(prefix) = &query.prefix {
        // Stream names are ASCII up to 'z', so `prefix || '{'` bounds every name with that
        // prefix and the primary key serves the range.
        args.push(Value::Text(prefix.clone()));
        sql_text.push_str(&format!(" AND name >= ?{0} AND name < ?{0} || '{{'", args.len()));
    }
    if let Some(category) = &query.category {
        args.push(Value::Text(category.as_str().to_owned()));
        sql_text.push_str(&format!(" AND category = ?{}", args.len()));
    }
    args.push(Value::Integer(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
    sql_text.push_str(&format!(" ORDER BY name LIMIT ?{}", args.len()));
    let mut stmt = conn.prepare_cached(&sql_text).map_err(sql)?;
    let mut rows = stmt.query(params_from_iter(args)).map_err(sql)?;
    let mut streams = Vec::new();
    let mut more = false;
    while let Some(row) = rows.next().map_err(sql)? {
        if streams.len() == limit {
            more = true;
            break;
        }
        let name: String = row.get(0).map_err(sql)?;
        streams.push(StreamSummary {
            stream: StreamName::stored(&name)?,
            version: u64_from(row.get(1).map_err(sql)?, "version")?,
            aggregate_type: row.get(2).map_err(sql)?,
            updated_at: Timestamp::from_micros(row.get(3).map_err(sql)?),
        });
    }
    let next = if more { streams.last().map(|s| s.stream.clone()) } else { None };
    Ok(StreamListing { streams, next })
}
