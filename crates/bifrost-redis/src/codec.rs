//! The stored form of an event, script replies to values, and driver errors to store errors.
//!
//! An event is one member of the log's sorted set: a fixed-width header that the append
//! script writes (`id` as 36 characters, then position, version and `recorded_at` as 20
//! decimal digits each), followed by the body this module encodes (length-prefixed stream,
//! aggregate type, event type, schema version, `occurred_at`, correlation id, metadata and
//! data). Scripts read only the header (the id is its first 36 bytes); the body is opaque
//! to them.

use bifrost_core::backend::codec::corrupt;
use bifrost_core::backend::rules::aggregate_type_of;
use bifrost_core::{Error, Metadata, NameCache, NewEvent, RecordedEvent, Result, StreamName, Timestamp};
use bytes::Bytes;
use redis::Value;
use uuid::Uuid;

const ID_LEN: usize = 36;
const NUMBER_LEN: usize = 20;
/// Bytes before the body: the id, the position, the version and `recorded_at`.
pub(crate) const HEADER_LEN: usize = ID_LEN + 3 * NUMBER_LEN;

/// A failure talking to Redis. Lost or refused connections and timeouts are `Unavailable`
/// (a retry may succeed); the rest (a script error, a wrong type) are storage errors.
pub(crate) fn redis_error(e: redis::RedisError) -> Error {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        Error::Unavailable(format!("Redis is unreachable: {e}"))
    } else {
        Error::storage("Redis command failed", e)
    }
}

pub(crate) fn closed() -> Error {
    Error::Unavailable("the store is closed".into())
}

/// The body of an event as the append script receives it: everything the header does not
/// hold. `now` fills a missing `occurred_at`.
pub(crate) fn encode_body(event: &NewEvent, stream: &StreamName, now: Timestamp) -> Vec<u8> {
    let aggregate_type = aggregate_type_of(event, stream);
    let mut out = Vec::with_capacity(64 + event.data.len());
    put_short(&mut out, stream.as_str().as_bytes());
    put_short(&mut out, aggregate_type.as_bytes());
    put_short(&mut out, event.event_type.as_str().as_bytes());
    out.extend_from_slice(&event.schema_version.to_be_bytes());
    out.extend_from_slice(&event.occurred_at.unwrap_or(now).as_micros().to_be_bytes());
    match &event.metadata.correlation_id {
        Some(c) => {
            out.push(1);
            put_long(&mut out, c.as_bytes());
        }
        None => out.push(0),
    }
    let metadata_at = out.len();
    out.extend_from_slice(&[0; 4]);
    event.metadata.write_json(&mut out);
    let metadata_len = (out.len() - metadata_at - 4) as u32;
    out[metadata_at..metadata_at + 4].copy_from_slice(&metadata_len.to_be_bytes());
    // The data runs to the end: no length needed.
    out.extend_from_slice(&event.data);
    out
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    // Names are at most 256 bytes (validated before encoding).
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_long(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A stored event, decoded; `correlation_id` is kept beside it for the log filter.
pub(crate) struct Decoded {
    pub(crate) event: RecordedEvent,
    pub(crate) correlation_id: Option<String>,
}

/// Reads a stored event (header and body).
pub(crate) fn decode_event(stored: &[u8], names: &mut NameCache) -> Result<Decoded> {
    let bad = |what: &str| corrupt("event", what);
    if stored.len() < HEADER_LEN {
        return Err(bad("shorter than its header"));
    }
    let text = |range: std::ops::Range<usize>| std::str::from_utf8(&stored[range]).map_err(|_| bad("header"));
    let id = Uuid::parse_str(text(0..ID_LEN)?).map_err(|e| corrupt("event id", e))?;
    let number = |at: usize| -> Result<i64> {
        text(at..at + NUMBER_LEN)?.parse::<i64>().map_err(|e| corrupt("event header number", e))
    };
    let position = u64::try_from(number(ID_LEN)?).map_err(|_| bad("negative position"))?;
    let version = u64::try_from(number(ID_LEN + NUMBER_LEN)?).map_err(|_| bad("negative version"))?;
    let recorded_at = Timestamp::from_micros(number(ID_LEN + 2 * NUMBER_LEN)?);
    let mut body = Reader { bytes: stored, at: HEADER_LEN };
    let stream = names.stream(body.short_text()?).map_err(|e| corrupt("stream name", e))?;
    let aggregate_type = body.short_text()?.to_owned();
    let event_type = names.event_type(body.short_text()?).map_err(|e| corrupt("event type", e))?;
    let schema_version = u32::from_be_bytes(body.array()?);
    let occurred_at = Timestamp::from_micros(i64::from_be_bytes(body.array()?));
    let correlation_id = match body.take(1)?[0] {
        0 => None,
        _ => {
            let len = u32::from_be_bytes(body.array()?) as usize;
            let bytes = body.take(len)?;
            Some(std::str::from_utf8(bytes).map_err(|e| corrupt("correlation id", e))?.to_owned())
        }
    };
    let metadata_len = u32::from_be_bytes(body.array()?) as usize;
    let metadata = Metadata::stored_json(body.take(metadata_len)?);
    let data = Bytes::copy_from_slice(&stored[body.at..]);
    let event = RecordedEvent {
        id,
        stream,
        aggregate_type,
        event_type,
        schema_version,
        version,
        position,
        data,
        metadata,
        occurred_at,
        recorded_at,
    };
    Ok(Decoded { event, correlation_id })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| corrupt("event", "body ends early"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        bytes.try_into().map_err(|_| corrupt("event", "body ends early"))
    }

    fn short_text(&mut self) -> Result<&'a str> {
        let len = u16::from_be_bytes(self.array()?) as usize;
        std::str::from_utf8(self.take(len)?).map_err(|e| corrupt("event name", e))
    }
}

/// A script reply that does not have the shape the script gives it.
pub(crate) fn corrupt_reply(what: &str) -> Error {
    corrupt("script reply", what)
}

/// Helpers to take a script's reply apart; anything unexpected is `Corrupt`.
pub(crate) fn int(value: &Value) -> Result<i64> {
    match value {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("script reply", "not an integer")),
        Value::SimpleString(s) => s.parse().map_err(|_| corrupt("script reply", "not an integer")),
        Value::Nil => Ok(0),
        other => Err(corrupt("script reply", format!("expected an integer, got {other:?}"))),
    }
}

