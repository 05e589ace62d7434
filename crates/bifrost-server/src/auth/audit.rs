//! The audit stream: once auth is on, every successful write on an `admin` route is
//! appended, before the answer leaves, to `$bifrost-audit` of the tenant that owns the
//! resource, as
//! `bifrost.audit.<resource>.<action>` with `{"actor", "resource", "change"}`. A write whose
//! audit event cannot be stored is answered 503, never 2xx: no audit, no success.
//!
//! One layer, after `authorize`, judged from the route table like the scopes: a new admin
//! route is audited without a line of its own (its resource named from its path).

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bifrost_core::{EventStore, EventType, ExpectedVersion, Metadata, NewEvent, StreamName};
use serde_json::{Map, Value, json};

use super::access::{self, Access};
use super::principal::{ActorKind, Principal, Scope};
use crate::error::ApiError;

/// The audit stream's name, without its `$`.
pub(crate) const AUDIT_STREAM: &str = "bifrost-audit";
/// Largest request or answer body kept whole for the audit; admin bodies are far smaller.
const MAX_AUDITED_BODY: usize = 8 << 20;

/// What the audit layer needs.
#[derive(Clone)]
pub(crate) struct Auditor {
    pub(crate) store: Arc<dyn EventStore>,
}

/// The audit stream of `tenant`.
pub(crate) fn audit_stream(tenant: Option<&str>) -> StreamName {
    // A constant name: valid by construction.
    let local = StreamName::system(AUDIT_STREAM).unwrap_or_else(|_| unreachable!("a valid name"));
    StreamName::in_tenant(tenant, &local)
}

/// The layer.
pub(crate) async fn audit(State(auditor): State<Auditor>, request: Request, next: Next) -> Response {
    // Cheap for everything else (reads, appends): a method and a table lookup, no copy.
    let method = request.method().clone();
    if method == Method::GET || method == Method::HEAD {
        return next.run(request).await;
    }
    let admin = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| access::required(&method, p.as_str()) == Some(Access::Scope(Scope::Admin)));
    if !admin {
        return next.run(request).await;
    }
    let template =
        request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    // Auth off: nothing is audited (behaviour, positions included, stay as they were).
    let principal = match request.extensions().get::<Arc<Principal>>() {
        Some(principal) if principal.actor.kind != ActorKind::Open => Arc::clone(principal),
        _ => return next.run(request).await,
    };
    let (mut parts, body) = request.into_parts();
    let ip = super::client_ip(&parts);
    let params = Path::<Vec<(String, String)>>::from_request_parts(&mut parts, &())
        .await
        .map(|Path(params)| params.into_iter().map(|(_, v)| v).collect())
        .unwrap_or_default();
    let query =
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).map(|Query(q)| q).unwrap_or_default();
    let Ok(body) = axum::body::to_bytes(body, MAX_AUDITED_BODY).await else {
        return ApiError::payload_too_large("the request body is larger than the configured limit")
            .into_response();
    };
    let request_body = body.clone();
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    if !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(answer) = axum::body::to_bytes(body, MAX_AUDITED_BODY).await else {
        return ApiError::internal("the answer could not be read for its audit event").into_response();
    };
    let record = Record::of(&method, &template, params, query, &request_body, &answer);
    let owner = record.owner.clone().or_else(|| principal.tenant.clone());
    let event = record.event(&principal, ip);
    match auditor.store.append(audit_stream(owner.as_deref()), ExpectedVersion::Any, vec![event]).await {
        Ok(_) => Response::from_parts(parts, Body::from(answer)),
        Err(e) => {
            tracing::error!(error = %e, route = %template, "an admin write is done but its audit event could not be stored");
            ApiError::unavailable(format!(
                "the change was made but its audit event could not be stored ({e}); the answer is withheld"
            ))
            .into_response()
        }
    }
}

/// One audit event, worked out from the route and the bodies.
struct Record {
    kind: String,
    action: String,
    id: Option<String>,
    /// The tenant that owns the resource when it is not the caller's (a key made for
    /// another tenant).
    owner: Option<String>,
    change: Value,
}

