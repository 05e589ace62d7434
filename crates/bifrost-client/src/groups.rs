//! Consumer groups over HTTP: competing consumers lease events with `fetch`, settle them
//! with `ack` / `nack`, and manage what was parked in the dead-letter queue.
//!
//! The types here are the client's own; they map field by field onto the API's JSON,
//! with durations as [`Duration`]s instead of milliseconds.

use std::time::Duration;

use bifrost_core::{EventId, Position, RecordedEvent, Timestamp};
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::client::{Client, Query};
use crate::error::{Error, Result};
use crate::wire::{self, EventWire};

/// Which events a group receives: any of `types` (topic patterns; empty: every type) in
/// streams of `category` (`None`: any).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupFilter {
    pub types: Vec<String>,
    pub category: Option<String>,
}

/// Where a new group starts reading the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GroupStart {
    /// The first event of the log.
    #[default]
    Beginning,
    /// Only events committed after the group was created.
    End,
    /// The events after this position (exclusive).
    After(Position),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackoffKind {
    /// The initial delay, doubling up to the maximum.
    #[default]
    Exponential,
    /// The initial delay every time.
    Fixed,
}

/// The delay before a failed event is delivered again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
    pub kind: BackoffKind,
    pub initial: Duration,
    pub max: Duration,
    /// Spread each delay randomly over the upper half of its step.
    pub jitter: bool,
}

/// A group's settings as the server holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupConfig {
    pub filter: GroupFilter,
    /// Counts only when the group is created.
    pub start: GroupStart,
    /// A lease not acked within this counts as a failed attempt.
    pub ack_timeout: Duration,
    /// Deliveries before an event is parked.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Events leased out at once, over all consumers.
    pub max_in_flight: u64,
}

/// What `put_group` sends: every field is optional, and an absent one takes the server's
/// default (also on an update: a put replaces the whole configuration). Defaults: every
/// event, from the beginning, 30 s ack timeout, 5 attempts, exponential backoff 1 s to 60 s
/// with jitter, 1000 in flight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSettings {
    pub filter: Option<GroupFilter>,
    pub start: Option<GroupStart>,
    pub ack_timeout: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub backoff: Option<BackoffSettings>,
    pub max_in_flight: Option<u64>,
}

/// The backoff of [`GroupSettings`]; an absent field takes the server's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackoffSettings {
    pub kind: Option<BackoffKind>,
    pub initial: Option<Duration>,
    pub max: Option<Duration>,
    pub jitter: Option<bool>,
}

impl From<GroupConfig> for GroupSettings {
    /// The settings that put the configuration back as it is.
    fn from(c: GroupConfig) -> Self {
        Self {
            filter: Some(c.filter),
            start: Some(c.start),
            ack_timeout: Some(c.ack_timeout),
            max_attempts: Some(c.max_attempts),
            backoff: Some(BackoffSettings {
                kind: Some(c.backoff.kind),
                initial: Some(c.backoff.initial),
                max: Some(c.backoff.max),
                jitter: Some(c.backoff.jitter),
            }),
            max_in_flight: Some(c.max_in_flight),
        }
    }
}

/// A consumer that fetched from a group, and when it last did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupConsumer {
    pub name: String,
    pub last_seen: Timestamp,
}

/// A group's settings and figures.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Group {
    pub name: String,
    pub config: GroupConfig,
    /// Every matching event at or below this position is acked or parked.
    pub checkpoint: Position,
    /// Matching events not yet acked: in flight, waiting for a retry or not yet delivered.
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
    pub consumers: Vec<GroupConsumer>,
    pub created_at: Option<Timestamp>,
}

/// Whether a put made a new group or changed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated,
}

/// One leased event: settle it with [`Client::ack`] or [`Client::nack`] by its `lease`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Message {
    /// Opaque.
    pub lease: String,
    /// 1 for the first delivery (and the first after a replay).
    pub attempt: u32,
    pub event: RecordedEvent,
}

