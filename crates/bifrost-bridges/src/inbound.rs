//! What an in-bridge makes of one broker message: the stream it goes to, and the event, in
//! the bridge's content mode. A message that cannot be an event is refused with a reason
//! (the bridge acks it and keeps it as a dead letter).

use base64::Engine as _;
use bifrost_api::BridgeContentModeBody;
use bifrost_core::{EventType, Metadata, NewEvent, StreamName, Timestamp};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::spec::BridgeSpec;

/// The largest `data` an in-bridge appends (the API's default per-event limit).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// One message as a broker delivered it, before it is an event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    /// The NATS subject, the AMQP routing key or the Redis stream key (`{subject}`).
    pub subject: String,
    /// The message's own id: `Nats-Msg-Id`, AMQP `message_id`, Redis field `id`.
    pub message_id: Option<String>,
    /// The broker's place for it: JetStream stream sequence, Redis entry id.
    pub sequence: Option<String>,
    /// The CloudEvents binding's attributes, the prefix (`ce-`, `cloudEvents:`,
    /// `cloudEvents_`, `ce_`) removed and the name lower-cased.
    pub attributes: Vec<(String, String)>,
    pub body: Bytes,
}

/// The stream an in-bridge appends to: a template of `{type}`, `{source}`, `{subject}` and
/// `{name}` (the bridge's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamTemplate(String);

const PLACEHOLDERS: [&str; 4] = ["type", "source", "subject", "name"];

impl StreamTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("stream must not be empty".into());
        }
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("stream {text:?}: a \"{{\" is not closed"));
            };
            let name = &rest[open + 1..open + close];
            if !PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "stream {text:?}: unknown placeholder {{{name}}} (type, source, subject, name)"
                ));
            }
            rest = &rest[open + close + 1..];
        }
        Ok(Self(text.to_owned()))
    }

    pub fn render(&self, name: &str, event_type: &str, source: &str, subject: &str) -> String {
        self.0
            .replace("{name}", name)
            .replace("{type}", event_type)
            .replace("{source}", source)
            .replace("{subject}", subject)
    }
}

/// Why a message is not an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotAnEvent(pub String);

/// The message as an event of bridge `name`, and its stream.
pub fn to_event(name: &str, spec: &BridgeSpec, msg: &Incoming) -> Result<(StreamName, NewEvent), NotAnEvent> {
    let bad = |why: String| NotAnEvent(why);
    let parts = match spec.content_mode {
        BridgeContentModeBody::Bifrost => from_bifrost(&msg.body)?,
        BridgeContentModeBody::CloudeventsStructured => from_structured(&msg.body)?,
        BridgeContentModeBody::CloudeventsBinary => from_binary(msg)?,
        BridgeContentModeBody::Raw => Parts {
            event_type: spec.event_type.clone().unwrap_or_default(),
            data: json_data(msg.body.clone())?,
            ..Parts::default()
        },
    };
    if parts.data.len() > MAX_DATA_BYTES {
        return Err(bad(format!("data has {} bytes; the limit is {MAX_DATA_BYTES}", parts.data.len())));
    }
    let event_type = EventType::new(&parts.event_type).map_err(|e| bad(e.to_string()))?;
    let template = StreamTemplate::parse(spec.stream.as_deref().unwrap_or(crate::spec::DEFAULT_STREAM))
        .map_err(NotAnEvent)?;
    // A tenant's bridge is `acme/{name}` in the store; its messages are the tenant's
    // events, named and numbered as the tenant's appends are.
    let name = crate::spec::local_name(name);
    let tenant = spec.tenant.tenant();
    let stream_text =
        template.render(name, event_type.as_str(), spec.source.as_deref().unwrap_or(""), &msg.subject);
    let stream = StreamName::new(&stream_text).map_err(|e| bad(e.to_string()))?;
    let id = parts.id.or_else(|| msg.message_id.clone()).or_else(|| msg.sequence.clone());
    let mut metadata = parts.metadata;
    if let Some(tenant) = tenant {
        if metadata.tenant_id.as_deref().is_some_and(|t| t != tenant) {
            return Err(bad("metadata.tenant_id names another tenant than the bridge's".into()));
        }
        metadata.tenant_id = Some(tenant.to_owned());
    }
    let id = event_id(name, id.as_deref());
    let mut event = NewEvent::new(event_type, parts.data)
        .with_id(tenant.map_or(id, |tenant| bifrost_core::tenant::mask_id(tenant, id)))
        .with_metadata(metadata)
        .with_schema_version(parts.schema_version.unwrap_or(1));
    event.occurred_at = parts.occurred_at;
    event.aggregate_type = parts.aggregate_type;
    Ok((StreamName::in_tenant(tenant, &stream), event))
}

/// The message's id itself when it is a UUID, else UUIDv5 of `{name}/{id}` in the URL
/// namespace (the same message always gets the same event id, so a replay is stored
/// once); a fresh UUIDv7 when the message has no id at all.
pub fn event_id(name: &str, id: Option<&str>) -> Uuid {
    match id {
        Some(id) => Uuid::parse_str(id)
            .unwrap_or_else(|_| Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("{name}/{id}").as_bytes())),
        None => Uuid::now_v7(),
    }
}

