//! The one place where failures become HTTP answers: status + `application/problem+json`
//! (RFC 9457) with a stable `type`. The `type` strings are a promise to clients: never
//! change or reuse one.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bifrost_core::{Error as CoreError, ExpectedVersion, VersionConflict};
use serde_json::{Map, Value, json};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The stable problem types of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

impl ProblemType {
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
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest
            | Self::InvalidStreamName
            | Self::InvalidEventType
            | Self::InvalidArgument
            | Self::OutOfRange => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::WrongExpectedVersion | Self::DuplicateEventId | Self::StateConflict => StatusCode::CONFLICT,
            Self::StreamNotFound
            | Self::EventNotFound
            | Self::GroupNotFound
            | Self::DeadLetterNotFound
            | Self::NotFound => StatusCode::NOT_FOUND,
            Self::StreamDeleted => StatusCode::GONE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

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
        }
    }

    /// The problem type a bare status code stands for, for answers produced outside the
    /// handlers (routing, body limits, panics).
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable,
            s if s.is_client_error() => Self::InvalidRequest,
            _ => Self::Internal,
        }
    }
}

/// An error answer: a problem type, a human-readable detail and optional extra members.
#[derive(Debug)]
pub struct ApiError {
    kind: ProblemType,
    detail: String,
    extra: Map<String, Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into(), extra: Map::new() }
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::InvalidRequest, detail)
    }

    pub fn invalid_argument(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::InvalidArgument, detail)
    }

    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::PayloadTooLarge, detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Unavailable, detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Internal, detail)
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    pub fn kind(&self) -> ProblemType {
        self.kind
    }

    fn into_body(self) -> Value {
        let mut body = Map::with_capacity(4 + self.extra.len());
        body.insert("type".into(), self.kind.uri().into());
        body.insert("title".into(), self.kind.title().into());
        body.insert("status".into(), self.kind.status().as_u16().into());
        body.insert("detail".into(), self.detail.into());
        body.extend(self.extra);
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        if status.is_server_error() {
            tracing::warn!(problem = self.kind.uri(), detail = %self.detail, "request failed");
        }
        let body = serde_json::to_vec(&self.into_body()).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

/// `expected_version` as the API spells it: "any" | "no_stream" | "exists" | integer.
pub fn expected_to_wire(expected: ExpectedVersion) -> Value {
    match expected {
        ExpectedVersion::Any => "any".into(),
        ExpectedVersion::NoStream => "no_stream".into(),
        ExpectedVersion::StreamExists => "exists".into(),
        ExpectedVersion::Exact(v) => v.into(),
    }
}

fn conflict_to_wire(c: &VersionConflict) -> Value {
    json!({ "stream": c.stream.as_str(), "expected": expected_to_wire(c.expected), "actual": c.actual })
}

/// `error: cause: cause`, for the log.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

impl From<CoreError> for ApiError {
    fn from(err: CoreError) -> Self {
        let detail = err.to_string();
        match err {
            CoreError::InvalidStreamName { name, .. } => {
                Self::new(ProblemType::InvalidStreamName, detail).with("stream", name.into())
            }
            CoreError::InvalidEventType { name, .. } => {
                Self::new(ProblemType::InvalidEventType, detail).with("event_type", name.into())
            }
            CoreError::InvalidArgument(_) => Self::new(ProblemType::InvalidArgument, detail),
            CoreError::WrongExpectedVersion(conflicts) => {
                let mut problem = Self::new(ProblemType::WrongExpectedVersion, detail);
                // A single-stream conflict also carries `expected` / `actual` at the top level.
                if let [only] = conflicts.as_slice() {
                    problem = problem
                        .with("stream", only.stream.as_str().into())
                        .with("expected", expected_to_wire(only.expected))
                        .with("actual", only.actual.into());
                }
                let list = conflicts.iter().map(conflict_to_wire).collect();
                problem.with("conflicts", Value::Array(list))
            }
            CoreError::DuplicateEventId { id } => {
                Self::new(ProblemType::DuplicateEventId, detail).with("id", id.to_string().into())
            }
            CoreError::StreamNotFound(stream) => {
                Self::new(ProblemType::StreamNotFound, detail).with("stream", stream.as_str().into())
            }
            CoreError::StreamDeleted(stream) => {
                Self::new(ProblemType::StreamDeleted, detail).with("stream", stream.as_str().into())
            }
            CoreError::GroupNotFound(group) => {
                Self::new(ProblemType::GroupNotFound, format!("there is no consumer group {group}"))
                    .with("group", group.into())
            }
            CoreError::OutOfRange(_) => Self::new(ProblemType::OutOfRange, detail),
            // Another writer changed the same state first: the client may read and try again.
            CoreError::StateConflict { scope, key } => Self::new(ProblemType::StateConflict, detail)
                .with("scope", scope.into())
                .with("key", key.into()),
            CoreError::Unavailable(_) => Self::new(ProblemType::Unavailable, detail),
            // Failures inside the server keep their detail (driver messages, stored bytes) out
            // of the answer; it goes to the log.
            CoreError::Storage { .. } => {
                tracing::error!(error = %error_chain(&err), "storage failure");
                Self::internal("the store failed; see the server log")
            }
            CoreError::Corrupt { .. } => {
                tracing::error!(error = %error_chain(&err), "stored data does not decode");
                Self::internal("the store holds data this server cannot read; see the server log")
            }
            CoreError::Internal(_) => {
                tracing::error!(error = %error_chain(&err), "internal error");
                Self::internal("the server failed; see the server log")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bifrost_core::StreamName;
    use uuid::Uuid;

    use super::*;

    fn answer(err: CoreError) -> (u16, &'static str, Value) {
        let problem = ApiError::from(err);
        (problem.kind.status().as_u16(), problem.kind.uri(), problem.into_body())
    }

    #[test]
    fn every_store_error_has_its_status_and_problem_type() {
        let stream = || StreamName::new("order-1").unwrap_or_else(|e| panic!("{e}"));
        let conflict =
            VersionConflict { stream: stream(), expected: ExpectedVersion::NoStream, actual: Some(2) };
        let cases = [
            (
                CoreError::InvalidStreamName { name: "a b".into(), reason: "r".into() },
                400,
                "bifrost:invalid-stream-name",
            ),
            (
                CoreError::InvalidEventType { name: "a..b".into(), reason: "r".into() },
                400,
                "bifrost:invalid-event-type",
            ),
            (CoreError::InvalidArgument("bad".into()), 400, "bifrost:invalid-argument"),
            (CoreError::WrongExpectedVersion(vec![conflict]), 409, "bifrost:wrong-expected-version"),
            (CoreError::DuplicateEventId { id: Uuid::nil() }, 409, "bifrost:duplicate-event-id"),
            (CoreError::StreamNotFound(stream()), 404, "bifrost:stream-not-found"),
            (CoreError::StreamDeleted(stream()), 410, "bifrost:stream-deleted"),
            (CoreError::GroupNotFound("billing".into()), 404, "bifrost:group-not-found"),
            (CoreError::OutOfRange("past the end".into()), 400, "bifrost:out-of-range"),
            (
                CoreError::StateConflict { scope: "groups".into(), key: "billing".into() },
                409,
                "bifrost:state-conflict",
            ),
            (CoreError::Unavailable("closed".into()), 503, "bifrost:unavailable"),
            (CoreError::Storage { message: "disk full".into(), source: None }, 500, "bifrost:internal"),
            (
                CoreError::Corrupt { message: "stored event id is invalid".into(), source: None },
                500,
                "bifrost:internal",
            ),
            (CoreError::Internal("append was not planned".into()), 500, "bifrost:internal"),
        ];
        for (err, status, problem_type) in cases {
            let what = format!("{err:?}");
            let (got_status, got_type, body) = answer(err);
            assert_eq!((got_status, got_type), (status, problem_type), "{what}");
            assert_eq!(
                (body["status"].as_u64(), body["type"].as_str()),
                (Some(u64::from(status)), Some(problem_type))
            );
        }
    }

    #[test]
    fn conflicts_and_missing_groups_name_what_they_are_about() {
        let (_, _, body) = answer(CoreError::StateConflict { scope: "groups".into(), key: "billing".into() });
        assert_eq!((body["scope"].as_str(), body["key"].as_str()), (Some("groups"), Some("billing")));
        let (_, _, body) = answer(CoreError::GroupNotFound("billing".into()));
        assert_eq!(body["group"], "billing");
    }

    #[test]
    fn failures_inside_the_server_keep_their_detail_out_of_the_answer() {
        let source = std::io::Error::other("sector 7 unreadable");
        for err in [
            CoreError::storage("disk on fire", source),
            CoreError::corrupt("stored metadata is invalid: byte 0x9f", std::io::Error::other("utf-8")),
            CoreError::Internal("append was not planned".into()),
        ] {
            let (_, _, body) = answer(err);
            let detail = body["detail"].as_str().unwrap_or_default();
            for secret in ["fire", "sector", "0x9f", "planned"] {
                assert!(!detail.contains(secret), "{detail}");
            }
        }
    }
}
