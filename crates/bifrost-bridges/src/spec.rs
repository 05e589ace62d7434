//! A bridge's settings, checked: what `PUT /v1/bridges/{name}` accepts and what is stored.

use bifrost_api::{
    BridgeConfigBody, BridgeContentModeBody, BridgeDirectionBody, BridgeKindBody, BridgeRequest,
    GroupFilterRequest, StartBody,
};
use bifrost_core::{Category, EventType, LogFilter, StreamName, TenantScope, TypePattern};
use serde::{Deserialize, Serialize};

use crate::inbound::StreamTemplate;
use crate::message::Target;

/// Most messages a bridge leaves unconfirmed at once.
pub const MAX_BATCH_SIZE: u32 = 1000;
/// The stream an in-bridge appends to unless told otherwise.
pub const DEFAULT_STREAM: &str = "ingest-{name}";
/// Longest bridge name.
const MAX_NAME: usize = 128;

/// Why a bridge's settings are refused (a `400`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidBridge(pub String);

/// A checked bridge: its settings with every default filled in and the URL as given (the
/// API shows it with the password masked, [`to_body`](Self::to_body)).
///
/// `tenant`: whose streams an out-bridge sends (in their names and ids) and whose streams an
/// in-bridge appends to: its creator's tenant; every tenant's, as stored, for bridges made
/// while auth is off and those of the configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeSpec {
    #[serde(flatten)]
    config: BridgeConfigBody,
    #[serde(default, skip_serializing_if = "is_all")]
    pub tenant: TenantScope,
}

fn is_all(scope: &TenantScope) -> bool {
    *scope == TenantScope::All
}

impl std::ops::Deref for BridgeSpec {
    type Target = BridgeConfigBody;

    fn deref(&self) -> &BridgeConfigBody {
        &self.config
    }
}

/// A bridge name as the store keeps it: a client's name ([`check_name`]), optionally behind
/// a tenant prefix (`acme/orders-out`).
pub fn check_stored_name(name: &str) -> Result<(), InvalidBridge> {
    match name.split_once('/') {
        Some((tenant, local)) => {
            bifrost_core::name::validate_tenant(tenant)
                .map_err(|why| InvalidBridge(format!("invalid bridge name {name:?}: {why}")))?;
            check_name(local)
        }
        None => check_name(name),
    }
}

/// The name as its tenant sees it.
pub fn local_name(name: &str) -> &str {
    name.split_once('/').map_or(name, |(_, local)| local)
}

/// A bridge name: 1–128 characters of `A–Z a–z 0–9 _ - . :`.
pub fn check_name(name: &str) -> Result<(), InvalidBridge> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(InvalidBridge(format!(
            "invalid bridge name {name:?}: 1–{MAX_NAME} characters of A–Z a–z 0–9 _ - . :"
        )))
    }
}

impl BridgeSpec {
    fn new(config: BridgeConfigBody) -> Self {
        Self { config, tenant: TenantScope::All }
    }

    /// Inside `tenant`.
    pub fn in_tenant(mut self, tenant: TenantScope) -> Self {
        self.tenant = tenant;
        self
    }

