//! JSON lines on stdout: one item per line, in the API's JSON (`bifrost_api`'s types, keys
//! in their order, an event's `data` and `metadata` as stored) with only the whitespace
//! between tokens removed.

use std::borrow::Cow;
use std::io::{self, Write};

use anyhow::Context;
use bifrost_api::{AppendResultBody, DeadLetterBody, EventBody, MessageBody};
use bifrost_client::{DeadLetter, Message};
use bifrost_core::{AppendResult, RecordedEvent};
use serde::Serialize;
use serde_json::value::RawValue;

/// Removes whitespace outside strings, so that pretty-printed JSON (say, an event whose
/// `data` was appended pretty-printed) fits on one line. Everything else is kept byte for
/// byte.
pub(crate) fn compact_json(json: &str) -> Cow<'_, str> {
    if !json.contains(['\n', '\r']) {
        return Cow::Borrowed(json.trim());
    }
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Writes JSON lines to stdout.
pub(crate) struct JsonLines {
    out: io::BufWriter<io::Stdout>,
}

impl JsonLines {
    pub(crate) fn stdout() -> Self {
        Self { out: io::BufWriter::new(io::stdout()) }
    }

    pub(crate) fn line(&mut self, json: &str) -> io::Result<()> {
        self.out.write_all(compact_json(json).as_bytes())?;
        self.out.write_all(b"\n")
    }

    /// A value as one line of JSON.
    pub(crate) fn value(&mut self, value: &impl Serialize) -> anyhow::Result<()> {
        let text = serde_json::to_string(value).context("cannot print the answer as JSON")?;
        self.line(&text)?;
        Ok(())
    }

    /// Pushes what is buffered to the terminal or the pipe (after each live event).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Collapses every run of whitespace (newlines included) into one space.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Stored JSON (an event's `data` or `metadata`, as the client read it from an answer).
fn stored_json<'a>(bytes: &'a [u8], what: &str, empty: &'static str) -> anyhow::Result<&'a RawValue> {
    let bytes = if bytes.is_empty() { empty.as_bytes() } else { bytes };
    serde_json::from_slice(bytes).with_context(|| format!("the {what} of an event is not JSON"))
}

/// An event as the API shows it.
pub(crate) fn event_body(e: &RecordedEvent) -> anyhow::Result<EventBody<'_>> {
    Ok(EventBody {
        id: e.id,
        stream: Cow::Borrowed(e.stream.as_str()),
        aggregate_type: Cow::Borrowed(&e.aggregate_type),
        event_type: Cow::Borrowed(e.event_type.as_str()),
        schema_version: e.schema_version,
        version: e.version,
        position: e.position,
        data: stored_json(&e.data, "data", "null")?,
        metadata: stored_json(&e.metadata, "metadata", "{}")?,
        occurred_at: Cow::Owned(e.occurred_at.to_string()),
        recorded_at: Cow::Owned(e.recorded_at.to_string()),
    })
}

/// A leased event as the fetch answer shows it.
pub(crate) fn message_body(m: &Message) -> anyhow::Result<MessageBody<'_>> {
    Ok(MessageBody { lease: m.lease.clone(), attempt: m.attempt, event: event_body(&m.event)? })
}

/// A dead letter as the dead-letter answer shows it.
pub(crate) fn dead_letter_body(d: &DeadLetter) -> anyhow::Result<DeadLetterBody<'_>> {
    Ok(DeadLetterBody {
        event: d.event.as_ref().map(event_body).transpose()?,
        event_id: d.event_id,
        position: d.position,
        stream: d.stream.clone(),
        event_type: d.event_type.clone(),
        attempts: d.attempts,
        reason: d.reason.clone(),
        parked_at: d.parked_at.to_string(),
    })
}

/// Where an append's events landed, as the append answer shows it.
pub(crate) fn append_result_body(r: &AppendResult) -> AppendResultBody {
    AppendResultBody {
        stream: r.stream.to_string(),
        first_version: r.first_version,
        last_version: r.last_version,
        first_position: r.first_position,
        last_position: r.last_position,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacting_keeps_strings_and_order() {
        let pretty = "{\n  \"b\": 1,\n  \"a\": \"x y\\\" \\n z\",\n  \"data\": { \"k\" : [1, 2] }\n}\n";
        assert_eq!(compact_json(pretty), r#"{"b":1,"a":"x y\" \n z","data":{"k":[1,2]}}"#);
        assert_eq!(compact_json(r#"{"a": 1}"#), r#"{"a": 1}"#, "single-line JSON is left alone");
    }

    #[test]
    fn an_event_prints_as_the_server_wrote_it() {
        let answer = r#"{"id":"01936a5e-0000-7000-8000-000000000000","stream":"order-1","aggregate_type":"order","type":"order.submitted","schema_version":1,"version":3,"position":1041,"data":{ "total" :42.50 },"metadata":{"correlation_id":"c-1"},"occurred_at":"2026-11-22T10:00:00.123456Z","recorded_at":"2026-11-22T10:00:00.124001Z"}"#;
        let wire: EventBody<'_> = serde_json::from_str(answer).unwrap();
        let event = RecordedEvent {
            id: wire.id,
            stream: bifrost_core::StreamName::new(&wire.stream).unwrap(),
            aggregate_type: wire.aggregate_type.to_string(),
            event_type: bifrost_core::EventType::new(&wire.event_type).unwrap(),
            schema_version: wire.schema_version,
            version: wire.version,
            position: wire.position,
            data: bytes::Bytes::copy_from_slice(wire.data.get().as_bytes()),
            metadata: bytes::Bytes::copy_from_slice(wire.metadata.get().as_bytes()),
            occurred_at: wire.occurred_at.parse().unwrap(),
            recorded_at: wire.recorded_at.parse().unwrap(),
        };
        assert_eq!(serde_json::to_string(&event_body(&event).unwrap()).unwrap(), answer);
    }
}
