//! The API's JSON: request bodies, response bodies and the event writer.
//!
//! These types are the wire contract, kept apart from the core model on purpose: their
//! serde shape is a promise to clients. Event payloads are never re-serialised: `data`
//! is taken from the request body as a zero-copy slice and written back verbatim.

use std::time::Duration;

use bifrost_bus::{
    Backoff, BackoffKind, DeadLetterEntry, GroupConfig, GroupFilter, GroupStatus, Lease, NackAction,
    ReplaySelection, StartFrom,
};
use bifrost_core::group::MAX_DELAY;
use bifrost_core::{
    AppendResult, EventType, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamInfo, StreamSummary,
    Timestamp,
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ServerConfig;
use crate::error::{ApiError, ApiResult};

// ---------------------------------------------------------------------------------------
// Requests

/// `POST /v1/streams/{stream}/events`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest<'a> {
    #[serde(default, borrow)]
    pub expected_version: Option<&'a RawValue>,
    #[serde(borrow)]
    pub events: Vec<NewEventRequest<'a>>,
}

/// One entry of `POST /v1/append`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamAppendRequest<'a> {
    pub stream: String,
    #[serde(default, borrow)]
    pub expected_version: Option<&'a RawValue>,
    #[serde(borrow)]
    pub events: Vec<NewEventRequest<'a>>,
}

/// `POST /v1/append`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiAppendRequest<'a> {
    #[serde(borrow)]
    pub appends: Vec<StreamAppendRequest<'a>>,
}

/// An event as a client sends it. Fields whose bad values are argument errors rather than
/// shape errors (`id`, `occurred_at`) are taken raw and checked by hand.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEventRequest<'a> {
    #[serde(rename = "type")]
    pub event_type: String,
    /// Required; any JSON value including `null`, kept as the exact bytes received.
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(default, borrow)]
    pub id: Option<&'a RawValue>,
    #[serde(default)]
    pub metadata: Option<MetadataRequest>,
    #[serde(default)]
    pub schema_version: Option<u32>,
    #[serde(default, borrow)]
    pub occurred_at: Option<&'a RawValue>,
    #[serde(default)]
    pub aggregate_type: Option<String>,
}

/// Event metadata: the known keys are strings (or null); any other key is kept.
#[derive(Deserialize, Default)]
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

impl From<MetadataRequest> for Metadata {
    fn from(m: MetadataRequest) -> Self {
        Metadata {
            correlation_id: m.correlation_id,
            causation_id: m.causation_id,
            source: m.source,
            user_id: m.user_id,
            tenant_id: m.tenant_id,
            extra: m.extra,
        }
    }
}

/// Parses a JSON body, turning serde's complaint into a 400 `invalid-request`.
pub fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))
}

