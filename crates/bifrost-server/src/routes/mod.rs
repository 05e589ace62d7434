//! The routes of the v1 API, each documented for `/openapi.json` next to its handler.

pub(crate) mod bridges;
pub(crate) mod cluster;
pub(crate) mod groups;
pub(crate) mod keys;
pub(crate) mod live;
pub(crate) mod log;
pub(crate) mod ops;
pub(crate) mod realtime;
pub(crate) mod schemas;
pub(crate) mod streams;
pub(crate) mod webhooks;
pub(crate) mod ws;

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::openapi::ApiDoc;

/// Every documented route. The OpenAPI document and the router come from this one list, so
/// they cannot drift apart.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(streams::append, streams::read))
        .routes(routes!(streams::info, streams::delete))
        .routes(routes!(streams::list))
        .routes(routes!(streams::append_many))
        .routes(routes!(log::read_log))
        .routes(routes!(log::event_by_id))
        .routes(routes!(log::head))
        .routes(routes!(live::subscribe))
        .routes(routes!(ws::ws))
        .routes(routes!(realtime::publish))
        .routes(routes!(realtime::presence))
        .routes(routes!(realtime::put_bridge, realtime::get_bridge, realtime::delete_bridge))
        .routes(routes!(realtime::list_bridges))
        .routes(routes!(groups::put_group, groups::get_group, groups::delete_group))
        .routes(routes!(groups::list_groups))
        .routes(routes!(groups::fetch))
        .routes(routes!(groups::ack))
        .routes(routes!(groups::nack))
        .routes(routes!(groups::dead_letters))
        .routes(routes!(groups::replay))
        .routes(routes!(groups::discard))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::patch, webhooks::delete))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::messages))
        .routes(routes!(webhooks::message))
        .routes(routes!(webhooks::resend))
        .routes(routes!(webhooks::recover))
        .routes(routes!(webhooks::attempts))
        .routes(routes!(webhooks::test))
        .routes(routes!(bridges::put, bridges::get, bridges::delete))
        .routes(routes!(bridges::list))
        .routes(routes!(bridges::dead_letters))
        .routes(routes!(bridges::delete_dead_letter))
        .routes(routes!(cluster::nodes))
        .routes(routes!(keys::create, keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(schemas::put, schemas::get))
        .routes(routes!(schemas::list))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
}

/// A JSON body that was written by hand (the event writer, the OpenAPI document).
pub(crate) fn json_bytes(body: impl Into<Body>) -> Response {
    ([(CONTENT_TYPE, "application/json")], body.into()).into_response()
}
