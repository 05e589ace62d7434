//! Webhooks: integration events delivered to HTTP endpoints.
//!
//! An endpoint is a durable consumer of the log: a consumer group of its own kind
//! ([`GroupKind::Webhook`]), so every stored event its filter matches is one message,
//! delivered at-least-once, none lost while a receiver or a node is down. On PostgreSQL the
//! group's leases are rows every node shares: each attempt is made by one node, and an
//! attempt cut short by a node's death comes back elsewhere, counted. Endpoints, the
//! message records, the attempt log and the resend queue live in the store's state space,
//! so every node sees the same ones.
//!
//! - [`Webhooks`] is the service the HTTP API calls (create, list, patch, rotate, messages,
//!   attempts, resend, recover, test) and [`Webhooks::start`] runs the delivery on this node.
//! - `endpoint` validates settings; `render` makes the body; `sign` signs it (Standard
//!   Webhooks); `ssrf` vets the addresses connected to; `deliver` makes one attempt;
//!   `engine` runs the workers; `records` is the stored shape of everything.

mod deliver;
mod endpoint;
mod engine;
mod error;
mod records;
pub mod render;
pub mod sign;
pub mod ssrf;

use std::sync::Arc;
use std::time::Duration;

use bifrost_api::{
    AttemptBody, AttemptsBody, DEFAULT_ROTATION_GRACE_S, RecoverRequest, RotateSecretBody,
    RotateSecretRequest, TestRequest, WebhookBody, WebhookMessageBody, WebhookMessagesBody, WebhookRequest,
};
use bifrost_core::group::{GroupEngine, GroupKind, GroupName, StartFrom};
use bifrost_core::{DurableStore, Error, EventId, RecordedEvent, StateChange, TenantScope, Timestamp};
use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use crate::endpoint::{DisabledReason, Endpoint, Spec};
pub use crate::error::{Result, WebhookError};
use crate::records::{
    ENDPOINTS, MessageRecord, MessageStatus, RESENDS, ResendEntry, Trigger, attempts_scope, decode, encode,
    message_key, messages_scope, resend_key,
};
use crate::render::Source;
use crate::sign::{generate_secret, parse_secret};
use crate::ssrf::AddressPolicy;

/// Most entries of one page of the API's lists.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;
/// The longest grace of a rotated secret: a year.
pub const MAX_ROTATION_GRACE_S: u64 = 365 * 24 * 3600;
/// The stream operational webhook events are appended to.
pub const OPERATIONS_STREAM: &str = "_bifrost-webhooks";

/// How webhooks run on this node.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Addresses the SSRF guard lets through anyway.
    pub allow_cidrs: Vec<ipnet::IpNet>,
    /// The longest `Retry-After` that is honoured (3600 s).
    pub retry_after_max: Duration,
    /// This node's name, shown as the consumer of the delivery groups.
    pub node: String,
    /// How often a node looks for changed endpoints (500 ms).
    pub refresh: Duration,
    /// How long the attempt log keeps an attempt (30 days).
    pub attempt_retention: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_cidrs: Vec::new(),
            retry_after_max: Duration::from_secs(3600),
            node: format!("node-{}", uuid::Uuid::new_v4().simple()),
            refresh: Duration::from_millis(500),
            attempt_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The webhooks of one store.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Arc<dyn DurableStore>,
    groups: Arc<dyn GroupEngine>,
    policy: Arc<AddressPolicy>,
    settings: WebhookSettings,
    /// Wakes this node's dispatcher and resend runner after a change made here.
    changed: Notify,
}

fn group_name(id: &str) -> Result<GroupName> {
    GroupName::new(id).map_err(|_| WebhookError::NotFound(id.to_owned()))
}

