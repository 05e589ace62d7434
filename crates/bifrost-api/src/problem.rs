//! Error answers: RFC 9457 problem documents (`application/problem+json`) with a stable
//! `type`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::streams::ExpectedVersion;

/// The stable problem types of the API. Each `type` URI is a promise to clients: it is
/// never changed, and never reused for another meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemType {
    InvalidRequest,
    UnsupportedMediaType,
    InvalidStreamName,
    InvalidEventType,
    InvalidArgument,
    OutOfRange,
    WrongExpectedVersion,
    DuplicateEventId,
    StateConflict,
    StreamNotFound,
    StreamDeleted,
    EventNotFound,
    GroupNotFound,
    DeadLetterNotFound,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    Unavailable,
    Internal,
    WebhookNotFound,
    MessageNotFound,
    WebhookDisabled,
    WebhookUrlForbidden,
    BridgeNotFound,
    Unauthorized,
    BridgeConfigManaged,
    Forbidden,
    RateLimited,
    KeyNotFound,
    SchemaNotFound,
    SchemaExists,
    SchemaIncompatible,
    InvalidSchema,
    SchemaViolation,
    SchemaNotRegistered,
}

impl ProblemType {
    /// Every problem type, in the order above.
    pub const ALL: [ProblemType; 35] = [
        Self::InvalidRequest,
        Self::UnsupportedMediaType,
        Self::InvalidStreamName,
        Self::InvalidEventType,
        Self::InvalidArgument,
        Self::OutOfRange,
        Self::WrongExpectedVersion,
        Self::DuplicateEventId,
        Self::StateConflict,
        Self::StreamNotFound,
        Self::StreamDeleted,
        Self::EventNotFound,
        Self::GroupNotFound,
        Self::DeadLetterNotFound,
        Self::PayloadTooLarge,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Unavailable,
        Self::Internal,
        Self::WebhookNotFound,
        Self::MessageNotFound,
        Self::WebhookDisabled,
        Self::WebhookUrlForbidden,
        Self::BridgeNotFound,
        Self::Unauthorized,
        Self::BridgeConfigManaged,
        Self::Forbidden,
        Self::RateLimited,
        Self::KeyNotFound,
        Self::SchemaNotFound,
        Self::SchemaExists,
        Self::SchemaIncompatible,
        Self::InvalidSchema,
        Self::SchemaViolation,
        Self::SchemaNotRegistered,
    ];

