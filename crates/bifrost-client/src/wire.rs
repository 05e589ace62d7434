//! Between the store contract's types (`bifrost_core`) and the API's JSON (`bifrost_api`,
//! the one definition both the server and this client use).
//!
//! Payloads are never re-serialised: an event's `data` is sent as the caller's bytes
//! (through a [`RawValue`]) and comes back as a slice of the answer's body.

use std::borrow::Cow;

use bifrost_api::{
    AppendRequest, AppendResultBody, EventBody, ExpectedVersion as WireExpected, Lenient, MetadataRequest,
    MultiAppendRequest, NewEventRequest, StreamAppendRequest, StreamInfoBody, StreamSummaryBody,
};
use bifrost_core::{
    AppendResult, ExpectedVersion, Metadata, NameCache, NewEvent, RecordedEvent, StreamAppend, StreamInfo,
    StreamSummary, Timestamp,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};

// ---------------------------------------------------------------------------------------
// Requests

pub(crate) fn expected_version(expected: ExpectedVersion) -> WireExpected {
    match expected {
        ExpectedVersion::Any => WireExpected::Any,
        ExpectedVersion::NoStream => WireExpected::NoStream,
        ExpectedVersion::StreamExists => WireExpected::Exists,
        ExpectedVersion::Exact(v) => WireExpected::Exact(v),
    }
}

pub(crate) fn engine_expected(expected: WireExpected) -> ExpectedVersion {
    match expected {
        WireExpected::Any => ExpectedVersion::Any,
        WireExpected::NoStream => ExpectedVersion::NoStream,
        WireExpected::Exists => ExpectedVersion::StreamExists,
        WireExpected::Exact(v) => ExpectedVersion::Exact(v),
    }
}

fn metadata(m: &Metadata) -> Option<MetadataRequest> {
    (!m.is_empty()).then(|| MetadataRequest {
        correlation_id: m.correlation_id.clone(),
        causation_id: m.causation_id.clone(),
        source: m.source.clone(),
        user_id: m.user_id.clone(),
        tenant_id: m.tenant_id.clone(),
        extra: m.extra.clone(),
    })
}

/// The event as the API takes it. `data` must be one JSON value: it is checked here and
/// sent as it is. JSON carries no whitespace around a value embedded in a document, so
/// leading or trailing whitespace of `data` is not sent (the server would drop it too).
pub(crate) fn new_event(event: &NewEvent) -> Result<NewEventRequest<'_>> {
    let data: &RawValue = serde_json::from_slice(&event.data).map_err(|e| {
        Error::InvalidArgument(format!("the data of event {} is not one JSON value: {e}", event.id))
    })?;
    Ok(NewEventRequest {
        event_type: Cow::Borrowed(event.event_type.as_str()),
        data,
        id: Some(Lenient::Valid(event.id)),
        metadata: metadata(&event.metadata),
        schema_version: Some(event.schema_version),
        occurred_at: event.occurred_at.map(|t| Lenient::Valid(t.to_string())),
        aggregate_type: event.aggregate_type.clone(),
    })
}

fn new_events(events: &[NewEvent]) -> Result<Vec<NewEventRequest<'_>>> {
    events.iter().map(new_event).collect()
}

/// `POST /v1/streams/{stream}/events`.
pub(crate) fn append_request(append: &StreamAppend) -> Result<AppendRequest<'_>> {
    Ok(AppendRequest {
        expected_version: Some(Lenient::Valid(expected_version(append.expected))),
        events: new_events(&append.events)?,
    })
}

