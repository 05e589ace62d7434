//! Rows to events and back: the on-disk encoding of the model.

use bifrost_core::backend::codec::{corrupt, u64_from};
use bifrost_core::{Error, Metadata, NameCache, RecordedEvent, Result, Timestamp};
use bytes::Bytes;
use rusqlite::Row;
use uuid::Uuid;

/// The columns every event query selects, in the order [`event_from_row`] reads them.
pub(crate) const EVENT_COLUMNS: &str = "position, id, stream, version, aggregate_type, type, \
     schema_version, data, metadata, occurred_at, recorded_at";

/// A driver error as a store error: a column that does not hold what the schema says
/// (wrong type, invalid UTF-8, out of range) is corrupt data; anything else is a storage
/// failure.
pub(crate) fn sql(e: rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..) => Error::corrupt("a stored column does not decode", e),
        e => Error::storage("query failed", e),
    }
}

pub(crate) fn uuid_from_blob(blob: &[u8]) -> Result<Uuid> {
    Uuid::from_slice(blob).map_err(|e| corrupt("event id", e))
}

pub(crate) fn event_from_row(row: &Row<'_>, names: &mut NameCache) -> Result<RecordedEvent> {
    let stream = row.get_ref(2).map_err(sql)?.as_str().map_err(|e| corrupt("stream name", e))?;
    let event_type = row.get_ref(5).map_err(sql)?.as_str().map_err(|e| corrupt("event type", e))?;
    Ok(RecordedEvent {
        position: u64_from(row.get(0).map_err(sql)?, "position")?,
        id: uuid_from_blob(row.get_ref(1).map_err(sql)?.as_blob().map_err(|e| corrupt("event id", e))?)?,
        stream: names.stream(stream).map_err(|e| corrupt("stream name", e))?,
        version: u64_from(row.get(3).map_err(sql)?, "version")?,
        aggregate_type: row.get(4).map_err(sql)?,
        event_type: names.event_type(event_type).map_err(|e| corrupt("event type", e))?,
        schema_version: u32::try_from(row.get::<_, i64>(6).map_err(sql)?)
            .map_err(|e| corrupt("schema version", e))?,
        data: blob(row, 7)?,
        metadata: metadata(row)?,
        occurred_at: Timestamp::from_micros(row.get(9).map_err(sql)?),
        recorded_at: Timestamp::from_micros(row.get(10).map_err(sql)?),
    })
}

fn metadata(row: &Row<'_>) -> Result<Bytes> {
    let bytes = row.get_ref(8).map_err(sql)?.as_blob().map_err(|e| corrupt("metadata", e))?;
    Ok(Metadata::stored_json(bytes))
}

fn blob(row: &Row<'_>, idx: usize) -> Result<Bytes> {
    let bytes = row.get_ref(idx).map_err(sql)?.as_blob().map_err(|e| corrupt("payload", e))?;
    Ok(Bytes::copy_from_slice(bytes))
}
