//! Reads, on pooled connections. Positions commit in order (see the crate docs), so a
//! plain `position > after` scan bounded by the committed head never skips an event.

use bifrost_core::backend::codec::{i64_from, u64_from};
use bifrost_core::backend::rules::{StreamState, check_log_start, stream_window};
use bifrost_core::{
    Direction, Error, LogFilter, LogSlice, NameCache, Position, RecordedEvent, Result, StreamInfo,
    StreamListQuery, StreamListing, StreamName, StreamSlice, StreamSummary, Timestamp, Version,
};
use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::codec::{event_from_row, pg, pool as pool_error};
use crate::schema::{EVENT_COLUMNS, Sql};

/// Positions a filtered global read covers before it returns what it has (with
/// `next_position` where it stopped), so one request never scans an unbounded log.
const SCAN_BUDGET: u64 = 100_000;

pub(crate) async fn head(pool: &Pool, sql: &Sql) -> Result<Position> {
    let client = pool.get().await.map_err(pool_error)?;
    let stmt = client.prepare_cached(&sql.read_head).await.map_err(pg)?;
    let row = client.query_one(&stmt, &[]).await.map_err(pg)?;
    u64_from(row.get(0), "head position")
}

/// Refreshes the planner's statistics of Bifrost's tables. Run at start-up and as the log
/// grows, so plans do not depend on autovacuum being on.
pub(crate) async fn analyze(pool: &Pool, sql: &Sql) -> Result<()> {
    let client = pool.get().await.map_err(pool_error)?;
    let s = sql.quoted_schema();
    client.batch_execute(&format!("ANALYZE {s}.events, {s}.streams")).await.map_err(pg)
}

fn state_of(version: i64, state: i16) -> Result<(Version, StreamState)> {
    Ok((u64_from(version, "version")?, StreamState::from_i64(i64::from(state))?))
}

pub(crate) async fn read_stream(
    pool: &Pool,
    sql: &Sql,
    stream: &StreamName,
    from: Version,
    direction: Direction,
    limit: usize,
) -> Result<StreamSlice> {
    let client = pool.get().await.map_err(pool_error)?;
    let stmt = client.prepare_cached(&sql.stream_state).await.map_err(pg)?;
    let row = client.query_opt(&stmt, &[&stream.as_str()]).await.map_err(pg)?;
    let last = match row.map(|r| state_of(r.get(0), r.get(1))).transpose()? {
        None | Some((_, StreamState::SoftDeleted)) => return Err(Error::StreamNotFound(stream.clone())),
        Some((_, StreamState::Tombstoned)) => return Err(Error::StreamDeleted(stream.clone())),
        Some((v, StreamState::Live)) => v,
    };
    let window = stream_window(stream, last, from, direction, limit)?;
    if window.count == 0 {
        return Ok(StreamSlice { events: Vec::new(), next: window.next });
    }
    let count = window.count as u64;
    let (low, high, text) = match direction {
        Direction::Forward => (window.first, window.first + count - 1, &sql.read_stream_forward),
        Direction::Backward => (window.first + 1 - count, window.first, &sql.read_stream_backward),
    };
    let stmt = client.prepare_cached(text).await.map_err(pg)?;
    let rows =
        client.query(&stmt, &[&stream.as_str(), &i64_from(low)?, &i64_from(high)?]).await.map_err(pg)?;
    let mut names = NameCache::default();
    let events = rows.iter().map(|r| event_from_row(r, &mut names)).collect::<Result<Vec<_>>>()?;
    Ok(StreamSlice { events, next: window.next })
}

