//! Rows to events, and driver errors to store errors.

use bifrost_core::backend::codec::{corrupt, u64_from};
use bifrost_core::{Error, Metadata, NameCache, RecordedEvent, Result, Timestamp};
use bytes::Bytes;
use tokio_postgres::Row;

/// A failure talking to PostgreSQL. Lost connections and refused connects become
/// `Unavailable` (the server answers 503 and a retry may succeed); the rest are storage
/// errors.
pub(crate) fn pg(e: tokio_postgres::Error) -> Error {
    if e.is_closed() || e.code().is_none() {
        unavailable(e)
    } else {
        Error::storage("PostgreSQL query failed", e)
    }
}

pub(crate) fn unavailable(e: impl std::error::Error) -> Error {
    // The driver's message names only the step that failed ("error performing TLS
    // handshake"); the reason (an untrusted certificate, a wrong host name) is its source.
    let mut message = format!("PostgreSQL is unreachable: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.ends_with(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    Error::Unavailable(message)
}

pub(crate) fn pool(e: deadpool_postgres::PoolError) -> Error {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => unavailable(other),
    }
}

pub(crate) fn event_from_row(row: &Row, names: &mut NameCache) -> Result<RecordedEvent> {
    let get = |e: tokio_postgres::Error| corrupt("event row", e);
    Ok(RecordedEvent {
        position: u64_from(row.try_get(0).map_err(get)?, "position")?,
        id: row.try_get(1).map_err(get)?,
        stream: names.stream(row.try_get(2).map_err(get)?).map_err(|e| corrupt("stream name", e))?,
        version: u64_from(row.try_get(3).map_err(get)?, "version")?,
        aggregate_type: row.try_get(4).map_err(get)?,
        event_type: names.event_type(row.try_get(5).map_err(get)?).map_err(|e| corrupt("event type", e))?,
        schema_version: u32::try_from(row.try_get::<_, i32>(6).map_err(get)?)
            .map_err(|e| corrupt("schema version", e))?,
        data: Bytes::copy_from_slice(row.try_get::<_, &[u8]>(7).map_err(get)?),
        metadata: Metadata::stored_json(row.try_get::<_, &[u8]>(8).map_err(get)?),
        occurred_at: Timestamp::from_micros(row.try_get(9).map_err(get)?),
        recorded_at: Timestamp::from_micros(row.try_get(10).map_err(get)?),
    })
}
