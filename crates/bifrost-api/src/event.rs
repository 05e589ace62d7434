//! Events: as a client sends them, and as the API shows them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::lenient::Lenient;

/// An event to append. A bad `id` or `occurred_at` is answered as a bad argument naming the
/// event (`bifrost:invalid-argument`), not as a malformed body: both are read leniently.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewEventRequest<'a> {
    /// Dot-separated segments of `A-Z a-z 0-9 _ -`.
    #[serde(rename = "type", borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub event_type: Cow<'a, str>,
    /// Required, any JSON value (`null` too); stored and returned byte for byte.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub data: &'a RawValue,
    /// UUID; the idempotency key (a UUID v7 is made when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Uuid>))]
    pub id: Option<Lenient<Uuid>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataRequest>,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u32>,
    /// RFC 3339; default: the time of the append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub occurred_at: Option<Lenient<String>>,
    /// Default: the stream's category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_type: Option<String>,
}

impl<'a> NewEventRequest<'a> {
    /// An event of `event_type` with `data`, every optional field absent.
    pub fn new(event_type: impl Into<Cow<'a, str>>, data: &'a RawValue) -> Self {
        Self {
            event_type: event_type.into(),
            data,
            id: None,
            metadata: None,
            schema_version: None,
            occurred_at: None,
            aggregate_type: None,
        }
    }
}

/// An event's metadata: the known keys are strings (or null); any other key is kept as it
/// came.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetadataRequest {
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
    pub extra: Map<String, Value>,
}

/// An event as the API shows it. Readers borrow its text from the answer: `data` and
/// `metadata` are the stored JSON, byte for byte.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventBody<'a> {
    pub id: Uuid,
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub stream: Cow<'a, str>,
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub aggregate_type: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub event_type: Cow<'a, str>,
    pub schema_version: u32,
    pub version: u64,
    pub position: u64,
    /// The payload exactly as it was appended.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub data: &'a RawValue,
    /// `correlation_id`, `causation_id`, `source`, `user_id`, `tenant_id` and any other key.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = Map<String, Value>))]
    pub metadata: &'a RawValue,
    /// RFC 3339, six fractional digits, `Z`.
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub occurred_at: Cow<'a, str>,
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub recorded_at: Cow<'a, str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_borrows_its_payload_from_the_answer() {
        let text = r#"{"id":"01936a5e-0000-7000-8000-000000000000","stream":"order-1","aggregate_type":"order",
            "type":"order.submitted","schema_version":1,"version":3,"position":1041,"data":{ "total" : 42.50 },
            "metadata":{"correlation_id":"c-1"},"occurred_at":"2026-11-22T10:00:00.123456Z",
            "recorded_at":"2026-11-22T10:00:00.124001Z","added_later":true}"#;
        let event: EventBody<'_> = serde_json::from_str(text).unwrap();
        assert_eq!(event.data.get(), r#"{ "total" : 42.50 }"#);
        assert!(matches!(event.stream, Cow::Borrowed("order-1")));
        assert_eq!((event.version, event.position), (3, 1041));
        let written = serde_json::to_string(&event).unwrap();
        assert!(
            written.contains(r#""data":{ "total" : 42.50 },"metadata":{"correlation_id":"c-1"}"#),
            "{written}"
        );
    }

    #[test]
    fn a_new_event_sends_only_what_is_set() {
        let data: &RawValue = serde_json::from_str("[1, 2]").unwrap();
        let event = NewEventRequest::new("a.b", data);
        assert_eq!(serde_json::to_string(&event).unwrap(), r#"{"type":"a.b","data":[1, 2]}"#);
        let parsed: NewEventRequest<'_> =
            serde_json::from_str(r#"{"type":"a.b","data":1,"id":42,"occurred_at":"yesterday"}"#).unwrap();
        assert!(matches!(parsed.id, Some(Lenient::Invalid(_))));
        assert_eq!(parsed.occurred_at, Some(Lenient::Valid("yesterday".to_owned())));
        assert!(serde_json::from_str::<NewEventRequest<'_>>(r#"{"type":"a","data":1,"tpye":"a"}"#).is_err());
    }
}