/// The fields of an event, whatever the content mode.
#[derive(Default)]
struct Parts {
    id: Option<String>,
    event_type: String,
    data: Bytes,
    metadata: Metadata,
    schema_version: Option<u32>,
    occurred_at: Option<Timestamp>,
    aggregate_type: Option<String>,
}

/// An event as the append API takes it (other fields, such as those of a stored event
/// that an out-bridge sent, are ignored).
#[derive(Deserialize)]
struct BifrostBody<'a> {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    occurred_at: Option<String>,
    #[serde(default)]
    aggregate_type: Option<String>,
}

fn from_bifrost(body: &Bytes) -> Result<Parts, NotAnEvent> {
    let event: BifrostBody<'_> =
        serde_json::from_slice(body).map_err(|e| NotAnEvent(format!("not an event JSON: {e}")))?;
    if let Some(id) = &event.id {
        Uuid::parse_str(id).map_err(|_| NotAnEvent(format!("id {id:?} is not a UUID")))?;
    }
    Ok(Parts {
        id: event.id,
        event_type: event.event_type,
        data: body.slice_ref(event.data.get().as_bytes()),
        metadata: event.metadata.unwrap_or_default(),
        schema_version: event.schema_version,
        occurred_at: event.occurred_at.as_deref().map(timestamp).transpose()?,
        aggregate_type: event.aggregate_type,
    })
}

fn from_structured(body: &Bytes) -> Result<Parts, NotAnEvent> {
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
        return Err(NotAnEvent("not a CloudEvent: the body is not a JSON object".into()));
    };
    let data = match (fields.remove("data"), fields.remove("data_base64")) {
        (Some(data), _) => Bytes::from(serde_json::to_vec(&data).map_err(|e| NotAnEvent(e.to_string()))?),
        (None, Some(Value::String(encoded))) => json_data(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| NotAnEvent(format!("data_base64 is not base64: {e}")))?,
        ))?,
        (None, Some(_)) => return Err(NotAnEvent("data_base64 is not a string".into())),
        (None, None) => Bytes::from_static(b"null"),
    };
    let attributes = fields
        .into_iter()
        .filter_map(|(name, value)| match value {
            Value::String(s) => Some((name, s)),
            Value::Null => None,
            other => Some((name, other.to_string())),
        })
        .collect::<Vec<_>>();
    from_attributes(&attributes, data)
}

fn from_binary(msg: &Incoming) -> Result<Parts, NotAnEvent> {
    let data = if msg.body.is_empty() { Bytes::from_static(b"null") } else { json_data(msg.body.clone())? };
    from_attributes(&msg.attributes, data)
}

/// A CloudEvent's attributes: `id`, `type`, `specversion` (1.0), `source` (metadata
/// `source`), `time`, `eventversion` (schema version) and the metadata extensions.
fn from_attributes(attributes: &[(String, String)], data: Bytes) -> Result<Parts, NotAnEvent> {
    let get = |name: &str| attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    match get("specversion") {
        Some("1.0") => {}
        Some(other) => return Err(NotAnEvent(format!("CloudEvents specversion {other:?} (1.0 is read)"))),
        None => return Err(NotAnEvent("not a CloudEvent: no specversion".into())),
    }
    let Some(id) = get("id").filter(|id| !id.is_empty()) else {
        return Err(NotAnEvent("not a CloudEvent: no id".into()));
    };
    let Some(event_type) = get("type") else { return Err(NotAnEvent("not a CloudEvent: no type".into())) };
    let owned = |name: &str| get(name).map(str::to_owned);
    let mut extra = Map::new();
    if let Some(subject) = get("subject") {
        extra.insert("cloudevents_subject".into(), Value::String(subject.to_owned()));
    }
    // The extension attributes the webhooks' and out-bridges' CloudEvents write.
    let metadata = Metadata {
        correlation_id: owned("correlationid"),
        causation_id: owned("causationid"),
        source: owned("source"),
        user_id: owned("userid"),
        tenant_id: owned("tenantid"),
        extra,
    };
    let schema_version = match get("eventversion") {
        Some(v) => {
            Some(v.parse::<u32>().map_err(|_| NotAnEvent(format!("eventversion {v:?} is not a number")))?)
        }
        None => None,
    };
    Ok(Parts {
        id: Some(id.to_owned()),
        event_type: event_type.to_owned(),
        data,
        metadata,
        schema_version,
        occurred_at: get("time").map(timestamp).transpose()?,
        aggregate_type: None,
    })
}

/// `body` if it is JSON (events carry JSON data).
fn json_data(body: Bytes) -> Result<Bytes, NotAnEvent> {
    serde_json::from_slice::<serde::de::IgnoredAny>(&body)
        .map_err(|e| NotAnEvent(format!("the data is not JSON: {e}")))?;
    Ok(body)
}

fn timestamp(text: &str) -> Result<Timestamp, NotAnEvent> {
    text.parse::<Timestamp>().map_err(|_| NotAnEvent(format!("time {text:?} is not an RFC 3339 timestamp")))
}

