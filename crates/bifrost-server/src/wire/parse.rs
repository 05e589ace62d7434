//! Request bodies into the engine's types. Shape errors (malformed JSON, an unknown or
//! missing field) are `400 bifrost:invalid-request`; a value of the right shape that the
//! API does not accept is `400 bifrost:invalid-argument` naming it. Event payloads are
//! never re-serialised: `data` becomes a slice of the request body.

use bifrost_api::{ExpectedVersion as WireExpected, Lenient, MAX_LEASES_PER_REQUEST, NewEventRequest};
use bifrost_core::{EventType, ExpectedVersion, NewEvent, Timestamp};
use bytes::Bytes;
use serde::Deserialize;
use uuid::Uuid;

use crate::ServerConfig;
use crate::error::{ApiError, ApiResult};
use crate::wire::map::metadata;

/// Parses a JSON body, turning serde's complaint into a 400 `invalid-request`.
pub(crate) fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))
}

/// `"any" | "no_stream" | "exists" | <integer ≥ 0>`; absent or null means `any`.
pub(crate) fn parse_expected_version(value: Option<Lenient<WireExpected>>) -> ApiResult<ExpectedVersion> {
    match value.map(Lenient::into_result) {
        None => Ok(ExpectedVersion::Any),
        Some(Ok(expected)) => Ok(crate::wire::map::engine_expected(expected)),
        Some(Err(raw)) => Err(ApiError::invalid_argument(format!(
            "invalid expected_version {}: use \"any\", \"no_stream\", \"exists\" or an integer >= 0",
            raw.get()
        ))),
    }
}

/// An event id from a path or a body.
pub(crate) fn parse_uuid(text: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| ApiError::invalid_argument(format!("{text:?} is not a UUID")))
}

/// Turns the events of a request into core events, enforcing the per-event size limit.
/// `body` is the request body the events borrow from: payloads become slices of it.
pub(crate) fn to_new_events(
    body: &Bytes,
    events: Vec<NewEventRequest<'_>>,
    config: &ServerConfig,
) -> ApiResult<Vec<NewEvent>> {
    if events.is_empty() {
        return Err(ApiError::invalid_argument("events must not be empty"));
    }
    events.into_iter().enumerate().map(|(i, e)| to_new_event(body, e, config, i)).collect()
}

fn to_new_event(
    body: &Bytes,
    event: NewEventRequest<'_>,
    config: &ServerConfig,
    index: usize,
) -> ApiResult<NewEvent> {
    let raw = event.data.get();
    if raw.len() > config.max_event_bytes {
        return Err(ApiError::payload_too_large(format!(
            "the data of event {index} has {} bytes; the limit is {}",
            raw.len(),
            config.max_event_bytes
        )));
    }
    let event_type = EventType::new(&event.event_type)?;
    // `raw` borrows from `body`, so this is a zero-copy view of the received bytes.
    let mut new = NewEvent::new(event_type, body.slice_ref(raw.as_bytes()));
    match event.id.map(Lenient::into_result) {
        None => {}
        Some(Ok(id)) => new.id = id,
        Some(Err(raw)) => {
            return Err(ApiError::invalid_argument(match serde_json::from_str::<String>(raw.get()) {
                Ok(id) => format!("id {id:?} of event {index} is not a UUID"),
                Err(_) => format!("id must be a string, got {}", raw.get()),
            }));
        }
    }
    match event.occurred_at.map(Lenient::into_result) {
        None => {}
        Some(Ok(at)) => {
            new.occurred_at = Some(at.parse::<Timestamp>().map_err(|_| {
                ApiError::invalid_argument(format!(
                    "occurred_at {at:?} of event {index} is not an RFC 3339 timestamp"
                ))
            })?);
        }
        Some(Err(raw)) => {
            return Err(ApiError::invalid_argument(format!(
                "occurred_at must be a string, got {}",
                raw.get()
            )));
        }
    }
    if let Some(m) = event.metadata {
        new.metadata = metadata(m);
    }
    if let Some(schema_version) = event.schema_version {
        new.schema_version = schema_version;
    }
    new.aggregate_type = event.aggregate_type;
    Ok(new)
}

/// Checks the size of an ack's or nack's lease list.
pub(crate) fn check_leases(leases: &[String]) -> ApiResult<()> {
    if leases.len() > MAX_LEASES_PER_REQUEST {
        return Err(ApiError::invalid_argument(format!(
            "at most {MAX_LEASES_PER_REQUEST} leases per request, got {}",
            leases.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bifrost_api::AppendRequest;

    use super::*;

    #[test]
    fn expected_version_accepts_only_the_wire_forms() {
        let parse = |s: &str| {
            let body = format!(r#"{{"expected_version": {s}, "events": []}}"#);
            let request: AppendRequest<'_> = serde_json::from_str(&body).unwrap();
            parse_expected_version(request.expected_version).map_err(|e| e.kind())
        };
        assert_eq!(parse("\"any\""), Ok(ExpectedVersion::Any));
        assert_eq!(parse("\"no_stream\""), Ok(ExpectedVersion::NoStream));
        assert_eq!(parse("\"exists\""), Ok(ExpectedVersion::StreamExists));
        assert_eq!(parse("7"), Ok(ExpectedVersion::Exact(7)));
        assert_eq!(parse("null"), Ok(ExpectedVersion::Any));
        for bad in ["-1", "1.5", "\"sometimes\"", "true", "[]", "1e3"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_ids_and_times_name_the_event_and_the_value() {
        let detail = |event: &str| {
            let body = Bytes::from(format!(r#"{{"events": [{{"type": "a", "data": 1}}, {event}]}}"#));
            let request: AppendRequest<'_> = parse_body(&body).unwrap();
            let err = to_new_events(&body, request.events, &ServerConfig::default()).unwrap_err();
            assert_eq!(err.kind(), bifrost_api::ProblemType::InvalidArgument);
            err.detail().to_owned()
        };
        assert_eq!(detail(r#"{"type": "a", "data": 1, "id": "x"}"#), r#"id "x" of event 1 is not a UUID"#);
        assert_eq!(detail(r#"{"type": "a", "data": 1, "id": 42}"#), "id must be a string, got 42");
        assert_eq!(
            detail(r#"{"type": "a", "data": 1, "occurred_at": "yesterday"}"#),
            r#"occurred_at "yesterday" of event 1 is not an RFC 3339 timestamp"#
        );
        assert_eq!(
            detail(r#"{"type": "a", "data": 1, "occurred_at": [1]}"#),
            "occurred_at must be a string, got [1]"
        );
    }
}