impl Record {
    fn of(
        method: &Method,
        template: &str,
        params: Vec<String>,
        query: Vec<(String, String)>,
        request: &Bytes,
        answer: &Bytes,
    ) -> Self {
        let (kind, action) = name(method, template);
        let answer: Value = serde_json::from_slice(answer).unwrap_or(Value::Null);
        let id = if params.is_empty() {
            // A create: the new resource's id is in the answer.
            answer.get("id").and_then(Value::as_str).map(str::to_owned)
        } else {
            Some(params.join("/"))
        };
        let owner = (kind == "key")
            .then(|| answer.get("tenant").and_then(Value::as_str).map(str::to_owned))
            .flatten();
        let mut change = if request.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(request).unwrap_or(Value::Null)
        };
        redact(&mut change);
        if !query.is_empty() {
            let mut object = match change {
                Value::Object(object) => object,
                Value::Null => Map::new(),
                other => Map::from_iter([("body".to_owned(), other)]),
            };
            let pairs: Map<String, Value> = query.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            object.insert("query".to_owned(), Value::Object(pairs));
            change = Value::Object(object);
        }
        Self { kind, action, id, owner, change }
    }

    fn event(&self, principal: &Principal, ip: Option<IpAddr>) -> NewEvent {
        let data = json!({
            "actor": {
                "kind": principal.actor.kind,
                "id": principal.actor.id,
                "sub": principal.actor.sub,
                "ip": ip.map(|ip| ip.to_string()),
            },
            "resource": {"kind": self.kind, "id": self.id},
            "change": self.change,
        });
        let event_type = EventType::new(&format!("bifrost.audit.{}.{}", self.kind, self.action))
            .unwrap_or_else(|_| {
                EventType::new("bifrost.audit.unknown.changed").unwrap_or_else(|_| unreachable!())
            });
        let metadata = Metadata {
            source: Some("bifrost".to_owned()),
            user_id: principal.actor.sub.clone(),
            tenant_id: self.owner.clone().or_else(|| principal.tenant.clone()),
            ..Metadata::default()
        };
        NewEvent::new(event_type, Bytes::from(data.to_string())).with_metadata(metadata)
    }
}

/// `(resource, action)` of an admin write.
fn name(method: &Method, template: &str) -> (String, String) {
    named(method, template).unwrap_or_else(|| by_path(method, template))
}

/// The admin writes this table names (a test holds every route of the router to it).
fn named(method: &Method, template: &str) -> Option<(String, String)> {
    let pair = |kind: &str, action: &str| Some((kind.to_owned(), action.to_owned()));
    match (method.as_str(), template) {
        ("POST", "/v1/keys") => pair("key", "created"),
        ("DELETE", "/v1/keys/{id}") => pair("key", "revoked"),
        ("POST", "/v1/webhooks") => pair("webhook", "created"),
        ("PATCH", "/v1/webhooks/{id}") => pair("webhook", "updated"),
        ("DELETE", "/v1/webhooks/{id}") => pair("webhook", "deleted"),
        ("POST", "/v1/webhooks/{id}/secret/rotate") => pair("webhook", "secret_rotated"),
        ("POST", "/v1/webhooks/{id}/messages/{event_id}/resend") => pair("webhook", "message_resent"),
        ("POST", "/v1/webhooks/{id}/recover") => pair("webhook", "recovered"),
        ("POST", "/v1/webhooks/{id}/test") => pair("webhook", "tested"),
        ("PUT", "/v1/bridges/{name}") => pair("bridge", "put"),
        ("DELETE", "/v1/bridges/{name}") => pair("bridge", "deleted"),
        ("DELETE", "/v1/bridges/{name}/dead-letters/{id}") => pair("bridge", "dead_letter_discarded"),
        ("PUT", "/v1/realtime/bridges/{name}") => pair("realtime_bridge", "put"),
        ("DELETE", "/v1/realtime/bridges/{name}") => pair("realtime_bridge", "deleted"),
        ("PUT", "/v1/groups/{group}") => pair("group", "put"),
        ("DELETE", "/v1/groups/{group}") => pair("group", "deleted"),
        ("POST", "/v1/groups/{group}/dead-letters/replay") => pair("group", "dead_letters_replayed"),
        ("DELETE", "/v1/groups/{group}/dead-letters/{event_id}") => pair("group", "dead_letter_discarded"),
        ("PUT", "/v1/schemas/{type}/{version}") => pair("schema", "registered"),
        ("DELETE", "/v1/streams/{stream}") => pair("stream", "deleted"),
        ("DELETE", "/v1/subjects/{subject}/key") => pair("subject", "key_deleted"),
        _ => None,
    }
}