/// `"any" | "no_stream" | "exists" | <integer ≥ 0>`; absent or null means `any`.
pub fn parse_expected_version(raw: Option<&RawValue>) -> ApiResult<ExpectedVersion> {
    let Some(raw) = raw else { return Ok(ExpectedVersion::Any) };
    let bad = || {
        ApiError::invalid_argument(format!(
            "invalid expected_version {}: use \"any\", \"no_stream\", \"exists\" or an integer >= 0",
            raw.get()
        ))
    };
    match serde_json::from_str::<Value>(raw.get()).map_err(|_| bad())? {
        Value::Null => Ok(ExpectedVersion::Any),
        Value::String(s) => match s.as_str() {
            "any" => Ok(ExpectedVersion::Any),
            "no_stream" => Ok(ExpectedVersion::NoStream),
            "exists" => Ok(ExpectedVersion::StreamExists),
            _ => Err(bad()),
        },
        Value::Number(n) => n.as_u64().map(ExpectedVersion::Exact).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// An event id from a path or a body.
pub fn parse_uuid(text: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| ApiError::invalid_argument(format!("{text:?} is not a UUID")))
}

fn parse_optional_string(raw: Option<&RawValue>, field: &str) -> ApiResult<Option<String>> {
    let Some(raw) = raw else { return Ok(None) };
    serde_json::from_str::<Option<String>>(raw.get())
        .map_err(|_| ApiError::invalid_argument(format!("{field} must be a string, got {}", raw.get())))
}

/// Turns the events of a request into core events, enforcing the per-event size limit.
/// `body` is the request body the events borrow from: payloads become slices of it.
pub fn to_new_events(
    body: &Bytes,
    events: Vec<NewEventRequest<'_>>,
    config: &ServerConfig,
) -> ApiResult<Vec<NewEvent>> {
    if events.is_empty() {
        return Err(ApiError::invalid_argument("events must not be empty"));
    }
    events.into_iter().enumerate().map(|(i, e)| to_new_event(body, e, config, i)).collect()
}

fn to_new_event(
    body: &Bytes,
    event: NewEventRequest<'_>,
    config: &ServerConfig,
    index: usize,
) -> ApiResult<NewEvent> {
    let raw = event.data.get();
    if raw.len() > config.max_event_bytes {
        return Err(ApiError::payload_too_large(format!(
            "the data of event {index} has {} bytes; the limit is {}",
            raw.len(),
            config.max_event_bytes
        )));
    }
    let event_type = EventType::new(&event.event_type)?;
    // `raw` borrows from `body`, so this is a zero-copy view of the received bytes.
    let mut new = NewEvent::new(event_type, body.slice_ref(raw.as_bytes()));
    if let Some(id) = parse_optional_string(event.id, "id")? {
        new.id = Uuid::parse_str(&id)
            .map_err(|_| ApiError::invalid_argument(format!("id {id:?} of event {index} is not a UUID")))?;
    }
    if let Some(at) = parse_optional_string(event.occurred_at, "occurred_at")? {
        new.occurred_at = Some(at.parse::<Timestamp>().map_err(|_| {
            ApiError::invalid_argument(format!(
                "occurred_at {at:?} of event {index} is not an RFC 3339 timestamp"
            ))
        })?);
    }
    if let Some(metadata) = event.metadata {
        new.metadata = metadata.into();
    }
    if let Some(schema_version) = event.schema_version {
        new.schema_version = schema_version;
    }
    new.aggregate_type = event.aggregate_type;
    Ok(new)
}

// ---------------------------------------------------------------------------------------
// Responses

/// Where an append's events landed.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct AppendResultBody {
    pub stream: String,
    pub first_version: u64,
    pub last_version: u64,
    pub first_position: u64,
    pub last_position: u64,
}

impl From<AppendResult> for AppendResultBody {
    fn from(r: AppendResult) -> Self {
        Self {
            stream: r.stream.to_string(),
            first_version: r.first_version,
            last_version: r.last_version,
            first_position: r.first_position,
            last_position: r.last_position,
        }
    }
}

/// The answer of `POST /v1/append`, in request order.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct MultiAppendResultBody {
    pub results: Vec<AppendResultBody>,
}

/// `GET /v1/streams/{stream}`.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct StreamInfoBody {
    pub stream: String,
    pub version: u64,
    pub aggregate_type: String,
    /// RFC 3339, microseconds, UTC.
    pub created_at: String,
    pub updated_at: String,
    /// Soft-deleted: reads answer 404 until the next append.
    pub deleted: bool,
}

impl From<StreamInfo> for StreamInfoBody {
    fn from(i: StreamInfo) -> Self {
        Self {
            stream: i.stream.to_string(),
            version: i.version,
            aggregate_type: i.aggregate_type,
            created_at: i.created_at.to_string(),
            updated_at: i.updated_at.to_string(),
            deleted: i.deleted,
        }
    }
}

/// One entry of `GET /v1/streams`.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct StreamSummaryBody {
    pub stream: String,
    pub version: u64,
    pub aggregate_type: String,
    pub updated_at: String,
}

impl From<StreamSummary> for StreamSummaryBody {
    fn from(s: StreamSummary) -> Self {
        Self {
            stream: s.stream.to_string(),
            version: s.version,
            aggregate_type: s.aggregate_type,
            updated_at: s.updated_at.to_string(),
        }
    }
}

/// `GET /v1/streams`: streams in name order; `next` is the `after` of the next page.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct StreamListBody {
    pub streams: Vec<StreamSummaryBody>,
    pub next: Option<String>,
}

/// An event as the API shows it. Documents the output of [`write_event`], which writes it
/// without going through this type (the read path must not re-serialise payloads).
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    pub id: Uuid,
    pub stream: String,
    pub aggregate_type: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub version: u64,
    pub position: u64,
    /// The payload exactly as it was appended.
    pub data: Value,
    /// `correlation_id`, `causation_id`, `source`, `user_id`, `tenant_id` and any other key.
    pub metadata: Map<String, Value>,
    /// RFC 3339, six fractional digits, `Z`.
    pub occurred_at: String,
    pub recorded_at: String,
}

