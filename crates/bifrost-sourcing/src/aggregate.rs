//! Aggregates: a pure decision function and a pure fold.

use bifrost_core::{Category, StreamName};

use crate::error::Result;
use crate::event::DomainEvent;

/// An event-sourced aggregate. `Self` is its state; the store holds only its events.
///
/// Both functions are pure: `decide` looks at the state and a command and answers with new
/// events (or refuses), `evolve` folds one event into the state. Loading is
/// `events.fold(Self::default(), evolve)`; executing a command is `decide`, then append
/// with the loaded version as the expected version.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The aggregate type, used as the category of its streams (`account-42` for id `42`).
    /// It must be a valid stream name without `-`.
    const TYPE: &'static str;

    type Event: DomainEvent;
    type Command: Send + Sync + 'static;
    /// Why a command is refused. Comes back to the caller inside [`crate::Error::Rejected`].
    type Error: std::error::Error + Send + Sync + 'static;

    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    fn evolve(self, event: &Self::Event) -> Self;

    /// The stream of the aggregate with this id. Refuses a `TYPE` with a `-`: its streams
    /// would fall in another category.
    fn stream(id: &str) -> Result<StreamName> {
        Category::new(Self::TYPE)?;
        Ok(StreamName::new(&format!("{}-{id}", Self::TYPE))?)
    }
}