/// A route without a line in [`named`]: named from its path, so it is audited all the same.
fn by_path(method: &Method, template: &str) -> (String, String) {
    let kind = template.trim_start_matches("/v1/").split('/').next().unwrap_or_default();
    let kind: String = kind.trim_end_matches('s').chars().map(|c| if c == '-' { '_' } else { c }).collect();
    let action = match method.as_str() {
        "POST" => "created",
        "PUT" => "put",
        "PATCH" => "updated",
        "DELETE" => "deleted",
        _ => "changed",
    };
    (if kind.is_empty() { "resource".to_owned() } else { kind }, action.to_owned())
}

/// Secrets never reach the audit stream: secret-like members become `"***"`, as do header
/// values and the password of a URL.
fn redact(value: &mut Value) {
    match value {
        Value::Object(object) => {
            for (key, member) in object.iter_mut() {
                let lower = key.to_ascii_lowercase();
                if is_secret_member(&lower) {
                    *member = Value::String("***".to_owned());
                } else if lower == "headers" {
                    if let Value::Object(headers) = member {
                        for header in headers.values_mut() {
                            *header = Value::String("***".to_owned());
                        }
                    }
                } else {
                    redact(member);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(text) => {
            if let Some(masked) = mask_url_password(text) {
                *text = masked;
            }
        }
        _ => {}
    }
}

/// A member that holds a credential: `secret`, `password`, `token`, `authorization` in its
/// name, or a key (`key`, `api_key`, `admin_key`) — not `routing_keys` and the like, which
/// name no secret.
fn is_secret_member(lower: &str) -> bool {
    ["secret", "password", "token", "authorization"].iter().any(|s| lower.contains(s))
        || lower == "key"
        || lower.ends_with("_key")
        || lower.ends_with("apikey")
}

/// `scheme://user:***@host…` for a URL with a password.
fn mask_url_password(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let (authority, tail) = rest.split_once('@')?;
    if authority.contains('/') {
        return None;
    }
    let (user, _) = authority.split_once(':')?;
    Some(format!("{scheme}://{user}:***@{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_headers_and_url_passwords_are_redacted() {
        let mut change = json!({
            "url": "amqp://bob:hunter2@broker:5672/v", "secret": "whsec_x",
            "headers": {"authorization": "Bearer t", "x-a": "1"},
            "nested": [{"api_key": "k", "name": "kept"}],
            "filter": {"routing_keys": ["order.#"]},
        });
        redact(&mut change);
        assert_eq!(
            change,
            json!({"url": "amqp://bob:***@broker:5672/v", "secret": "***",
                   "headers": {"authorization": "***", "x-a": "***"},
                   "nested": [{"api_key": "***", "name": "kept"}],
                   "filter": {"routing_keys": ["order.#"]}})
        );
    }

    #[test]
    fn every_admin_write_of_the_router_has_its_audit_name() {
        let doc: Value = serde_json::from_str(crate::openapi_json()).unwrap();
        let mut writes = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                if method == Method::GET
                    || access::required(&method, path) != Some(Access::Scope(Scope::Admin))
                {
                    continue;
                }
                let (kind, action) =
                    named(&method, path).unwrap_or_else(|| panic!("{method} {path}: name its audit event"));
                assert!(EventType::new(&format!("bifrost.audit.{kind}.{action}")).is_ok());
                writes += 1;
            }
        }
        assert!(writes >= 18, "{writes}");
        assert_eq!(by_path(&Method::POST, "/v1/archive"), ("archive".to_owned(), "created".to_owned()));
    }
}