/// `GET /v1/streams/{stream}/events`: `next` is the version to continue from, or null.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct StreamEventsBody {
    pub events: Vec<EventBody>,
    pub next: Option<u64>,
}

/// `GET /v1/events`: `next_position` is the `from_position` of the next page.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct LogEventsBody {
    pub events: Vec<EventBody>,
    pub next_position: u64,
}

/// An RFC 9457 problem; more members may follow, e.g. `expected` / `actual` / `conflicts`
/// for `bifrost:wrong-expected-version`.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct Problem {
    /// Stable, e.g. `bifrost:wrong-expected-version`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

/// The request body of the single-stream append.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: requests are parsed by `AppendRequest`
pub struct AppendRequestDoc {
    /// `"any"` (default), `"no_stream"`, `"exists"` or the exact version (integer ≥ 0).
    #[schema(value_type = Option<Object>)]
    pub expected_version: Option<Value>,
    pub events: Vec<NewEventDoc>,
}

/// One stream of a multi-stream append.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StreamAppendDoc {
    pub stream: String,
    #[schema(value_type = Option<Object>)]
    pub expected_version: Option<Value>,
    pub events: Vec<NewEventDoc>,
}

/// The request body of `POST /v1/append`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MultiAppendRequestDoc {
    pub appends: Vec<StreamAppendDoc>,
}

/// An event to append.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewEventDoc {
    #[schema(rename = "type")]
    pub event_type: String,
    /// Any JSON value; stored and returned byte-for-byte.
    #[schema(value_type = Object)]
    pub data: Value,
    /// UUID; the idempotency key (UUID v7 generated when absent).
    pub id: Option<Uuid>,
    pub metadata: Option<Map<String, Value>>,
    pub schema_version: Option<u32>,
    pub occurred_at: Option<String>,
    pub aggregate_type: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Consumer groups
//
// The engine's own serde shape of a group's settings is its storage format; the API's shape
// is defined here and mapped field by field, so neither can change the other by accident.

/// Most leases in one ack or nack.
pub const MAX_LEASES_PER_REQUEST: usize = 1000;
/// Longest nack `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 1024;

/// `PUT /v1/groups/{group}`: every field is optional; an absent (or null) field takes its
/// default. Accepts the `config` that `GET /v1/groups/{group}` shows.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct GroupConfigRequest {
    /// Default: every event.
    pub filter: Option<GroupFilterRequest>,
    /// Default `"beginning"`; counts only when the group is created.
    pub start: Option<StartBody>,
    /// Default 30000; 1 ms to a day.
    pub ack_timeout_ms: Option<u64>,
    /// Default 5; at least 1.
    pub max_attempts: Option<u32>,
    /// Default exponential, 1000 → 60000 ms, with jitter.
    pub backoff: Option<BackoffRequest>,
    /// Default 1000; 1 to 100000.
    pub max_in_flight: Option<u64>,
}

/// Which events a group receives.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct GroupFilterRequest {
    /// Topic patterns (`*` one segment, `#` zero or more); default or empty: every type.
    pub types: Option<Vec<String>>,
    /// Only streams of this category; default: any.
    pub category: Option<String>,
}

/// The delay before redelivering a failed event.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct BackoffRequest {
    /// Default `"exponential"`.
    pub kind: Option<BackoffKindBody>,
    /// Default 1000.
    pub initial_ms: Option<u64>,
    /// Default 60000; at least `initial_ms`, at most a day.
    pub max_ms: Option<u64>,
    /// Default true.
    pub jitter: Option<bool>,
}