/// `POST /v1/append`.
pub(crate) fn multi_append_request(appends: &[StreamAppend]) -> Result<MultiAppendRequest<'_>> {
    let appends = appends
        .iter()
        .map(|a| {
            Ok(StreamAppendRequest {
                stream: Cow::Borrowed(a.stream.as_str()),
                expected_version: Some(Lenient::Valid(expected_version(a.expected))),
                events: new_events(&a.events)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(MultiAppendRequest { appends })
}

/// A request body as JSON bytes.
pub(crate) fn to_json(body: &impl Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(body).map_err(|e| Error::InvalidArgument(format!("cannot encode the request: {e}")))
}

// ---------------------------------------------------------------------------------------
// Answers

/// Parses an answer, turning a shape error into [`Error::Decode`].
pub(crate) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(Error::decode)
}

pub(crate) fn timestamp(text: &str) -> Result<Timestamp> {
    text.parse().map_err(|e| Error::decode(format!("{text:?} is not a timestamp: {e}")))
}

pub(crate) fn append_result(r: AppendResultBody) -> Result<AppendResult> {
    Ok(AppendResult {
        stream: r.stream.parse().map_err(Error::decode)?,
        first_version: r.first_version,
        last_version: r.last_version,
        first_position: r.first_position,
        last_position: r.last_position,
    })
}

pub(crate) fn stream_info(info: StreamInfoBody) -> Result<StreamInfo> {
    Ok(StreamInfo {
        stream: info.stream.parse().map_err(Error::decode)?,
        version: info.version,
        aggregate_type: info.aggregate_type,
        created_at: timestamp(&info.created_at)?,
        updated_at: timestamp(&info.updated_at)?,
        deleted: info.deleted,
    })
}

pub(crate) fn stream_summary(s: StreamSummaryBody) -> Result<StreamSummary> {
    Ok(StreamSummary {
        stream: s.stream.parse().map_err(Error::decode)?,
        version: s.version,
        aggregate_type: s.aggregate_type,
        updated_at: timestamp(&s.updated_at)?,
    })
}

/// The event, its `data` and `metadata` sharing `body`'s buffer (the bytes it was parsed
/// from) instead of being copied.
pub(crate) fn event(body: &Bytes, e: EventBody<'_>, names: &mut NameCache) -> Result<RecordedEvent> {
    Ok(RecordedEvent {
        id: e.id,
        stream: names.stream(&e.stream).map_err(Error::decode)?,
        aggregate_type: e.aggregate_type.into_owned(),
        event_type: names.event_type(&e.event_type).map_err(Error::decode)?,
        schema_version: e.schema_version,
        version: e.version,
        position: e.position,
        data: share(body, e.data.get().as_bytes()),
        metadata: share(body, e.metadata.get().as_bytes()),
        occurred_at: timestamp(&e.occurred_at)?,
        recorded_at: timestamp(&e.recorded_at)?,
    })
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

/// Events of an answer, in order.
pub(crate) fn events(body: &Bytes, events: Vec<EventBody<'_>>) -> Result<Vec<RecordedEvent>> {
    let mut names = NameCache::default();
    events.into_iter().map(|e| event(body, e, &mut names)).collect()
}

/// One event (`GET /v1/events/{id}`, an SSE `data:` line).
pub(crate) fn one_event(body: &Bytes) -> Result<RecordedEvent> {
    let wire: EventBody<'_> = parse(body)?;
    event(body, wire, &mut NameCache::default())
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
        let body = String::from_utf8(to_json(&append_request(&append).unwrap()).unwrap()).unwrap();
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
        let body = String::from_utf8(to_json(&append_request(&append).unwrap()).unwrap()).unwrap();
        assert!(!body.contains("metadata") && !body.contains("occurred_at"), "{body}");
        assert!(body.starts_with(r#"{"expected_version":"any","#));
    }

    #[test]
    fn data_that_is_not_json_is_refused_before_sending() {
        let bad = NewEvent::new(EventType::new("a.b").unwrap(), &b"not json"[..]);
        assert!(matches!(new_event(&bad), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn events_share_the_answer_buffer() {
        let body = Bytes::from_static(
            br#"{"id":"01936a5e-0000-7000-8000-000000000000","stream":"order-1","aggregate_type":"order",
            "type":"order.submitted","schema_version":1,"version":3,"position":1041,"data":{ "total" : 42.50 },
            "metadata":{"correlation_id":"c-1"},"occurred_at":"2026-11-22T10:00:00.123456Z",
            "recorded_at":"2026-11-22T10:00:00.124001Z"}"#,
        );
        let e = one_event(&body).unwrap();
        assert_eq!(e.data, Bytes::from_static(br#"{ "total" : 42.50 }"#));
        assert!(body.as_ptr_range().contains(&e.data.as_ptr()), "copied instead of shared");
        assert_eq!(e.metadata().unwrap().correlation_id.as_deref(), Some("c-1"));
        assert_eq!((e.version, e.position, e.stream.as_str()), (3, 1041, "order-1"));
        assert_eq!(e.recorded_at.to_string(), "2026-11-22T10:00:00.124001Z");
    }
}