    /// The `type` member, e.g. `bifrost:wrong-expected-version`.
    pub fn uri(self) -> &'static str {
        match self {
            Self::InvalidRequest => "bifrost:invalid-request",
            Self::UnsupportedMediaType => "bifrost:unsupported-media-type",
            Self::InvalidStreamName => "bifrost:invalid-stream-name",
            Self::InvalidEventType => "bifrost:invalid-event-type",
            Self::InvalidArgument => "bifrost:invalid-argument",
            Self::OutOfRange => "bifrost:out-of-range",
            Self::WrongExpectedVersion => "bifrost:wrong-expected-version",
            Self::DuplicateEventId => "bifrost:duplicate-event-id",
            Self::StateConflict => "bifrost:state-conflict",
            Self::StreamNotFound => "bifrost:stream-not-found",
            Self::StreamDeleted => "bifrost:stream-deleted",
            Self::EventNotFound => "bifrost:event-not-found",
            Self::GroupNotFound => "bifrost:group-not-found",
            Self::DeadLetterNotFound => "bifrost:dead-letter-not-found",
            Self::PayloadTooLarge => "bifrost:payload-too-large",
            Self::NotFound => "bifrost:not-found",
            Self::MethodNotAllowed => "bifrost:method-not-allowed",
            Self::Unavailable => "bifrost:unavailable",
            Self::Internal => "bifrost:internal",
            Self::WebhookNotFound => "bifrost:webhook-not-found",
            Self::MessageNotFound => "bifrost:message-not-found",
            Self::WebhookDisabled => "bifrost:webhook-disabled",
            Self::WebhookUrlForbidden => "bifrost:webhook-url-forbidden",
            Self::BridgeNotFound => "bifrost:bridge-not-found",
            Self::Unauthorized => "bifrost:unauthorized",
            Self::BridgeConfigManaged => "bifrost:bridge-config-managed",
            Self::Forbidden => "bifrost:forbidden",
            Self::RateLimited => "bifrost:rate-limited",
            Self::KeyNotFound => "bifrost:key-not-found",
            Self::SchemaNotFound => "bifrost:schema-not-found",
            Self::SchemaExists => "bifrost:schema-exists",
            Self::SchemaIncompatible => "bifrost:schema-incompatible",
            Self::InvalidSchema => "bifrost:invalid-schema",
            Self::SchemaViolation => "bifrost:schema-violation",
            Self::SchemaNotRegistered => "bifrost:schema-not-registered",
        }
    }

    /// The HTTP status of an answer of this type.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest
            | Self::InvalidStreamName
            | Self::InvalidEventType
            | Self::InvalidArgument
            | Self::OutOfRange
            | Self::InvalidSchema => 400,
            Self::StreamNotFound
            | Self::EventNotFound
            | Self::GroupNotFound
            | Self::DeadLetterNotFound
            | Self::WebhookNotFound
            | Self::MessageNotFound
            | Self::BridgeNotFound
            | Self::KeyNotFound
            | Self::SchemaNotFound
            | Self::NotFound => 404,
            Self::Unauthorized => 401,
            Self::MethodNotAllowed => 405,
            Self::WrongExpectedVersion
            | Self::DuplicateEventId
            | Self::StateConflict
            | Self::WebhookDisabled
            | Self::BridgeConfigManaged
            | Self::SchemaExists
            | Self::SchemaIncompatible => 409,
            Self::StreamDeleted => 410,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::WebhookUrlForbidden | Self::SchemaViolation | Self::SchemaNotRegistered => 422,
            Self::Forbidden => 403,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    /// The `title` member: the same for every answer of this type.
    pub fn title(self) -> &'static str {
        match self {
            Self::InvalidRequest => "The request is malformed",
            Self::UnsupportedMediaType => "The body must be application/json",
            Self::InvalidStreamName => "Invalid stream name",
            Self::InvalidEventType => "Invalid event type",
            Self::InvalidArgument => "Invalid argument",
            Self::OutOfRange => "Out of range",
            Self::WrongExpectedVersion => "Wrong expected version",
            Self::DuplicateEventId => "Duplicate event id",
            Self::StateConflict => "State conflict",
            Self::StreamNotFound => "Stream not found",
            Self::StreamDeleted => "Stream deleted",
            Self::EventNotFound => "Event not found",
            Self::GroupNotFound => "Consumer group not found",
            Self::DeadLetterNotFound => "Dead letter not found",
            Self::PayloadTooLarge => "Payload too large",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Unavailable => "Service unavailable",
            Self::Internal => "Internal server error",
            Self::WebhookNotFound => "Webhook endpoint not found",
            Self::MessageNotFound => "Webhook message not found",
            Self::WebhookDisabled => "Webhook endpoint disabled",
            Self::WebhookUrlForbidden => "Webhook URL forbidden",
            Self::BridgeNotFound => "Bridge not found",
            Self::Unauthorized => "Unauthorized",
            Self::BridgeConfigManaged => "Bridge managed by the configuration file",
            Self::Forbidden => "Forbidden",
            Self::RateLimited => "Too many requests",
            Self::KeyNotFound => "API key not found",
            Self::SchemaNotFound => "Schema not found",
            Self::SchemaExists => "Schema already registered",
            Self::SchemaIncompatible => "Schema incompatible",
            Self::InvalidSchema => "Invalid schema",
            Self::SchemaViolation => "Schema violation",
            Self::SchemaNotRegistered => "Schema version not registered",
        }
    }

    /// The problem type a bare status code stands for (an answer made outside the
    /// handlers: routing, body limits, panics).
    pub fn for_status(status: u16) -> Self {
        match status {
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            413 => Self::PayloadTooLarge,
            415 => Self::UnsupportedMediaType,
            429 => Self::RateLimited,
            503 => Self::Unavailable,
            400..=499 => Self::InvalidRequest,
            _ => Self::Internal,
        }
    }
}

