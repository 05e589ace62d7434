//! The hand-written JSON of the read paths (stream and log pages, one event, SSE frames,
//! fetches and dead letters). It writes the shapes of `bifrost_api`'s `EventBody`,
//! `StreamEventsBody`, `LogEventsBody`, `FetchBody` and `DeadLettersBody` — the tests hold
//! it to them byte for byte — without going through them: an event's `data` and
//! `metadata` are the stored bytes, copied once into the answer, never parsed or
//! re-serialised.

use std::io::Write as _;

use bifrost_core::RecordedEvent;
use bifrost_core::group::{DeadLetterEntry, Lease};
use bifrost_core::json_out::{
    write_event, write_optional_u64, write_str, write_timestamp, write_u64, write_uuid,
};

/// `{"messages":[{"lease":..,"attempt":..,"event":{..}},...]}`.
pub(crate) fn fetch_json(leases: &[Lease]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + leases.iter().map(|l| 96 + estimate_one(&l.event)).sum::<usize>());
    out.extend_from_slice(b"{\"messages\":");
    write_array(&mut out, leases, |out, lease| {
        out.extend_from_slice(b"{\"lease\":");
        // Hex digits: nothing to escape.
        let _ = write!(out, "\"{}\"", lease.token);
        out.extend_from_slice(b",\"attempt\":");
        write_u64(out, u64::from(lease.attempt));
        out.extend_from_slice(b",\"event\":");
        write_event(out, &lease.event);
        out.push(b'}');
    });
    out.push(b'}');
    out
}

/// `{"dead_letters":[...],"next":P|null}`.
pub(crate) fn dead_letters_json(entries: &[DeadLetterEntry], next: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + entries.iter().map(|e| 256 + e.event.as_ref().map_or(0, estimate_one)).sum::<usize>(),
    );
    out.extend_from_slice(b"{\"dead_letters\":");
    write_array(&mut out, entries, |out, entry| {
        let dl = &entry.dead_letter;
        out.extend_from_slice(b"{\"event\":");
        match &entry.event {
            Some(event) => write_event(out, event),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"event_id\":");
        write_uuid(out, dl.event_id);
        out.extend_from_slice(b",\"position\":");
        write_u64(out, dl.position);
        out.extend_from_slice(b",\"stream\":");
        write_str(out, &dl.stream);
        out.extend_from_slice(b",\"type\":");
        write_str(out, &dl.event_type);
        out.extend_from_slice(b",\"attempts\":");
        write_u64(out, u64::from(dl.attempts));
        out.extend_from_slice(b",\"reason\":");
        write_str(out, &dl.reason);
        out.extend_from_slice(b",\"parked_at\":");
        write_timestamp(out, dl.parked_at);
        out.push(b'}');
    });
    out.extend_from_slice(b",\"next\":");
    write_optional_u64(&mut out, next);
    out.push(b'}');
    out
}

// ---------------------------------------------------------------------------------------
// The event writer (hot path of reads and SSE)

/// `[event, event, ...]`.
fn write_events(out: &mut Vec<u8>, events: &[RecordedEvent]) {
    write_array(out, events, write_event);
}

/// `{"events":[...],"next":N|null}`.
pub(crate) fn stream_events_json(events: &[RecordedEvent], next: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(events));
    out.extend_from_slice(b"{\"events\":");
    write_events(&mut out, events);
    out.extend_from_slice(b",\"next\":");
    write_optional_u64(&mut out, next);
    out.push(b'}');
    out
}

/// `{"events":[...],"next_position":P}`.
pub(crate) fn log_events_json(events: &[RecordedEvent], next_position: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(events));
    out.extend_from_slice(b"{\"events\":");
    write_events(&mut out, events);
    out.extend_from_slice(b",\"next_position\":");
    write_u64(&mut out, next_position);
    out.push(b'}');
    out
}

pub(crate) fn event_json(e: &RecordedEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(std::slice::from_ref(e)));
    write_event(&mut out, e);
    out
}

fn estimate(events: &[RecordedEvent]) -> usize {
    64 + events.iter().map(estimate_one).sum::<usize>()
}

fn estimate_one(e: &RecordedEvent) -> usize {
    320 + e.data.len() + e.metadata.len()
}

