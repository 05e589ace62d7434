//! An endpoint: its settings as validated from the API's request, and its record in the
//! state space (settings, secrets, disable state), shared by every node.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use bifrost_api::{
    ContentModeBody, DEFAULT_DISABLE_AFTER_S, DEFAULT_RETRY_SCHEDULE_MS, DEFAULT_TIMEOUT_MS,
    DisabledReasonBody, MAX_RETRY_SCHEDULE, MAX_TIMEOUT_MS, StartBody, WebhookBody, WebhookFilterBody,
    WebhookFilterRequest, WebhookRequest,
};
use bifrost_core::group::{Backoff, BackoffKind, GroupConfig, GroupFilter, MAX_DELAY, StartFrom};
use bifrost_core::tenant::mask_id;
use bifrost_core::{Category, EventId, RecordedEvent, TenantScope, Timestamp, TypePattern};
use serde::{Deserialize, Serialize};

use crate::error::WebhookError;
use crate::render::{ContentMode, Transform};
use crate::sign::parse_secret;
use crate::ssrf::AddressPolicy;

/// Longest `description`, in characters.
pub(crate) const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Most custom headers.
pub(crate) const MAX_HEADERS: usize = 50;
/// Time an attempt may take beyond its timeout before its lease expires and another node
/// makes it again (the attempt counted).
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// Messages one endpoint has out at once, over all nodes.
pub(crate) const MAX_IN_FLIGHT: usize = 256;

/// An endpoint's settings, every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub url: String,
    pub types: Vec<String>,
    pub category: Option<String>,
    pub routing_keys: Vec<String>,
    pub description: String,
    pub headers: BTreeMap<String, String>,
    pub enabled: bool,
    pub rate_limit_per_s: Option<u32>,
    pub ordered: bool,
    pub timeout_ms: u64,
    pub retry_schedule_ms: Vec<u64>,
    pub disable_after_s: u64,
    pub content_mode: ContentMode,
    pub transform: Option<Transform>,
    pub start: StartFrom,
}

fn invalid(why: impl Into<String>) -> WebhookError {
    WebhookError::Invalid(why.into())
}

