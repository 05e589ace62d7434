//! Bifrost's core: the event model, the [`EventStore`] contract every backend implements,
//! AMQP-style type patterns, the consumer-group model and its engine contract, an in-memory store and (feature `testkit`) the conformance
//! suite that every backend runs.
//!
//! This crate does no I/O. Backends own their drivers; the server owns the wire JSON. What
//! only backends use (shared rules, group planning, row decoding) is under [`backend`].

pub mod backend;
pub mod cluster;
pub mod error;
pub mod event;
pub mod group;
pub mod json_out;
pub mod lease;
pub mod memory;
pub mod name;
pub mod pattern;
pub mod state;
pub mod store;
pub mod subscription;
pub mod tenant;
pub mod timestamp;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::{Error, Result, VersionConflict};
pub use event::{EventId, Metadata, NewEvent, RecordedEvent};
pub use memory::InMemoryStore;
pub use name::{Category, EventType, NameCache, StreamName};
pub use pattern::TypePattern;
pub use state::{DurableStore, MemoryState, StateChange, StateEntry, StateStore};
pub use store::{
    AppendResult, DeleteMode, Direction, EventStore, ExpectedVersion, LogFilter, LogSlice, Position,
    StreamAppend, StreamInfo, StreamListQuery, StreamListing, StreamSlice, StreamSummary, SubscribeFrom,
    Version,
};
pub use subscription::EventStream;
pub use tenant::TenantScope;
pub use timestamp::Timestamp;
