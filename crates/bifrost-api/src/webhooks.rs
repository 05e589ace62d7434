//! Webhooks: endpoints, their messages and the log of every attempt.
//!
//! An endpoint's settings have one shape for both directions: `POST /v1/webhooks` takes a
//! [`WebhookRequest`] (only `url` required), `GET` shows them in a [`WebhookBody`] with
//! every field filled in, and `PATCH` is a JSON merge patch of the same object.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::groups::StartBody;

/// Most entries of `retry_schedule_ms`.
pub const MAX_RETRY_SCHEDULE: usize = 20;
/// Longest `timeout_ms`.
pub const MAX_TIMEOUT_MS: u64 = 120_000;
/// The default `retry_schedule_ms`: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub const DEFAULT_RETRY_SCHEDULE_MS: [u64; 7] =
    [5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000];
/// The default `timeout_ms`.
pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;
/// The default `disable_after_s`: five days.
pub const DEFAULT_DISABLE_AFTER_S: u64 = 432_000;
/// The default grace period of a rotated secret, in seconds.
pub const DEFAULT_ROTATION_GRACE_S: u64 = 86_400;

/// `POST /v1/webhooks`: an endpoint to create. Only `url` is required.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// Absolute `http` or `https` URL.
    pub url: String,
    /// Default: every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<WebhookFilterRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Sent with every request; may not set `webhook-*`, `content-*` or `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `whsec_` + base64 of 24–64 bytes; 32 random bytes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Attempts start at most this often (≥ 1); null: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_s: Option<u32>,
    /// FIFO per stream. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered: Option<bool>,
    /// Per attempt, at most 120000. Default 15000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Delays (±20 % jitter) before attempts 2, 3, …; at most 20 entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_schedule_ms: Option<Vec<u64>>,
    /// Failing this long (≥ 1 s) disables the endpoint. Default 432000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_after_s: Option<u64>,
    /// Default `"bifrost"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_mode: Option<ContentModeBody>,
    /// Templates for `type`, `version`, `routing_key` and pointers selecting `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<serde_json::Value>,
    /// Default `"end"`; counts only at creation (a position is exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartBody>,
}

/// Which events an endpoint receives.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebhookFilterRequest {
    /// Topic patterns over the event type; default `["#"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// Only streams of this category; default any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Topic patterns over the routing key (after the transform); default `["#"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_keys: Option<Vec<String>>,
}

/// The body an endpoint is sent.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ContentModeBody {
    /// The integration event, `application/json`.
    #[default]
    Bifrost,
    /// A structured CloudEvent 1.0, `application/cloudevents+json`.
    Cloudevents,
}

/// Which events an endpoint receives, every field filled in.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookFilterBody {
    pub types: Vec<String>,
    pub category: Option<String>,
    pub routing_keys: Vec<String>,
}

/// Why an endpoint is disabled.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DisabledReasonBody {
    /// `"enabled": false` by a user.
    Manual,
    /// Failing for longer than `disable_after_s`.
    Failing,
    /// The receiver answered `410 Gone`.
    Gone,
}

/// `GET /v1/webhooks/{id}`: an endpoint (never its secret).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookBody {
    /// Opaque.
    pub id: String,
    pub url: String,
    pub filter: WebhookFilterBody,
    pub description: String,
    pub headers: BTreeMap<String, String>,
    pub enabled: bool,
    pub rate_limit_per_s: Option<u32>,
    pub ordered: bool,
    pub timeout_ms: u64,
    pub retry_schedule_ms: Vec<u64>,
    pub disable_after_s: u64,
    pub content_mode: ContentModeBody,
    pub transform: Option<serde_json::Value>,
    pub start: StartBody,
    pub disabled_reason: Option<DisabledReasonBody>,
    /// RFC 3339: the first failure since the last success.
    pub failing_since: Option<String>,
    /// Messages not yet delivered or failed for good.
    pub backlog: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /v1/webhooks` → `201`: the endpoint and its secret, shown this once.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookCreatedBody {
    #[serde(flatten)]
    pub webhook: WebhookBody,
    pub secret: String,
}

/// `GET /v1/webhooks`: endpoints in creation order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookListBody {
    pub webhooks: Vec<WebhookBody>,
    /// Give as `after` for the next page; null on the last.
    pub next: Option<String>,
}

/// `POST /v1/webhooks/{id}/secret/rotate`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RotateSecretRequest {
    /// The new secret; 32 random bytes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// How long the previous secret still signs, in seconds. Default 86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_s: Option<u64>,
}

/// The new secret, and until when the previous one still signs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RotateSecretBody {
    pub secret: String,
    /// RFC 3339; null when the grace is 0.
    pub previous_valid_until: Option<String>,
}

/// Where a message is.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MessageStatusBody {
    Pending,
    Succeeded,
    Failed,
}

/// One message: an event the endpoint's filter matches.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookMessageBody {
    pub event_id: String,
    pub position: u64,
    pub status: MessageStatusBody,
    /// Attempts of its current schedule (a resend starts a fresh one).
    pub attempts: u32,
    /// RFC 3339, when a retry is scheduled.
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    /// The body that is sent, byte for byte (null when it cannot be made: see `last_error`).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub payload: Option<Box<serde_json::value::RawValue>>,
}

/// `GET /v1/webhooks/{id}/messages`: newest first.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookMessagesBody {
    pub messages: Vec<WebhookMessageBody>,
    /// Give as `before` for the next page; null on the last.
    pub next: Option<String>,
}

/// What made an attempt.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AttemptTriggerBody {
    Scheduled,
    Resend,
    Recover,
    Test,
}

/// How an attempt ended.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AttemptStatusBody {
    Succeeded,
    Failed,
}

/// One attempt, as the attempt log keeps it (30 days).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptBody {
    pub id: String,
    /// RFC 3339, when the attempt started.
    pub at: String,
    pub event_id: String,
    /// 1 for the first attempt of a schedule.
    pub attempt: u32,
    pub trigger: AttemptTriggerBody,
    pub status: AttemptStatusBody,
    /// Null when no answer came (timeout, network error, refused address).
    pub response_status: Option<u16>,
    pub response_time_ms: u64,
    /// The first KiB of the answer, UTF-8 lossy.
    pub response_body: Option<String>,
    pub error: Option<String>,
}

/// `GET /v1/webhooks/{id}/attempts`: newest first.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptsBody {
    pub attempts: Vec<AttemptBody>,
    /// Give as `before` for the next page; null on the last.
    pub next: Option<String>,
}

/// `POST /v1/webhooks/{id}/recover`: resend what failed in a window.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// RFC 3339: messages that failed at or after this.
    pub since: String,
    /// RFC 3339: and before this (default now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// `202`: how many failed messages are sent again.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveringBody {
    pub recovering: u64,
}

/// `POST /v1/webhooks/{id}/test`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// The test event's `data`; default `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// The one attempt of a test send.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TestBody {
    pub attempt: AttemptBody,
}
