//! Consumer groups over HTTP: competing consumers lease events with `fetch`, settle them
//! with `ack` / `nack`, and manage what was parked in the dead-letter queue.
//!
//! Settings, figures and the answers of ack, nack and replay are the API's own types
//! ([`bifrost_api`], re-exported as [`crate::api`]); a fetch and the dead-letter queue
//! answer with their events decoded ([`RecordedEvent`]), as the store's reads do.

use std::time::Duration;

use bifrost_api::{
    AckBody, AckRequest, DeadLettersBody, FetchBody, GroupBody, GroupConfigRequest, GroupListBody, NackBody,
    NackRequest, ProblemType, ReplayBody, ReplayRequest,
};
use bifrost_core::{EventId, NameCache, Position, RecordedEvent, Timestamp};
use bytes::Bytes;
use reqwest::{Method, StatusCode};

use crate::client::{Client, Query};
use crate::error::{Error, Result};
use crate::wire;

/// Whether a put made a new group or changed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated,
}

/// One leased event, decoded: settle it with [`Client::ack`] or [`Client::nack`] by its
/// `lease`. (The answer's shape is [`bifrost_api::MessageBody`].)
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Message {
    /// Opaque.
    pub lease: String,
    /// 1 for the first delivery (and the first after a replay).
    pub attempt: u32,
    pub event: RecordedEvent,
}

/// A parked event, decoded. (The answer's shape is [`bifrost_api::DeadLetterBody`].)
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

impl Client {
    /// Creates the group, or replaces its settings (an absent field takes the server's
    /// default, also on an update: a put replaces the whole configuration; a group's
    /// `config` converts into the request that puts it back as it is).
    pub async fn put_group(
        &self,
        group: &str,
        settings: &GroupConfigRequest,
    ) -> Result<(PutOutcome, GroupBody)> {
        let body = wire::to_json(settings)?;
        let (status, answer) = self.group_call(Method::PUT, group, &[], &[], Some(body)).await?;
        let outcome = if status == StatusCode::CREATED { PutOutcome::Created } else { PutOutcome::Updated };
        Ok((outcome, wire::parse(&answer)?))
    }

    pub async fn get_group(&self, group: &str) -> Result<GroupBody> {
        let (_, answer) = self.group_call(Method::GET, group, &[], &[], None).await?;
        wire::parse(&answer)
    }

    /// Every group, in name order.
    pub async fn list_groups(&self) -> Result<Vec<GroupBody>> {
        self.check_open()?;
        let url = self.transport().url(&["v1", "groups"], &[]);
        let answer = self.transport().get(url).await?;
        Ok(wire::parse::<GroupListBody>(&answer)?.groups)
    }

    pub async fn delete_group(&self, group: &str) -> Result<()> {
        self.group_call(Method::DELETE, group, &[], &[], None).await.map(drop)
    }

    /// Leases up to `max` events (at least 1; capped at 1000 by the server), waiting up to
    /// `wait` for the first (a long poll, capped at 30 s by the server; zero answers at
    /// once). `consumer` names who fetches in the group's `consumers` (default
    /// `anonymous`).
    pub async fn fetch(
        &self,
        group: &str,
        max: usize,
        wait: Duration,
        consumer: Option<&str>,
    ) -> Result<Vec<Message>> {
        let mut query: Query = vec![("max", max.to_string()), ("wait", millis(wait).to_string())];
        if let Some(consumer) = consumer {
            query.push(("consumer", consumer.to_owned()));
        }
        let (_, answer) = self.group_call_within(Method::POST, group, &["fetch"], &query, None, wait).await?;
        let fetched: FetchBody<'_> = wire::parse(&answer)?;
        let mut names = NameCache::default();
        fetched
            .messages
            .into_iter()
            .map(|m| {
                Ok(Message {
                    lease: m.lease,
                    attempt: m.attempt,
                    event: wire::event(&answer, m.event, &mut names)?,
                })
            })
            .collect()
    }

    /// Acknowledges leased events: they are not delivered again. `expired` names the
    /// leases the group no longer held.
    pub async fn ack(&self, group: &str, leases: &[String]) -> Result<AckBody> {
        let body = wire::to_json(&AckRequest { leases: leases.to_vec() })?;
        let (_, answer) = self.group_call(Method::POST, group, &["ack"], &[], Some(body)).await?;
        wire::parse(&answer)
    }

    /// Gives leased events back: to be delivered again, or parked.
    pub async fn nack(&self, group: &str, request: &NackRequest) -> Result<NackBody> {
        let body = wire::to_json(request)?;
        let (_, answer) = self.group_call(Method::POST, group, &["nack"], &[], Some(body)).await?;
        wire::parse(&answer)
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
        let page: DeadLettersBody<'_> = wire::parse(&answer)?;
        let mut names = NameCache::default();
        let dead_letters = page
            .dead_letters
            .into_iter()
            .map(|d| {
                Ok(DeadLetter {
                    event: d.event.map(|e| wire::event(&answer, e, &mut names)).transpose()?,
                    event_id: d.event_id,
                    position: d.position,
                    stream: d.stream,
                    event_type: d.event_type,
                    attempts: d.attempts,
                    reason: d.reason,
                    parked_at: wire::timestamp(&d.parked_at)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(DeadLetterPage { dead_letters, next: page.next })
    }

    /// Delivers dead letters again, with fresh attempts ([`ReplayRequest::all`], or
    /// [`ReplayRequest::events`]).
    pub async fn replay_dead_letters(&self, group: &str, request: &ReplayRequest) -> Result<ReplayBody> {
        let body = wire::to_json(request)?;
        let (_, answer) =
            self.group_call(Method::POST, group, &["dead-letters", "replay"], &[], Some(body)).await?;
        wire::parse(&answer)
    }

    /// Drops one dead letter: its event is not delivered again.
    pub async fn discard_dead_letter(&self, group: &str, event_id: EventId) -> Result<()> {
        let id = event_id.to_string();
        match self.group_call(Method::DELETE, group, &["dead-letters", &id], &[], None).await {
            Ok(_) => Ok(()),
            Err(Error::Problem(p)) if p.kind() == Some(ProblemType::DeadLetterNotFound) => {
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
            Err(Error::Problem(p)) if p.kind() == Some(ProblemType::GroupNotFound) => {
                Err(Error::GroupNotFound(group.to_owned()))
            }
            other => other,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
