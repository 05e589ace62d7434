//! What goes to a broker for one stored event: its target (subject, routing key, stream key
//! or channel), its body in the bridge's content mode, and the CloudEvents attributes a
//! binary-mode binding puts in headers.

use base64::Engine as _;
use bifrost_api::BridgeContentModeBody;
use bifrost_core::RecordedEvent;
use bifrost_webhooks::render::{self, ContentMode, Source};
use bytes::Bytes;
use serde_json::Value;
use uuid::Uuid;

/// One message for a broker.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// The dedupe id: the event's id (`Nats-Msg-Id`, AMQP `message_id`, Redis field `id`).
    pub id: Uuid,
    pub event_type: String,
    pub position: u64,
    /// The rendered target: subject, routing key, stream key or channel.
    pub target: String,
    pub body: Bytes,
    pub content_type: String,
    /// Binary mode only: the CloudEvents attributes (`id`, `source`, `type`, `specversion`,
    /// `subject`, `time`, extensions) without any binding prefix; each broker adds its own.
    pub attributes: Vec<(String, String)>,
}

/// A target template: `{type}`, `{stream}`, `{category}` and `{tenant}` (the metadata's
/// `tenant_id`, `default` when there is none). Parsed once; rendering an event writes its
/// parts into one string and reads the metadata only when the template names the tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    text: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Type,
    Stream,
    Category,
    Tenant,
}

impl Target {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("target must not be empty".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("target {text:?}: a \"{{\" is not closed"));
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            parts.push(match &rest[open + 1..open + close] {
                "type" => Part::Type,
                "stream" => Part::Stream,
                "category" => Part::Category,
                "tenant" => Part::Tenant,
                name => {
                    return Err(format!(
                        "target {text:?}: unknown placeholder {{{name}}} (type, stream, category, tenant)"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { text: text.to_owned(), parts })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn render(&self, event: &RecordedEvent) -> String {
        let mut out = String::with_capacity(self.text.len() + event.event_type.as_str().len());
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Type => out.push_str(event.event_type.as_str()),
                Part::Stream => out.push_str(event.stream.as_str()),
                Part::Category => out.push_str(event.stream.category()),
                Part::Tenant => out.push_str(tenant_of(&event.metadata).as_deref().unwrap_or("default")),
            }
        }
        out
    }
}

fn tenant_of(metadata: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"tenant_id\"";
    if !metadata.windows(KEY.len()).any(|w| w == KEY) {
        return None;
    }
    let value: Value = serde_json::from_slice(metadata).ok()?;
    value.get("tenant_id")?.as_str().map(str::to_owned)
}

/// The message for `event`.
pub fn outgoing(
    event: &RecordedEvent,
    target: &Target,
    mode: BridgeContentModeBody,
) -> Result<Outgoing, String> {
    let source = Source::from_event(event);
    let (body, content_type, attributes) = match mode {
        BridgeContentModeBody::Bifrost | BridgeContentModeBody::Raw => {
            (Bytes::from(event_json(event)), "application/json".to_owned(), Vec::new())
        }
        BridgeContentModeBody::CloudeventsStructured => {
            let rendered = render::render(&source, ContentMode::Cloudevents, None).map_err(|e| e.0)?;
            (rendered.body, rendered.content_type.to_owned(), Vec::new())
        }
        BridgeContentModeBody::CloudeventsBinary => {
            let rendered = render::render(&source, ContentMode::Cloudevents, None).map_err(|e| e.0)?;
            binary(&rendered.body)?
        }
    };
    Ok(Outgoing {
        id: event.id,
        event_type: event.event_type.as_str().to_owned(),
        position: event.position,
        target: target.render(event),
        body,
        content_type,
        attributes,
    })
}

/// A binary-mode message: body, content type, attributes.
type Binary = (Bytes, String, Vec<(String, String)>);

/// A structured CloudEvent split for a binary binding: `data` as the body, the rest as
/// attributes (strings; numbers as their JSON text).
fn binary(structured: &[u8]) -> Result<Binary, String> {
    let Value::Object(mut fields) = serde_json::from_slice(structured).map_err(|e| e.to_string())? else {
        return Err("a CloudEvent is a JSON object".into());
    };
    let content_type = fields
        .remove("datacontenttype")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "application/json".to_owned());
    let body = match (fields.remove("data"), fields.remove("data_base64")) {
        (Some(data), _) => Bytes::from(serde_json::to_vec(&data).map_err(|e| e.to_string())?),
        (None, Some(Value::String(encoded))) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| format!("data_base64 is not base64: {e}"))?,
        ),
        _ => Bytes::new(),
    };
    let attributes = fields
        .into_iter()
        .filter_map(|(name, value)| match value {
            Value::String(s) => Some((name, s)),
            Value::Null => None,
            other => Some((name, other.to_string())),
        })
        .collect();
    Ok((body, content_type, attributes))
}

