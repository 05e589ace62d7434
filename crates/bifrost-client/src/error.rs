//! The client's errors, and how a server's answer becomes an error of the store contract
//! ([`bifrost_core::Error`]) for the [`EventStore`](bifrost_core::EventStore) methods.

use std::fmt;

use bifrost_core::{Error as CoreError, ExpectedVersion, StreamName, VersionConflict};
use serde_json::{Map, Value};
use uuid::Uuid;

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
            Self::Transport { .. } | Self::Timeout { .. } => true,
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
            Self::Problem(problem) => problem.into_store_error(stream),
            Self::Transport { server, source } => {
                CoreError::Unavailable(format!("cannot reach the server at {server}: {source}"))
            }
            e @ Self::Timeout { .. } => CoreError::Unavailable(e.to_string()),
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

/// An RFC 9457 problem as the server sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// The HTTP status.
    pub status: u16,
    /// The stable problem type, e.g. `bifrost:wrong-expected-version`; `about:blank` when
    /// the answer was not a problem document.
    pub problem_type: String,
    pub title: String,
    pub detail: String,
    /// Every other member: `stream`, `expected`, `actual`, `conflicts`, `id`, ...
    pub members: Map<String, Value>,
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

impl Problem {
    /// Reads an error answer. A body that is not a problem document still becomes one, with
    /// the start of the body as its detail.
    pub(crate) fn from_answer(status: u16, body: &[u8]) -> Self {
        if let Ok(Value::Object(mut members)) = serde_json::from_slice::<Value>(body) {
            let mut take = |key: &str| match members.remove(key) {
                Some(Value::String(s)) => Some(s),
                _ => None,
            };
            if let Some(problem_type) = take("type") {
                let title = take("title").unwrap_or_default();
                let detail = take("detail").unwrap_or_default();
                members.remove("status");
                return Self { status, problem_type, title, detail, members };
            }
        }
        let text: String = String::from_utf8_lossy(body).chars().take(200).collect();
        Self {
            status,
            problem_type: "about:blank".into(),
            title: format!("HTTP {status}"),
            detail: text.split_whitespace().collect::<Vec<_>>().join(" "),
            members: Map::new(),
        }
    }

    fn member_str(&self, key: &str) -> Option<&str> {
        self.members.get(key).and_then(Value::as_str)
    }

    /// The stream the problem names, else the one the request was about.
    fn stream(&self, fallback: Option<&StreamName>) -> Option<StreamName> {
        self.member_str("stream").and_then(|s| StreamName::new(s).ok()).or_else(|| fallback.cloned())
    }

    fn into_store_error(self, stream: Option<&StreamName>) -> CoreError {
        let detail = || {
            if self.detail.is_empty() {
                format!("{} (HTTP {})", self.title, self.status)
            } else {
                self.detail.clone()
            }
        };
        match self.problem_type.as_str() {
            "bifrost:wrong-expected-version" => match self.conflicts(stream) {
                Some(conflicts) => CoreError::WrongExpectedVersion(conflicts),
                None => CoreError::InvalidArgument(detail()),
            },
            "bifrost:duplicate-event-id" => {
                match self.member_str("id").and_then(|id| Uuid::parse_str(id).ok()) {
                    Some(id) => CoreError::DuplicateEventId { id },
                    None => CoreError::InvalidArgument(detail()),
                }
            }
            "bifrost:stream-not-found" => match self.stream(stream) {
                Some(s) => CoreError::StreamNotFound(s),
                None => CoreError::InvalidArgument(detail()),
            },
            "bifrost:stream-deleted" => match self.stream(stream) {
                Some(s) => CoreError::StreamDeleted(s),
                None => CoreError::InvalidArgument(detail()),
            },
            "bifrost:out-of-range" => CoreError::OutOfRange(detail()),
            "bifrost:group-not-found" => match self.member_str("group") {
                Some(group) => CoreError::GroupNotFound(group.to_owned()),
                None => CoreError::InvalidArgument(detail()),
            },
            "bifrost:state-conflict" => match (self.member_str("scope"), self.member_str("key")) {
                (Some(scope), Some(key)) => {
                    CoreError::StateConflict { scope: scope.to_owned(), key: key.to_owned() }
                }
                _ => CoreError::InvalidArgument(detail()),
            },
            "bifrost:unavailable" => CoreError::Unavailable(detail()),
            _ if self.status == 410 => match self.stream(stream) {
                Some(s) => CoreError::StreamDeleted(s),
                None => CoreError::InvalidArgument(detail()),
            },
            _ if self.status == 503 => CoreError::Unavailable(detail()),
            _ if self.status >= 500 => CoreError::Storage {
                message: format!("the server failed (HTTP {}): {}", self.status, detail()),
                source: None,
            },
            _ => CoreError::InvalidArgument(detail()),
        }
    }

    /// The conflicts of a `wrong-expected-version` answer: `conflicts` (both routes send it;
    /// the multi-stream route only that), else the single route's `expected` / `actual`.
    fn conflicts(&self, stream: Option<&StreamName>) -> Option<Vec<VersionConflict>> {
        if let Some(Value::Array(list)) = self.members.get("conflicts") {
            let conflicts: Option<Vec<_>> = list
                .iter()
                .map(|c| {
                    let stream = StreamName::new(c.get("stream")?.as_str()?).ok()?;
                    conflict(stream, c.get("expected")?, c.get("actual"))
                })
                .collect();
            if let Some(conflicts) = conflicts.filter(|c| !c.is_empty()) {
                return Some(conflicts);
            }
        }
        let stream = self.stream(stream)?;
        conflict(stream, self.members.get("expected")?, self.members.get("actual")).map(|c| vec![c])
    }
}

fn conflict(stream: StreamName, expected: &Value, actual: Option<&Value>) -> Option<VersionConflict> {
    let actual = match actual {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64()?),
    };
    Some(VersionConflict { stream, expected: expected_from_wire(expected)?, actual })
}

/// `"any" | "no_stream" | "exists" | <integer>`, as the API spells an expected version.
pub(crate) fn expected_from_wire(v: &Value) -> Option<ExpectedVersion> {
    match v {
        Value::String(s) => match s.as_str() {
            "any" => Some(ExpectedVersion::Any),
            "no_stream" => Some(ExpectedVersion::NoStream),
            "exists" => Some(ExpectedVersion::StreamExists),
            _ => None,
        },
        Value::Number(n) => n.as_u64().map(ExpectedVersion::Exact),
        Value::Null => Some(ExpectedVersion::Any),
        _ => None,
    }
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
        let err = Problem::from_answer(409, body).into_store_error(Some(&stream("a-1")));
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
        let CoreError::WrongExpectedVersion(c) = Problem::from_answer(409, body).into_store_error(None)
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
            Problem::from_answer(status, body.as_bytes()).into_store_error(Some(&stream("s-1")))
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
        let p = Problem::from_answer(502, b"Bad gateway\nupstream down");
        assert_eq!(
            (p.problem_type.as_str(), p.detail.as_str()),
            ("about:blank", "Bad gateway upstream down")
        );
        assert!(matches!(p.into_store_error(None), CoreError::Storage { .. }));
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