fn page(limit: Option<usize>) -> usize {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

impl Webhooks {
    /// The webhooks of `store`, with their delivery groups (the store's shared engine on
    /// PostgreSQL, else run in this process).
    pub async fn open(store: Arc<dyn DurableStore>, settings: WebhookSettings) -> Result<Self> {
        let groups = bifrost_bus::groups::open_kind(Arc::clone(&store), GroupKind::Webhook).await?;
        let policy = Arc::new(AddressPolicy::new(settings.allow_cidrs.clone()));
        Ok(Self { inner: Arc::new(Inner { store, groups, policy, settings, changed: Notify::new() }) })
    }

    /// Runs delivery on this node until `shutdown` is cancelled.
    pub fn start(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(engine::run(Arc::clone(&self.inner), shutdown))
    }

    /// Writes what the delivery groups have not written yet.
    pub async fn close(&self) -> Result<()> {
        Ok(self.inner.groups.close().await?)
    }

    /// Creates an endpoint; the answer carries its secret, shown this once.
    /// `tenant`: whose streams it delivers (the creator's).
    pub async fn create(&self, req: WebhookRequest, tenant: TenantScope) -> Result<(WebhookBody, String)> {
        let inner = &self.inner;
        let secret = req.secret.clone();
        let spec = Spec::from_request(req, &inner.policy)?;
        let secret = match secret {
            Some(secret) => secret,
            None => generate_secret().map_err(|_| Error::Internal("no randomness for a secret".into()))?,
        };
        let id = format!("ep_{}", uuid::Uuid::now_v7().simple());
        let name = group_name(&id)?;
        let head = *inner.store.head().borrow();
        let mut config = spec.group_config();
        config.filter.tenant = tenant.clone();
        let start_position = config.start_position(head)?;
        config.start = StartFrom::Position(start_position);
        let now = Timestamp::now();
        let endpoint = Endpoint {
            id: id.clone(),
            disabled_reason: (!spec.enabled).then_some(DisabledReason::Manual),
            spec,
            secrets: vec![endpoint::StoredSecret { secret: secret.clone(), valid_until: None }],
            start_position,
            created_at: now,
            updated_at: now,
            failing_since: None,
            last_status: None,
            last_error: None,
            announced: true,
            tenant,
        };
        inner.groups.put(&name, config).await?;
        let written = inner
            .store
            .write_state(vec![
                StateChange::expect(ENDPOINTS, &id, None),
                StateChange::put(ENDPOINTS, &id, encode(&endpoint)?),
            ])
            .await;
        if let Err(e) = written {
            let _ = inner.groups.delete(&name).await;
            return Err(e.into());
        }
        inner.changed.notify_waiters();
        Ok((endpoint.to_body(0), secret))
    }

    /// Endpoints in creation order after `after` that `visible` lets through (by their
    /// tenant), and the cursor of the next page (a page may be short).
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
        visible: impl Fn(&TenantScope) -> bool,
    ) -> Result<(Vec<WebhookBody>, Option<String>)> {
        let limit = page(limit);
        let entries = self.inner.store.scan_state(ENDPOINTS, after, limit + 1).await?;
        let more = entries.len() > limit;
        let mut bodies = Vec::new();
        let mut last = None;
        for entry in entries.into_iter().take(limit) {
            let endpoint: Endpoint = decode("endpoint", &entry.value)?;
            last = Some(entry.key);
            if visible(&endpoint.tenant) {
                let backlog = self.inner.backlog(&endpoint.id).await;
                bodies.push(endpoint.to_body(backlog));
            }
        }
        let next = if more { last } else { None };
        Ok((bodies, next))
    }

    /// Whose the endpoint is.
    pub async fn tenant(&self, id: &str) -> Result<TenantScope> {
        Ok(self.inner.endpoint(id).await?.0.tenant)
    }

    pub async fn get(&self, id: &str) -> Result<WebhookBody> {
        let (endpoint, _) = self.inner.endpoint(id).await?;
        Ok(endpoint.to_body(self.inner.backlog(id).await))
    }

    /// Applies a JSON merge patch to the endpoint's settings (any but `secret` and `start`).
    /// `"enabled": true` re-enables an endpoint, whatever disabled it.
    pub async fn patch(&self, id: &str, patch: &serde_json::Value) -> Result<WebhookBody> {
        let inner = &self.inner;
        let serde_json::Value::Object(members) = patch else {
            return Err(WebhookError::Invalid("a merge patch is a JSON object".into()));
        };
        for fixed in ["secret", "start", "id"] {
            if members.contains_key(fixed) {
                return Err(WebhookError::Invalid(format!(
                    "{fixed:?} cannot be changed by a patch{}",
                    if fixed == "secret" { "; rotate the secret instead" } else { "" }
                )));
            }
        }
        let enabled = members.get("enabled").map(|v| v.as_bool());
        if let Some(None) = enabled {
            return Err(WebhookError::Invalid("enabled: true or false".into()));
        }
        let now = Timestamp::now();
        let endpoint = inner
            .try_update_endpoint(id, |endpoint| {
                let mut request = serde_json::to_value(endpoint.spec.to_request())
                    .map_err(|e| Error::Internal(format!("cannot show an endpoint's settings: {e}")))?;
                endpoint::merge_patch(&mut request, patch);
                let request: WebhookRequest =
                    serde_json::from_value(request).map_err(|e| WebhookError::Invalid(e.to_string()))?;
                let mut spec = Spec::from_request(request, &inner.policy)?;
                spec.start = endpoint.spec.start;
                match enabled {
                    Some(Some(true)) => {
                        endpoint.disabled_reason = None;
                        endpoint.failing_since = None;
                    }
                    Some(Some(false)) => endpoint.disabled_reason = Some(DisabledReason::Manual),
                    _ => {}
                }
                endpoint.spec = spec;
                endpoint.updated_at = now;
                Ok(true)
            })
            .await?
            .ok_or_else(|| WebhookError::NotFound(id.to_owned()))?;
        inner.sync_group(&endpoint).await?;
        Ok(endpoint.to_body(inner.backlog(id).await))
    }

    /// Removes an endpoint with its messages, attempts and pending resends.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let inner = &self.inner;
        inner.endpoint(id).await?;
        let mut changes = vec![
            StateChange::delete(ENDPOINTS, id),
            StateChange::delete_scope(messages_scope(id)),
            StateChange::delete_scope(attempts_scope(id)),
        ];
        let prefix = format!("{id}/");
        let mut after = prefix.clone();
        loop {
            let entries = inner.store.scan_state(RESENDS, Some(&after), 500).await?;
            let Some(last) = entries.last() else { break };
            after = last.key.clone();
            let ours: Vec<_> = entries.iter().filter(|e| e.key.starts_with(&prefix)).collect();
            let done = ours.len() < entries.len();
            changes.extend(ours.into_iter().map(|e| StateChange::delete(RESENDS, &e.key)));
            if done {
                break;
            }
        }
        // The endpoint goes first: a group left behind by a failure after it delivers
        // nothing (no endpoint names it), while a group deleted under a live endpoint would
        // be made again from the start by its next change.
        inner.store.write_state(changes).await?;
        inner.changed.notify_waiters();
        match inner.groups.delete(&group_name(id)?).await {
            Ok(()) | Err(Error::GroupNotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A new secret; the current one keeps signing for `grace_s` more seconds.
    pub async fn rotate_secret(&self, id: &str, req: RotateSecretRequest) -> Result<RotateSecretBody> {
        let inner = &self.inner;
        let secret = match req.secret {
            Some(secret) => {
                parse_secret(&secret).map_err(|e| WebhookError::Invalid(e.to_string()))?;
                secret
            }
            None => generate_secret().map_err(|_| Error::Internal("no randomness for a secret".into()))?,
        };
        let grace = req.grace_s.unwrap_or(DEFAULT_ROTATION_GRACE_S);
        if grace > MAX_ROTATION_GRACE_S {
            return Err(WebhookError::Invalid(format!("grace_s: at most {MAX_ROTATION_GRACE_S} (a year)")));
        }
        let grace_micros = i64::try_from(grace).ok().and_then(|s| s.checked_mul(1_000_000));
        let Some(grace_micros) = grace_micros else {
            return Err(WebhookError::Invalid("grace_s is too large".into()));
        };
        let now = Timestamp::now();
        let until = (grace > 0).then(|| Timestamp::from_micros(now.as_micros().saturating_add(grace_micros)));
        let secret_for_update = secret.clone();
        inner
            .update_endpoint(id, move |endpoint| {
                let mut secrets =
                    vec![endpoint::StoredSecret { secret: secret_for_update.clone(), valid_until: None }];
                for (i, old) in endpoint.secrets.iter().enumerate() {
                    let valid_until = if i == 0 { until } else { old.valid_until };
                    if valid_until.is_some_and(|u| u > now) {
                        secrets.push(endpoint::StoredSecret { secret: old.secret.clone(), valid_until });
                    }
                }
                endpoint.secrets = secrets;
                endpoint.updated_at = now;
                true
            })
            .await?
            .ok_or_else(|| WebhookError::NotFound(id.to_owned()))?;
        Ok(RotateSecretBody { secret, previous_valid_until: until.map(|t| t.to_string()) })
    }

    /// One message: an event the endpoint's filter matches.
    pub async fn message(&self, id: &str, event_id: &str) -> Result<WebhookMessageBody> {
        let (endpoint, _) = self.inner.endpoint(id).await?;
        let event = self.inner.message_event(&endpoint, event_id).await?;
        if let Some(record) = self.inner.message_record(id, event.position).await? {
            return Ok(record.to_body());
        }
        let local = endpoint.localize(&event);
        let src = Source::from_event(&local);
        let (payload, last_error) =
            match render::render(&src, endpoint.spec.content_mode, endpoint.spec.transform.as_ref()) {
                Ok(rendered) => {
                    (RawValue::from_string(String::from_utf8_lossy(&rendered.body).into_owned()).ok(), None)
                }
                Err(e) => (None, Some(e.to_string())),
            };
        Ok(WebhookMessageBody {
            event_id: local.id.to_string(),
            position: event.position,
            status: bifrost_api::MessageStatusBody::Pending,
            attempts: 0,
            next_attempt_at: None,
            last_error,
            payload,
        })
    }

    /// Attempted messages, newest first, after the cursor `before`.
    pub async fn messages(
        &self,
        id: &str,
        status: Option<&str>,
        before: Option<&str>,
        limit: Option<usize>,
    ) -> Result<WebhookMessagesBody> {
        self.inner.endpoint(id).await?;
        let status = match status {
            None => None,
            Some(s) => Some(MessageStatus::parse(s).ok_or_else(|| {
                WebhookError::Invalid(format!("status: pending, succeeded or failed, not {s:?}"))
            })?),
        };
        let (records, next) = self
            .inner
            .scan_filtered(&messages_scope(id), before, page(limit), |bytes| {
                let record: MessageRecord = decode("message", bytes)?;
                Ok(status.is_none_or(|s| s == record.status).then(|| record.to_body()))
            })
            .await?;
        Ok(WebhookMessagesBody { messages: records, next })
    }

    /// The attempt log, newest first.
    pub async fn attempts(
        &self,
        id: &str,
        status: Option<&str>,
        event_id: Option<&str>,
        before: Option<&str>,
        limit: Option<usize>,
    ) -> Result<AttemptsBody> {
        self.inner.endpoint(id).await?;
        let succeeded = match status {
            None => None,
            Some("succeeded") => Some(true),
            Some("failed") => Some(false),
            Some(s) => return Err(WebhookError::Invalid(format!("status: succeeded or failed, not {s:?}"))),
        };
        let event_id = match event_id {
            None => None,
            Some(e) => Some(
                e.parse::<EventId>()
                    .map_err(|_| WebhookError::Invalid(format!("event_id: not an event id: {e:?}")))?,
            ),
        };
        let (attempts, next) = self
            .inner
            .scan_filtered(&attempts_scope(id), before, page(limit), |bytes| {
                let record: records::AttemptRecord = decode("attempt", bytes)?;
                let keep = succeeded.is_none_or(|s| s == record.succeeded)
                    && event_id.is_none_or(|e| e == record.event_id);
                Ok(keep.then(|| record.to_body()))
            })
            .await?;
        Ok(AttemptsBody { attempts, next })
    }

    /// Sends a message again now, with a fresh schedule, whatever its status.
    pub async fn resend(&self, id: &str, event_id: &str) -> Result<()> {
        let (endpoint, _) = self.inner.endpoint(id).await?;
        if !endpoint.active() {
            return Err(WebhookError::Disabled(id.to_owned()));
        }
        let event = self.inner.message_event(&endpoint, event_id).await?;
        self.inner.enqueue(id, &[(event.id, event.position)], Trigger::Resend).await?;
        Ok(())
    }

    /// Sends again, in position order, every message that failed in `[since, until)`.
    pub async fn recover(&self, id: &str, req: RecoverRequest) -> Result<u64> {
        let (endpoint, _) = self.inner.endpoint(id).await?;
        let since: Timestamp = req.since.parse().map_err(|e| WebhookError::Invalid(format!("since: {e}")))?;
        let until: Timestamp = match &req.until {
            Some(u) => u.parse().map_err(|e| WebhookError::Invalid(format!("until: {e}")))?,
            None => Timestamp::now(),
        };
        if !endpoint.active() {
            return Err(WebhookError::Disabled(id.to_owned()));
        }
        let mut failed = Vec::new();
        let scope = messages_scope(id);
        let mut after: Option<String> = None;
        loop {
            let entries = self.inner.store.scan_state(&scope, after.as_deref(), 500).await?;
            let Some(last) = entries.last() else { break };
            after = Some(last.key.clone());
            for entry in &entries {
                let record: MessageRecord = decode("message", &entry.value)?;
                let in_window = record.failed_at.is_some_and(|t| t >= since && t < until);
                if record.status == MessageStatus::Failed && in_window {
                    // Records hold the ids the endpoint's tenant sees; resends, the stored.
                    failed.push((endpoint.tenant_id(record.event_id), record.position));
                }
            }
        }
        failed.sort_by_key(|&(_, position)| position);
        self.inner.enqueue(id, &failed, Trigger::Recover).await?;
        Ok(failed.len() as u64)
    }

    /// One attempt of a `bifrost.webhook.test` message (not stored, no retry).
    pub async fn test(&self, id: &str, req: TestRequest) -> Result<AttemptBody> {
        let (endpoint, _) = self.inner.endpoint(id).await?;
        let data = serde_json::to_vec(&req.data.unwrap_or_else(|| serde_json::json!({})))
            .map_err(|e| Error::Internal(format!("cannot encode test data: {e}")))?;
        let event_id = uuid::Uuid::now_v7();
        let src = Source {
            id: event_id,
            event_type: "bifrost.webhook.test",
            stream: None,
            position: None,
            schema_version: 1,
            data: &data,
            metadata: b"{}",
            occurred_at: Timestamp::now(),
        };
        let record = engine::test_attempt(&self.inner, &endpoint, &src).await?;
        Ok(record.to_body())
    }
}

impl Inner {
    /// The endpoint and its stored bytes (for a conditional write).
    async fn endpoint(&self, id: &str) -> Result<(Endpoint, Bytes)> {
        if id.is_empty() || id.len() > 128 {
            return Err(WebhookError::NotFound(id.to_owned()));
        }
        match self.store.read_state(ENDPOINTS, id).await? {
            Some(bytes) => Ok((decode("endpoint", &bytes)?, bytes)),
            None => Err(WebhookError::NotFound(id.to_owned())),
        }
    }

    /// Changes an endpoint with `change` (which says whether it changed anything), retrying
    /// when another node changed it meanwhile. `None` when it no longer exists.
    async fn update_endpoint(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Endpoint) -> bool,
    ) -> Result<Option<Endpoint>> {
        self.try_update_endpoint(id, |endpoint| Ok(change(endpoint))).await
    }

    /// [`Self::update_endpoint`] with a change that may refuse (its error is returned, and
    /// nothing is written).
    async fn try_update_endpoint(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Endpoint) -> Result<bool>,
    ) -> Result<Option<Endpoint>> {
        for _ in 0..10 {
            let (mut endpoint, stored) = match self.endpoint(id).await {
                Ok(found) => found,
                Err(WebhookError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            if !change(&mut endpoint)? {
                return Ok(Some(endpoint));
            }
            let written = self
                .store
                .write_state(vec![
                    StateChange::expect(ENDPOINTS, id, Some(stored)),
                    StateChange::put(ENDPOINTS, id, encode(&endpoint)?),
                ])
                .await;
            match written {
                Ok(()) => {
                    self.changed.notify_waiters();
                    return Ok(Some(endpoint));
                }
                Err(Error::StateConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable("the endpoint is being changed by others; try again".into()).into())
    }

    /// Puts the endpoint's settings into its delivery group when the group has others (after
    /// a patch; also mends a group left behind by a put that failed after its record was
    /// written).
    async fn sync_group(&self, endpoint: &Endpoint) -> Result<()> {
        let name = group_name(&endpoint.id)?;
        let mut wanted = endpoint.group_config();
        wanted.start = StartFrom::Position(endpoint.start_position);
        if self.groups.status(&name).await?.config != wanted {
            self.groups.put(&name, wanted).await?;
        }
        Ok(())
    }

    /// Messages not yet delivered or failed for good.
    async fn backlog(&self, id: &str) -> u64 {
        match GroupName::new(id) {
            Ok(name) => self.groups.status(&name).await.map(|s| s.lag).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// The event of a message of `endpoint`, or why there is none.
    async fn message_event(&self, endpoint: &Endpoint, event_id: &str) -> Result<RecordedEvent> {
        let not_found = || {
            WebhookError::MessageNotFound(format!(
                "endpoint {} has no message for event {event_id:?}",
                endpoint.id
            ))
        };
        let id: EventId = event_id.parse().map_err(|_| not_found())?;
        let event = self.store.event(endpoint.tenant_id(id)).await?.ok_or_else(not_found)?;
        if event.position <= endpoint.start_position || !endpoint.matches_event(&event) {
            return Err(not_found());
        }
        let local = endpoint.localize(&event);
        let src = Source::from_event(&local);
        let key = render::routing_key(&src, endpoint.spec.transform.as_ref());
        if key.is_ok_and(|key| !endpoint.spec.matches_routing_key(&key)) {
            return Err(not_found());
        }
        Ok(event)
    }

    async fn message_record(&self, id: &str, position: u64) -> Result<Option<MessageRecord>> {
        match self.store.read_state(&messages_scope(id), &message_key(position)).await? {
            Some(bytes) => Ok(Some(decode("message", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Queues manual sends, due now, and marks their messages pending.
    async fn enqueue(&self, id: &str, messages: &[(EventId, u64)], trigger: Trigger) -> Result<()> {
        let now = Timestamp::now();
        for chunk in messages.chunks(200) {
            let mut changes = Vec::new();
            for &(event_id, position) in chunk {
                let entry =
                    ResendEntry { event_id, position, trigger, attempts: 0, due: now, claimed_until: None };
                changes.push(StateChange::put(RESENDS, resend_key(id, position), encode(&entry)?));
                if let Some(mut record) = self.message_record(id, position).await? {
                    record.status = MessageStatus::Pending;
                    record.attempts = 0;
                    record.next_attempt_at = Some(now);
                    changes.push(StateChange::put(
                        messages_scope(id),
                        message_key(position),
                        encode(&record)?,
                    ));
                }
            }
            self.store.write_state(changes).await?;
        }
        self.changed.notify_waiters();
        Ok(())
    }

    /// Up to `limit` values of `scope` after the cursor that `keep` turns into items, and
    /// the cursor of the next page.
    async fn scan_filtered<T>(
        &self,
        scope: &str,
        before: Option<&str>,
        limit: usize,
        mut keep: impl FnMut(&[u8]) -> bifrost_core::Result<Option<T>>,
    ) -> Result<(Vec<T>, Option<String>)> {
        let mut items = Vec::new();
        let mut after = before.map(str::to_owned);
        // A filter that matches little must not scan without end: at most this many keys
        // per page, then the cursor says where to go on.
        let mut budget = 20 * MAX_PAGE;
        loop {
            let entries = self.store.scan_state(scope, after.as_deref(), 500).await?;
            if entries.is_empty() {
                return Ok((items, None));
            }
            for entry in entries {
                budget = budget.saturating_sub(1);
                if let Some(item) = keep(&entry.value)? {
                    items.push(item);
                }
                after = Some(entry.key);
                if items.len() == limit || budget == 0 {
                    return Ok((items, after));
                }
            }
        }
    }
}