/// The event as the API prints it.
fn event_json(event: &RecordedEvent) -> Vec<u8> {
    bifrost_core::json_out::event_json(event)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bifrost_core::{EventType, StreamName, Timestamp};
    use serde_json::json;

    use super::*;

    fn event(metadata: &str) -> RecordedEvent {
        RecordedEvent {
            id: "01936a5e-7c1f-7d2a-9b3c-4d5e6f708192".parse().unwrap(),
            stream: StreamName::new("order-123").unwrap(),
            aggregate_type: "order".into(),
            event_type: EventType::new("order.submitted").unwrap(),
            schema_version: 1,
            version: 3,
            position: 1041,
            data: Bytes::from_static(br#"{"total": 42.5}"#),
            metadata: Bytes::from(metadata.to_owned()),
            occurred_at: Timestamp::from_micros(1_764_000_000_000_000),
            recorded_at: Timestamp::from_micros(1_764_000_000_000_100),
        }
    }

    #[test]
    fn targets_take_the_events_type_stream_category_and_tenant() {
        let e = event(r#"{"tenant_id":"acme"}"#);
        let t = Target::parse("{tenant}.{category}.{type}/{stream}").unwrap();
        assert_eq!(t.render(&e), "acme.order.order.submitted/order-123");
        assert_eq!(Target::parse("bifrost.{type}").unwrap().render(&event("{}")), "bifrost.order.submitted");
        assert_eq!(Target::parse("t.{tenant}").unwrap().render(&event("{}")), "t.default");
        for bad in ["", "x.{nope}", "x.{type"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_content_mode_makes_its_body() {
        let e = event(r#"{"correlation_id":"c-1"}"#);
        let target = Target::parse("bifrost.{type}").unwrap();
        let plain = outgoing(&e, &target, BridgeContentModeBody::Bifrost).unwrap();
        let body: Value = serde_json::from_slice(&plain.body).unwrap();
        assert_eq!(
            (body["id"].as_str(), body["position"].as_u64()),
            (Some(e.id.to_string().as_str()), Some(1041))
        );
        assert_eq!(body["data"], json!({"total": 42.5}));
        assert_eq!(
            (plain.target.as_str(), plain.id, plain.position),
            ("bifrost.order.submitted", e.id, 1041)
        );
        assert!(plain.attributes.is_empty());

        let structured = outgoing(&e, &target, BridgeContentModeBody::CloudeventsStructured).unwrap();
        assert_eq!(structured.content_type, "application/cloudevents+json");
        let ce: Value = serde_json::from_slice(&structured.body).unwrap();
        assert_eq!((ce["specversion"].as_str(), ce["type"].as_str()), (Some("1.0"), Some("order.submitted")));

        let binary = outgoing(&e, &target, BridgeContentModeBody::CloudeventsBinary).unwrap();
        assert_eq!(binary.content_type, "application/json");
        assert_eq!(serde_json::from_slice::<Value>(&binary.body).unwrap(), json!({"total": 42.5}));
        let attribute =
            |name: &str| binary.attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(attribute("id"), Some(e.id.to_string().as_str()));
        assert_eq!(attribute("specversion"), Some("1.0"));
        assert_eq!(attribute("subject"), Some("order-123"));
        assert_eq!(attribute("position"), Some("1041"));
        assert_eq!(attribute("correlationid"), Some("c-1"));
        assert_eq!(attribute("data"), None);
    }
}
