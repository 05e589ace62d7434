//! The one place where failures become HTTP answers: status + `application/problem+json`
//! (RFC 9457) with a stable `type`. The problem types, their statuses and titles are
//! `bifrost_api`'s: a promise to clients, never changed or reused.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bifrost_core::Error as CoreError;
use serde_json::{Map, Value};

pub use bifrost_api::ProblemType;

use crate::wire;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The HTTP status of a problem type.
pub fn status_of(kind: ProblemType) -> StatusCode {
    StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
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

    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// An extra member of the problem (`errors` of a schema violation).
    pub fn extra(&self, key: &str) -> Option<&Value> {
        self.extra.get(key)
    }

    fn into_body(self) -> Value {
        let mut body = Map::with_capacity(4 + self.extra.len());
        body.insert("type".into(), self.kind.uri().into());
        body.insert("title".into(), self.kind.title().into());
        body.insert("status".into(), self.kind.status().into());
        body.insert("detail".into(), self.detail.into());
        body.extend(self.extra);
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.kind);
        if status.is_server_error() {
            tracing::warn!(problem = self.kind.uri(), detail = %self.detail, "request failed");
        }
        // A rate-limited answer says when to come back in whole seconds, rounded up.
        let retry_after = (self.kind == ProblemType::RateLimited)
            .then(|| self.extra.get("retry_after_ms").and_then(Value::as_u64))
            .flatten()
            .map(|ms| ms.div_ceil(1000).max(1));
        let body = serde_json::to_vec(&self.into_body()).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A member's value (serialising the wire types into a JSON value cannot fail).
fn member(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
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
                        .with("expected", member(wire::expected_version(only.expected)))
                        .with("actual", only.actual.into());
                }
                let list: Vec<_> = conflicts.iter().map(wire::conflict).collect();
                problem.with("conflicts", member(list))
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
    use bifrost_core::{ExpectedVersion, StreamName, VersionConflict};
    use uuid::Uuid;

    use super::*;

    fn answer(err: CoreError) -> (u16, &'static str, Value) {
        let problem = ApiError::from(err);
        (problem.kind.status(), problem.kind.uri(), problem.into_body())
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
            let problem: bifrost_api::Problem = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(problem.kind().map(|k| k.uri()), Some(problem_type), "the wire's problem shape");
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