impl GroupConfigRequest {
    /// The engine's settings; the engine validates them when the group is put.
    pub fn into_config(self) -> ApiResult<GroupConfig> {
        let defaults = GroupConfig::default();
        let filter = self.filter.unwrap_or_default();
        let backoff = self.backoff.unwrap_or_default();
        let max_in_flight = match self.max_in_flight {
            None => defaults.max_in_flight,
            Some(n) => usize::try_from(n)
                .map_err(|_| ApiError::invalid_argument(format!("max_in_flight {n} is too large")))?,
        };
        Ok(GroupConfig {
            filter: GroupFilter { types: filter.types.unwrap_or_default(), category: filter.category },
            start: self.start.map_or(defaults.start, StartFrom::from),
            ack_timeout: self.ack_timeout_ms.map_or(defaults.ack_timeout, Duration::from_millis),
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            backoff: Backoff {
                kind: backoff.kind.map_or(defaults.backoff.kind, BackoffKind::from),
                initial: backoff.initial_ms.map_or(defaults.backoff.initial, Duration::from_millis),
                max: backoff.max_ms.map_or(defaults.backoff.max, Duration::from_millis),
                jitter: backoff.jitter.unwrap_or(defaults.backoff.jitter),
            },
            max_in_flight,
        })
    }
}

/// Where a new group starts: `"beginning"`, `"end"` or `{"position": p}` (exclusive).
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartBody {
    Beginning,
    End,
    Position(u64),
}

impl From<StartBody> for StartFrom {
    fn from(s: StartBody) -> Self {
        match s {
            StartBody::Beginning => StartFrom::Beginning,
            StartBody::End => StartFrom::End,
            StartBody::Position(p) => StartFrom::Position(p),
        }
    }
}

impl From<StartFrom> for StartBody {
    fn from(s: StartFrom) -> Self {
        match s {
            StartFrom::Beginning => StartBody::Beginning,
            StartFrom::End => StartBody::End,
            StartFrom::Position(p) => StartBody::Position(p),
        }
    }
}

#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackoffKindBody {
    /// `initial_ms`, then doubling up to `max_ms`.
    Exponential,
    /// `initial_ms` every time.
    Fixed,
}

impl From<BackoffKindBody> for BackoffKind {
    fn from(k: BackoffKindBody) -> Self {
        match k {
            BackoffKindBody::Exponential => BackoffKind::Exponential,
            BackoffKindBody::Fixed => BackoffKind::Fixed,
        }
    }
}

impl From<BackoffKind> for BackoffKindBody {
    fn from(k: BackoffKind) -> Self {
        match k {
            BackoffKind::Exponential => BackoffKindBody::Exponential,
            BackoffKind::Fixed => BackoffKindBody::Fixed,
        }
    }
}

/// A group's settings, durations in milliseconds. `PUT` accepts the same shape, every field
/// optional: `filter` every event, `start` `"beginning"`, `ack_timeout_ms` 30000,
/// `max_attempts` 5, `backoff` exponential 1000 → 60000 ms with jitter, `max_in_flight` 1000.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct GroupConfigBody {
    pub filter: GroupFilterBody,
    /// Counts only when the group is created.
    pub start: StartBody,
    /// A lease not acked within this counts as a failed attempt (1 ms to a day).
    pub ack_timeout_ms: u64,
    /// Deliveries before an event is parked (at least 1).
    pub max_attempts: u32,
    pub backoff: BackoffBody,
    /// Events leased out at once, over all consumers (1 to 100000).
    pub max_in_flight: u64,
}

/// Which events a group receives: any of `types` (topic patterns; empty: every type) in
/// streams of `category` (null: any).
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct GroupFilterBody {
    pub types: Vec<String>,
    pub category: Option<String>,
}

/// The delay before redelivering a failed event.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct BackoffBody {
    pub kind: BackoffKindBody,
    /// The delay after the first failure.
    pub initial_ms: u64,
    /// No delay is longer (at most a day).
    pub max_ms: u64,
    /// Spread each delay randomly over the upper half of its step.
    pub jitter: bool,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&GroupConfig> for GroupConfigBody {
    fn from(c: &GroupConfig) -> Self {
        Self {
            filter: GroupFilterBody { types: c.filter.types.clone(), category: c.filter.category.clone() },
            start: c.start.into(),
            ack_timeout_ms: millis(c.ack_timeout),
            max_attempts: c.max_attempts,
            backoff: BackoffBody {
                kind: c.backoff.kind.into(),
                initial_ms: millis(c.backoff.initial),
                max_ms: millis(c.backoff.max),
                jitter: c.backoff.jitter,
            },
            max_in_flight: c.max_in_flight as u64,
        }
    }
}

/// A consumer that fetched from the group, and when it last did (RFC 3339).
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct ConsumerBody {
    pub name: String,
    pub last_seen: String,
}

