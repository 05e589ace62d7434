//! Bifrost's delivery engine. Everything that reacts to events reads the store's log from a
//! checkpoint; this crate is that reading, done once for every backend:
//!
//! - [`ConsumerGroup`]: competing consumers lease events, ack or nack them; failed ones
//!   are retried with backoff and parked in a dead-letter queue after the last attempt;
//!   events of one stream are handed out one at a time, in order. Its state (checkpoint,
//!   attempts, retries, dead letters) lives in the store's [`StateStore`](bifrost_core::StateStore).
//! - [`Groups`]: the named groups of a store, as the server's consumer-group API uses them.
//! - [`Bus`]: the in-process bus for Rust programs — pattern subscriptions and durable named
//!   consumers with retry policies, bounded concurrency and batch handlers, all running on
//!   a consumer group — plus a [`TransientBus`] for messages that are never stored.

pub mod bus;
pub mod config;
pub mod group;
pub mod groups;
pub mod ledger;
mod random;
pub mod transient;

pub use bus::{
    BatchHandler, BatchOptions, Bus, ConsumerOptions, Handler, HandlerError, RetryPolicy, Subscription,
};
pub use config::{Backoff, BackoffKind, GroupConfig, GroupFilter, GroupName, StartFrom};
pub use group::{ConsumerGroup, DeadLetterEntry, GroupStatus, Lease, ReplaySelection, Settled};
pub use groups::{Groups, Put};
pub use ledger::{DeadLetter, NackAction};
pub use transient::{TransientBus, TransientMessage, TransientSubscription};
