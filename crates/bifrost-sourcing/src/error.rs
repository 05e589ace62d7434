//! The toolkit's one error type.

use bifrost_core::{EventId, StreamName};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A domain error, boxed so that one error type can carry every aggregate's own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store refused or failed (including a wrong expected version outside a retry loop).
    #[error(transparent)]
    Store(#[from] bifrost_core::Error),

    /// The aggregate (or a command handler) refused the command; the domain error is the
    /// source, reachable with [`Error::rejection`].
    #[error("command rejected: {0}")]
    Rejected(#[source] BoxError),

    /// A command failed validation before it reached its handler.
    #[error("invalid {command} command: {reason}")]
    Invalid { command: String, reason: String },

    /// No handler is registered for this command type.
    #[error("no handler is registered for command type {0:?}")]
    UnknownCommand(String),

    /// A second handler was registered for a command type.
    #[error("a handler for command type {0:?} is already registered")]
    DuplicateHandler(String),

    /// Every attempt met a concurrent writer.
    #[error("stream {stream} kept changing under the command: gave up after {attempts} attempts")]
    Conflict { stream: StreamName, attempts: u32 },

    /// A stored event could not be turned into the typed event (after upcasting).
    #[error("event {id} ({event_type} v{schema_version}) does not decode: {reason}")]
    Decode { id: EventId, event_type: String, schema_version: u32, reason: String },

    /// An upcaster failed.
    #[error("upcasting {event_type} v{from_version}: {reason}")]
    Upcast { event_type: String, from_version: u32, reason: String },

    /// A value could not be encoded (an event, a command, a snapshot, a view).
    #[error("cannot encode {what}: {reason}")]
    Encode { what: String, reason: String },

    /// Bookkeeping (a checkpoint, a snapshot, a view, a saga timeout) did not decode.
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt { what: String, reason: String },

    /// A handler failed for a reason other than refusing the command.
    #[error("handler failed: {0}")]
    Handler(#[source] BoxError),
}

impl Error {
    /// Wraps a domain error as a refusal.
    pub fn rejected(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Rejected(Box::new(error))
    }

    /// The domain error of a refusal, when it is an `E`.
    pub fn rejection<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Self::Rejected(error) => error.downcast_ref(),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (the store was unavailable or a writer kept
    /// winning), as opposed to a refusal or bad input that will fail the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(e) => matches!(
                e,
                bifrost_core::Error::Unavailable(_)
                    | bifrost_core::Error::Storage { .. }
                    | bifrost_core::Error::WrongExpectedVersion(_)
            ),
            Self::Conflict { .. } => true,
            _ => false,
        }
    }

    /// Whether the command was refused (by its aggregate, its validation, or for want of a
    /// handler): what a saga compensates, as opposed to a failure to retry.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Rejected(_) | Self::Invalid { .. } | Self::UnknownCommand(_))
    }

    pub(crate) fn encode(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Encode { what: what.into(), reason: reason.to_string() }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Corrupt { what: what.into(), reason: reason.to_string() }
    }
}