/// `GET /v1/groups/{group}`: a group's settings and figures.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct GroupBody {
    pub group: String,
    pub config: GroupConfigBody,
    /// Every matching event at or below this position is acked or parked.
    pub checkpoint: u64,
    /// Matching events not yet acked: in flight, waiting for a retry or not yet delivered
    /// (parked ones excluded).
    pub lag: u64,
    /// Leased out now.
    pub in_flight: u64,
    /// Waiting for a retry.
    pub waiting: u64,
    /// Dead letters.
    pub parked: u64,
    /// Deliveries after a failure, since the server started.
    pub redeliveries: u64,
    /// Leases that timed out, since the server started.
    pub timeouts: u64,
    /// Consumers that fetched since the server started, in name order.
    pub consumers: Vec<ConsumerBody>,
    /// RFC 3339; null only if the group was deleted while this answer was made.
    pub created_at: Option<String>,
}

impl GroupBody {
    pub fn new(status: GroupStatus) -> Self {
        Self {
            group: status.name.to_string(),
            config: GroupConfigBody::from(&status.config),
            checkpoint: status.checkpoint,
            lag: status.lag,
            in_flight: status.in_flight,
            waiting: status.waiting,
            parked: status.parked,
            redeliveries: status.redeliveries,
            timeouts: status.timeouts,
            consumers: status
                .consumers
                .into_iter()
                .map(|(name, seen)| ConsumerBody { name, last_seen: seen.to_string() })
                .collect(),
            created_at: Some(status.created_at.to_string()),
        }
    }
}

/// `GET /v1/groups`: every group, in name order.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct GroupListBody {
    pub groups: Vec<GroupBody>,
}

/// `POST /v1/groups/{group}/ack`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Lease tokens from fetch answers (at most 1000).
    pub leases: Vec<String>,
}

/// The answer to an ack.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct AckBody {
    pub acked: usize,
    /// Leases no longer held (timed out, already settled, from before a restart, or not
    /// leases at all); their events were or will be delivered again.
    pub expired: Vec<String>,
}

/// What a nack does.
#[derive(Deserialize, ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NackActionBody {
    /// Redeliver after `delay_ms`, or after the group's backoff; parked after the group's
    /// `max_attempts` deliveries.
    Retry,
    /// Park in the dead-letter queue now.
    Park,
}

/// `POST /v1/groups/{group}/nack`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    /// Lease tokens from fetch answers (at most 1000).
    pub leases: Vec<String>,
    pub action: NackActionBody,
    /// Only with `retry`: the delay before redelivery instead of the backoff (at most a day).
    pub delay_ms: Option<u64>,
    /// Kept with the event; shown in the dead-letter queue if it is parked (at most 1024
    /// characters).
    pub reason: Option<String>,
}

impl NackRequest {
    /// The reason, if any, within its length limit.
    pub fn reason(&self) -> ApiResult<Option<&str>> {
        match self.reason.as_deref() {
            Some(reason) if reason.chars().count() > MAX_REASON_CHARS => {
                Err(ApiError::invalid_argument(format!("reason is at most {MAX_REASON_CHARS} characters")))
            }
            reason => Ok(reason),
        }
    }

    pub fn action(&self) -> ApiResult<NackAction> {
        match (self.action, self.delay_ms) {
            (NackActionBody::Park, Some(_)) => {
                Err(ApiError::invalid_argument("delay_ms applies only to action \"retry\""))
            }
            (NackActionBody::Park, None) => Ok(NackAction::Park),
            (NackActionBody::Retry, None) => Ok(NackAction::Retry(None)),
            (NackActionBody::Retry, Some(ms)) => {
                let delay = Duration::from_millis(ms);
                if delay > MAX_DELAY {
                    return Err(ApiError::invalid_argument(format!(
                        "delay_ms is at most {} ms",
                        MAX_DELAY.as_millis()
                    )));
                }
                Ok(NackAction::Retry(Some(delay)))
            }
        }
    }
}

/// The answer to a nack.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct NackBody {
    pub nacked: usize,
    /// Leases no longer held, as in the ack answer.
    pub expired: Vec<String>,
}

