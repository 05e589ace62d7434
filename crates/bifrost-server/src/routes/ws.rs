//! `GET /v1/ws`: the WebSocket upgrade, after the token check.

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::HeaderMap;
use axum::response::Response;
use bifrost_api::Problem;

use crate::AppState;
use crate::auth::{bearer, forbidden, unauthorized};
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::realtime::{self, Principal, Refusal};

/// A tungstenite read buffer that grows on demand: an idle connection keeps it small.
const READ_BUFFER: usize = 4096;

/// Opens a WebSocket of JSON text frames (ops `auth`, `subscribe`, `unsubscribe`,
/// `publish`, `presence`, `ping`; the server sends `connected`, `subscribed`, `event`,
/// `message`, `presence`, `join`, `leave`, `ok`, `pong` and `error`). With a JWT key
/// configured, the token comes in `?access_token=`, `Authorization: Bearer` or an `auth`
/// frame within 10 s; with none, every connection is admin and names itself with `user_id`.
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "live",
    params(
        ("access_token" = Option<String>, Query, description = "A JWT (or `Authorization: Bearer`)"),
        ("user_id" = Option<String>, Query, description = "The connection's user, when no JWT key is configured"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "A bad token (`bifrost:unauthorized`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A credential without the subscribe scope (`bifrost:forbidden`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryParams,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let hub = &state.realtime;
    let config = &hub.config;
    let token = match query.one("access_token")? {
        Some(token) => Some(token.to_owned()),
        None => bearer(&headers),
    };
    let principal = match token {
        _ if !state.auth.is_on() => Some(Principal::dev(query.one("user_id")?.map(str::to_owned))),
        Some(token) => match hub.authenticate(&token).await {
            Ok(principal) => Some(principal),
            Err(Refusal::Unauthorized(e)) => return Ok(unauthorized(&e)),
            Err(Refusal::Forbidden(e)) => return Err(forbidden(e)),
        },
        None if config.allow_anonymous => Some(Principal::anonymous(&config.anonymous_channels)),
        // It has the auth timeout to send `auth {"token"}`.
        None => None,
    };
    // The credential is judged first, as on every route: 401, then 403, then the rest.
    let upgrade = upgrade.map_err(|e| ApiError::invalid_request(format!("not a WebSocket upgrade: {e}")))?;
    let max_frame = config.max_frame_bytes;
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| realtime::serve(socket, state, principal)))
}