/// The answer to an ack or a nack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settled {
    /// Leases settled by this request.
    pub settled: usize,
    /// Leases no longer held (timed out, already settled, from before a restart): their
    /// events were or will be delivered again.
    pub expired: Vec<String>,
}

/// What a nack does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackAction {
    /// Deliver again after `delay`, or after the group's backoff; the event is parked after
    /// the group's `max_attempts` deliveries.
    Retry { delay: Option<Duration> },
    /// Park in the dead-letter queue now.
    Park,
}

/// A parked event.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// `None` when the event was deleted since it was parked.
    pub event: Option<RecordedEvent>,
    pub event_id: EventId,
    pub position: Position,
    pub stream: String,
    pub event_type: String,
    /// Deliveries made before it was parked.
    pub attempts: u32,
    /// The last nack's reason, or that the ack timed out.
    pub reason: String,
    pub parked_at: Timestamp,
}

/// A page of dead letters in log order; `next` is the `after` of the next page.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    pub next: Option<Position>,
}

/// Which dead letters a replay delivers again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replay {
    All,
    Events(Vec<EventId>),
}

impl Client {
    /// Creates the group, or replaces its settings.
    pub async fn put_group(&self, group: &str, settings: &GroupSettings) -> Result<(PutOutcome, Group)> {
        let body = wire::to_json(&GroupConfigWire::from(settings))?;
        let (status, answer) = self.group_call(Method::PUT, group, &[], &[], Some(body)).await?;
        let outcome = if status == StatusCode::CREATED { PutOutcome::Created } else { PutOutcome::Updated };
        Ok((outcome, wire::parse::<GroupWire>(&answer)?.into_group()?))
    }

    pub async fn get_group(&self, group: &str) -> Result<Group> {
        let (_, answer) = self.group_call(Method::GET, group, &[], &[], None).await?;
        wire::parse::<GroupWire>(&answer)?.into_group()
    }

    /// Every group, in name order.
    pub async fn list_groups(&self) -> Result<Vec<Group>> {
        self.check_open()?;
        let url = self.transport().url(&["v1", "groups"], &[]);
        let answer = self.transport().get(url).await?;
        let list: GroupListWire = wire::parse(&answer)?;
        list.groups.into_iter().map(GroupWire::into_group).collect()
    }

    pub async fn delete_group(&self, group: &str) -> Result<()> {
        self.group_call(Method::DELETE, group, &[], &[], None).await.map(drop)
    }

    /// Leases up to `max` events (capped at 1000 by the server), waiting up to `wait` for
    /// the first (a long poll, capped at 30 s by the server; zero answers at once).
    /// `consumer` names who fetches in the group's `consumers` (default `anonymous`).
    pub async fn fetch(
        &self,
        group: &str,
        max: usize,
        wait: Duration,
        consumer: Option<&str>,
    ) -> Result<Vec<Message>> {
        let mut query: Query = vec![("max", max.max(1).to_string()), ("wait", millis(wait).to_string())];
        if let Some(consumer) = consumer {
            query.push(("consumer", consumer.to_owned()));
        }
        let (_, answer) = self.group_call_within(Method::POST, group, &["fetch"], &query, None, wait).await?;
        let fetched: FetchWire<'_> = wire::parse(&answer)?;
        let mut names = bifrost_core::NameCache::default();
        fetched
            .messages
            .into_iter()
            .map(|m| {
                Ok(Message {
                    lease: m.lease,
                    attempt: m.attempt,
                    event: m.event.into_event(&answer, &mut names)?,
                })
            })
            .collect()
    }

    /// Acknowledges leased events: they are not delivered again.
    pub async fn ack(&self, group: &str, leases: &[String]) -> Result<Settled> {
        let body = wire::to_json(&LeasesWire { leases, action: None, delay_ms: None, reason: None })?;
        let (_, answer) = self.group_call(Method::POST, group, &["ack"], &[], Some(body)).await?;
        let settled: SettledWire = wire::parse(&answer)?;
        Ok(Settled { settled: settled.acked.unwrap_or_default(), expired: settled.expired })
    }

