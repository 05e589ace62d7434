//! Reads. Each is one script (or one command), so it sees Redis between two appends, never
//! half of one; a page of the log is bounded by the head read in the same script.

use bifrost_core::backend::rules::{check_log_start, stream_window};
use bifrost_core::{
    Direction, Error, EventId, LogFilter, LogSlice, NameCache, Position, RecordedEvent, Result, StreamInfo,
    StreamListQuery, StreamListing, StreamName, StreamSlice, StreamSummary, Timestamp, Version,
};
use redis::Value;
use redis::aio::ConnectionManager;

use crate::codec::{array, bytes, corrupt_reply, decode_event, int, opt_bytes, redis_error, text, uint};
use crate::scripts::{EVENTS_BY_ID, Keys, LIST_STREAMS, READ_LOG, READ_STREAM};

/// Most events one script call returns: a script holds Redis while it runs.
const MAX_CHUNK: usize = 10_000;
/// Events a filtered read looks at per call, however few it wants.
const MIN_FILTERED_CHUNK: usize = 512;

/// Stream states as the scripts store them (`-1`: no such stream).
const LIVE: i64 = 0;
const SOFT_DELETED: i64 = 1;
const TOMBSTONED: i64 = 2;

/// A stream's version and state (`-1` when there is none).
async fn stream_state(
    conn: &mut ConnectionManager,
    keys: &Keys,
    stream: &StreamName,
) -> Result<(Version, i64)> {
    let (version, state): (Option<u64>, Option<i64>) = redis::cmd("HMGET")
        .arg(keys.meta(stream.as_str()))
        .arg("v")
        .arg("s")
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    Ok((version.unwrap_or(0), state.unwrap_or(-1)))
}

fn state_error(stream: &StreamName, state: i64) -> Error {
    if state == TOMBSTONED {
        Error::StreamDeleted(stream.clone())
    } else {
        Error::StreamNotFound(stream.clone())
    }
}

fn decode_all(values: Vec<Value>, names: &mut NameCache) -> Result<Vec<RecordedEvent>> {
    values.into_iter().map(|v| Ok(decode_event(&bytes(v)?, names)?.event)).collect()
}

pub(crate) async fn read_stream(
    conn: &mut ConnectionManager,
    keys: &Keys,
    stream: &StreamName,
    from: Version,
    direction: Direction,
    limit: usize,
) -> Result<StreamSlice> {
    let (last, state) = stream_state(conn, keys, stream).await?;
    if state != LIVE {
        return Err(state_error(stream, state));
    }
    let window = stream_window(stream, last, from, direction, limit)?;
    if window.count == 0 {
        return Ok(StreamSlice { events: Vec::new(), next: window.next });
    }
    let count = window.count as u64;
    let (low, high) = match direction {
        Direction::Forward => (window.first, window.first + count - 1),
        Direction::Backward => (window.first + 1 - count, window.first),
    };
    let mut invocation = READ_STREAM.key(&keys.log);
    invocation.arg(keys.meta(stream.as_str())).arg(keys.positions(stream.as_str())).arg(low).arg(high);
    let reply: Value = invocation.invoke_async(conn).await.map_err(redis_error)?;
    let mut parts = array(reply)?.into_iter();
    let (Some(state), Some(events)) = (parts.next(), parts.next()) else {
        return Err(corrupt_reply("stream read"));
    };
    let state = int(&state)?;
    if state != LIVE {
        // Deleted since the version was read.
        return Err(state_error(stream, state));
    }
    let mut events = decode_all(array(events)?, &mut NameCache::default())?;
    if direction == Direction::Backward {
        events.reverse();
    }
    Ok(StreamSlice { events, next: window.next })
}

/// One page of the log after `after`, at most `bound` (0: the head), and the head.
async fn log_page(
    conn: &mut ConnectionManager,
    keys: &Keys,
    after: Position,
    bound: Position,
    limit: usize,
) -> Result<(Position, Vec<Value>)> {
    let mut invocation = READ_LOG.key(&keys.head);
    invocation.key(&keys.log).arg(after).arg(bound).arg(limit);
    let reply: Value = invocation.invoke_async(conn).await.map_err(redis_error)?;
    let mut parts = array(reply)?.into_iter();
    let (Some(head), Some(events)) = (parts.next(), parts.next()) else {
        return Err(corrupt_reply("log read"));
    };
    Ok((uint(&head)?, array(events)?))
}

pub(crate) async fn read_all(
    conn: &mut ConnectionManager,
    keys: &Keys,
    after: Position,
    filter: &LogFilter,
    limit: usize,
) -> Result<LogSlice> {
    let limit = limit.max(1);
    let chunk = if filter.is_empty() { limit } else { limit.max(MIN_FILTERED_CHUNK) }.min(MAX_CHUNK);
    let mut names = NameCache::default();
    let mut events = Vec::new();
    let mut scanned = after;
    // The head of the first page bounds the rest, so the answer is one consistent view.
    let mut head = None;
    loop {
        let (page_head, page) = log_page(conn, keys, scanned, head.unwrap_or(0), chunk).await?;
        let first = head.is_none();
        let bound = *head.get_or_insert(page_head);
        if first {
            check_log_start(after, bound)?;
        }
        let exhausted = page.len() < chunk;
        for value in page {
            let decoded = decode_event(&bytes(value)?, &mut names)?;
            let e = &decoded.event;
            scanned = e.position;
            if filter.matches(&e.event_type, &e.stream, decoded.correlation_id.as_deref(), e.recorded_at) {
                events.push(decoded.event);
                if events.len() == limit {
                    return Ok(LogSlice { events, next_position: scanned });
                }
            }
        }
        if exhausted {
            return Ok(LogSlice { events, next_position: bound });
        }
    }
}