/// Strips a CloudEvents binding prefix from a header (or field) name: the attribute's name,
/// lower-cased, or `None` when the header is no attribute.
pub fn attribute_name(header: &str, prefixes: &[&str]) -> Option<String> {
    prefixes.iter().find_map(|prefix| {
        let head = header.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix).then(|| header[prefix.len()..].to_ascii_lowercase())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bifrost_api::BridgeRequest;
    use serde_json::json;

    use super::*;

    fn spec(value: Value) -> BridgeSpec {
        let mut value = value;
        value["direction"] = json!("in");
        value["kind"] = json!("nats");
        value["url"] = json!("nats://h");
        value["source"] = json!("in.orders");
        BridgeSpec::from_request(serde_json::from_value::<BridgeRequest>(value).unwrap()).unwrap()
    }

    fn msg(body: &str) -> Incoming {
        Incoming { subject: "in.orders".into(), body: Bytes::from(body.to_owned()), ..Incoming::default() }
    }

    #[test]
    fn a_bifrost_body_is_an_event_as_the_append_api_takes_it() {
        let id = "01936a5e-7c1f-7d2a-9b3c-4d5e6f708192";
        let body = format!(
            r#"{{"type":"order.placed","data":{{"total": 1}},"id":"{id}","metadata":{{"correlation_id":"c"}},"position":9}}"#
        );
        let (stream, event) = to_event("b1", &spec(json!({})), &msg(&body)).unwrap();
        assert_eq!(stream.as_str(), "ingest-b1");
        assert_eq!((event.id.to_string().as_str(), event.event_type.as_str()), (id, "order.placed"));
        assert_eq!(&event.data[..], br#"{"total": 1}"#);
        assert_eq!(event.metadata.correlation_id.as_deref(), Some("c"));
        for bad in
            [r#"{"data":1}"#, "nope", r#"{"type":"a..b","data":1}"#, r#"{"type":"a","data":1,"id":"x"}"#]
        {
            assert!(to_event("b1", &spec(json!({})), &msg(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_the_messages_own_else_a_name_based_uuid() {
        let with_id = Incoming { message_id: Some("m-1".into()), sequence: Some("7".into()), ..msg("1") };
        let raw = spec(json!({"content_mode": "raw", "type": "sensor.read"}));
        let (_, event) = to_event("b1", &raw, &with_id).unwrap();
        assert_eq!(event.id, Uuid::new_v5(&Uuid::NAMESPACE_URL, b"b1/m-1"));
        let by_sequence = Incoming { message_id: None, ..with_id };
        assert_eq!(to_event("b1", &raw, &by_sequence).unwrap().1.id, event_id("b1", Some("7")));
        assert_ne!(event_id("b1", Some("7")), event_id("b2", Some("7")));
        let uuid = Uuid::now_v7();
        assert_eq!(event_id("b1", Some(&uuid.to_string())), uuid);
        assert!(to_event("b1", &raw, &msg("not json")).is_err());
    }

    #[test]
    fn cloudevents_map_back_to_events_in_either_mode() {
        let structured = json!({"specversion": "1.0", "id": "ce-1", "source": "shop", "type": "order.paid",
            "time": "2026-01-02T03:04:05Z", "subject": "order-9", "correlationid": "c-1", "data": {"x": 1}});
        let spec_s = spec(json!({"content_mode": "cloudevents-structured", "stream": "{source}-{type}"}));
        let (stream, event) = to_event("b", &spec_s, &msg(&structured.to_string())).unwrap();
        assert_eq!(stream.as_str(), "in.orders-order.paid");
        assert_eq!(event.id, event_id("b", Some("ce-1")));
        assert_eq!(serde_json::from_slice::<Value>(&event.data).unwrap(), json!({"x": 1}));
        assert_eq!(
            (event.metadata.source.as_deref(), event.metadata.correlation_id.as_deref()),
            (Some("shop"), Some("c-1"))
        );
        assert!(event.occurred_at.is_some());

        let attributes = [("specversion", "1.0"), ("id", "ce-2"), ("type", "order.paid"), ("source", "s")];
        let binary = Incoming {
            attributes: attributes.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
            ..msg(r#"{"y":2}"#)
        };
        let spec_b = spec(json!({"content_mode": "cloudevents-binary"}));
        let (_, event) = to_event("b", &spec_b, &binary).unwrap();
        assert_eq!((event.id, &event.data[..]), (event_id("b", Some("ce-2")), &br#"{"y":2}"#[..]));
        assert!(to_event("b", &spec_b, &msg("{}")).is_err(), "no attributes: not a CloudEvent");
    }

    #[test]
    fn binding_prefixes_are_stripped_case_blind() {
        assert_eq!(attribute_name("ce-Type", &["ce-"]).as_deref(), Some("type"));
        assert_eq!(
            attribute_name("cloudEvents:id", &["cloudEvents:", "cloudEvents_"]).as_deref(),
            Some("id")
        );
        assert_eq!(attribute_name("Content-Type", &["ce-"]), None);
        assert!(StreamTemplate::parse("a-{nope}").is_err());
    }
}