impl Spec {
    /// Validates a request; `policy` refuses URLs whose host is a forbidden literal address.
    pub fn from_request(req: WebhookRequest, policy: &AddressPolicy) -> Result<Self, WebhookError> {
        let url = reqwest::Url::parse(&req.url).map_err(|e| invalid(format!("url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!("url: the scheme must be http or https, not {:?}", url.scheme())));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("url: a host is required"));
        }
        policy.check_url(&url).map_err(|e| WebhookError::UrlForbidden(format!("url: {e}")))?;

        let filter = req.filter.unwrap_or_default();
        let types = filter.types.unwrap_or_else(|| vec!["#".to_owned()]);
        for t in &types {
            TypePattern::new(t).map_err(|e| invalid(format!("filter.types: {e}")))?;
        }
        if let Some(c) = &filter.category {
            Category::new(c).map_err(|e| invalid(format!("filter.category: {e}")))?;
        }
        let routing_keys = filter.routing_keys.unwrap_or_else(|| vec!["#".to_owned()]);
        for k in &routing_keys {
            TypePattern::new(k).map_err(|e| invalid(format!("filter.routing_keys: {e}")))?;
        }

        let description = req.description.unwrap_or_default();
        if description.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(invalid(format!("description: at most {MAX_DESCRIPTION_CHARS} characters")));
        }
        let headers = req.headers.unwrap_or_default();
        if headers.len() > MAX_HEADERS {
            return Err(invalid(format!("headers: at most {MAX_HEADERS}")));
        }
        for (name, value) in &headers {
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("webhook-") || lower.starts_with("content-") || lower == "host" {
                return Err(invalid(format!("headers: {name:?} is set by Bifrost and may not be given")));
            }
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("headers: {name:?} is not a valid header name")))?;
            reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                invalid(format!("headers: the value of {name:?} is not a valid header value"))
            })?;
        }
        if let Some(secret) = &req.secret {
            parse_secret(secret).map_err(|e| invalid(e.to_string()))?;
        }
        if req.rate_limit_per_s == Some(0) {
            return Err(invalid("rate_limit_per_s: at least 1, or null for no limit"));
        }
        let timeout_ms = req.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid(format!("timeout_ms: 1 to {MAX_TIMEOUT_MS}")));
        }
        let retry_schedule_ms = req.retry_schedule_ms.unwrap_or_else(|| DEFAULT_RETRY_SCHEDULE_MS.to_vec());
        if retry_schedule_ms.len() > MAX_RETRY_SCHEDULE {
            return Err(invalid(format!("retry_schedule_ms: at most {MAX_RETRY_SCHEDULE} entries")));
        }
        let max_delay = u64::try_from(MAX_DELAY.as_millis()).unwrap_or(u64::MAX);
        if let Some(d) = retry_schedule_ms.iter().find(|&&d| d > max_delay) {
            return Err(invalid(format!("retry_schedule_ms: {d} is longer than a day ({max_delay} ms)")));
        }
        let disable_after_s = req.disable_after_s.unwrap_or(DEFAULT_DISABLE_AFTER_S);
        if disable_after_s == 0 {
            return Err(invalid("disable_after_s: at least 1"));
        }
        let transform = match &req.transform {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(Transform::from_json(value).map_err(|e| invalid(format!("transform: {e}")))?),
        };
        let start = match req.start.unwrap_or(StartBody::End) {
            StartBody::Beginning => StartFrom::Beginning,
            StartBody::End => StartFrom::End,
            StartBody::Position(p) => StartFrom::Position(p),
        };
        Ok(Self {
            url: url.to_string(),
            types,
            category: filter.category,
            routing_keys,
            description,
            headers,
            enabled: req.enabled.unwrap_or(true),
            rate_limit_per_s: req.rate_limit_per_s,
            ordered: req.ordered.unwrap_or(false),
            timeout_ms,
            retry_schedule_ms,
            disable_after_s,
            content_mode: match req.content_mode.unwrap_or_default() {
                ContentModeBody::Bifrost => ContentMode::Bifrost,
                ContentModeBody::Cloudevents => ContentMode::Cloudevents,
            },
            transform,
            start,
        })
    }

    /// The request that makes these settings again (what a merge patch applies to).
    pub fn to_request(&self) -> WebhookRequest {
        WebhookRequest {
            url: self.url.clone(),
            filter: Some(WebhookFilterRequest {
                types: Some(self.types.clone()),
                category: self.category.clone(),
                routing_keys: Some(self.routing_keys.clone()),
            }),
            description: Some(self.description.clone()),
            headers: Some(self.headers.clone()),
            enabled: Some(self.enabled),
            secret: None,
            rate_limit_per_s: self.rate_limit_per_s,
            ordered: Some(self.ordered),
            timeout_ms: Some(self.timeout_ms),
            retry_schedule_ms: Some(self.retry_schedule_ms.clone()),
            disable_after_s: Some(self.disable_after_s),
            content_mode: Some(self.content_mode_body()),
            transform: self.transform.as_ref().map(Transform::to_json),
            start: Some(self.start_body()),
        }
    }

    fn content_mode_body(&self) -> ContentModeBody {
        match self.content_mode {
            ContentMode::Bifrost => ContentModeBody::Bifrost,
            ContentMode::Cloudevents => ContentModeBody::Cloudevents,
        }
    }

    fn start_body(&self) -> StartBody {
        match self.start {
            StartFrom::Beginning => StartBody::Beginning,
            StartFrom::End => StartBody::End,
            StartFrom::Position(p) => StartBody::Position(p),
        }
    }

    /// Attempts of one schedule: the first and one per retry delay.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.retry_schedule_ms.len() + 1).unwrap_or(u32::MAX)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The consumer group that delivers this endpoint's messages. Retries are scheduled by
    /// the deliverer (explicit delays); the backoff only applies to an attempt cut short by
    /// a node's death.
    pub fn group_config(&self) -> GroupConfig {
        let first = self.retry_schedule_ms.first().copied().unwrap_or(5_000).max(1);
        let last = self.retry_schedule_ms.iter().copied().max().unwrap_or(first).max(first);
        GroupConfig {
            filter: GroupFilter {
                types: self.types.clone(),
                category: self.category.clone(),
                ..GroupFilter::default()
            },
            start: self.start,
            ack_timeout: self.timeout() + LEASE_MARGIN,
            max_attempts: self.max_attempts(),
            backoff: Backoff {
                kind: BackoffKind::Exponential,
                initial: Duration::from_millis(first),
                max: Duration::from_millis(last),
                jitter: true,
            },
            max_in_flight: MAX_IN_FLIGHT,
            ordered: self.ordered,
        }
    }

    /// Whether `event` passes the type and category filter (the routing key is judged after
    /// the transform).
    pub fn matches_event(&self, event: &RecordedEvent) -> bool {
        let type_ok = self
            .types
            .iter()
            .filter_map(|t| TypePattern::new(t).ok())
            .any(|p| p.matches(event.event_type.as_str()));
        let category_ok = self.category.as_deref().is_none_or(|c| event.stream.category() == c);
        type_ok && category_ok
    }

    /// Whether a routing key passes `filter.routing_keys`.
    pub fn matches_routing_key(&self, key: &str) -> bool {
        self.routing_keys.iter().filter_map(|t| TypePattern::new(t).ok()).any(|p| p.matches(key))
    }
}

