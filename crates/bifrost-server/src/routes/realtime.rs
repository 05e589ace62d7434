//! `/v1/realtime`: publishes to WebSocket channels, room presence and bridging rules. The
//! delivery itself is the realtime hub's.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bifrost_api::{
    PresenceBody, Problem, PublishRequest, PublishedBody, RealtimeBridgeBody, RealtimeBridgeListBody,
    RealtimeBridgeRequest, StoredPublishBody,
};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBytes, PathParams};
use crate::realtime::Publish;
use crate::wire::parse_body;

/// Publishes to rooms, users and streams: ephemeral (`202`, sent to who is connected now on
/// any node, never stored) or persistent (`201`, one stored event that also reaches
/// `stream:`/`type:` subscribers, SSE, consumer groups and webhooks).
#[utoipa::path(
    post,
    path = "/v1/realtime/publish",
    tag = "realtime",
    request_body(content = PublishRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored (persistent)", body = StoredPublishBody),
        (status = 202, description = "Sent (ephemeral)", body = PublishedBody),
        (status = 400, description = "No target, a bad name or type", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`data` over the event size limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn publish(
    State(state): State<AppState>,
    Caller(caller): Caller,
    body: JsonBytes,
) -> ApiResult<Response> {
    let request: PublishRequest = parse_body(&body.0)?;
    let publish =
        Publish::from_request(request, state.config.max_event_bytes)?.in_tenant(caller.tenant.clone());
    let hub = &state.realtime;
    if !publish.persistent {
        let message_id = hub.publish_ephemeral(publish).await;
        return Ok((StatusCode::ACCEPTED, Json(PublishedBody { message_id })).into_response());
    }
    let (event_id, stream, position) = hub.publish_persistent(publish).await?;
    let body =
        StoredPublishBody { event_id: event_id.to_string(), stream: stream.as_str().to_owned(), position };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Who is in a room, on every node.
#[utoipa::path(
    get,
    path = "/v1/realtime/rooms/{room}/presence",
    tag = "realtime",
    params(("room" = String, Path, description = "The room, e.g. `project:101`")),
    responses(
        (status = 200, description = "The room's users and their connections", body = PresenceBody),
        (status = 400, description = "Not a room name", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn presence(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<Json<PresenceBody>> {
    let room = path.get("room")?;
    crate::realtime::check_room(room).map_err(ApiError::invalid_argument)?;
    state.realtime.start_cluster().await;
    Ok(Json(state.realtime.snapshot(&crate::realtime::room_key(caller.tenant.as_deref(), room))))
}

/// Creates (`201`) or replaces (`200`) a bridging rule.
#[utoipa::path(
    put,
    path = "/v1/realtime/bridges/{name}",
    tag = "realtime",
    params(("name" = String, Path, description = "The rule's name")),
    request_body(content = RealtimeBridgeRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced", body = RealtimeBridgeBody),
        (status = 201, description = "Created", body = RealtimeBridgeBody),
        (status = 400, description = "A bad field or template", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_bridge(
    State(state): State<AppState>,
    path: PathParams,
    body: JsonBytes,
) -> ApiResult<(StatusCode, Json<RealtimeBridgeBody>)> {
    let request: RealtimeBridgeRequest = parse_body(&body.0)?;
    let (created, bridge) = state.realtime.bridges.put(path.get("name")?, request).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(bridge)))
}

/// One bridging rule.
#[utoipa::path(
    get,
    path = "/v1/realtime/bridges/{name}",
    tag = "realtime",
    params(("name" = String, Path, description = "The rule's name")),
    responses(
        (status = 200, description = "The rule", body = RealtimeBridgeBody),
        (status = 404, description = "`bifrost:bridge-not-found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_bridge(
    State(state): State<AppState>,
    path: PathParams,
) -> ApiResult<Json<RealtimeBridgeBody>> {
    Ok(Json(state.realtime.bridges.get(path.get("name")?).await?))
}

/// Deletes a bridging rule.
#[utoipa::path(
    delete,
    path = "/v1/realtime/bridges/{name}",
    tag = "realtime",
    params(("name" = String, Path, description = "The rule's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`bifrost:bridge-not-found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_bridge(State(state): State<AppState>, path: PathParams) -> ApiResult<StatusCode> {
    state.realtime.bridges.delete(path.get("name")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every bridging rule, by name.
#[utoipa::path(
    get,
    path = "/v1/realtime/bridges",
    tag = "realtime",
    responses((status = 200, description = "The rules", body = RealtimeBridgeListBody))
)]
pub(crate) async fn list_bridges(State(state): State<AppState>) -> ApiResult<Json<RealtimeBridgeListBody>> {
    Ok(Json(RealtimeBridgeListBody { bridges: state.realtime.bridges.list().await? }))
}