/// Checks the size of an ack's or nack's lease list.
pub fn check_leases(leases: &[String]) -> ApiResult<()> {
    if leases.len() > MAX_LEASES_PER_REQUEST {
        return Err(ApiError::invalid_argument(format!(
            "at most {MAX_LEASES_PER_REQUEST} leases per request, got {}",
            leases.len()
        )));
    }
    Ok(())
}

/// `POST /v1/groups/{group}/dead-letters/replay`; no body (or no `event_ids`) replays all.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Event ids (UUIDs) of the dead letters to replay.
    pub event_ids: Option<Vec<String>>,
}

impl ReplayRequest {
    pub fn selection(self) -> ApiResult<ReplaySelection> {
        let Some(ids) = self.event_ids else { return Ok(ReplaySelection::All) };
        let ids = ids.iter().map(|id| parse_uuid(id)).collect::<ApiResult<Vec<_>>>()?;
        Ok(ReplaySelection::Ids(ids))
    }
}

/// The answer to a replay.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct ReplayBody {
    /// Dead letters delivered again (those whose event was deleted are dropped, not counted).
    pub replayed: usize,
}

/// One leased event. Documents the output of [`fetch_json`].
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct MessageBody {
    /// Opaque; name it in an ack or nack.
    pub lease: String,
    /// 1 for the first delivery (and the first after a replay).
    pub attempt: u32,
    pub event: EventBody,
}

/// The answer to a fetch: an empty `messages` when nothing came within `wait`.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct FetchBody {
    pub messages: Vec<MessageBody>,
}

/// One dead letter. Documents the output of [`dead_letters_json`].
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct DeadLetterBody {
    /// The event, or null when it was deleted since it was parked (the entry can still be
    /// discarded by `event_id`; a replay drops it).
    pub event: Option<EventBody>,
    pub event_id: Uuid,
    pub position: u64,
    pub stream: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Deliveries made before it was parked.
    pub attempts: u32,
    /// The last nack's reason, or that the ack timed out.
    pub reason: String,
    /// RFC 3339.
    pub parked_at: String,
}

/// `GET /v1/groups/{group}/dead-letters`, in log order; `next` is the `after` of the next
/// page, null on the last one.
#[derive(Serialize, Deserialize, ToSchema, Debug, Clone, PartialEq)]
pub struct DeadLettersBody {
    pub dead_letters: Vec<DeadLetterBody>,
    pub next: Option<u64>,
}

/// `{"messages":[{"lease":..,"attempt":..,"event":{..}},...]}`.
pub fn fetch_json(leases: &[Lease]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + leases.iter().map(|l| 96 + estimate_one(&l.event)).sum::<usize>());
    out.extend_from_slice(b"{\"messages\":");
    write_array(&mut out, leases, |out, lease| {
        out.extend_from_slice(b"{\"lease\":");
        write_str(out, &lease.token.to_string());
        out.extend_from_slice(b",\"attempt\":");
        write_u64(out, u64::from(lease.attempt));
        out.extend_from_slice(b",\"event\":");
        write_event(out, &lease.event);
        out.push(b'}');
    });
    out.push(b'}');
    out
}

/// `{"dead_letters":[...],"next":P|null}`.
pub fn dead_letters_json(entries: &[DeadLetterEntry], next: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + entries.iter().map(|e| 256 + e.event.as_ref().map_or(0, estimate_one)).sum::<usize>(),
    );
    out.extend_from_slice(b"{\"dead_letters\":");
    write_array(&mut out, entries, |out, entry| {
        let dl = &entry.dead_letter;
        out.extend_from_slice(b"{\"event\":");
        match &entry.event {
            Some(event) => write_event(out, event),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"event_id\":");
        write_uuid(out, dl.event_id);
        out.extend_from_slice(b",\"position\":");
        write_u64(out, dl.position);
        out.extend_from_slice(b",\"stream\":");
        write_str(out, &dl.stream);
        out.extend_from_slice(b",\"type\":");
        write_str(out, &dl.event_type);
        out.extend_from_slice(b",\"attempts\":");
        write_u64(out, u64::from(dl.attempts));
        out.extend_from_slice(b",\"reason\":");
        write_str(out, &dl.reason);
        out.extend_from_slice(b",\"parked_at\":");
        write_timestamp(out, dl.parked_at);
        out.push(b'}');
    });
    out.extend_from_slice(b",\"next\":");
    write_optional_u64(&mut out, next);
    out.push(b'}');
    out
}