/// A signing secret and, once rotated away, until when it still signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    pub secret: String,
    pub valid_until: Option<Timestamp>,
}

/// Why an endpoint sends nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DisabledReason {
    Manual,
    Failing,
    Gone,
}

impl DisabledReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Failing => "failing",
            Self::Gone => "gone",
        }
    }
}

/// An endpoint as stored: one key of the `webhooks` scope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub spec: Spec,
    /// The current secret first, then rotated ones still in their grace period.
    pub secrets: Vec<StoredSecret>,
    /// The log position delivery starts after, fixed at creation.
    pub start_position: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub disabled_reason: Option<DisabledReason>,
    pub failing_since: Option<Timestamp>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// `false` from the write that disables it (failing or gone) until
    /// `bifrost.webhook.endpoint_disabled` is appended; any node appends it, with an id
    /// derived from the disable, so it is stored once.
    #[serde(default = "announced_by_default")]
    pub announced: bool,
    /// Whose streams it delivers, and in whose names and ids: its creator's tenant (every
    /// tenant's, as stored, for endpoints made while auth is off).
    #[serde(default)]
    pub tenant: TenantScope,
}

fn announced_by_default() -> bool {
    true
}

impl Endpoint {
    /// Its delivery group's settings: the spec's, inside the endpoint's tenant.
    pub fn group_config(&self) -> GroupConfig {
        let mut config = self.spec.group_config();
        config.filter.tenant = self.tenant.clone();
        config
    }

    /// An event id as the endpoint's tenant names it → as stored, and back.
    pub fn tenant_id(&self, id: EventId) -> EventId {
        self.tenant.tenant().map_or(id, |tenant| mask_id(tenant, id))
    }