    /// Gives leased events back: to be delivered again, or parked.
    pub async fn nack(
        &self,
        group: &str,
        leases: &[String],
        action: NackAction,
        reason: Option<&str>,
    ) -> Result<Settled> {
        let (action, delay_ms) = match action {
            NackAction::Retry { delay } => ("retry", delay.map(millis)),
            NackAction::Park => ("park", None),
        };
        let body = wire::to_json(&LeasesWire { leases, action: Some(action), delay_ms, reason })?;
        let (_, answer) = self.group_call(Method::POST, group, &["nack"], &[], Some(body)).await?;
        let settled: SettledWire = wire::parse(&answer)?;
        Ok(Settled { settled: settled.nacked.unwrap_or(leases.len()), expired: settled.expired })
    }

    /// A page of the group's dead letters after position `after`, in log order.
    pub async fn dead_letters(
        &self,
        group: &str,
        after: Option<Position>,
        limit: usize,
    ) -> Result<DeadLetterPage> {
        let mut query: Query = vec![("limit", limit.max(1).to_string())];
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        let (_, answer) = self.group_call(Method::GET, group, &["dead-letters"], &query, None).await?;
        let page: DeadLettersWire<'_> = wire::parse(&answer)?;
        let mut names = bifrost_core::NameCache::default();
        let dead_letters = page
            .dead_letters
            .into_iter()
            .map(|d| {
                Ok(DeadLetter {
                    event: d.event.map(|e| e.into_event(&answer, &mut names)).transpose()?,
                    event_id: d.event_id,
                    position: d.position,
                    stream: d.stream,
                    event_type: d.event_type,
                    attempts: d.attempts,
                    reason: d.reason,
                    parked_at: d.parked_at,
                })
            })
            .collect::<Result<_>>()?;
        Ok(DeadLetterPage { dead_letters, next: page.next })
    }

    /// Delivers dead letters again, with fresh attempts; returns how many.
    pub async fn replay_dead_letters(&self, group: &str, which: &Replay) -> Result<usize> {
        let event_ids = match which {
            Replay::All => None,
            Replay::Events(ids) => Some(ids.as_slice()),
        };
        let body = wire::to_json(&ReplayWire { event_ids })?;
        let (_, answer) =
            self.group_call(Method::POST, group, &["dead-letters", "replay"], &[], Some(body)).await?;
        Ok(wire::parse::<ReplayedWire>(&answer)?.replayed)
    }

    /// Drops one dead letter: its event is not delivered again.
    pub async fn discard_dead_letter(&self, group: &str, event_id: EventId) -> Result<()> {
        let id = event_id.to_string();
        match self.group_call(Method::DELETE, group, &["dead-letters", &id], &[], None).await {
            Ok(_) => Ok(()),
            Err(Error::Problem(p)) if p.problem_type == "bifrost:dead-letter-not-found" => {
                Err(Error::DeadLetterNotFound { group: group.to_owned(), event_id })
            }
            Err(e) => Err(e),
        }
    }

