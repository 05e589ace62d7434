//! The client's errors, and how a server's answer becomes an error of the store contract
//! ([`bifrost_core::Error`]) for the [`EventStore`](bifrost_core::EventStore) methods.

use std::fmt;

use bifrost_api::{ConflictBody, Problem, ProblemType};
use bifrost_core::{Error as CoreError, ExpectedVersion, StreamName, VersionConflict};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::wire::engine_expected;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to a Bifrost server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client cannot be built as asked (a bad base URL or header).
    #[error("invalid client configuration: {0}")]
    Config(String),

    /// An argument was refused before anything was sent.
    #[error("{0}")]
    InvalidArgument(String),

    /// No HTTP answer came: the connection was refused or broke, or the request timed out.
    #[error("cannot reach the server at {server}: {source}")]
    Transport {
        server: String,
        #[source]
        source: reqwest::Error,
    },

    /// No answer came within the client's timeout (one the HTTP layer did not enforce
    /// itself, such as the start of a live subscription).
    #[error("the server at {server} did not answer within {after:?}")]
    Timeout { server: String, after: std::time::Duration },

    /// A live subscription lost its connection and could not open it again within the
    /// attempts allowed ([`ClientBuilder::max_reconnects`](crate::ClientBuilder::max_reconnects)).
    #[error(
        "lost the connection to the server at {server} and could not resume after {attempts} attempts: {reason}"
    )]
    Disconnected { server: String, attempts: u32, reason: String },

    /// The server answered with an error other than the ones below.
    #[error("{0}")]
    Problem(Box<Problem>),

    /// `bifrost:group-not-found`: the server has no consumer group of this name.
    #[error("there is no consumer group {0}")]
    GroupNotFound(String),

    /// `bifrost:dead-letter-not-found`: the group has no dead letter for this event.
    #[error("consumer group {group} has no dead letter for event {event_id}")]
    DeadLetterNotFound { group: String, event_id: Uuid },

    /// The server's answer is not what the API describes.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),

    /// The client was closed ([`EventStore::close`](bifrost_core::EventStore::close)).
    #[error("the client is closed")]
    Closed,
}

impl Error {
    /// The problem the server answered with, if that is what this error is.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Problem(p) => Some(p),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: no answer, or an answer of 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout { .. } | Self::Disconnected { .. } => true,
            Self::Problem(p) => p.status >= 500,
            Self::Config(_)
            | Self::InvalidArgument(_)
            | Self::GroupNotFound(_)
            | Self::DeadLetterNotFound { .. }
            | Self::Decode(_)
            | Self::Closed => false,
        }
    }

    pub(crate) fn decode(what: impl fmt::Display) -> Self {
        Self::Decode(what.to_string())
    }

    /// The error of the store contract, given the stream the request was about (problem
    /// bodies name the stream too; this is the fallback).
    pub(crate) fn into_store_error(self, stream: Option<&StreamName>) -> CoreError {
        match self {
            Self::Problem(problem) => problem_into_store_error(*problem, stream),
            Self::Transport { server, source } => {
                CoreError::Unavailable(format!("cannot reach the server at {server}: {source}"))
            }
            e @ (Self::Timeout { .. } | Self::Disconnected { .. }) => CoreError::Unavailable(e.to_string()),
            Self::Closed => CoreError::Unavailable("the client is closed".into()),
            Self::Config(message) | Self::InvalidArgument(message) => CoreError::InvalidArgument(message),
            Self::GroupNotFound(group) => CoreError::GroupNotFound(group),
            e @ Self::DeadLetterNotFound { .. } => CoreError::InvalidArgument(e.to_string()),
            // The answer does not decode: asking again gets the same answer.
            Self::Decode(message) => CoreError::Corrupt {
                message: format!("unexpected answer from the server: {message}"),
                source: None,
            },
        }
    }
}

impl From<Error> for CoreError {
    fn from(e: Error) -> Self {
        e.into_store_error(None)
    }
}