    /// A stored event as the endpoint's tenant sees it (its names and ids).
    pub fn localize<'e>(&self, event: &'e RecordedEvent) -> Cow<'e, RecordedEvent> {
        if self.tenant.tenant().is_none() {
            return Cow::Borrowed(event);
        }
        let mut local = event.clone();
        self.tenant.localize(&mut local);
        Cow::Owned(local)
    }

    /// Whether a stored event is one of the endpoint's messages by its filter.
    pub fn matches_event(&self, event: &RecordedEvent) -> bool {
        self.tenant.admits(&event.stream) && self.spec.matches_event(&self.localize(event))
    }

    /// Whether the endpoint delivers.
    pub fn active(&self) -> bool {
        self.spec.enabled && self.disabled_reason.is_none()
    }

    /// The keys that sign at `now`, newest first.
    pub fn signing_keys(&self, now: Timestamp) -> Vec<Vec<u8>> {
        self.secrets
            .iter()
            .filter(|s| s.valid_until.is_none_or(|until| until > now))
            .filter_map(|s| parse_secret(&s.secret).ok())
            .collect()
    }

    /// The API's view, with the endpoint's backlog.
    pub fn to_body(&self, backlog: u64) -> WebhookBody {
        let spec = &self.spec;
        WebhookBody {
            id: self.id.clone(),
            url: spec.url.clone(),
            filter: WebhookFilterBody {
                types: spec.types.clone(),
                category: spec.category.clone(),
                routing_keys: spec.routing_keys.clone(),
            },
            description: spec.description.clone(),
            headers: spec.headers.clone(),
            enabled: self.active(),
            rate_limit_per_s: spec.rate_limit_per_s,
            ordered: spec.ordered,
            timeout_ms: spec.timeout_ms,
            retry_schedule_ms: spec.retry_schedule_ms.clone(),
            disable_after_s: spec.disable_after_s,
            content_mode: spec.content_mode_body(),
            transform: spec.transform.as_ref().map(Transform::to_json),
            start: spec.start_body(),
            disabled_reason: self.disabled_reason.map(|r| match r {
                DisabledReason::Manual => DisabledReasonBody::Manual,
                DisabledReason::Failing => DisabledReasonBody::Failing,
                DisabledReason::Gone => DisabledReasonBody::Gone,
            }),
            failing_since: self.failing_since.map(|t| t.to_string()),
            backlog,
            created_at: self.created_at.to_string(),
            updated_at: self.updated_at.to_string(),
        }
    }
}

/// RFC 7396 JSON merge patch: `patch`'s members replace `target`'s, `null` removes one,
/// objects merge recursively.
pub(crate) fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    if let serde_json::Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(serde_json::Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(body: serde_json::Value) -> Result<Spec, WebhookError> {
        Spec::from_request(serde_json::from_value(body).unwrap(), &AddressPolicy::default())
    }

    #[test]
    fn defaults_are_the_contracts() {
        let s = spec(json!({"url": "https://example.com/hook"})).unwrap();
        assert_eq!(s.types, vec!["#"]);
        assert_eq!(s.routing_keys, vec!["#"]);
        assert_eq!(s.timeout_ms, 15_000);
        assert_eq!(s.retry_schedule_ms, DEFAULT_RETRY_SCHEDULE_MS.to_vec());
        assert_eq!(s.max_attempts(), 8);
        assert_eq!(s.disable_after_s, 432_000);
        assert_eq!(s.start, StartFrom::End);
        assert!(s.enabled && !s.ordered && s.rate_limit_per_s.is_none());
    }

    #[test]
    fn bad_fields_are_refused() {
        for body in [
            json!({"url": "not a url"}),
            json!({"url": "ftp://example.com/"}),
            json!({"url": "https://example.com/", "headers": {"Webhook-Id": "x"}}),
            json!({"url": "https://example.com/", "headers": {"content-type": "x"}}),
            json!({"url": "https://example.com/", "headers": {"Host": "x"}}),
            json!({"url": "https://example.com/", "retry_schedule_ms": vec![1; 21]}),
            json!({"url": "https://example.com/", "timeout_ms": 120_001}),
            json!({"url": "https://example.com/", "disable_after_s": 0}),
            json!({"url": "https://example.com/", "rate_limit_per_s": 0}),
            json!({"url": "https://example.com/", "secret": "nope"}),
            json!({"url": "https://example.com/", "filter": {"types": ["a..b"]}}),
        ] {
            assert!(matches!(spec(body.clone()), Err(WebhookError::Invalid(_))), "{body}");
        }
        assert!(matches!(spec(json!({"url": "http://127.0.0.1/"})), Err(WebhookError::UrlForbidden(_))));
    }

    #[test]
    fn a_merge_patch_merges_and_removes() {
        let mut target = json!({"a": 1, "f": {"x": 1, "y": 2}, "r": 5});
        merge_patch(&mut target, &json!({"a": 2, "f": {"y": null}, "r": null}));
        assert_eq!(target, json!({"a": 2, "f": {"x": 1}}));
    }

    #[test]
    fn a_spec_survives_its_request() {
        let s = spec(json!({"url": "https://example.com/", "ordered": true, "retry_schedule_ms": [1, 2]}))
            .unwrap();
        assert_eq!(Spec::from_request(s.to_request(), &AddressPolicy::default()).unwrap(), s);
    }
}
