//! Broker bridges: the log out to NATS JetStream, RabbitMQ and Redis, checkpointed like a
//! consumer group.

use serde::{Deserialize, Serialize};

use crate::groups::{GroupFilterRequest, StartBody};

/// Which way a bridge moves events.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BridgeDirectionBody {
    /// Stored events out to a broker.
    Out,
    /// Broker messages in, as appended events.
    In,
}

/// The broker.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum BridgeKindBody {
    /// NATS JetStream: subject `bifrost.{type}`, `Nats-Msg-Id`, PubAck.
    Nats,
    /// RabbitMQ: durable topic exchange `bifrost`, routing key = type, publisher confirms.
    Rabbitmq,
    /// Redis Streams: `XADD bifrost:{category} MAXLEN ~ max_len`.
    RedisStream,
    /// Redis Pub/Sub: `PUBLISH bifrost.{type}` (kept for nobody).
    RedisPubsub,
}

/// What a message's body is.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum BridgeContentModeBody {
    /// The event JSON, as the API prints it.
    #[default]
    Bifrost,
    /// A structured CloudEvent 1.0 (JSON).
    CloudeventsStructured,
    /// The event's `data`, with the broker's CloudEvents binding in headers (not Redis Pub/Sub).
    CloudeventsBinary,
    /// In-bridges only: the body is the event's `data`, typed by the bridge's `type`.
    Raw,
}

/// `PUT /v1/bridges/{name}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BridgeRequest {
    pub direction: BridgeDirectionBody,
    pub kind: BridgeKindBody,
    /// `nats://…`, `amqp://…`, `redis://…`.
    pub url: String,
    /// Out-bridges: which events go out (as a group's filter); default every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<GroupFilterRequest>,
    /// Out-bridges: subject, routing key, stream key or channel template (`{type}`,
    /// `{stream}`, `{category}`, `{tenant}`); default by kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_mode: Option<BridgeContentModeBody>,
    /// At creation only; default `"beginning"`, as a group's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartBody>,
    /// Most unconfirmed messages (50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// How long confirms may take before the batch is retried (5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_timeout_ms: Option<u64>,
    /// Redis Streams: `MAXLEN ~` (1,000,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// In-bridges: the subject (NATS; a JetStream stream must capture it), queue
    /// (RabbitMQ) or stream key (Redis) read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// In-bridges: the stream template appended to (`{type}`, `{source}`, `{subject}`;
    /// default `ingest-{name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// In-bridges in `raw` mode: the event type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
}

/// A bridge's settings, every default filled in (the URL's password shown as `***`). An
/// in-bridge has `source` and `stream` (and `type` in raw mode); the out-bridges' `filter`,
/// `target`, `start` and `max_len` do not apply to it and show as empty, `"end"` and 0.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BridgeConfigBody {
    pub direction: BridgeDirectionBody,
    pub kind: BridgeKindBody,
    pub url: String,
    pub filter: GroupFilterRequest,
    pub target: String,
    pub content_mode: BridgeContentModeBody,
    pub start: StartBody,
    pub batch_size: u32,
    pub batch_timeout_ms: u64,
    pub max_len: u64,
    pub enabled: bool,
    /// In-bridges: the subject (NATS), queue (RabbitMQ) or stream key (Redis) read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// In-bridges: the stream each message is appended to, a template of `{type}`,
    /// `{source}` and `{subject}` (default `ingest-{name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// In-bridges in `raw` mode: the type of every event.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
}

/// Whether a bridge is moving events.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BridgeStateBody {
    Running,
    /// Its last attempt failed; it retries with backoff.
    Failing,
    /// Disabled, or no node runs it.
    Stopped,
}

/// The last error of a bridge.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BridgeErrorBody {
    pub message: String,
    /// RFC 3339.
    pub at: String,
}

/// `GET /v1/bridges/{name}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BridgeBody {
    pub name: String,
    pub config: BridgeConfigBody,
    pub state: BridgeStateBody,
    /// The node that runs it, if any.
    pub node: Option<String>,
    /// Out: the position of the last event the broker confirmed. In: the broker messages
    /// acked since the bridge was created (appended or dead-lettered); a message is acked
    /// only once its event is stored.
    pub checkpoint: u64,
    /// Out: matching events after the checkpoint. In: the messages the broker still holds
    /// for the bridge as its owner last saw them (JetStream consumer pending, RabbitMQ queue
    /// depth, Redis group lag + pending); 0 until known.
    pub lag: u64,
    /// Out: messages the broker confirmed. In: events appended. Both since the bridge was
    /// created.
    pub published: u64,
    pub last_error: Option<BridgeErrorBody>,
}

/// `GET /v1/bridges`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BridgeListBody {
    pub bridges: Vec<BridgeBody>,
}
