//! `GET /v1/ws`: the WebSocket upgrade, after the token check.

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bifrost_api::{Problem, ProblemType};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::realtime::{self, Principal};

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
    )
)]
pub(crate) async fn ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: QueryParams,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let hub = &state.realtime;
    let config = &hub.config;
    let verifier =
        hub.verifier().map_err(|e| ApiError::unavailable(format!("WebSocket auth is unusable: {e}")))?;
    let token = match query.one("access_token")? {
        Some(token) => Some(token.to_owned()),
        None => bearer(&headers),
    };
    let principal = match (verifier, token) {
        (None, _) => Some(Principal::dev(query.one("user_id")?.map(str::to_owned))),
        (Some(verifier), Some(token)) => match verifier.verify(&token) {
            Ok(principal) => Some(principal),
            Err(e) => return Ok(unauthorized(&e.0)),
        },
        (Some(_), None) if config.allow_anonymous => Some(Principal::anonymous(&config.anonymous_channels)),
        // It has the auth timeout to send `auth {"token"}`.
        (Some(_), None) => None,
    };
    let max_frame = config.max_frame_bytes;
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| realtime::serve(socket, state, principal)))
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

fn unauthorized(reason: &str) -> Response {
    let mut response =
        ApiError::new(ProblemType::Unauthorized, format!("the token was refused: {reason}")).into_response();
    response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