// ---------------------------------------------------------------------------------------
// The event writer (hot path of reads and SSE)

/// Appends one event's JSON to `out`. `data` and `metadata` are the stored bytes, verbatim.
pub fn write_event(out: &mut Vec<u8>, e: &RecordedEvent) {
    out.extend_from_slice(b"{\"id\":");
    write_uuid(out, e.id);
    out.extend_from_slice(b",\"stream\":");
    write_str(out, e.stream.as_str());
    out.extend_from_slice(b",\"aggregate_type\":");
    write_str(out, &e.aggregate_type);
    out.extend_from_slice(b",\"type\":");
    write_str(out, e.event_type.as_str());
    out.extend_from_slice(b",\"schema_version\":");
    write_u64(out, u64::from(e.schema_version));
    out.extend_from_slice(b",\"version\":");
    write_u64(out, e.version);
    out.extend_from_slice(b",\"position\":");
    write_u64(out, e.position);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(if e.data.is_empty() { b"null" } else { &e.data });
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(if e.metadata.is_empty() { b"{}" } else { &e.metadata });
    out.extend_from_slice(b",\"occurred_at\":");
    write_timestamp(out, e.occurred_at);
    out.extend_from_slice(b",\"recorded_at\":");
    write_timestamp(out, e.recorded_at);
    out.push(b'}');
}

/// `[event, event, ...]`.
pub fn write_events(out: &mut Vec<u8>, events: &[RecordedEvent]) {
    write_array(out, events, write_event);
}

/// `{"events":[...],"next":N|null}`.
pub fn stream_events_json(events: &[RecordedEvent], next: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(events));
    out.extend_from_slice(b"{\"events\":");
    write_events(&mut out, events);
    out.extend_from_slice(b",\"next\":");
    write_optional_u64(&mut out, next);
    out.push(b'}');
    out
}

/// `{"events":[...],"next_position":P}`.
pub fn log_events_json(events: &[RecordedEvent], next_position: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(events));
    out.extend_from_slice(b"{\"events\":");
    write_events(&mut out, events);
    out.extend_from_slice(b",\"next_position\":");
    write_u64(&mut out, next_position);
    out.push(b'}');
    out
}

pub fn event_json(e: &RecordedEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(std::slice::from_ref(e)));
    write_event(&mut out, e);
    out
}

fn estimate(events: &[RecordedEvent]) -> usize {
    64 + events.iter().map(estimate_one).sum::<usize>()
}

fn estimate_one(e: &RecordedEvent) -> usize {
    320 + e.data.len() + e.metadata.len()
}

/// `[item,item,...]`, each item written by `write`.
fn write_array<T>(out: &mut Vec<u8>, items: &[T], mut write: impl FnMut(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A quoted UUID; its hyphenated form needs no escaping.
fn write_uuid(out: &mut Vec<u8>, id: Uuid) {
    let mut buffer = Uuid::encode_buffer();
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut buffer).as_bytes());
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    let _ = write!(out, "{n}");
}

