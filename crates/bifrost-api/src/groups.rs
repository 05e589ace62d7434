//! Consumer groups: settings, figures, leases, acks, nacks and dead letters.
//!
//! Durations are milliseconds. A group's settings have one shape for both directions:
//! `GET` shows a [`GroupConfigBody`], and `PUT` takes a [`GroupConfigRequest`], the same
//! fields each optional (so what `GET` shows can be put back as it is).

use uuid::Uuid;

use serde::{Deserialize, Serialize};

use crate::event::EventBody;

/// Most leases in one ack or nack.
pub const MAX_LEASES_PER_REQUEST: usize = 1000;
/// Longest nack `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 1024;

/// `PUT /v1/groups/{group}`: every field is optional; an absent (or null) field takes its
/// default. Accepts the `config` that `GET /v1/groups/{group}` shows.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupConfigRequest {
    /// Default: every event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<GroupFilterRequest>,
    /// Default `"beginning"`; counts only when the group is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<StartBody>,
    /// Default 30000; 1 ms to a day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    /// Default 5; at least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Default exponential, 1000 → 60000 ms, with jitter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffRequest>,
    /// Default 1000; 1 to 100000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u64>,
}

/// Which events a group receives.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupFilterRequest {
    /// Topic patterns (`*` one segment, `#` zero or more); default or empty: every type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// Only streams of this category; default: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// The delay before redelivering a failed event.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackoffRequest {
    /// Default `"exponential"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<BackoffKindBody>,
    /// Default 1000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_ms: Option<u64>,
    /// Default 60000; at least `initial_ms`, at most a day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
    /// Default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
}

/// Where a new group starts: `"beginning"`, `"end"` or `{"position": p}` (exclusive:
/// delivery begins after `p`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StartBody {
    Beginning,
    End,
    Position(u64),
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BackoffKindBody {
    /// `initial_ms`, then doubling up to `max_ms`.
    Exponential,
    /// `initial_ms` every time.
    Fixed,
}

/// A group's settings, durations in milliseconds. `PUT` accepts the same shape, every field
/// optional: `filter` every event, `start` `"beginning"`, `ack_timeout_ms` 30000,
/// `max_attempts` 5, `backoff` exponential 1000 → 60000 ms with jitter, `max_in_flight` 1000.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupFilterBody {
    pub types: Vec<String>,
    pub category: Option<String>,
}

/// The delay before redelivering a failed event.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackoffBody {
    pub kind: BackoffKindBody,
    /// The delay after the first failure.
    pub initial_ms: u64,
    /// No delay is longer (at most a day).
    pub max_ms: u64,
    /// Spread each delay randomly over the upper half of its step.
    pub jitter: bool,
}

impl From<GroupConfigBody> for GroupConfigRequest {
    /// The request that puts the settings back as they are.
    fn from(c: GroupConfigBody) -> Self {
        Self {
            filter: Some(GroupFilterRequest { types: Some(c.filter.types), category: c.filter.category }),
            start: Some(c.start),
            ack_timeout_ms: Some(c.ack_timeout_ms),
            max_attempts: Some(c.max_attempts),
            backoff: Some(BackoffRequest {
                kind: Some(c.backoff.kind),
                initial_ms: Some(c.backoff.initial_ms),
                max_ms: Some(c.backoff.max_ms),
                jitter: Some(c.backoff.jitter),
            }),
            max_in_flight: Some(c.max_in_flight),
        }
    }
}

/// A consumer that fetched from the group, and when it last did (RFC 3339).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsumerBody {
    pub name: String,
    pub last_seen: String,
}

/// `GET /v1/groups/{group}`: a group's settings and figures. Readers take the figures the
/// API description does not promise (`waiting`, `redeliveries`, `timeouts`, `created_at`)
/// as zero or null when they are absent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[serde(default)]
    pub waiting: u64,
    /// Dead letters.
    pub parked: u64,
    /// Deliveries after a failure, since the server started.
    #[serde(default)]
    pub redeliveries: u64,
    /// Leases that timed out, since the server started.
    #[serde(default)]
    pub timeouts: u64,
    /// Consumers that fetched since the server started, in name order.
    pub consumers: Vec<ConsumerBody>,
    /// RFC 3339; null only if the group was deleted while this answer was made.
    #[serde(default)]
    pub created_at: Option<String>,
}

/// `GET /v1/groups`: every group, in name order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupListBody {
    pub groups: Vec<GroupBody>,
}

/// `POST /v1/groups/{group}/ack`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Lease tokens from fetch answers (at most 1000).
    pub leases: Vec<String>,
}

/// The answer to an ack.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckBody {
    pub acked: u64,
    /// Leases no longer held (timed out, already settled, from before a restart, or not
    /// leases at all); their events were or will be delivered again.
    pub expired: Vec<String>,
}

/// What a nack does.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NackActionBody {
    /// Redeliver after `delay_ms`, or after the group's backoff; parked after the group's
    /// `max_attempts` deliveries.
    Retry,
    /// Park in the dead-letter queue now.
    Park,
}