impl fmt::Display for ProblemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.uri())
    }
}

/// A `type` this version of the API does not define (a newer server's, or not Bifrost's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownProblemType(pub String);

impl fmt::Display for UnknownProblemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown problem type {:?}", self.0)
    }
}

impl std::error::Error for UnknownProblemType {}

impl FromStr for ProblemType {
    type Err = UnknownProblemType;

    /// The problem type of a `type` URI.
    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|t| t.uri() == uri).ok_or_else(|| UnknownProblemType(uri.to_owned()))
    }
}

/// An error answer (RFC 9457). More members may follow the four below, depending on the
/// type: `stream`, `expected`, `actual` and `conflicts` (a list of `ConflictBody`) for
/// `bifrost:wrong-expected-version`, `id` for `bifrost:duplicate-event-id` and
/// `bifrost:event-not-found`, `group` for `bifrost:group-not-found`, `scope` and `key` for
/// `bifrost:state-conflict`, …
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// Stable, e.g. `bifrost:wrong-expected-version`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Every other member.
    #[serde(flatten)]
    pub members: Map<String, Value>,
}

impl Problem {
    /// The problem type, when this version of the API defines it.
    pub fn kind(&self) -> Option<ProblemType> {
        self.problem_type.parse().ok()
    }

    /// A string member, e.g. `stream`.
    pub fn member_str(&self, key: &str) -> Option<&str> {
        self.members.get(key).and_then(Value::as_str)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{} (HTTP {}, {})", self.title, self.status, self.problem_type)
        } else {
            write!(f, "{}: {} (HTTP {}, {})", self.title, self.detail, self.status, self.problem_type)
        }
    }
}

/// One stream whose expected version did not hold: an entry of the `conflicts` member of
/// a `bifrost:wrong-expected-version` problem.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConflictBody {
    pub stream: String,
    pub expected: ExpectedVersion,
    /// The stream's version; null when it does not exist.
    pub actual: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_type_reads_back_from_its_uri_and_has_an_error_status() {
        for t in ProblemType::ALL {
            assert_eq!(t.uri().parse::<ProblemType>(), Ok(t));
            assert!(t.uri().starts_with("bifrost:"), "{t}");
            assert!((400..600).contains(&t.status()), "{t}");
            assert!(!t.title().is_empty());
        }
        let uris: std::collections::HashSet<_> = ProblemType::ALL.iter().map(|t| t.uri()).collect();
        assert_eq!(uris.len(), ProblemType::ALL.len(), "a type URI is used twice");
        assert!("bifrost:nope".parse::<ProblemType>().is_err());
        assert_eq!(ProblemType::StateConflict.status(), 409);
    }

    #[test]
    fn a_problem_keeps_its_extra_members() {
        let text = r#"{"type":"bifrost:wrong-expected-version","title":"Wrong expected version","status":409,
            "detail":"d","expected":"no_stream","actual":3,"conflicts":[{"stream":"a-1","expected":"no_stream","actual":3}]}"#;
        let problem: Problem = serde_json::from_str(text).unwrap();
        assert_eq!(problem.kind(), Some(ProblemType::WrongExpectedVersion));
        assert_eq!(problem.members["actual"], 3);
        let conflicts: Vec<ConflictBody> =
            serde_json::from_value(problem.members["conflicts"].clone()).unwrap();
        assert_eq!(
            conflicts,
            [ConflictBody { stream: "a-1".into(), expected: ExpectedVersion::NoStream, actual: Some(3) }]
        );
    }
}