    async fn group_call(
        &self,
        method: Method,
        group: &str,
        rest: &[&str],
        query: &[(&'static str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        self.group_call_within(method, group, rest, query, body, Duration::ZERO).await
    }

    /// A request under `/v1/groups/{group}`, allowed `extra` time beyond the timeout; an
    /// unknown group is [`Error::GroupNotFound`].
    async fn group_call_within(
        &self,
        method: Method,
        group: &str,
        rest: &[&str],
        query: &[(&'static str, String)],
        body: Option<Vec<u8>>,
        extra: Duration,
    ) -> Result<(StatusCode, Bytes)> {
        self.check_open()?;
        let mut segments = vec!["v1", "groups", group];
        segments.extend_from_slice(rest);
        let url = self.transport().url(&segments, query);
        let timeout = self.transport().timeout.saturating_add(extra);
        match self.transport().exchange(method, url, body, timeout).await {
            Err(Error::Problem(p)) if p.problem_type == "bifrost:group-not-found" => {
                Err(Error::GroupNotFound(group.to_owned()))
            }
            other => other,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------
// The JSON of the group routes

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StartWire {
    Beginning,
    End,
    Position(u64),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BackoffKindWire {
    Exponential,
    Fixed,
}

impl From<BackoffKind> for BackoffKindWire {
    fn from(k: BackoffKind) -> Self {
        match k {
            BackoffKind::Exponential => Self::Exponential,
            BackoffKind::Fixed => Self::Fixed,
        }
    }
}

impl From<BackoffKindWire> for BackoffKind {
    fn from(k: BackoffKindWire) -> Self {
        match k {
            BackoffKindWire::Exponential => Self::Exponential,
            BackoffKindWire::Fixed => Self::Fixed,
        }
    }
}

impl From<GroupStart> for StartWire {
    fn from(s: GroupStart) -> Self {
        match s {
            GroupStart::Beginning => Self::Beginning,
            GroupStart::End => Self::End,
            GroupStart::After(p) => Self::Position(p),
        }
    }
}

impl From<StartWire> for GroupStart {
    fn from(s: StartWire) -> Self {
        match s {
            StartWire::Beginning => Self::Beginning,
            StartWire::End => Self::End,
            StartWire::Position(p) => Self::After(p),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct FilterWire {
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    category: Option<String>,
}

/// `PUT /v1/groups/{group}` (absent fields left out) and the `config` of a group.
#[derive(Serialize)]
struct GroupConfigWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<FilterWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<StartWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ack_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff: Option<BackoffSettingsWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<u64>,
}

#[derive(Serialize)]
struct BackoffSettingsWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<BackoffKindWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initial_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jitter: Option<bool>,
}

impl From<&GroupSettings> for GroupConfigWire {
    fn from(s: &GroupSettings) -> Self {
        Self {
            filter: s
                .filter
                .as_ref()
                .map(|f| FilterWire { types: f.types.clone(), category: f.category.clone() }),
            start: s.start.map(StartWire::from),
            ack_timeout_ms: s.ack_timeout.map(millis),
            max_attempts: s.max_attempts,
            backoff: s.backoff.map(|b| BackoffSettingsWire {
                kind: b.kind.map(BackoffKindWire::from),
                initial_ms: b.initial.map(millis),
                max_ms: b.max.map(millis),
                jitter: b.jitter,
            }),
            max_in_flight: s.max_in_flight,
        }
    }
}

#[derive(Deserialize)]
struct BackoffWire {
    kind: BackoffKindWire,
    initial_ms: u64,
    max_ms: u64,
    jitter: bool,
}

#[derive(Deserialize)]
struct ShownConfigWire {
    filter: FilterWire,
    start: StartWire,
    ack_timeout_ms: u64,
    max_attempts: u32,
    backoff: BackoffWire,
    max_in_flight: u64,
}

#[derive(Deserialize)]
struct ConsumerWire {
    name: String,
    last_seen: Timestamp,
}

/// A group as `GET /v1/groups/{group}` shows it. Figures beyond the API contract's
/// (`waiting`, `redeliveries`, `timeouts`, `created_at`) may be absent.
#[derive(Deserialize)]
struct GroupWire {
    group: String,
    config: ShownConfigWire,
    checkpoint: u64,
    lag: u64,
    in_flight: u64,
    #[serde(default)]
    waiting: u64,
    parked: u64,
    #[serde(default)]
    redeliveries: u64,
    #[serde(default)]
    timeouts: u64,
    consumers: Vec<ConsumerWire>,
    #[serde(default)]
    created_at: Option<Timestamp>,
}

impl GroupWire {
    fn into_group(self) -> Result<Group> {
        let c = self.config;
        Ok(Group {
            name: self.group,
            config: GroupConfig {
                filter: GroupFilter { types: c.filter.types, category: c.filter.category },
                start: c.start.into(),
                ack_timeout: Duration::from_millis(c.ack_timeout_ms),
                max_attempts: c.max_attempts,
                backoff: Backoff {
                    kind: c.backoff.kind.into(),
                    initial: Duration::from_millis(c.backoff.initial_ms),
                    max: Duration::from_millis(c.backoff.max_ms),
                    jitter: c.backoff.jitter,
                },
                max_in_flight: c.max_in_flight,
            },
            checkpoint: self.checkpoint,
            lag: self.lag,
            in_flight: self.in_flight,
            waiting: self.waiting,
            parked: self.parked,
            redeliveries: self.redeliveries,
            timeouts: self.timeouts,
            consumers: self
                .consumers
                .into_iter()
                .map(|c| GroupConsumer { name: c.name, last_seen: c.last_seen })
                .collect(),
            created_at: self.created_at,
        })
    }
}

#[derive(Deserialize)]
struct GroupListWire {
    groups: Vec<GroupWire>,
}

#[derive(Deserialize)]
struct MessageWire<'a> {
    lease: String,
    attempt: u32,
    #[serde(borrow)]
    event: EventWire<'a>,
}

#[derive(Deserialize)]
struct FetchWire<'a> {
    #[serde(borrow)]
    messages: Vec<MessageWire<'a>>,
}

/// The body of an ack (`leases` only) or a nack.
#[derive(Serialize)]
struct LeasesWire<'a> {
    leases: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// The answer of an ack (`acked`) or a nack (`nacked`).
#[derive(Deserialize)]
struct SettledWire {
    #[serde(default)]
    acked: Option<usize>,
    #[serde(default)]
    nacked: Option<usize>,
    #[serde(default)]
    expired: Vec<String>,
}

#[derive(Deserialize)]
struct DeadLetterWire<'a> {
    #[serde(borrow)]
    event: Option<EventWire<'a>>,
    event_id: EventId,
    position: u64,
    stream: String,
    #[serde(rename = "type")]
    event_type: String,
    attempts: u32,
    reason: String,
    parked_at: Timestamp,
}

#[derive(Deserialize)]
struct DeadLettersWire<'a> {
    #[serde(borrow)]
    dead_letters: Vec<DeadLetterWire<'a>>,
    #[serde(default)]
    next: Option<u64>,
}

#[derive(Serialize)]
struct ReplayWire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    event_ids: Option<&'a [EventId]>,
}

#[derive(Deserialize)]
struct ReplayedWire {
    replayed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_send_only_what_is_set_in_milliseconds() {
        let settings = GroupSettings {
            filter: Some(GroupFilter { types: vec!["order.#".into()], category: Some("order".into()) }),
            start: Some(GroupStart::After(41)),
            ack_timeout: Some(Duration::from_secs(2)),
            backoff: Some(BackoffSettings { kind: Some(BackoffKind::Fixed), ..Default::default() }),
            ..Default::default()
        };
        let json = String::from_utf8(wire::to_json(&GroupConfigWire::from(&settings)).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"filter":{"types":["order.#"],"category":"order"},"start":{"position":41},"ack_timeout_ms":2000,"backoff":{"kind":"fixed"}}"#
        );
        assert_eq!(
            String::from_utf8(wire::to_json(&GroupConfigWire::from(&GroupSettings::default())).unwrap())
                .unwrap(),
            "{}"
        );
    }

    #[test]
    fn a_nack_names_its_action_and_only_the_options_given() {
        let leases = vec!["l1".to_owned()];
        let body = LeasesWire { leases: &leases, action: Some("retry"), delay_ms: Some(5), reason: None };
        assert_eq!(
            String::from_utf8(wire::to_json(&body).unwrap()).unwrap(),
            r#"{"leases":["l1"],"action":"retry","delay_ms":5}"#
        );
    }
}
