//! The API's JSON as this client reads and writes it. Kept private: the server owns the
//! wire contract, and these shapes follow it field by field.
//!
//! Payloads are never re-serialised: an event's `data` is sent as the caller's bytes
//! (through [`RawValue`]) and comes back as a slice of the response body.

use std::borrow::Cow;

use bifrost_core::{
    AppendResult, EventId, ExpectedVersion, Metadata, NameCache, NewEvent, RecordedEvent, StreamAppend,
    Timestamp,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::{Error, Result};

// ---------------------------------------------------------------------------------------
// Requests

/// `"any" | "no_stream" | "exists" | <integer>`.
pub(crate) struct WireExpected(pub(crate) ExpectedVersion);

impl Serialize for WireExpected {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            ExpectedVersion::Any => s.serialize_str("any"),
            ExpectedVersion::NoStream => s.serialize_str("no_stream"),
            ExpectedVersion::StreamExists => s.serialize_str("exists"),
            ExpectedVersion::Exact(v) => s.serialize_u64(v),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct NewEventWire<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    data: &'a RawValue,
    id: EventId,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    metadata: &'a Metadata,
    schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    occurred_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregate_type: Option<&'a str>,
}

impl<'a> NewEventWire<'a> {
    /// The event as the API takes it. `data` must be one JSON value: it is checked here and
    /// sent as it is. JSON carries no whitespace around a value embedded in a document, so
    /// leading or trailing whitespace of `data` is not sent (the server would drop it too).
    pub(crate) fn new(event: &'a NewEvent) -> Result<Self> {
        let data: &RawValue = serde_json::from_slice(&event.data).map_err(|e| {
            Error::InvalidArgument(format!("the data of event {} is not one JSON value: {e}", event.id))
        })?;
        Ok(Self {
            event_type: event.event_type.as_str(),
            data,
            id: event.id,
            metadata: &event.metadata,
            schema_version: event.schema_version,
            occurred_at: event.occurred_at,
            aggregate_type: event.aggregate_type.as_deref(),
        })
    }
}

fn events_wire(events: &[NewEvent]) -> Result<Vec<NewEventWire<'_>>> {
    events.iter().map(NewEventWire::new).collect()
}

/// `POST /v1/streams/{stream}/events`.
#[derive(Serialize)]
pub(crate) struct AppendRequest<'a> {
    expected_version: WireExpected,
    events: Vec<NewEventWire<'a>>,
}

impl<'a> AppendRequest<'a> {
    pub(crate) fn new(append: &'a StreamAppend) -> Result<Self> {
        Ok(Self { expected_version: WireExpected(append.expected), events: events_wire(&append.events)? })
    }
}

#[derive(Serialize)]
struct StreamAppendWire<'a> {
    stream: &'a str,
    expected_version: WireExpected,
    events: Vec<NewEventWire<'a>>,
}

/// `POST /v1/append`.
#[derive(Serialize)]
pub(crate) struct MultiAppendRequest<'a> {
    appends: Vec<StreamAppendWire<'a>>,
}

impl<'a> MultiAppendRequest<'a> {
    pub(crate) fn new(appends: &'a [StreamAppend]) -> Result<Self> {
        let appends = appends
            .iter()
            .map(|a| {
                Ok(StreamAppendWire {
                    stream: a.stream.as_str(),
                    expected_version: WireExpected(a.expected),
                    events: events_wire(&a.events)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { appends })
    }
}

/// A request body as JSON bytes.
pub(crate) fn to_json(body: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(body).map_err(|e| Error::InvalidArgument(format!("cannot encode the request: {e}")))
}

// ---------------------------------------------------------------------------------------
// Answers

#[derive(Deserialize)]
pub(crate) struct AppendResultWire {
    stream: String,
    first_version: u64,
    last_version: u64,
    first_position: u64,
    last_position: u64,
}

impl AppendResultWire {
    pub(crate) fn into_result(self) -> Result<AppendResult> {
        Ok(AppendResult {
            stream: self.stream.parse().map_err(Error::decode)?,
            first_version: self.first_version,
            last_version: self.last_version,
            first_position: self.first_position,
            last_position: self.last_position,
        })
    }
}

#[derive(Deserialize)]
pub(crate) struct MultiAppendResultWire {
    pub(crate) results: Vec<AppendResultWire>,
}

/// An event as the API shows it, borrowing from the answer's bytes.
#[derive(Deserialize)]
pub(crate) struct EventWire<'a> {
    id: EventId,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow)]
    aggregate_type: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    schema_version: u32,
    version: u64,
    position: u64,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow)]
    metadata: &'a RawValue,
    occurred_at: Timestamp,
    recorded_at: Timestamp,
}

impl EventWire<'_> {
    /// The event, its `data` and `metadata` sharing `body`'s buffer (the bytes this was
    /// parsed from) instead of being copied.
    pub(crate) fn into_event(self, body: &Bytes, names: &mut NameCache) -> Result<RecordedEvent> {
        Ok(RecordedEvent {
            id: self.id,
            stream: names.stream(&self.stream).map_err(Error::decode)?,
            aggregate_type: self.aggregate_type.into_owned(),
            event_type: names.event_type(&self.event_type).map_err(Error::decode)?,
            schema_version: self.schema_version,
            version: self.version,
            position: self.position,
            data: share(body, self.data.get().as_bytes()),
            metadata: share(body, self.metadata.get().as_bytes()),
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
        })
    }
}