fn write_optional_u64(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => write_u64(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// A quoted RFC 3339 timestamp; its digits and separators need no escaping.
fn write_timestamp(out: &mut Vec<u8>, t: Timestamp) {
    use std::io::Write;
    let _ = write!(out, "\"{t}\"");
}

#[cfg(test)]
mod tests {
    use bifrost_core::StreamName;

    use super::*;

    fn recorded(data: &'static [u8], metadata: &'static [u8]) -> RecordedEvent {
        RecordedEvent {
            id: Uuid::nil(),
            stream: StreamName::new("order-1").unwrap(),
            aggregate_type: "order\"x".into(),
            event_type: EventType::new("order.submitted").unwrap(),
            schema_version: 2,
            version: 3,
            position: 1041,
            data: Bytes::from_static(data),
            metadata: Bytes::from_static(metadata),
            occurred_at: "2026-11-22T10:00:00.123456Z".parse().unwrap(),
            recorded_at: "2026-11-22T10:00:00.124001Z".parse().unwrap(),
        }
    }

    #[test]
    fn event_writer_emits_the_documented_shape_with_verbatim_payload() {
        let e = recorded(b"{ \"total\" :42.50 }", br#"{"correlation_id":"c-1"}"#);
        let json = event_json(&e);
        let text = std::str::from_utf8(&json).unwrap();
        assert!(text.contains(r#""data":{ "total" :42.50 },"#), "{text}");
        let parsed: EventBody = serde_json::from_slice(&json).unwrap();
        assert_eq!(parsed.aggregate_type, "order\"x");
        assert_eq!(parsed.event_type, "order.submitted");
        assert_eq!(parsed.position, 1041);
        assert_eq!(parsed.recorded_at, "2026-11-22T10:00:00.124001Z");
        assert_eq!(parsed.metadata["correlation_id"], "c-1");
    }

    #[test]
    fn group_writers_emit_the_documented_bytes() {
        let event = recorded(b"1", b"{}");
        let lease = Lease { token: bifrost_bus::LeaseToken::new(0xab, 1), attempt: 2, event: event.clone() };
        let event_text = String::from_utf8(event_json(&event)).unwrap();
        assert_eq!(
            event_text,
            concat!(
                r#"{"id":"00000000-0000-0000-0000-000000000000","stream":"order-1","aggregate_type":"order\"x","#,
                r#""type":"order.submitted","schema_version":2,"version":3,"position":1041,"data":1,"#,
                r#""metadata":{},"occurred_at":"2026-11-22T10:00:00.123456Z","#,
                r#""recorded_at":"2026-11-22T10:00:00.124001Z"}"#
            )
        );
        assert_eq!(fetch_json(&[]), br#"{"messages":[]}"#);
        let fetched = String::from_utf8(fetch_json(&[lease.clone(), lease])).unwrap();
        let message =
            format!(r#"{{"lease":"00000000000000ab0000000000000001","attempt":2,"event":{event_text}}}"#);
        assert_eq!(fetched, format!(r#"{{"messages":[{message},{message}]}}"#));

        let dead_letter = bifrost_bus::DeadLetter {
            event_id: Uuid::nil(),
            position: 1041,
            stream: "order-1".into(),
            event_type: "order.submitted".into(),
            attempts: 5,
            reason: "bad\n".into(),
            parked_at: "2026-11-22T10:00:01Z".parse().unwrap(),
        };
        let entries = [
            DeadLetterEntry { dead_letter: dead_letter.clone(), event: Some(event) },
            DeadLetterEntry { dead_letter, event: None },
        ];
        assert_eq!(dead_letters_json(&[], None), br#"{"dead_letters":[],"next":null}"#);
        let letters = String::from_utf8(dead_letters_json(&entries, Some(1041))).unwrap();
        let rest = concat!(
            r#""event_id":"00000000-0000-0000-0000-000000000000","position":1041,"stream":"order-1","#,
            r#""type":"order.submitted","attempts":5,"reason":"bad\n","parked_at":"2026-11-22T10:00:01.000000Z"}"#
        );
        assert_eq!(
            letters,
            format!(
                r#"{{"dead_letters":[{{"event":{event_text},{rest},{{"event":null,{rest}],"next":1041}}"#
            )
        );
    }

    #[test]
    fn page_writers_produce_valid_json() {
        let events = vec![recorded(b"null", b"{}"), recorded(b"[1,2]", b"")];
        let page: StreamEventsBody = serde_json::from_slice(&stream_events_json(&events, None)).unwrap();
        assert_eq!(page.events.len(), 2);
        assert_eq!(page.next, None);
        let page: LogEventsBody = serde_json::from_slice(&log_events_json(&events, 7)).unwrap();
        assert_eq!(page.next_position, 7);
        assert_eq!(page.events[1].data, serde_json::json!([1, 2]));
    }

    #[test]
    fn expected_version_accepts_only_the_wire_forms() {
        let parse = |s: &str| {
            let raw: Box<RawValue> = serde_json::from_str(s).unwrap();
            parse_expected_version(Some(&raw)).map_err(|e| e.kind())
        };
        assert_eq!(parse("\"any\""), Ok(ExpectedVersion::Any));
        assert_eq!(parse("\"no_stream\""), Ok(ExpectedVersion::NoStream));
        assert_eq!(parse("\"exists\""), Ok(ExpectedVersion::StreamExists));
        assert_eq!(parse("7"), Ok(ExpectedVersion::Exact(7)));
        assert_eq!(parse("null"), Ok(ExpectedVersion::Any));
        for bad in ["-1", "1.5", "\"sometimes\"", "true", "[]", "1e3"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
