//! `/v1/bridges`: broker bridges. The bridging itself is `bifrost_bridges`'s; this module
//! maps it to the wire.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bifrost_api::{BridgeBody, BridgeListBody, BridgeRequest, Problem};
use bifrost_bridges::BridgeError;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ProblemType};
use crate::extract::{JsonBytes, PathParams};
use crate::wire::parse_body;

impl From<BridgeError> for ApiError {
    fn from(err: BridgeError) -> Self {
        let detail = err.to_string();
        match err {
            BridgeError::Invalid(_) => ApiError::invalid_argument(detail),
            BridgeError::NotFound(name) => {
                ApiError::new(ProblemType::BridgeNotFound, detail).with("bridge", name.into())
            }
            BridgeError::Store(e) => e.into(),
        }
    }
}

/// Creates (`201`) or replaces (`200`) a bridge: matching events out to NATS JetStream,
/// RabbitMQ, Redis Streams or Redis Pub/Sub, at-least-once and in log order, run by one
/// node at a time. `start` counts only at creation.
#[utoipa::path(
    put,
    path = "/v1/bridges/{name}",
    tag = "bridges",
    params(("name" = String, Path, description = "The bridge's name")),
    request_body(content = BridgeRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced", body = BridgeBody),
        (status = 201, description = "Created", body = BridgeBody),
        (status = 400, description = "A bad field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put(
    State(state): State<AppState>,
    path: PathParams,
    body: JsonBytes,
) -> ApiResult<(StatusCode, Json<BridgeBody>)> {
    let request: BridgeRequest = parse_body(&body.0)?;
    let (created, bridge) = state.bridges.put(path.get("name")?, request).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(bridge)))
}

/// A bridge: its settings (the URL's password as `***`), whether it runs and where, its
/// checkpoint, lag, messages published and last error.
#[utoipa::path(
    get,
    path = "/v1/bridges/{name}",
    tag = "bridges",
    params(("name" = String, Path, description = "The bridge's name")),
    responses(
        (status = 200, description = "The bridge", body = BridgeBody),
        (status = 404, description = "`bifrost:bridge-not-found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get(State(state): State<AppState>, path: PathParams) -> ApiResult<Json<BridgeBody>> {
    Ok(Json(state.bridges.get(path.get("name")?).await?))
}

/// Deletes a bridge; it stops on every node.
#[utoipa::path(
    delete,
    path = "/v1/bridges/{name}",
    tag = "bridges",
    params(("name" = String, Path, description = "The bridge's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`bifrost:bridge-not-found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete(State(state): State<AppState>, path: PathParams) -> ApiResult<StatusCode> {
    state.bridges.delete(path.get("name")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every bridge, by name.
#[utoipa::path(
    get,
    path = "/v1/bridges",
    tag = "bridges",
    responses((status = 200, description = "The bridges", body = BridgeListBody))
)]
pub(crate) async fn list(State(state): State<AppState>) -> ApiResult<Json<BridgeListBody>> {
    Ok(Json(BridgeListBody { bridges: state.bridges.list().await? }))
}
