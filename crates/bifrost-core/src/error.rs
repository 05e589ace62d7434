//! The one error type of the store contract. Backends keep driver detail as the `source`.

use std::fmt;

use uuid::Uuid;

use crate::name::StreamName;
use crate::store::{ExpectedVersion, Version};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a stream's expected version did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionConflict {
    pub stream: StreamName,
    pub expected: ExpectedVersion,
    /// The stream's actual version; `None` when it does not exist (or was soft-deleted).
    pub actual: Option<Version>,
}

impl fmt::Display for VersionConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.actual {
            Some(v) => write!(f, "stream {} expected {} but is at version {v}", self.stream, self.expected),
            None => write!(f, "stream {} expected {} but does not exist", self.stream, self.expected),
        }
    }
}

/// Every failure of the store contract. Deliberately exhaustive: code in this workspace that
/// turns these into something else (HTTP answers, retry decisions) matches every variant,
/// so a new one cannot slip through a catch-all arm.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidStreamName { name: String, reason: String },

    #[error("invalid event type {name:?}: {reason}")]
    InvalidEventType { name: String, reason: String },

    #[error("{0}")]
    InvalidArgument(String),

    /// One entry per stream whose expected version failed; nothing was stored.
    #[error("wrong expected version: {}", display_conflicts(.0))]
    WrongExpectedVersion(Vec<VersionConflict>),

    /// The id is already stored for a different event (or at a different place).
    #[error("event id {id} is already used by a different event")]
    DuplicateEventId { id: Uuid },

    #[error("stream {0} not found")]
    StreamNotFound(StreamName),

    /// The stream was hard-deleted: its name can never be written or read again.
    #[error("stream {0} was deleted permanently")]
    StreamDeleted(StreamName),

    /// No consumer group (or durable consumer) of that name exists in the store.
    #[error("consumer group {0} not found")]
    GroupNotFound(String),

    /// A read started beyond the end of the stream or of the log.
    #[error("{0}")]
    OutOfRange(String),

    /// A state write's expectation ([`StateChange::Expect`](crate::StateChange::Expect)) did
    /// not hold: another writer changed the key first. Nothing was written.
    #[error("state {scope}/{key} does not hold the expected value: another writer changed it")]
    StateConflict { scope: String, key: String },

    /// The store is closed or shutting down.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),

    /// A failure of the backend's I/O or driver (a full disk, a failed query, a commit that
    /// did not go through). Trying again may succeed.
    #[error("storage error: {message}")]
    Storage {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// Stored data that does not decode: the store holds something this version of Bifrost
    /// never writes (or, through a client, the server answered what the API does not
    /// describe). Trying again reads the same bytes and fails the same way.
    #[error("{message}")]
    Corrupt {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// A broken internal invariant: a bug, not bad input or a failing disk.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn storage(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Storage { message: message.into(), source: Some(Box::new(source)) }
    }

    /// Stored data that does not decode, with the decoder's complaint as the source.
    pub fn corrupt(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Corrupt { message: message.into(), source: Some(Box::new(source)) }
    }
}

fn display_conflicts(conflicts: &[VersionConflict]) -> String {
    conflicts.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
