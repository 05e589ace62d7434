//! Extractors whose rejections are problems, so that no plain-text answer from axum ever
//! reaches a client.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use bifrost_bus::GroupName;
use bifrost_core::{Category, LogFilter, StreamName, TenantScope, Timestamp, TypePattern};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::{ApiError, ProblemType};
use crate::wire::{parse_body, parse_uuid};

/// A JSON request body as raw bytes: the content type is checked (415) and the body limit
/// applied (413) before anything is parsed.
pub(crate) struct JsonBytes(pub(crate) Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(not_json());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        Ok(Self(bytes))
    }
}

/// A JSON request body that may be left out: an empty body is `None` whatever its content
/// type; a non-empty one must be `application/json` (415) and within the body limit (413).
pub(crate) struct OptionalJsonBytes(pub(crate) Option<Bytes>);

impl<S: Send + Sync> FromRequest<S> for OptionalJsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        if bytes.is_empty() {
            return Ok(Self(None));
        }
        if !json {
            return Err(not_json());
        }
        Ok(Self(Some(bytes)))
    }
}

impl OptionalJsonBytes {
    /// The body parsed, or `T::default()` when there is none.
    pub(crate) fn parse_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        self.0.as_deref().map_or_else(|| Ok(T::default()), parse_body)
    }
}

fn not_json() -> ApiError {
    ApiError::new(ProblemType::UnsupportedMediaType, "send the body with content-type: application/json")
}

fn body_rejection(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large("the request body is larger than the configured limit")
    } else {
        ApiError::invalid_request(format!("could not read the request body: {rejection}"))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// The `{stream}` path segment, percent-decoded, validated and put in the caller's tenant.
pub(crate) struct StreamPath(pub(crate) StreamName);

impl<S: Send + Sync> FromRequestParts<S> for StreamPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state).await.map_err(|rejection| {
            ApiError::new(
                ProblemType::InvalidStreamName,
                format!("invalid stream name in the path: {rejection}"),
            )
        })?;
        let principal = parts
            .extensions
            .get::<std::sync::Arc<crate::auth::Principal>>()
            .ok_or_else(|| ApiError::internal("this route was reached without its credential check"))?;
        // `$` streams (the audit stream) exist once auth is on: the server's to write (the
        // append handlers refuse them), `admin`'s to read (which `authorize` checked).
        let local = match name.strip_prefix('$') {
            Some(system) if principal.filters_reads() => StreamName::system(system)?,
            _ => StreamName::new(&name)?,
        };
        // The caller's tenant's stream of that name: no handler can reach another tenant's.
        Ok(Self(principal.view().stream(&local)))
    }
}

/// The path parameters by name, percent-decoded (invalid UTF-8 is a 400).
pub(crate) struct PathParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for PathParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) =
            Path::<Vec<(String, String)>>::from_request_parts(parts, state).await.map_err(|rejection| {
                ApiError::invalid_argument(format!("invalid path parameter: {rejection}"))
            })?;
        Ok(Self(params))
    }
}

impl PathParams {
    /// The parameter `name` of the route template; the router guarantees it is there.
    pub(crate) fn get(&self, name: &str) -> Result<&str, ApiError> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| ApiError::internal(format!("the route has no path parameter {name}")))
    }

    /// The `{group}` parameter as a valid group name.
    pub(crate) fn group(&self) -> Result<GroupName, ApiError> {
        Ok(GroupName::new(self.get("group")?)?)
    }

    /// The parameter `name` as a UUID.
    pub(crate) fn uuid(&self, name: &str) -> Result<Uuid, ApiError> {
        parse_uuid(self.get(name)?)
    }
}

/// The query string as ordered pairs. Parameters are parsed by hand so that every bad value
/// gets a precise 400 and repeated parameters (`type=a&type=b`) are possible.
pub(crate) struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|rejection| ApiError::invalid_argument(format!("invalid query string: {rejection}")))?;
        Ok(Self(pairs))
    }
}

/// Reads are capped, not rejected, above this many events or streams.
pub(crate) const MAX_LIMIT: usize = 1000;
pub(crate) const DEFAULT_LIMIT: usize = 100;

impl QueryParams {
    /// The value of a parameter that may appear at most once.
    pub(crate) fn one<'a>(&'a self, name: &'a str) -> Result<Option<&'a str>, ApiError> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::invalid_argument(format!(
                "query parameter {name} is given more than once"
            )));
        }
        Ok(first)
    }

    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub(crate) fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.one(name)?
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::invalid_argument(format!("{name} must be a non-negative integer, got {v:?}"))
                })
            })
            .transpose()
    }

    /// A count that must be positive: `default` when absent, capped (not rejected) above `cap`.
    pub(crate) fn count(&self, name: &str, default: usize, cap: usize) -> Result<usize, ApiError> {
        match self.one(name)? {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(0) | Err(_) => {
                    Err(ApiError::invalid_argument(format!("{name} must be a positive integer, got {v:?}")))
                }
                Ok(n) => Ok(usize::try_from(n).unwrap_or(cap).min(cap)),
            },
        }
    }

    /// `limit`: default 100, at least 1, capped at 1000.
    pub(crate) fn limit(&self) -> Result<usize, ApiError> {
        self.count("limit", DEFAULT_LIMIT, MAX_LIMIT)
    }

    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.one(name)?
            .map(|v| match v {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(ApiError::invalid_argument(format!("{name} must be true or false, got {v:?}"))),
            })
            .transpose()
    }

    pub(crate) fn timestamp(&self, name: &str) -> Result<Option<Timestamp>, ApiError> {
        self.one(name)?
            .map(|v| {
                v.parse::<Timestamp>().map_err(|_| {
                    ApiError::invalid_argument(format!("{name} must be an RFC 3339 timestamp, got {v:?}"))
                })
            })
            .transpose()
    }

    pub(crate) fn category(&self) -> Result<Option<Category>, ApiError> {
        Ok(self.one("category")?.map(Category::new).transpose()?)
    }

    /// The filter of the global log and of subscriptions: `type` (repeatable), `category`,
    /// `correlation_id`, `since`, `until`.
    pub(crate) fn log_filter(&self) -> Result<LogFilter, ApiError> {
        let types = self.all("type").map(TypePattern::new).collect::<Result<Vec<_>, _>>()?;
        Ok(LogFilter {
            types,
            category: self.category()?,
            correlation_id: self.one("correlation_id")?.map(str::to_owned),
            since: self.timestamp("since")?,
            until: self.timestamp("until")?,
            tenant: TenantScope::All,
        })
    }
}