/// `[item,item,...]`, each item written by `write`.
fn write_array<T>(out: &mut Vec<u8>, items: &[T], mut write: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use bifrost_api::{
        DeadLetterBody, DeadLettersBody, EventBody, FetchBody, LogEventsBody, MessageBody, StreamEventsBody,
    };
    use bifrost_core::group::LeaseToken;
    use bifrost_core::{EventType, StreamName};
    use bytes::Bytes;
    use serde_json::value::RawValue;

    use super::*;
    use uuid::Uuid;

    fn recorded(data: &'static [u8], metadata: &'static [u8]) -> RecordedEvent {
        RecordedEvent {
            id: Uuid::nil(),
            stream: StreamName::new("order-1").unwrap(),
            aggregate_type: "order\"x".into(),
            event_type: EventType::new("order.submitted").unwrap(),
            schema_version: 2,
            version: 3,
            position: 1041,
            data: Bytes::from_static(data),
            metadata: Bytes::from_static(metadata),
            occurred_at: "2026-11-22T10:00:00.123456Z".parse().unwrap(),
            recorded_at: "2026-11-22T10:00:00.124001Z".parse().unwrap(),
        }
    }

    fn raw<'a>(bytes: &'a [u8], empty: &'static str) -> &'a RawValue {
        let text = if bytes.is_empty() { empty } else { std::str::from_utf8(bytes).unwrap() };
        serde_json::from_str(text).unwrap()
    }

    /// The event as the wire type, built the slow way.
    fn body(e: &RecordedEvent) -> EventBody<'_> {
        EventBody {
            id: e.id,
            stream: Cow::Borrowed(e.stream.as_str()),
            aggregate_type: Cow::Borrowed(&e.aggregate_type),
            event_type: Cow::Borrowed(e.event_type.as_str()),
            schema_version: e.schema_version,
            version: e.version,
            position: e.position,
            data: raw(&e.data, "null"),
            metadata: raw(&e.metadata, "{}"),
            occurred_at: Cow::Owned(e.occurred_at.to_string()),
            recorded_at: Cow::Owned(e.recorded_at.to_string()),
        }
    }

    fn dead_letter() -> bifrost_bus::DeadLetter {
        bifrost_bus::DeadLetter {
            event_id: Uuid::nil(),
            position: 1041,
            stream: "order-1".into(),
            event_type: "order.submitted".into(),
            attempts: 5,
            reason: "bad\n".into(),
            parked_at: "2026-11-22T10:00:01Z".parse().unwrap(),
        }
    }

    #[test]
    fn the_writer_writes_the_wire_types_byte_for_byte() {
        let events = [recorded(b"{ \"total\" :42.50 }", br#"{"correlation_id":"c-1"}"#), recorded(b"", b"")];
        let same = |written: Vec<u8>, typed: Vec<u8>| {
            assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(typed).unwrap());
        };
        for e in &events {
            same(event_json(e), serde_json::to_vec(&body(e)).unwrap());
        }
        let bodies: Vec<_> = events.iter().map(body).collect();
        same(
            stream_events_json(&events, Some(4)),
            serde_json::to_vec(&StreamEventsBody { events: bodies.clone(), next: Some(4) }).unwrap(),
        );
        same(
            stream_events_json(&events, None),
            serde_json::to_vec(&StreamEventsBody { events: bodies.clone(), next: None }).unwrap(),
        );
        same(
            log_events_json(&events, 1041),
            serde_json::to_vec(&LogEventsBody { events: bodies.clone(), next_position: 1041 }).unwrap(),
        );

        let leases: Vec<Lease> = events
            .iter()
            .map(|e| Lease { token: LeaseToken::new(0xab, 1), attempt: 2, event: e.clone() })
            .collect();
        let messages = leases
            .iter()
            .map(|l| MessageBody { lease: l.token.to_string(), attempt: l.attempt, event: body(&l.event) })
            .collect();
        same(fetch_json(&leases), serde_json::to_vec(&FetchBody { messages }).unwrap());

        let entries = [
            DeadLetterEntry { dead_letter: dead_letter(), event: Some(events[0].clone()) },
            DeadLetterEntry { dead_letter: dead_letter(), event: None },
        ];
        let dead_letters = entries
            .iter()
            .map(|entry| {
                let dl = &entry.dead_letter;
                DeadLetterBody {
                    event: entry.event.as_ref().map(body),
                    event_id: dl.event_id,
                    position: dl.position,
                    stream: dl.stream.clone(),
                    event_type: dl.event_type.clone(),
                    attempts: dl.attempts,
                    reason: dl.reason.clone(),
                    parked_at: dl.parked_at.to_string(),
                }
            })
            .collect();
        same(
            dead_letters_json(&entries, Some(1041)),
            serde_json::to_vec(&DeadLettersBody { dead_letters, next: Some(1041) }).unwrap(),
        );
    }

    #[test]
    fn event_writer_emits_the_documented_shape_with_verbatim_payload() {
        let e = recorded(b"{ \"total\" :42.50 }", br#"{"correlation_id":"c-1"}"#);
        let json = event_json(&e);
        let text = std::str::from_utf8(&json).unwrap();
        assert!(text.contains(r#""data":{ "total" :42.50 },"#), "{text}");
        let parsed: EventBody<'_> = serde_json::from_slice(&json).unwrap();
        assert_eq!(parsed.aggregate_type, "order\"x");
        assert_eq!(parsed.event_type, "order.submitted");
        assert_eq!(parsed.position, 1041);
        assert_eq!(parsed.recorded_at, "2026-11-22T10:00:00.124001Z");
        assert_eq!(parsed.metadata.get(), r#"{"correlation_id":"c-1"}"#);
    }

    #[test]
    fn group_writers_emit_the_documented_bytes() {
        let event = recorded(b"1", b"{}");
        let lease = Lease { token: LeaseToken::new(0xab, 1), attempt: 2, event: event.clone() };
        let event_text = String::from_utf8(event_json(&event)).unwrap();
        assert_eq!(
            event_text,
            concat!(
                r#"{"id":"00000000-0000-0000-0000-000000000000","stream":"order-1","aggregate_type":"order\"x","#,
                r#""type":"order.submitted","schema_version":2,"version":3,"position":1041,"data":1,"#,
                r#""metadata":{},"occurred_at":"2026-11-22T10:00:00.123456Z","#,
                r#""recorded_at":"2026-11-22T10:00:00.124001Z"}"#
            )
        );
        assert_eq!(fetch_json(&[]), br#"{"messages":[]}"#);
        let fetched = String::from_utf8(fetch_json(&[lease.clone(), lease])).unwrap();
        let message =
            format!(r#"{{"lease":"00000000000000ab0000000000000001","attempt":2,"event":{event_text}}}"#);
        assert_eq!(fetched, format!(r#"{{"messages":[{message},{message}]}}"#));

        let entries = [
            DeadLetterEntry { dead_letter: dead_letter(), event: Some(event) },
            DeadLetterEntry { dead_letter: dead_letter(), event: None },
        ];
        assert_eq!(dead_letters_json(&[], None), br#"{"dead_letters":[],"next":null}"#);
        let letters = String::from_utf8(dead_letters_json(&entries, Some(1041))).unwrap();
        let rest = concat!(
            r#""event_id":"00000000-0000-0000-0000-000000000000","position":1041,"stream":"order-1","#,
            r#""type":"order.submitted","attempts":5,"reason":"bad\n","parked_at":"2026-11-22T10:00:01.000000Z"}"#
        );
        assert_eq!(
            letters,
            format!(
                r#"{{"dead_letters":[{{"event":{event_text},{rest},{{"event":null,{rest}],"next":1041}}"#
            )
        );
    }

    #[test]
    fn page_writers_produce_valid_json() {
        let events = vec![recorded(b"null", b"{}"), recorded(b"[1,2]", b"")];
        let json = stream_events_json(&events, None);
        let page: StreamEventsBody<'_> = serde_json::from_slice(&json).unwrap();
        assert_eq!(page.events.len(), 2);
        assert_eq!(page.next, None);
        let json = log_events_json(&events, 7);
        let page: LogEventsBody<'_> = serde_json::from_slice(&json).unwrap();
        assert_eq!(page.next_position, 7);
        assert_eq!(page.events[1].data.get(), "[1,2]");
    }
}