/// Reads an error answer. A body that is not a problem document still becomes one, with
/// the start of the body as its detail; the status is the answer's.
pub(crate) fn problem_from_answer(status: u16, body: &[u8]) -> Problem {
    if let Ok(Value::Object(mut members)) = serde_json::from_slice::<Value>(body) {
        let mut take = |key: &str| match members.remove(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        if let Some(problem_type) = take("type") {
            let title = take("title").unwrap_or_default();
            let detail = take("detail").unwrap_or_default();
            members.remove("status");
            return Problem { problem_type, title, status, detail, members };
        }
    }
    let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
    Problem {
        problem_type: "about:blank".into(),
        title: format!("HTTP {status}"),
        status,
        detail: text.split_whitespace().collect::<Vec<_>>().join(" "),
        members: Map::new(),
    }
}

/// The stream the problem names, else the one the request was about.
fn problem_stream(problem: &Problem, fallback: Option<&StreamName>) -> Option<StreamName> {
    problem.member_str("stream").and_then(|s| StreamName::new(s).ok()).or_else(|| fallback.cloned())
}

/// The error of the store contract a problem stands for. Every problem type of the API is
/// named, so a new one cannot fall into a default; a type this version does not know is
/// read by its status.
fn problem_into_store_error(problem: Problem, stream: Option<&StreamName>) -> CoreError {
    let detail = || {
        if problem.detail.is_empty() {
            format!("{} (HTTP {})", problem.title, problem.status)
        } else {
            problem.detail.clone()
        }
    };
    let Some(kind) = problem.kind() else {
        return match problem.status {
            410 => match problem_stream(&problem, stream) {
                Some(s) => CoreError::StreamDeleted(s),
                None => CoreError::InvalidArgument(detail()),
            },
            503 => CoreError::Unavailable(detail()),
            500.. => server_failed(&problem, detail()),
            _ => CoreError::InvalidArgument(detail()),
        };
    };
    match kind {
        ProblemType::WrongExpectedVersion => match conflicts(&problem, stream) {
            Some(conflicts) => CoreError::WrongExpectedVersion(conflicts),
            None => CoreError::InvalidArgument(detail()),
        },
        ProblemType::DuplicateEventId => {
            match problem.member_str("id").and_then(|id| Uuid::parse_str(id).ok()) {
                Some(id) => CoreError::DuplicateEventId { id },
                None => CoreError::InvalidArgument(detail()),
            }
        }
        ProblemType::StreamNotFound => match problem_stream(&problem, stream) {
            Some(s) => CoreError::StreamNotFound(s),
            None => CoreError::InvalidArgument(detail()),
        },
        ProblemType::StreamDeleted => match problem_stream(&problem, stream) {
            Some(s) => CoreError::StreamDeleted(s),
            None => CoreError::InvalidArgument(detail()),
        },
        ProblemType::OutOfRange => CoreError::OutOfRange(detail()),
        ProblemType::GroupNotFound => match problem.member_str("group") {
            Some(group) => CoreError::GroupNotFound(group.to_owned()),
            None => CoreError::InvalidArgument(detail()),
        },
        ProblemType::StateConflict => match (problem.member_str("scope"), problem.member_str("key")) {
            (Some(scope), Some(key)) => {
                CoreError::StateConflict { scope: scope.to_owned(), key: key.to_owned() }
            }
            _ => CoreError::InvalidArgument(detail()),
        },
        // Both pass with time: a retry after `Retry-After` gets through.
        ProblemType::Unavailable | ProblemType::RateLimited => CoreError::Unavailable(detail()),
        // The server keeps the cause of a 500 to its log: from here it may as well be a
        // storage failure, which a retry may get past.
        ProblemType::Internal => server_failed(&problem, detail()),
        // Refusals of the request itself (its shape, a name, a limit) and answers the
        // store contract has no error for.
        ProblemType::InvalidRequest
        | ProblemType::UnsupportedMediaType
        | ProblemType::InvalidStreamName
        | ProblemType::InvalidEventType
        | ProblemType::InvalidArgument
        | ProblemType::PayloadTooLarge
        | ProblemType::EventNotFound
        | ProblemType::DeadLetterNotFound
        | ProblemType::NotFound
        | ProblemType::WebhookNotFound
        | ProblemType::MessageNotFound
        | ProblemType::WebhookDisabled
        | ProblemType::WebhookUrlForbidden
        | ProblemType::BridgeNotFound
        | ProblemType::Unauthorized
        | ProblemType::BridgeConfigManaged
        | ProblemType::Forbidden
        | ProblemType::KeyNotFound
        | ProblemType::SchemaNotFound
        | ProblemType::SchemaExists
        | ProblemType::SchemaIncompatible
        | ProblemType::InvalidSchema
        | ProblemType::SchemaViolation
        | ProblemType::SchemaNotRegistered
        | ProblemType::MethodNotAllowed => CoreError::InvalidArgument(detail()),
    }
}

fn server_failed(problem: &Problem, detail: String) -> CoreError {
    CoreError::Storage {
        message: format!("the server failed (HTTP {}): {detail}", problem.status),
        source: None,
    }
}

/// The conflicts of a `wrong-expected-version` answer: `conflicts` (both routes send it;
/// the multi-stream route only that), else the single route's `expected` / `actual`.
fn conflicts(problem: &Problem, stream: Option<&StreamName>) -> Option<Vec<VersionConflict>> {
    if let Some(list) = problem.members.get("conflicts") {
        let parsed: Option<Vec<VersionConflict>> =
            serde_json::from_value::<Vec<ConflictBody>>(list.clone()).ok().and_then(|list| {
                list.into_iter()
                    .map(|c| {
                        Some(VersionConflict {
                            stream: StreamName::new(&c.stream).ok()?,
                            expected: engine_expected(c.expected),
                            actual: c.actual,
                        })
                    })
                    .collect()
            });
        if let Some(conflicts) = parsed.filter(|c| !c.is_empty()) {
            return Some(conflicts);
        }
    }
    let stream = problem_stream(problem, stream)?;
    let expected = match problem.members.get("expected")? {
        Value::Null => ExpectedVersion::Any,
        value => engine_expected(serde_json::from_value(value.clone()).ok()?),
    };
    let actual = match problem.members.get("actual") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64()?),
    };
    Some(vec![VersionConflict { stream, expected, actual }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(name: &str) -> StreamName {
        StreamName::new(name).unwrap()
    }

    #[test]
    fn single_stream_conflicts_read_expected_and_actual() {
        let body =
            br#"{"type":"bifrost:wrong-expected-version","title":"Wrong expected version","status":409,
            "detail":"d","expected":3,"actual":null}"#;
        let err = problem_into_store_error(problem_from_answer(409, body), Some(&stream("a-1")));
        let CoreError::WrongExpectedVersion(c) = err else { panic!("{err:?}") };
        assert_eq!(
            c,
            vec![VersionConflict {
                stream: stream("a-1"),
                expected: ExpectedVersion::Exact(3),
                actual: None
            }]
        );
    }

    #[test]
    fn multi_stream_conflicts_name_every_stream() {
        let body = br#"{"type":"bifrost:wrong-expected-version","title":"t","status":409,"detail":"d",
            "conflicts":[{"stream":"b-1","expected":1,"actual":2},{"stream":"c-1","expected":"exists","actual":null}]}"#;
        let CoreError::WrongExpectedVersion(c) =
            problem_into_store_error(problem_from_answer(409, body), None)
        else {
            panic!()
        };
        assert_eq!(
            c,
            vec![
                VersionConflict {
                    stream: stream("b-1"),
                    expected: ExpectedVersion::Exact(1),
                    actual: Some(2)
                },
                VersionConflict {
                    stream: stream("c-1"),
                    expected: ExpectedVersion::StreamExists,
                    actual: None
                },
            ]
        );
    }

    #[test]
    fn problem_types_map_onto_the_store_errors() {
        let problem = |t: &str, status: u16, extra: &str| {
            let body = format!(r#"{{"type":"{t}","title":"T","status":{status},"detail":"why"{extra}}}"#);
            problem_into_store_error(problem_from_answer(status, body.as_bytes()), Some(&stream("s-1")))
        };
        let id = Uuid::now_v7();
        assert!(matches!(
            problem("bifrost:duplicate-event-id", 409, &format!(r#","id":"{id}""#)),
            CoreError::DuplicateEventId { id: got } if got == id
        ));
        assert!(matches!(
            problem("bifrost:stream-not-found", 404, r#","stream":"x-1""#),
            CoreError::StreamNotFound(s) if s.as_str() == "x-1"
        ));
        assert!(
            matches!(problem("bifrost:stream-deleted", 410, ""), CoreError::StreamDeleted(s) if s.as_str() == "s-1")
        );
        assert!(matches!(problem("bifrost:out-of-range", 400, ""), CoreError::OutOfRange(d) if d == "why"));
        assert!(
            matches!(problem("bifrost:payload-too-large", 413, ""), CoreError::InvalidArgument(d) if d == "why")
        );
        assert!(matches!(problem("bifrost:unavailable", 503, ""), CoreError::Unavailable(_)));
        assert!(matches!(
            problem("bifrost:state-conflict", 409, r#","scope":"groups","key":"g""#),
            CoreError::StateConflict { scope, key } if scope == "groups" && key == "g"
        ));
        assert!(matches!(
            problem("bifrost:group-not-found", 404, r#","group":"g""#),
            CoreError::GroupNotFound(g) if g == "g"
        ));
        assert!(matches!(problem("bifrost:internal", 500, ""), CoreError::Storage { .. }));
    }

    #[test]
    fn an_answer_that_is_not_a_problem_still_reads() {
        let p = problem_from_answer(502, b"Bad gateway\nupstream down");
        assert_eq!(
            (p.problem_type.as_str(), p.detail.as_str()),
            ("about:blank", "Bad gateway upstream down")
        );
        assert!(matches!(problem_into_store_error(p, None), CoreError::Storage { .. }));
    }

    #[test]
    fn an_answer_that_does_not_decode_is_corrupt_not_a_storage_failure() {
        let err = CoreError::from(Error::decode("missing field `stream`"));
        assert!(
            matches!(&err, CoreError::Corrupt { message, .. } if message.contains("missing field")),
            "{err:?}"
        );
    }
}
