//! Consumer groups: the model, and the contract every group engine keeps.
//!
//! A consumer group reads the log from a checkpoint and hands its matching events to
//! competing consumers as leases. A lease is acked (done), nacked (retried after a delay,
//! or parked) or times out (a failed attempt, retried after the backoff); after
//! `max_attempts` failed deliveries an event is parked in the group's dead-letter queue.
//! While an event of a stream is leased or waiting for a retry, no later event of that
//! stream is handed out (unless the group is not `ordered`: then each event stands on its
//! own). Everything a group knows (checkpoint, leases, attempts, retries,
//! dead letters) is durable: an acked event is never delivered again, an unacked one always
//! is.
//!
//! Two engines keep this contract (and both run [`group_conformance_suite!`]):
//! `bifrost-bus` runs groups inside one process from the store's state space (the embedded
//! and in-memory stores, which one process opens at a time), and a backend whose database
//! several processes share offers its own through [`StateStore::shared_groups`]
//! (PostgreSQL: leases are rows, so any node can hand out, ack and expire them).
//!
//! [`StateStore::shared_groups`]: crate::StateStore::shared_groups
//! [`group_conformance_suite!`]: crate::group_conformance_suite

mod config;
mod lease;
pub mod random;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{EventId, Position, RecordedEvent, Result, Timestamp};

pub use config::{
    Backoff, BackoffKind, GroupConfig, GroupFilter, GroupName, MAX_DELAY, MAX_GROUP_NAME_LEN, MAX_IN_FLIGHT,
    StartFrom,
};
pub use lease::LeaseToken;

/// The name spaces of groups in one store: the HTTP API's consumer groups, the in-process
/// bus's durable consumers and the webhook endpoints. A name means different groups in each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupKind {
    /// A consumer group of the HTTP API (`/v1/groups/{group}`).
    Group,
    /// A durable consumer of the in-process bus (`Bus::consumer(name, …)`).
    Consumer,
    /// A webhook endpoint's delivery (`/v1/webhooks/{id}`), named by the endpoint's id.
    Webhook,
}

impl GroupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::Consumer => "consumer",
            Self::Webhook => "webhook",
        }
    }
}

/// Whether [`GroupEngine::put`] created the group or changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Created,
    Updated,
}

/// A leased event, as handed to a consumer.
#[derive(Clone, Debug)]
pub struct Lease {
    /// Names the lease in acks and nacks, through any node.
    pub token: LeaseToken,
    /// 1 for the first delivery; every delivery counts, including one that was still out
    /// when a process died.
    pub attempt: u32,
    pub event: RecordedEvent,
}

/// What a fetch asks for.
#[derive(Clone, Copy, Debug)]
pub struct Fetch<'a> {
    /// Who fetches, shown in the group's status.
    pub consumer: &'a str,
    /// Most events to lease.
    pub max: usize,
    /// Up to this many consecutive events of one stream together (batch handlers, which
    /// settle a batch as one); 1 hands out each stream's events one at a time.
    pub per_stream: usize,
    /// How long to wait for a first event.
    pub wait: Duration,
    /// `false`: the leases are recorded in the store before the fetch returns, so a crash
    /// cannot lose their attempt. `true` (in-process consumers, for speed): they are
    /// recorded with the group's next write; a delivery that crashes the process is still
    /// counted on its next attempt (see the engine's documentation).
    pub deferred: bool,
}

impl<'a> Fetch<'a> {
    /// One event at a time per stream, recorded before the fetch returns.
    pub fn new(consumer: &'a str, max: usize, wait: Duration) -> Self {
        Self { consumer, max, per_stream: 1, wait, deferred: false }
    }
}

/// What happens to nacked leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackAction {
    /// Redeliver after this delay, or after the group's backoff when `None`; parked once
    /// the group's `max_attempts` deliveries have failed.
    Retry(Option<Duration>),
    /// Park in the dead-letter queue now.
    Park,
    /// Hand the event back without a failed delivery: it is delivered again after this
    /// delay with the same attempt number, and never parked for it (a consumer that could
    /// not try, such as a webhook endpoint disabled meanwhile).
    Release(Duration),
}

/// What a consumer says about leased events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    Ack,
    Nack(NackAction, Option<&'a str>),
}