pub(crate) async fn event(
    conn: &mut ConnectionManager,
    keys: &Keys,
    id: EventId,
) -> Result<Option<RecordedEvent>> {
    let mut invocation = EVENTS_BY_ID.key(&keys.ids);
    invocation.key(&keys.log).arg(id.hyphenated().to_string());
    let reply: Value = invocation.invoke_async(conn).await.map_err(redis_error)?;
    let Some(found) = array(reply)?.into_iter().next() else { return Err(corrupt_reply("event by id")) };
    match opt_bytes(found)? {
        Some(stored) => Ok(Some(decode_event(&stored, &mut NameCache::default())?.event)),
        None => Ok(None),
    }
}

pub(crate) async fn stream_info(
    conn: &mut ConnectionManager,
    keys: &Keys,
    stream: &StreamName,
) -> Result<StreamInfo> {
    type Meta = (Option<u64>, Option<i64>, Option<String>, Option<i64>, Option<i64>);
    let (version, state, aggregate_type, created, updated): Meta = redis::cmd("HMGET")
        .arg(keys.meta(stream.as_str()))
        .arg(&["v", "s", "t", "c", "u"])
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    let state = state.unwrap_or(-1);
    if state != LIVE && state != SOFT_DELETED {
        return Err(state_error(stream, state));
    }
    Ok(StreamInfo {
        stream: stream.clone(),
        version: version.unwrap_or(0),
        aggregate_type: aggregate_type.unwrap_or_default(),
        created_at: Timestamp::from_micros(created.unwrap_or(0)),
        updated_at: Timestamp::from_micros(updated.unwrap_or(0)),
        deleted: state == SOFT_DELETED,
    })
}

/// Live streams in name order. The set of names is read by range (`prefix`, and the
/// category as a prefix); names that share a category's prefix but not the category
/// (`orderline` for `order`) are skipped here.
pub(crate) async fn list_streams(
    conn: &mut ConnectionManager,
    keys: &Keys,
    query: &StreamListQuery,
) -> Result<StreamListing> {
    let limit = query.limit.max(1);
    // Every name of the answer starts with both prefixes: the longer one bounds the range
    // (if neither starts with the other, nothing matches).
    let prefixes = [query.prefix.as_deref(), query.category.as_ref().map(|c| c.as_str())];
    let mut range_prefix = "";
    for p in prefixes.into_iter().flatten() {
        if p.starts_with(range_prefix) {
            range_prefix = p;
        } else if !range_prefix.starts_with(p) {
            return Ok(StreamListing { streams: Vec::new(), next: None });
        }
    }
    let mut min: Vec<u8> = format!("[{range_prefix}").into_bytes();
    if let Some(after) = query.after.as_deref()
        && after >= range_prefix
    {
        min = format!("({after}").into_bytes();
    }
    // Stream names are ASCII: 0xff sorts after every name with this prefix.
    let max: Vec<u8> = if range_prefix.is_empty() {
        b"+".to_vec()
    } else {
        [b"[", range_prefix.as_bytes(), b"\xff"].concat()
    };
    let chunk = (limit + 1).clamp(16, 1000);
    let mut streams = Vec::new();
    let mut names = NameCache::default();
    loop {
        let mut invocation = LIST_STREAMS.key(&keys.streams);
        invocation.arg(&keys.stream_meta).arg(&min).arg(&max).arg(chunk);
        let reply: Value = invocation.invoke_async(conn).await.map_err(redis_error)?;
        let flat = array(reply)?;
        let exhausted = flat.len() < chunk * 4;
        let mut flat = flat.into_iter();
        while let (Some(name), Some(version), Some(aggregate_type), Some(updated)) =
            (flat.next(), flat.next(), flat.next(), flat.next())
        {
            let name = text(name)?;
            min = format!("({name}").into_bytes();
            let stream =
                names.stream(&name).map_err(|e| bifrost_core::backend::codec::corrupt("stream name", e))?;
            if query.prefix.as_deref().is_some_and(|p| !stream.starts_with(p))
                || query.category.as_ref().is_some_and(|c| stream.category() != c.as_str())
            {
                continue;
            }
            if streams.len() == limit {
                let next = streams.last().map(|s: &StreamSummary| s.stream.clone());
                return Ok(StreamListing { streams, next });
            }
            streams.push(StreamSummary {
                stream,
                version: uint(&version)?,
                aggregate_type: text(aggregate_type)?,
                updated_at: Timestamp::from_micros(int(&updated)?),
            });
        }
        if exhausted {
            return Ok(StreamListing { streams, next: None });
        }
    }
}
