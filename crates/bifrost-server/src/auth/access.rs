//! What each route needs, decided from its method and template alone: the one table every
//! request passes through (the `authorize` layer), so no handler can forget a check. The
//! route-table test walks `/openapi.json` and fails on any route this table does not name.

use axum::http::Method;

use super::principal::Scope;

/// What a route asks of the caller once auth is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Probes and the API document: never a credential.
    Open,
    /// `/metrics`: open, or `admin` with `auth.protect_metrics`.
    Metrics,
    /// A credential with this scope (`admin` passes every scope).
    Scope(Scope),
    /// `/v1/ws`: the connection authenticates itself (at the upgrade or in an `auth` frame
    /// within the auth timeout), and needs `subscribe`.
    WebSocket,
}

/// Which named path parameter, if any, is a stream that the credential's restrictions apply to.
pub(crate) fn restricted_stream(template: &str) -> bool {
    template.starts_with("/v1/streams/{stream}")
}

/// The access `method` on `template` needs; `None` for a route this table does not know
/// (the layer then asks for `admin`, and the route-table test fails).
pub(crate) fn required(method: &Method, template: &str) -> Option<Access> {
    use bifrost_api::ScopeBody::{Admin, Append, Groups, Read, Subscribe};
    let m = method.as_str();
    let access = match (m, template) {
        ("GET", "/healthz" | "/readyz" | "/openapi.json" | "/") => Access::Open,
        ("GET", "/metrics") => Access::Metrics,

        ("GET", "/v1/streams" | "/v1/streams/{stream}" | "/v1/streams/{stream}/events") => {
            Access::Scope(Read)
        }
        ("GET", "/v1/events" | "/v1/events/{id}" | "/v1/head") => Access::Scope(Read),
        ("GET", "/v1/schemas" | "/v1/schemas/{type}/{version}") => Access::Scope(Read),
        ("POST", "/v1/streams/{stream}/events" | "/v1/append") => Access::Scope(Append),
        ("DELETE", "/v1/streams/{stream}") => Access::Scope(Admin),
        ("PUT", "/v1/schemas/{type}/{version}") => Access::Scope(Admin),

        ("GET", "/v1/subscribe" | "/v1/realtime/rooms/{room}/presence") => Access::Scope(Subscribe),
        ("GET", "/v1/ws") => Access::WebSocket,
        ("POST", "/v1/realtime/publish") => Access::Scope(Append),
        (_, "/v1/realtime/bridges" | "/v1/realtime/bridges/{name}") => Access::Scope(Admin),

        ("GET", "/v1/groups" | "/v1/groups/{group}" | "/v1/groups/{group}/dead-letters") => {
            Access::Scope(Groups)
        }
        ("POST", "/v1/groups/{group}/fetch" | "/v1/groups/{group}/ack" | "/v1/groups/{group}/nack") => {
            Access::Scope(Groups)
        }
        ("PUT" | "DELETE", "/v1/groups/{group}") => Access::Scope(Admin),
        ("POST", "/v1/groups/{group}/dead-letters/replay") => Access::Scope(Admin),
        ("DELETE", "/v1/groups/{group}/dead-letters/{event_id}") => Access::Scope(Admin),

        (_, t) if t == "/v1/keys" || t.starts_with("/v1/keys/") => Access::Scope(Admin),
        (_, t) if t == "/v1/webhooks" || t.starts_with("/v1/webhooks/") => Access::Scope(Admin),
        (_, t) if t == "/v1/bridges" || t.starts_with("/v1/bridges/") => Access::Scope(Admin),
        (_, t) if t.starts_with("/v1/subjects/") => Access::Scope(Admin),
        (_, t) if t.starts_with("/v1/cluster/") => Access::Scope(Admin),
        _ => return None,
    };
    Some(access)
}
