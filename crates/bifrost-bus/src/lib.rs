//! Bifrost's delivery engine. Everything that reacts to events reads the store's log from a
//! checkpoint; this crate is that reading, done once for every backend:
//!
//! - [`ConsumerGroup`]: a consumer group run in this process (the model and contract are
//!   [`bifrost_core::group`]): competing consumers lease events, ack or nack them; failed
//!   ones are retried with backoff and parked in a dead-letter queue after the last
//!   attempt; events of one stream are handed out one at a time, in order. Its state
//!   (checkpoint, leases, attempts, retries, dead letters) lives in the store's
//!   [`StateStore`](bifrost_core::StateStore).
//! - [`groups::open`]: the named groups of a store, as the server's consumer-group API uses
//!   them — the store's own shared engine when its database is shared by several processes
//!   (PostgreSQL), else [`LocalGroups`].
//! - [`Bus`]: the in-process bus for Rust programs — pattern subscriptions and durable named
//!   consumers with retry policies, bounded concurrency and batch handlers, all running on
//!   a consumer group — plus a [`TransientBus`] for messages that are never stored.

pub mod bus;
pub mod group;
pub mod groups;
mod ledger;
pub mod transient;

pub use bifrost_core::group::{
    Backoff, BackoffKind, DeadLetter, DeadLetterEntry, Fetch, GroupConfig, GroupEngine, GroupFilter,
    GroupKind, GroupName, GroupStatus, Lease, LeaseToken, NackAction, Put, ReplaySelection, Settled,
    StartFrom, Verdict,
};
pub use bus::{
    BatchHandler, BatchOptions, Bus, ConsumerOptions, Handler, HandlerError, RetryPolicy, Subscription,
    SubscriptionGroup,
};
pub use group::ConsumerGroup;
pub use groups::LocalGroups;
pub use transient::{TransientBus, TransientMessage, TransientSubscription};