    pub fn from_request(request: BridgeRequest) -> Result<Self, InvalidBridge> {
        let bad = |why: String| Err(InvalidBridge(why));
        let kind = request.kind;
        let schemes: &[&str] = match kind {
            BridgeKindBody::Nats => &["nats"],
            BridgeKindBody::Rabbitmq => &["amqp"],
            BridgeKindBody::RedisStream | BridgeKindBody::RedisPubsub => &["redis", "rediss"],
        };
        let scheme = request.url.split_once("://").map(|(s, _)| s);
        if !scheme.is_some_and(|s| schemes.contains(&s)) {
            return bad(format!(
                "url {:?}: a {} bridge takes {} (NATS and AMQP over TLS are not supported yet)",
                mask_password(&request.url),
                kind_name(kind),
                schemes.iter().map(|s| format!("{s}://…")).collect::<Vec<_>>().join(" or ")
            ));
        }
        let batch_size = request.batch_size.unwrap_or(50);
        if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
            return bad(format!("batch_size is 1–{MAX_BATCH_SIZE}"));
        }
        let batch_timeout_ms = request.batch_timeout_ms.unwrap_or(5000);
        if batch_timeout_ms == 0 {
            return bad("batch_timeout_ms must be at least 1".into());
        }
        if request.direction == BridgeDirectionBody::In {
            return Self::inbound(request, batch_size, batch_timeout_ms);
        }
        let content_mode = request.content_mode.unwrap_or_default();
        match (content_mode, kind) {
            (BridgeContentModeBody::Raw, _) => return bad("content_mode raw is for in-bridges".into()),
            (BridgeContentModeBody::CloudeventsBinary, BridgeKindBody::RedisPubsub) => {
                return bad("redis-pubsub has no headers: cloudevents-binary is not possible, use cloudevents-structured".into());
            }
            _ => {}
        }
        let filter = request.filter.unwrap_or_default();
        log_filter(&filter)?;
        let target = request.target.unwrap_or_else(|| default_target(kind).to_owned());
        Target::parse(&target).map_err(InvalidBridge)?;
        let max_len = request.max_len.unwrap_or(1_000_000);
        if max_len == 0 {
            return bad("max_len must be at least 1".into());
        }
        for (field, given) in
            [("source", &request.source), ("stream", &request.stream), ("type", &request.event_type)]
        {
            if given.is_some() {
                return bad(format!("{field} is for in-bridges"));
            }
        }
        Ok(Self::new(BridgeConfigBody {
            direction: request.direction,
            kind,
            url: request.url,
            filter,
            target,
            content_mode,
            // As a group's: from the beginning unless told otherwise.
            start: request.start.unwrap_or(StartBody::Beginning),
            batch_size,
            batch_timeout_ms,
            max_len,
            enabled: request.enabled.unwrap_or(true),
            source: None,
            stream: None,
            event_type: None,
        }))
    }

    /// An in-bridge: broker messages appended as events.
    fn inbound(
        request: BridgeRequest,
        batch_size: u32,
        batch_timeout_ms: u64,
    ) -> Result<Self, InvalidBridge> {
        let bad = |why: String| Err(InvalidBridge(why));
        if request.kind == BridgeKindBody::RedisPubsub {
            return bad(
                "redis-pubsub keeps nothing for an absent reader: an in-bridge reads redis-stream".into()
            );
        }
        for (field, given) in [
            ("filter", request.filter.is_some()),
            ("target", request.target.is_some()),
            ("start", request.start.is_some()),
            ("max_len", request.max_len.is_some()),
        ] {
            if given {
                return bad(format!("{field} is for out-bridges"));
            }
        }
        let Some(source) = request.source.filter(|s| !s.is_empty()) else {
            return bad(format!(
                "an in-bridge needs a source: the {} it reads",
                match request.kind {
                    BridgeKindBody::Nats => "subject",
                    BridgeKindBody::Rabbitmq => "queue",
                    _ => "stream key",
                }
            ));
        };
        let stream = request.stream.unwrap_or_else(|| DEFAULT_STREAM.to_owned());
        let template = StreamTemplate::parse(&stream).map_err(InvalidBridge)?;
        // The fixed parts and the source must make a stream name (a bridge name, an event type
        // and a broker subject or key always can: `x` stands in for them).
        let sample = template.render("x", "x", &source, "x");
        StreamName::new(&sample).map_err(|e| InvalidBridge(format!("stream {stream:?}: {e}")))?;
        let content_mode = request.content_mode.unwrap_or_default();
        let event_type = match (content_mode, request.event_type) {
            (BridgeContentModeBody::Raw, Some(t)) => {
                EventType::new(&t).map_err(|e| InvalidBridge(format!("type: {e}")))?;
                Some(t)
            }
            (BridgeContentModeBody::Raw, None) => {
                return bad("content_mode raw needs the events' type (\"type\")".into());
            }
            (_, Some(_)) => return bad("type is for content_mode raw".into()),
            (_, None) => None,
        };
        Ok(Self::new(BridgeConfigBody {
            direction: BridgeDirectionBody::In,
            kind: request.kind,
            url: request.url,
            filter: GroupFilterRequest::default(),
            target: String::new(),
            content_mode,
            start: StartBody::End,
            batch_size,
            batch_timeout_ms,
            max_len: 0,
            enabled: request.enabled.unwrap_or(true),
            source: Some(source),
            stream: Some(stream),
            event_type,
        }))
    }

    pub fn is_inbound(&self) -> bool {
        self.direction == BridgeDirectionBody::In
    }

    /// The events the bridge sends.
    pub fn log_filter(&self) -> Result<LogFilter, InvalidBridge> {
        let mut filter = log_filter(&self.filter)?;
        filter.category = filter.category.map(|c| Category::in_tenant(self.tenant.tenant(), &c));
        filter.tenant = self.tenant.clone();
        Ok(filter)
    }

    pub fn target(&self) -> Result<Target, InvalidBridge> {
        Target::parse(&self.target).map_err(InvalidBridge)
    }

    /// As the API shows it: the URL's password as `***`.
    pub fn to_body(&self) -> BridgeConfigBody {
        BridgeConfigBody { url: mask_password(&self.url), ..self.config.clone() }
    }
}