pub(crate) fn uint(value: &Value) -> Result<u64> {
    u64::try_from(int(value)?).map_err(|_| corrupt("script reply", "negative number"))
}

pub(crate) fn array(value: Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(corrupt("script reply", format!("expected an array, got {other:?}"))),
    }
}

pub(crate) fn bytes(value: Value) -> Result<Vec<u8>> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        other => Err(corrupt("script reply", format!("expected a string, got {other:?}"))),
    }
}

pub(crate) fn text(value: Value) -> Result<String> {
    String::from_utf8(bytes(value)?).map_err(|e| corrupt("script reply", e))
}

/// An optional string (`Nil` or Lua's `false` is none).
pub(crate) fn opt_bytes(value: Value) -> Result<Option<Vec<u8>>> {
    match value {
        Value::Nil | Value::Boolean(false) => Ok(None),
        Value::Int(0) => Ok(None),
        other => bytes(other).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bifrost_core::EventType;

    fn stored(body: &[u8], position: u64, version: u64, recorded_at: i64, id: Uuid) -> Vec<u8> {
        let mut out = format!("{id}{position:020}{version:020}{recorded_at:020}").into_bytes();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn an_event_round_trips_through_its_stored_form() {
        let stream = StreamName::new("order-1").unwrap();
        let metadata = Metadata { correlation_id: Some("c-1".into()), ..Metadata::default() };
        let event = NewEvent::new(EventType::new("order.placed").unwrap(), &b" {\"a\":\"\\u0000\"}\n"[..])
            .with_metadata(metadata.clone())
            .with_schema_version(3);
        let now = Timestamp::from_micros(1_700_000_000_123_456);
        let body = encode_body(&event, &stream, now);
        let decoded =
            decode_event(&stored(&body, 42, 7, 1_700_000_000_999_999, event.id), &mut NameCache::default())
                .unwrap();
        let e = decoded.event;
        assert_eq!((e.id, e.position, e.version), (event.id, 42, 7));
        assert_eq!(
            (e.stream.as_str(), e.aggregate_type.as_str(), e.event_type.as_str()),
            ("order-1", "order", "order.placed")
        );
        assert_eq!(e.schema_version, 3);
        assert_eq!(e.occurred_at, now);
        assert_eq!(e.recorded_at, Timestamp::from_micros(1_700_000_000_999_999));
        assert_eq!(e.data, event.data);
        assert_eq!(e.metadata().unwrap(), metadata);
        assert_eq!(decoded.correlation_id.as_deref(), Some("c-1"));
    }

    #[test]
    fn a_truncated_event_is_corrupt_not_a_panic() {
        let stream = StreamName::new("a-1").unwrap();
        let event = NewEvent::new(EventType::new("a.b").unwrap(), "{}");
        let full = stored(&encode_body(&event, &stream, Timestamp::now()), 1, 1, 1, event.id);
        for len in [0, 10, HEADER_LEN, HEADER_LEN + 3, HEADER_LEN + 20] {
            assert!(matches!(
                decode_event(&full[..len], &mut NameCache::default()),
                Err(Error::Corrupt { .. })
            ));
        }
    }
}