pub(crate) async fn read_all(
    pool: &Pool,
    sql: &Sql,
    after: Position,
    filter: &LogFilter,
    limit: usize,
) -> Result<LogSlice> {
    let client = pool.get().await.map_err(pool_error)?;
    let head_stmt = client.prepare_cached(&sql.read_head).await.map_err(pg)?;
    let head = u64_from(client.query_one(&head_stmt, &[]).await.map_err(pg)?.get(0), "head position")?;
    check_log_start(after, head)?;
    let limit = limit.max(1);
    let schema = sql.quoted_schema();
    // Appends commit in position order, so whatever a snapshot holds above `after` is a
    // gap-free run of the log: no upper bound is needed for correctness, and without one
    // the plan is a plain walk of the primary key. A filtered read gets one anyway, the scan
    // budget, so that a rare match never scans the whole log in one request.
    let upper = (!filter.is_empty()).then(|| head.min(after.saturating_add(SCAN_BUDGET)));
    if upper.is_some_and(|u| after >= u) {
        return Ok(LogSlice { events: Vec::new(), next_position: head });
    }
    let mut text = format!("SELECT {EVENT_COLUMNS} FROM {schema}.events WHERE position > $1");
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(i64_from(after)?)];
    let mut push = |text: &mut String, clause: &str, value: Box<dyn ToSql + Sync + Send>| {
        params.push(value);
        text.push_str(&clause.replace("$?", &format!("${}", params.len())));
    };
    if let Some(upper) = upper {
        push(&mut text, " AND position <= $?", Box::new(i64_from(upper)?));
    }
    if let Some(category) = &filter.category {
        push(&mut text, " AND category = $?", Box::new(category.as_str().to_owned()));
    }
    if let Some(correlation_id) = &filter.correlation_id {
        push(&mut text, " AND correlation_id = $?", Box::new(correlation_id.clone()));
    }
    if let Some(since) = filter.since {
        push(&mut text, " AND recorded_at >= $?", Box::new(since.as_micros()));
    }
    if let Some(until) = filter.until {
        push(&mut text, " AND recorded_at < $?", Box::new(until.as_micros()));
    }
    if !filter.types.is_empty() {
        let regexes: Vec<String> = filter.types.iter().map(|p| p.to_dotted_regex()).collect();
        push(&mut text, " AND ('.' || type) ~ ANY($?::text[])", Box::new(regexes));
    }
    push(&mut text, " ORDER BY position LIMIT $?", Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
    let stmt = client.prepare_cached(&text).await.map_err(pg)?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&stmt, &refs).await.map_err(pg)?;
    let mut names = NameCache::default();
    let events =
        rows.iter().map(|r| event_from_row(r, &mut names)).collect::<Result<Vec<RecordedEvent>>>()?;
    let last_returned = events.last().map_or(after, |e| e.position);
    let next_position = match upper {
        _ if events.len() == limit => last_returned,
        Some(upper) => upper.max(last_returned),
        None => head.max(last_returned),
    };
    Ok(LogSlice { events, next_position })
}

pub(crate) async fn event(pool: &Pool, sql: &Sql, id: Uuid) -> Result<Option<RecordedEvent>> {
    let client = pool.get().await.map_err(pool_error)?;
    let stmt = client.prepare_cached(&sql.event_by_id).await.map_err(pg)?;
    let row = client.query_opt(&stmt, &[&id]).await.map_err(pg)?;
    row.map(|r| event_from_row(&r, &mut NameCache::default())).transpose()
}

pub(crate) async fn stream_info(pool: &Pool, sql: &Sql, stream: &StreamName) -> Result<StreamInfo> {
    let client = pool.get().await.map_err(pool_error)?;
    let stmt = client.prepare_cached(&sql.stream_info).await.map_err(pg)?;
    let Some(row) = client.query_opt(&stmt, &[&stream.as_str()]).await.map_err(pg)? else {
        return Err(Error::StreamNotFound(stream.clone()));
    };
    let (version, state) = state_of(row.get(0), row.get(4))?;
    if state == StreamState::Tombstoned {
        return Err(Error::StreamDeleted(stream.clone()));
    }
    Ok(StreamInfo {
        stream: stream.clone(),
        version,
        aggregate_type: row.get(1),
        created_at: Timestamp::from_micros(row.get(2)),
        updated_at: Timestamp::from_micros(row.get(3)),
        deleted: state == StreamState::SoftDeleted,
    })
}

pub(crate) async fn list_streams(pool: &Pool, sql: &Sql, query: &StreamListQuery) -> Result<StreamListing> {
    let client = pool.get().await.map_err(pool_error)?;
    let limit = query.limit.max(1);
    let mut text = format!(
        "SELECT name, version, aggregate_type, updated_at FROM {}.streams WHERE state = 0",
        sql.quoted_schema()
    );
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut push = |text: &mut String, clause: &str, value: Box<dyn ToSql + Sync + Send>| {
        params.push(value);
        text.push_str(&clause.replace("$?", &format!("${}", params.len())));
    };
    if let Some(after) = &query.after {
        push(&mut text, " AND name > $?", Box::new(after.clone()));
    }
    if let Some(prefix) = &query.prefix {
        // Stream names are ASCII up to 'z' and the column sorts bytewise ("C"), so
        // `prefix || '{'` bounds every name with that prefix and the primary key serves it.
        push(&mut text, " AND name >= $?", Box::new(prefix.clone()));
        push(&mut text, " AND name < $?", Box::new(format!("{prefix}{{")));
    }
    if let Some(category) = &query.category {
        push(&mut text, " AND category = $?", Box::new(category.as_str().to_owned()));
    }
    push(&mut text, " ORDER BY name LIMIT $?", Box::new(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
    let stmt = client.prepare_cached(&text).await.map_err(pg)?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&stmt, &refs).await.map_err(pg)?;
    let more = rows.len() > limit;
    let streams = rows
        .iter()
        .take(limit)
        .map(|r| {
            Ok(StreamSummary {
                stream: StreamName::stored(r.get(0))?,
                version: u64_from(r.get(1), "version")?,
                aggregate_type: r.get(2),
                updated_at: Timestamp::from_micros(r.get(3)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next = if more { streams.last().map(|s| s.stream.clone()) } else { None };
    Ok(StreamListing { streams, next })
}