/// The answer to an ack or nack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Leases that were held and are now settled.
    pub count: usize,
    /// Leases that were not held (expired, already settled, or of a group run that ended),
    /// in the order given.
    pub expired: Vec<LeaseToken>,
}

/// What a group reports about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupStatus {
    pub name: GroupName,
    pub config: GroupConfig,
    pub created_at: Timestamp,
    /// Every matching event at or below it is acked or parked.
    pub checkpoint: Position,
    /// Matching events not yet acked (in flight, waiting for a retry, or not yet
    /// delivered); parked ones excluded.
    pub lag: u64,
    pub in_flight: u64,
    pub waiting: u64,
    pub parked: u64,
    /// Deliveries after a failed one (engine-wide or since this node started; see the engine).
    pub redeliveries: u64,
    /// Leases that timed out.
    pub timeouts: u64,
    /// Consumers that fetched, with when they last did, in name order.
    pub consumers: Vec<(String, Timestamp)>,
}

/// An event that failed for the last time, kept in the group's dead-letter queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub event_id: EventId,
    pub position: Position,
    pub stream: String,
    pub event_type: String,
    pub attempts: u32,
    pub reason: String,
    pub parked_at: Timestamp,
}

/// A dead letter with its event (`None` when the event was deleted since).
#[derive(Clone, Debug)]
pub struct DeadLetterEntry {
    pub dead_letter: DeadLetter,
    pub event: Option<RecordedEvent>,
}

/// Which dead letters to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplaySelection {
    All,
    Ids(Vec<EventId>),
    /// Those at or below this position.
    UpTo(Position),
}

/// The reason a lease that timed out is given, in its dead letter if it was the last attempt.
pub fn timeout_reason(ack_timeout: Duration) -> String {
    format!("the ack timed out after {} ms", ack_timeout.as_millis())
}

/// The reason of a nack that gives none.
pub const NACKED: &str = "nacked by the consumer";

/// The consumer groups of one kind in one store. Every call names its group; an unknown
/// name is [`Error::GroupNotFound`](crate::Error::GroupNotFound).
#[async_trait]
pub trait GroupEngine: Send + Sync + 'static {
    /// Creates a group, or changes an existing one's settings (`start` counts only at
    /// creation). A changed filter applies from the checkpoint on: nothing settled is
    /// delivered again, events that no longer match are dropped (their leases end),
    /// events above the checkpoint that newly match are delivered.
    async fn put(&self, name: &GroupName, config: GroupConfig) -> Result<Put>;

    /// The group's settings and figures.
    async fn status(&self, name: &GroupName) -> Result<GroupStatus>;

    /// Every group's name, in name order.
    async fn list(&self) -> Result<Vec<GroupName>>;

    /// Removes a group with its checkpoint, leases and dead letters.
    async fn delete(&self, name: &GroupName) -> Result<()>;

    /// Leases up to `fetch.max` events, waiting up to `fetch.wait` for the first one.
    async fn fetch(&self, name: &GroupName, fetch: Fetch<'_>) -> Result<Vec<Lease>>;

    /// Acks or nacks leases. With `deferred` false it is durable when it returns; with
    /// `deferred` true it is written with the group's next write (an in-process consumer,
    /// which accepts a redelivery after a crash).
    async fn settle(
        &self,
        name: &GroupName,
        leases: &[LeaseToken],
        verdict: Verdict<'_>,
        deferred: bool,
    ) -> Result<Settled>;

    /// Dead letters in log order, after `after` (exclusive), up to `limit`.
    async fn dead_letters(
        &self,
        name: &GroupName,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>>;

    /// Delivers dead letters again with fresh attempts. Returns how many were replayed;
    /// dead letters whose event was deleted meanwhile are dropped, not replayed.
    async fn replay(&self, name: &GroupName, selection: ReplaySelection) -> Result<usize>;

    /// Removes one dead letter. `false` when the group has none for that event.
    async fn discard(&self, name: &GroupName, id: EventId) -> Result<bool>;

    /// Stops the engine's work in this process, writing what is not written yet. Fetches in
    /// progress end; leases still out stay leased until they are acked or time out.
    async fn close(&self) -> Result<()>;
}
