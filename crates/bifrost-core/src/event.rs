//! Events: what a client hands in ([`NewEvent`]) and what the store gives back
//! ([`RecordedEvent`]).

use std::sync::LazyLock;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::name::{EventType, StreamName};
use crate::store::{Position, Version};
use crate::timestamp::Timestamp;

pub type EventId = Uuid;

/// Tracing and ownership facts about an event; unknown keys are kept as they came.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub causation_id: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Metadata {
    /// The JSON object the store keeps (and the API prints verbatim). Most events carry no
    /// metadata: they share one encoding instead of serialising it per event.
    pub fn to_json_bytes(&self) -> Bytes {
        if self.is_empty() {
            return EMPTY_METADATA_JSON.clone();
        }
        let mut json = Vec::new();
        self.write_json(&mut json);
        Bytes::from(json)
    }

    /// Appends the same encoding as [`Self::to_json_bytes`] to `out`: a writer encoding many
    /// events reuses one buffer instead of allocating per event.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        if self.is_empty() {
            out.extend_from_slice(&EMPTY_METADATA_JSON);
            return;
        }
        let start = out.len();
        // Serialising plain strings and JSON values cannot fail.
        if serde_json::to_writer(&mut *out, self).is_err() {
            out.truncate(start);
            out.extend_from_slice(b"{}");
        }
    }

    /// Stored metadata bytes as a `Bytes`, sharing the common empty encoding rather than
    /// copying it for every event read.
    pub fn stored_json(stored: &[u8]) -> Bytes {
        if stored == EMPTY_METADATA_JSON.as_ref() {
            EMPTY_METADATA_JSON.clone()
        } else {
            Bytes::copy_from_slice(stored)
        }
    }

    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

static EMPTY_METADATA_JSON: LazyLock<Bytes> = LazyLock::new(|| {
    serde_json::to_vec(&Metadata::default()).map(Bytes::from).unwrap_or_else(|_| Bytes::from_static(b"{}"))
});

/// An event to append. The store assigns its version, position and `recorded_at`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// The idempotency key of the append; UUID v7 unless the client chose one.
    pub id: EventId,
    pub event_type: EventType,
    /// The payload, JSON bytes kept exactly as received.
    pub data: Bytes,
    pub metadata: Metadata,
    pub schema_version: u32,
    /// Defaults to the append time.
    pub occurred_at: Option<Timestamp>,
    /// Defaults to the stream's category.
    pub aggregate_type: Option<String>,
}

impl NewEvent {
    /// A new event with a fresh UUID v7 and the given JSON payload bytes.
    pub fn new(event_type: EventType, data: impl Into<Bytes>) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type,
            data: data.into(),
            metadata: Metadata::default(),
            schema_version: 1,
            occurred_at: None,
            aggregate_type: None,
        }
    }

    /// A new event whose payload is `data` serialised as JSON.
    pub fn json(event_type: &str, data: &impl Serialize) -> Result<Self> {
        let bytes = serde_json::to_vec(data)
            .map_err(|e| Error::InvalidArgument(format!("event data is not serialisable: {e}")))?;
        Ok(Self::new(EventType::new(event_type)?, bytes))
    }

    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    pub fn with_schema_version(mut self, schema_version: u32) -> Self {
        self.schema_version = schema_version;
        self
    }

    pub fn with_occurred_at(mut self, at: Timestamp) -> Self {
        self.occurred_at = Some(at);
        self
    }

    pub fn with_aggregate_type(mut self, aggregate_type: impl Into<String>) -> Self {
        self.aggregate_type = Some(aggregate_type.into());
        self
    }
}

/// An event as stored: immutable, with its place in its stream and in the global log.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    pub id: EventId,
    pub stream: StreamName,
    pub aggregate_type: String,
    pub event_type: EventType,
    pub schema_version: u32,
    /// 1-based, contiguous within the stream.
    pub version: Version,
    /// Strictly increasing across the whole log.
    pub position: Position,
    /// The payload bytes exactly as appended.
    pub data: Bytes,
    /// The metadata JSON object exactly as stored; see [`RecordedEvent::metadata`].
    pub metadata: Bytes,
    pub occurred_at: Timestamp,
    pub recorded_at: Timestamp,
}

impl RecordedEvent {
    /// Decodes the metadata object.
    pub fn metadata(&self) -> Result<Metadata> {
        serde_json::from_slice(&self.metadata)
            .map_err(|e| Error::corrupt(format!("metadata of event {} is not valid", self.id), e))
    }

    /// Decodes the payload as `T`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.data)
            .map_err(|e| Error::InvalidArgument(format!("data of event {} does not decode: {e}", self.id)))
    }
}

/// Checks an event's own fields before any backend stores it.
pub(crate) fn validate_new_event(event: &NewEvent) -> Result<()> {
    if let Some(aggregate_type) = &event.aggregate_type {
        StreamName::new(aggregate_type).map_err(|_| {
            Error::InvalidArgument(format!(
                "invalid aggregate_type {aggregate_type:?}: use 1-256 characters of A-Z a-z 0-9 _ . : @ -"
            ))
        })?;
    }
    if event.schema_version == 0 {
        return Err(Error::InvalidArgument("schema_version starts at 1".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_metadata_shares_one_encoding_that_equals_serde_output() {
        let empty = Metadata::default().to_json_bytes();
        assert_eq!(empty.as_ref(), serde_json::to_vec(&Metadata::default()).unwrap().as_slice());
        assert_eq!(Metadata::stored_json(&empty).as_ptr(), empty.as_ptr(), "not shared");
        let full = Metadata { user_id: Some("u-1".into()), ..Metadata::default() };
        let bytes = full.to_json_bytes();
        assert_eq!(serde_json::from_slice::<Metadata>(&bytes).unwrap(), full);
        assert_eq!(Metadata::stored_json(&bytes), bytes);
        // One buffer for many events holds each encoding in turn.
        let mut buffer = b"prefix".to_vec();
        full.write_json(&mut buffer);
        Metadata::default().write_json(&mut buffer);
        assert_eq!(buffer, [&b"prefix"[..], &bytes, &empty].concat());
    }
}
