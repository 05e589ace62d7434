//! `GET /v1/ws`: the WebSocket upgrade.

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use bifrost_api::Problem;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::QueryParams;
use crate::realtime;

/// Opens a WebSocket of JSON text frames: `subscribe {"channel", "since_position"?}`,
/// `unsubscribe {"channel"}`, `ping`; the server sends `connected`, `subscribed`, `event`,
/// `ok`, `pong` and `error` frames. No JWT key is configured: every connection may use every
/// channel and names itself with `user_id`.
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "live",
    params(("user_id" = Option<String>, Query, description = "The connection's user")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn ws(
    State(state): State<AppState>,
    query: QueryParams,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let user_id = query.one("user_id")?.map(str::to_owned);
    let max_frame = state.config.realtime.max_frame_bytes;
    Ok(upgrade
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| realtime::serve(socket, state, user_id)))
}
