//! Streams and the global log: appends, reads, stream information and listings.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::{EventBody, NewEventRequest};
use crate::lenient::Lenient;

/// The optimistic concurrency check of an append: `"any"`, `"no_stream"`, `"exists"` or
/// the exact version (an integer ≥ 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist.
    NoStream,
    /// The stream must exist.
    Exists,
    /// The stream must be at this version.
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no_stream"),
            Self::Exists => f.write_str("exists"),
            Self::Exact(v) => write!(f, "{v}"),
        }
    }
}

impl Serialize for ExpectedVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Any => serializer.serialize_str("any"),
            Self::NoStream => serializer.serialize_str("no_stream"),
            Self::Exists => serializer.serialize_str("exists"),
            Self::Exact(v) => serializer.serialize_u64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ExpectedVisitor;

        impl Visitor<'_> for ExpectedVisitor {
            type Value = ExpectedVersion;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""any", "no_stream", "exists" or an integer >= 0"#)
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<ExpectedVersion, E> {
                match s {
                    "any" => Ok(ExpectedVersion::Any),
                    "no_stream" => Ok(ExpectedVersion::NoStream),
                    "exists" => Ok(ExpectedVersion::Exists),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ExpectedVersion, E> {
                Ok(ExpectedVersion::Exact(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ExpectedVersion, E> {
                u64::try_from(v)
                    .map(ExpectedVersion::Exact)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
        }

        deserializer.deserialize_any(ExpectedVisitor)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ExpectedVersion {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String).enum_values(Some([
                "any",
                "no_stream",
                "exists",
            ])))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(0)),
            )
            .description(Some(
                "`\"any\"` (no check), `\"no_stream\"`, `\"exists\"` or the exact version (integer ≥ 0).",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ExpectedVersion {}

/// `POST /v1/streams/{stream}/events`: events appended to one stream atomically.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AppendRequest<'a> {
    /// Default `"any"`; absent and null mean the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<ExpectedVersion>))]
    pub expected_version: Option<Lenient<ExpectedVersion>>,
    /// At least one.
    #[serde(borrow)]
    pub events: Vec<NewEventRequest<'a>>,
}

/// One stream of a `POST /v1/append`.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StreamAppendRequest<'a> {
    #[serde(borrow)]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub stream: Cow<'a, str>,
    /// Default `"any"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<ExpectedVersion>))]
    pub expected_version: Option<Lenient<ExpectedVersion>>,
    #[serde(borrow)]
    pub events: Vec<NewEventRequest<'a>>,
}

/// `POST /v1/append`: appends to several streams, all stored or none.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MultiAppendRequest<'a> {
    #[serde(borrow)]
    pub appends: Vec<StreamAppendRequest<'a>>,
}

/// Where an append's events landed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppendResultBody {
    pub stream: String,
    pub first_version: u64,
    pub last_version: u64,
    pub first_position: u64,
    pub last_position: u64,
}

/// The answer of `POST /v1/append`, in request order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MultiAppendResultBody {
    pub results: Vec<AppendResultBody>,
}

/// `GET /v1/streams/{stream}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamInfoBody {
    pub stream: String,
    pub version: u64,
    pub aggregate_type: String,
    /// RFC 3339, microseconds, UTC.
    pub created_at: String,
    pub updated_at: String,
    /// Soft-deleted: reads answer 404 until the next append.
    pub deleted: bool,
}

/// One entry of `GET /v1/streams`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamSummaryBody {
    pub stream: String,
    pub version: u64,
    pub aggregate_type: String,
    pub updated_at: String,
}

/// `GET /v1/streams`: streams in name order; `next` is the `after` of the next page.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamListBody {
    pub streams: Vec<StreamSummaryBody>,
    pub next: Option<String>,
}

/// `GET /v1/streams/{stream}/events`: `next` is the version to continue from, or null.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamEventsBody<'a> {
    #[serde(borrow)]
    pub events: Vec<EventBody<'a>>,
    pub next: Option<u64>,
}

/// `GET /v1/events`: `next_position` is the `from_position` of the next page.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogEventsBody<'a> {
    #[serde(borrow)]
    pub events: Vec<EventBody<'a>>,
    pub next_position: u64,
}

/// `GET /v1/head`: `{"position": <the last committed position>}`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeadBody {
    /// The position of the last committed event; 0 while the log is empty.
    pub position: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_versions_are_spelled_as_the_api_says() {
        for (text, expected) in [
            (r#""any""#, ExpectedVersion::Any),
            (r#""no_stream""#, ExpectedVersion::NoStream),
            (r#""exists""#, ExpectedVersion::Exists),
            ("7", ExpectedVersion::Exact(7)),
        ] {
            assert_eq!(serde_json::from_str::<ExpectedVersion>(text).unwrap(), expected);
            assert_eq!(serde_json::to_string(&expected).unwrap(), text);
        }
        for bad in ["-1", "1.5", "1e3", r#""sometimes""#, "true", "[]", "null"] {
            assert!(serde_json::from_str::<ExpectedVersion>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_expected_version_does_not_fail_the_body() {
        let request: AppendRequest<'_> =
            serde_json::from_str(r#"{"expected_version": -1, "events": [{"type": "a", "data": 1}]}"#)
                .unwrap();
        let Some(Lenient::Invalid(raw)) = &request.expected_version else { panic!("{request:?}") };
        assert_eq!(raw.get(), "-1");
        assert!(
            serde_json::from_str::<AppendRequest<'_>>(r#"{"events": [], "expected": 1}"#).is_err(),
            "unknown fields are refused"
        );
    }
}
