//! Typed domain events and how they map to stored events.
//!
//! A domain event type is a serde enum tagged the way the store keeps events apart:
//! `#[serde(tag = "type", content = "data")]`, one `#[serde(rename = "account.opened")]`
//! per variant. The tag becomes the stored event type and the content its JSON payload, so
//! the stored events stay readable by any client that does not know the Rust types.

use bifrost_core::{EventType, NewEvent, RecordedEvent};
use bytes::Bytes;
use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};

pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The schema version this code writes for `event_type`. Stored events of an older
    /// version pass through the registered upcasters before they are decoded.
    fn schema_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }
}

/// An event split into what the store keeps: its type, its payload and schema version.
///
/// Serialised once; the tag and the payload are then cut out of that text (the payload as
/// raw JSON, never parsed into a value tree and written again).
pub fn encode<E: DomainEvent>(event: &E) -> Result<NewEvent> {
    #[derive(Deserialize)]
    struct Split<'a> {
        #[serde(borrow)]
        r#type: Cow<'a, str>,
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
    }
    let what = || std::any::type_name::<E>();
    let json = serde_json::to_vec(event).map_err(|e| Error::encode(what(), e))?;
    let split: Split<'_> = serde_json::from_slice(&json).map_err(|e| {
        Error::encode(
            what(),
            format!("a domain event must serialise as {{\"type\": ..., \"data\": ...}}: {e}"),
        )
    })?;
    let event_type = EventType::new(&split.r#type)?;
    // A unit variant has no content: its payload is `null`, as before.
    let data = split.data.map_or(&b"null"[..], |raw| raw.get().as_bytes());
    let version = E::schema_version(event_type.as_str());
    Ok(NewEvent::new(event_type, Bytes::copy_from_slice(data)).with_schema_version(version))
}

/// Decodes a stored event (already upcast to the current schema) into `E`.
///
/// The event must be at the schema version this code reads (`E::schema_version`): an
/// older one means an upcaster is missing, a newer one was written by newer code, and
/// decoding either as the current shape would silently drop or misread fields.
pub fn decode<E: DomainEvent>(event: &RecordedEvent) -> Result<E> {
    let fail = |reason: String| Error::Decode {
        id: event.id,
        event_type: event.event_type.to_string(),
        schema_version: event.schema_version,
        reason,
    };
    let current = E::schema_version(event.event_type.as_str());
    if event.schema_version != current {
        return Err(fail(format!(
            "this code reads version {current}; register upcasters for every version below it"
        )));
    }
    let data =
        std::str::from_utf8(&event.data).map_err(|e| fail(format!("the payload is not UTF-8: {e}")))?;
    // One JSON value, checked before it is joined to the tag: bytes that are not (a library
    // caller may store any) cannot smuggle in a second tag.
    let data: &RawValue =
        serde_json::from_str(data).map_err(|e| fail(format!("the payload is not JSON: {e}")))?;
    #[derive(Serialize)]
    struct Tagged<'a> {
        r#type: &'a str,
        data: &'a RawValue,
    }
    let joined = serde_json::to_vec(&Tagged { r#type: event.event_type.as_str(), data })
        .map_err(|e| fail(e.to_string()))?;
    serde_json::from_slice(&joined).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Light {
        #[serde(rename = "light.switched")]
        Switched { on: bool, label: String },
        #[serde(rename = "light.broke")]
        Broke,
    }

    impl DomainEvent for Light {}

    #[derive(Serialize, Deserialize)]
    struct Untagged {
        on: bool,
    }

    impl DomainEvent for Untagged {}

    #[test]
    fn the_tag_is_the_type_and_the_content_the_payload_byte_for_byte() {
        let event = Light::Switched { on: true, label: "hall \"east\"".into() };
        let new = encode(&event).unwrap();
        assert_eq!(new.event_type.as_str(), "light.switched");
        assert_eq!(new.data.as_ref(), br#"{"on":true,"label":"hall \"east\""}"#);
        let unit = encode(&Light::Broke).unwrap();
        assert_eq!((unit.event_type.as_str(), unit.data.as_ref()), ("light.broke", &b"null"[..]));
    }

    #[test]
    fn an_event_without_a_type_tag_is_refused() {
        let err = encode(&Untagged { on: true }).unwrap_err();
        assert!(matches!(err, Error::Encode { .. }), "{err}");
    }
}