/// `part` as a `Bytes` sharing `body`'s buffer when it lies inside it (as a borrowed
/// [`RawValue`] does), else a copy.
fn share(body: &Bytes, part: &[u8]) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if start <= body.len() && end <= body.len() => body.slice(start..end),
        _ => Bytes::copy_from_slice(part),
    }
}

/// Parses an answer, turning a shape error into [`Error::Decode`].
pub(crate) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(Error::decode)
}

/// Events of an answer, in order.
pub(crate) fn events(body: &Bytes, wire: Vec<EventWire<'_>>) -> Result<Vec<RecordedEvent>> {
    let mut names = NameCache::default();
    wire.into_iter().map(|e| e.into_event(body, &mut names)).collect()
}

/// One event (`GET /v1/events/{id}`, an SSE `data:` line).
pub(crate) fn event(body: &Bytes) -> Result<RecordedEvent> {
    let wire: EventWire<'_> = parse(body)?;
    wire.into_event(body, &mut NameCache::default())
}

/// `GET /v1/streams/{stream}/events`.
#[derive(Deserialize)]
pub(crate) struct StreamPageWire<'a> {
    #[serde(borrow)]
    pub(crate) events: Vec<EventWire<'a>>,
    pub(crate) next: Option<u64>,
}

/// `GET /v1/head`.
#[derive(Deserialize)]
pub(crate) struct HeadWire {
    pub(crate) position: u64,
}

/// `GET /v1/events`.
#[derive(Deserialize)]
pub(crate) struct LogPageWire<'a> {
    #[serde(borrow)]
    pub(crate) events: Vec<EventWire<'a>>,
    pub(crate) next_position: u64,
}

/// `GET /v1/streams/{stream}`.
#[derive(Deserialize)]
pub(crate) struct StreamInfoWire {
    pub(crate) stream: String,
    pub(crate) version: u64,
    pub(crate) aggregate_type: String,
    pub(crate) created_at: Timestamp,
    pub(crate) updated_at: Timestamp,
    pub(crate) deleted: bool,
}

#[derive(Deserialize)]
pub(crate) struct StreamSummaryWire {
    pub(crate) stream: String,
    pub(crate) version: u64,
    pub(crate) aggregate_type: String,
    pub(crate) updated_at: Timestamp,
}

/// `GET /v1/streams`.
#[derive(Deserialize)]
pub(crate) struct StreamListWire {
    pub(crate) streams: Vec<StreamSummaryWire>,
    pub(crate) next: Option<String>,
}

#[cfg(test)]
mod tests {
    use bifrost_core::EventType;

    use super::*;

    #[test]
    fn appends_carry_data_verbatim_and_every_field() {
        let event = NewEvent::new(EventType::new("a.b").unwrap(), &b"{ \"x\" :1.50 }"[..])
            .with_schema_version(3)
            .with_aggregate_type("Cart")
            .with_occurred_at("2026-01-02T03:04:05.000006Z".parse().unwrap())
            .with_metadata(Metadata { user_id: Some("u".into()), ..Metadata::default() });
        let append =
            StreamAppend::new("cart-1".parse().unwrap(), ExpectedVersion::Exact(0), vec![event.clone()]);
        let body = String::from_utf8(to_json(&AppendRequest::new(&append).unwrap()).unwrap()).unwrap();
        assert!(
            body.starts_with(r#"{"expected_version":0,"events":[{"type":"a.b","data":{ "x" :1.50 },"#),
            "{body}"
        );
        assert!(body.contains(&format!(r#""id":"{}""#, event.id)), "{body}");
        assert!(body.contains(
            r#""schema_version":3,"occurred_at":"2026-01-02T03:04:05.000006Z","aggregate_type":"Cart""#
        ));
        assert!(body.contains(r#""user_id":"u""#), "{body}");
        let bare = NewEvent::new(EventType::new("a.b").unwrap(), &b"1"[..]);
        let append = StreamAppend::new("c-1".parse().unwrap(), ExpectedVersion::Any, vec![bare]);
        let body = String::from_utf8(to_json(&AppendRequest::new(&append).unwrap()).unwrap()).unwrap();
        assert!(!body.contains("metadata") && !body.contains("occurred_at"), "{body}");
        assert!(body.starts_with(r#"{"expected_version":"any","#));
    }

    #[test]
    fn data_that_is_not_json_is_refused_before_sending() {
        let bad = NewEvent::new(EventType::new("a.b").unwrap(), &b"not json"[..]);
        assert!(matches!(NewEventWire::new(&bad), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn events_share_the_answer_buffer() {
        let body = Bytes::from_static(
            br#"{"id":"01936a5e-0000-7000-8000-000000000000","stream":"order-1","aggregate_type":"order",
            "type":"order.submitted","schema_version":1,"version":3,"position":1041,"data":{ "total" : 42.50 },
            "metadata":{"correlation_id":"c-1"},"occurred_at":"2026-11-22T10:00:00.123456Z",
            "recorded_at":"2026-11-22T10:00:00.124001Z"}"#,
        );
        let e = event(&body).unwrap();
        assert_eq!(e.data, Bytes::from_static(br#"{ "total" : 42.50 }"#));
        assert!(body.as_ptr_range().contains(&e.data.as_ptr()), "copied instead of shared");
        assert_eq!(e.metadata().unwrap().correlation_id.as_deref(), Some("c-1"));
        assert_eq!((e.version, e.position, e.stream.as_str()), (3, 1041, "order-1"));
        assert_eq!(e.recorded_at.to_string(), "2026-11-22T10:00:00.124001Z");
    }
}
