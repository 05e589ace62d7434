//! Writing JSON by hand into a byte buffer: the pieces the hot paths that copy stored
//! payloads verbatim (the server's reads and SSE, webhook bodies, bridges) share, the event
//! JSON itself included, so that a string,
//! an id or a timestamp is written the same way everywhere.

use std::io::Write as _;

use uuid::Uuid;

use crate::{RecordedEvent, Timestamp};

/// A JSON string, escaped.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A quoted UUID; its hyphenated form needs no escaping.
pub fn write_uuid(out: &mut Vec<u8>, id: Uuid) {
    let mut buffer = Uuid::encode_buffer();
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buffer).as_bytes());
    out.push(b'"');
}

pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    let _ = write!(out, "{n}");
}

/// A number, or `null`.
pub fn write_optional_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => write_u64(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// A quoted RFC 3339 timestamp (six fractional digits, `Z`); nothing in it needs escaping.
pub fn write_timestamp(out: &mut Vec<u8>, t: Timestamp) {
    let _ = write!(out, "\"{t}\"");
}

/// Appends one event's JSON to `out`. `data` and `metadata` are the stored bytes, verbatim.
pub fn write_event(out: &mut Vec<u8>, e: &RecordedEvent) {
    out.extend_from_slice(b"{\"id\":");
    write_uuid(out, e.id);
    out.extend_from_slice(b",\"stream\":");
    write_str(out, e.stream.as_str());
    out.extend_from_slice(b",\"aggregate_type\":");
    write_str(out, &e.aggregate_type);
    out.extend_from_slice(b",\"type\":");
    write_str(out, e.event_type.as_str());
    out.extend_from_slice(b",\"schema_version\":");
    write_u64(out, u64::from(e.schema_version));
    out.extend_from_slice(b",\"version\":");
    write_u64(out, e.version);
    out.extend_from_slice(b",\"position\":");
    write_u64(out, e.position);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(if e.data.is_empty() { b"null" } else { &e.data });
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(if e.metadata.is_empty() { b"{}" } else { &e.metadata });
    out.extend_from_slice(b",\"occurred_at\":");
    write_timestamp(out, e.occurred_at);
    out.extend_from_slice(b",\"recorded_at\":");
    write_timestamp(out, e.recorded_at);
    out.push(b'}');
}

/// One event's JSON, as the API prints it.
pub fn event_json(e: &RecordedEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(320 + e.data.len() + e.metadata.len());
    write_event(&mut out, e);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_valid_json() {
        let mut out = Vec::new();
        out.push(b'[');
        write_str(&mut out, "a \"quoted\"\n line");
        out.push(b',');
        write_uuid(&mut out, Uuid::nil());
        out.push(b',');
        write_optional_u64(&mut out, Some(7));
        out.push(b',');
        write_optional_u64(&mut out, None);
        out.push(b',');
        write_timestamp(&mut out, Timestamp::from_micros(1));
        out.push(b']');
        let parsed: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(
            parsed,
            serde_json::json!([
                "a \"quoted\"\n line",
                "00000000-0000-0000-0000-000000000000",
                7,
                null,
                "1970-01-01T00:00:00.000001Z"
            ])
        );
    }
}