/// `POST /v1/groups/{group}/nack`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    /// Lease tokens from fetch answers (at most 1000).
    pub leases: Vec<String>,
    pub action: NackActionBody,
    /// Only with `retry`: the delay before redelivery instead of the backoff (at most a day).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Kept with the event; shown in the dead-letter queue if it is parked (at most 1024
    /// characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl NackRequest {
    /// Redeliver after the group's backoff.
    pub fn retry(leases: Vec<String>) -> Self {
        Self { leases, action: NackActionBody::Retry, delay_ms: None, reason: None }
    }

    /// Park in the dead-letter queue now.
    pub fn park(leases: Vec<String>) -> Self {
        Self { leases, action: NackActionBody::Park, delay_ms: None, reason: None }
    }

    /// Redeliver after this delay instead of the backoff (a retry only).
    pub fn with_delay_ms(mut self, delay_ms: u64) -> Self {
        self.delay_ms = Some(delay_ms);
        self
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// The answer to a nack.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NackBody {
    pub nacked: u64,
    /// Leases no longer held, as in the ack answer.
    pub expired: Vec<String>,
}

/// `POST /v1/groups/{group}/dead-letters/replay`; no body (or no `event_ids`) replays all.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Event ids (UUIDs) of the dead letters to replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_ids: Option<Vec<String>>,
}

impl ReplayRequest {
    /// Every dead letter of the group.
    pub fn all() -> Self {
        Self { event_ids: None }
    }

    /// The dead letters of these events.
    pub fn events(ids: impl IntoIterator<Item = Uuid>) -> Self {
        Self { event_ids: Some(ids.into_iter().map(|id| id.to_string()).collect()) }
    }
}

/// The answer to a replay.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplayBody {
    /// Dead letters delivered again (those whose event was deleted are dropped, not counted).
    pub replayed: u64,
}

/// One leased event.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageBody<'a> {
    /// Opaque; name it in an ack or nack.
    pub lease: String,
    /// 1 for the first delivery (and the first after a replay).
    pub attempt: u32,
    #[serde(borrow)]
    pub event: EventBody<'a>,
}

/// `POST /v1/groups/{group}/fetch`: an empty `messages` when nothing came within `wait`.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FetchBody<'a> {
    #[serde(borrow)]
    pub messages: Vec<MessageBody<'a>>,
}

/// One dead letter.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetterBody<'a> {
    /// The event, or null when it was deleted since it was parked (the entry can still be
    /// discarded by `event_id`; a replay drops it).
    #[serde(borrow)]
    pub event: Option<EventBody<'a>>,
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
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLettersBody<'a> {
    #[serde(borrow)]
    pub dead_letters: Vec<DeadLetterBody<'a>>,
    pub next: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_send_only_what_is_set() {
        let request = GroupConfigRequest {
            filter: Some(GroupFilterRequest {
                types: Some(vec!["order.#".into()]),
                category: Some("order".into()),
            }),
            start: Some(StartBody::Position(41)),
            ack_timeout_ms: Some(2000),
            backoff: Some(BackoffRequest { kind: Some(BackoffKindBody::Fixed), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"filter":{"types":["order.#"],"category":"order"},"start":{"position":41},"ack_timeout_ms":2000,"backoff":{"kind":"fixed"}}"#
        );
        assert_eq!(serde_json::to_string(&GroupConfigRequest::default()).unwrap(), "{}");
    }

    #[test]
    fn the_start_is_beginning_end_or_a_position() {
        for (start, text) in [
            (StartBody::Beginning, r#""beginning""#),
            (StartBody::End, r#""end""#),
            (StartBody::Position(7), r#"{"position":7}"#),
        ] {
            assert_eq!(serde_json::to_string(&start).unwrap(), text);
            assert_eq!(serde_json::from_str::<StartBody>(text).unwrap(), start);
        }
        assert!(serde_json::from_str::<StartBody>(r#""middle""#).is_err());
    }

    #[test]
    fn what_get_shows_puts_back_as_it_is() {
        let shown = GroupConfigBody {
            filter: GroupFilterBody { types: vec!["a.#".into()], category: None },
            start: StartBody::End,
            ack_timeout_ms: 30_000,
            max_attempts: 5,
            backoff: BackoffBody {
                kind: BackoffKindBody::Exponential,
                initial_ms: 1000,
                max_ms: 60_000,
                jitter: true,
            },
            max_in_flight: 1000,
        };
        let json = serde_json::to_string(&shown).unwrap();
        let request: GroupConfigRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(request, GroupConfigRequest::from(shown));
    }

    #[test]
    fn a_nack_names_its_action_and_only_the_options_given() {
        let body = NackRequest::retry(vec!["l1".into()]).with_delay_ms(5);
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"leases":["l1"],"action":"retry","delay_ms":5}"#
        );
        let body = NackRequest::park(vec!["l1".into()]).with_reason("bad data");
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"leases":["l1"],"action":"park","reason":"bad data"}"#
        );
    }
}
