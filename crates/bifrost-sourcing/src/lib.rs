//! Bifrost's event-sourcing toolkit, written against the [`EventStore`](bifrost_core::EventStore)
//! contract so the same code runs on the embedded store, on PostgreSQL and against a remote
//! server through `bifrost-client`.
//!
//! - [`Aggregate`]: pure `decide` (command → events or a refusal) and `evolve` (fold).
//! - [`Repository`]: load from a snapshot plus newer events, execute a command with the
//!   loaded version as the expected version, retry on conflict; [`Repository::prepare`]
//!   gives the append for an application's own database transaction (the outbox).
//! - [`Upcasters`]: old event schemas rewritten on the way in, on every read path.
//! - [`CommandBus`]: one handler per command type, validation, dispatch, typed or as data.
//! - [`ProjectionRunner`]: checkpointed read models fed from the log, idempotent by
//!   position, rebuilt by replay; [`ViewProjection`] keeps keyed views in the store.
//! - [`SagaManager`]: process managers with durable state (a stream per instance),
//!   commands, compensation and timeouts that survive restarts.
//! - [`testing`]: given / when / then for aggregates and sagas.
//!
//! Bookkeeping (snapshots, checkpoints, views, saga timeouts) lives in a
//! [`StateStore`](bifrost_core::StateStore), which every Bifrost backend is.

pub mod aggregate;
mod checkpoint;
pub mod clock;
pub mod command;
pub mod error;
pub mod event;
pub mod projection;
pub mod repository;
pub mod saga;
pub mod snapshot;
pub mod testing;
pub mod upcast;
pub mod view;

pub use aggregate::Aggregate;
pub use clock::{Clock, ManualClock, SystemClock};
pub use command::{AggregateCommand, Command, CommandBus, CommandEnvelope, CommandHandler};
pub use error::{BoxError, Error, Result};
pub use event::DomainEvent;
pub use projection::{Projection, ProjectionRunner, ProjectionStatus, RunningProjection};
pub use repository::{CommandContext, Executed, Loaded, Prepared, Repository};
pub use saga::{Parked, Reaction, RunningSaga, Saga, SagaManager, SagaStatus, Timeout};
pub use snapshot::{Snapshot, SnapshotStore, StateSnapshots};
pub use upcast::Upcasters;
pub use view::{View, ViewProjection};
