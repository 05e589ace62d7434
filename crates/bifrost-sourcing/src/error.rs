//! The toolkit's one error type.

use bifrost_core::{Error as CoreError, EventId, StreamName};

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

    /// Whether trying again later may succeed (the store was unavailable or failed, or a
    /// writer kept winning), as opposed to a refusal, bad input, stored data that does not
    /// decode or a broken invariant, which fail the same way again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(e) => match e {
                CoreError::Unavailable(_)
                | CoreError::Storage { .. }
                | CoreError::WrongExpectedVersion(_) => true,
                CoreError::InvalidStreamName { .. }
                | CoreError::InvalidEventType { .. }
                | CoreError::InvalidArgument(_)
                | CoreError::DuplicateEventId { .. }
                | CoreError::StreamNotFound(_)
                | CoreError::StreamDeleted(_)
                | CoreError::GroupNotFound(_)
                | CoreError::OutOfRange(_)
                | CoreError::StateConflict { .. }
                | CoreError::Corrupt { .. }
                | CoreError::Internal(_) => false,
            },
            Self::Conflict { .. } => true,
            Self::Rejected(_)
            | Self::Invalid { .. }
            | Self::UnknownCommand(_)
            | Self::DuplicateHandler(_)
            | Self::Decode { .. }
            | Self::Upcast { .. }
            | Self::Encode { .. }
            | Self::Corrupt { .. }
            | Self::Handler(_) => false,
        }
    }

    /// Whether this is a fault that no retry and no deploy of the reader's code can get
    /// past: stored data that does not decode, or a broken invariant of the store. A loop
    /// that meets one stops and reports it instead of retrying forever.
    pub fn is_fault(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::Store(CoreError::Corrupt { .. } | CoreError::Internal(_)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store(e: CoreError) -> Error {
        Error::Store(e)
    }

    #[test]
    fn only_failures_a_retry_can_get_past_are_transient_and_faults_are_not() {
        let stream = || StreamName::new("s-1").unwrap_or_else(|e| panic!("{e}"));
        // (error, transient, fault)
        let cases = [
            (store(CoreError::Unavailable("down".into())), true, false),
            (store(CoreError::Storage { message: "disk full".into(), source: None }), true, false),
            (store(CoreError::WrongExpectedVersion(Vec::new())), true, false),
            (Error::Conflict { stream: stream(), attempts: 3 }, true, false),
            (store(CoreError::Corrupt { message: "bad row".into(), source: None }), false, true),
            (store(CoreError::Internal("no result".into())), false, true),
            (Error::corrupt("checkpoint c", "not 8 bytes"), false, true),
            (store(CoreError::StateConflict { scope: "s".into(), key: "k".into() }), false, false),
            (store(CoreError::InvalidArgument("bad".into())), false, false),
            (store(CoreError::StreamNotFound(stream())), false, false),
            (store(CoreError::GroupNotFound("g".into())), false, false),
            (Error::Handler("down".into()), false, false),
            (Error::UnknownCommand("c".into()), false, false),
        ];
        for (error, transient, fault) in cases {
            assert_eq!((error.is_transient(), error.is_fault()), (transient, fault), "{error:?}");
        }
    }
}