fn log_filter(filter: &GroupFilterRequest) -> Result<LogFilter, InvalidBridge> {
    let types = filter
        .types
        .iter()
        .flatten()
        .map(|t| TypePattern::new(t).map_err(|e| InvalidBridge(format!("filter.types: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let category = filter
        .category
        .as_deref()
        .map(Category::new)
        .transpose()
        .map_err(|e| InvalidBridge(format!("filter.category: {e}")))?;
    Ok(LogFilter { types, category, ..LogFilter::default() })
}

/// The default target of each kind: subject `bifrost.{type}`; routing key `{type}` on the
/// `bifrost` exchange; stream `bifrost:{category}`; channel `bifrost.{type}`.
pub fn default_target(kind: BridgeKindBody) -> &'static str {
    match kind {
        BridgeKindBody::Nats | BridgeKindBody::RedisPubsub => "bifrost.{type}",
        BridgeKindBody::Rabbitmq => "{type}",
        BridgeKindBody::RedisStream => "bifrost:{category}",
    }
}

pub fn kind_name(kind: BridgeKindBody) -> &'static str {
    match kind {
        BridgeKindBody::Nats => "nats",
        BridgeKindBody::Rabbitmq => "rabbitmq",
        BridgeKindBody::RedisStream => "redis-stream",
        BridgeKindBody::RedisPubsub => "redis-pubsub",
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(value: serde_json::Value) -> BridgeRequest {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn defaults_fill_in_by_kind() {
        let spec = BridgeSpec::from_request(request(
            json!({"direction": "out", "kind": "redis-stream", "url": "redis://127.0.0.1:6379"}),
        ))
        .unwrap();
        assert_eq!(
            (spec.target.as_str(), spec.batch_size, spec.batch_timeout_ms, spec.max_len),
            ("bifrost:{category}", 50, 5000, 1_000_000)
        );
        assert_eq!(
            (spec.start, spec.enabled, spec.content_mode),
            (StartBody::Beginning, true, BridgeContentModeBody::Bifrost)
        );
        let nats = BridgeSpec::from_request(request(
            json!({"direction": "out", "kind": "nats", "url": "nats://h:4222"}),
        ))
        .unwrap();
        assert_eq!(nats.target, "bifrost.{type}");
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            json!({"direction": "in", "kind": "nats", "url": "nats://h"}),
            json!({"direction": "in", "kind": "redis-pubsub", "url": "redis://h", "source": "k"}),
            json!({"direction": "in", "kind": "nats", "url": "nats://h", "source": "a", "content_mode": "raw"}),
            json!({"direction": "in", "kind": "nats", "url": "nats://h", "source": "a", "type": "x"}),
            json!({"direction": "in", "kind": "nats", "url": "nats://h", "source": "a", "target": "x"}),
            json!({"direction": "in", "kind": "nats", "url": "nats://h", "source": "a", "stream": "x-{nope}"}),
            json!({"direction": "in", "kind": "rabbitmq", "url": "nats://h", "source": "q"}),
            json!({"direction": "in", "kind": "nats", "url": "nats://h", "source": "a.*", "stream": "in-{source}"}),
            json!({"direction": "in", "kind": "nats", "url": "nats://h", "source": "a", "stream": "has space"}),
            json!({"direction": "out", "kind": "nats", "url": "redis://h"}),
            json!({"direction": "out", "kind": "redis-pubsub", "url": "redis://h", "content_mode": "cloudevents-binary"}),
            json!({"direction": "out", "kind": "nats", "url": "nats://h", "content_mode": "raw"}),
            json!({"direction": "out", "kind": "nats", "url": "nats://h", "target": "x.{nope}"}),
            json!({"direction": "out", "kind": "nats", "url": "nats://h", "batch_size": 0}),
            json!({"direction": "out", "kind": "nats", "url": "nats://h", "filter": {"types": ["a..b"]}}),
            json!({"direction": "out", "kind": "nats", "url": "nats://h", "source": "x"}),
        ] {
            assert!(BridgeSpec::from_request(request(bad.clone())).is_err(), "{bad}");
        }
        assert!(check_name("ok-name_1.x:y").is_ok());
        assert!(check_name("no spaces").is_err());
    }

    #[test]
    fn in_bridges_take_a_source_a_stream_template_and_raw_needs_a_type() {
        let spec = BridgeSpec::from_request(request(
            json!({"direction": "in", "kind": "rabbitmq", "url": "amqp://h", "source": "orders"}),
        ))
        .unwrap();
        assert!(spec.is_inbound());
        assert_eq!((spec.source.as_deref(), spec.stream.as_deref()), (Some("orders"), Some("ingest-{name}")));
        assert_eq!(spec.content_mode, BridgeContentModeBody::Bifrost);
        let raw = BridgeSpec::from_request(request(json!({"direction": "in", "kind": "redis-stream",
            "url": "redis://h", "source": "k", "content_mode": "raw", "type": "sensor.read", "stream": "s-{subject}"})))
        .unwrap();
        assert_eq!(raw.event_type.as_deref(), Some("sensor.read"));
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(mask_password("amqp://guest:guest@h:5672/%2f"), "amqp://guest:***@h:5672/%2f");
        assert_eq!(mask_password("redis://:s3cret@h:6379/2"), "redis://:***@h:6379/2");
        assert_eq!(mask_password("nats://h:4222"), "nats://h:4222");
        assert_eq!(mask_password("nats://user@h"), "nats://user@h");
    }
}
