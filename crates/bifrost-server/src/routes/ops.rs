//! Operations: health, readiness, metrics, the OpenAPI document, and the fallback.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bifrost_core::StreamListQuery;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ProblemType};
use crate::routes::json_bytes;
use bifrost_api::{Problem, StatusBody};

/// How long the readiness probe waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up", body = StatusBody)))]
pub(crate) async fn healthz() -> Json<StatusBody> {
    Json(StatusBody { status: "ok".into() })
}

/// The store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The store answers", body = StatusBody),
        (status = 503, description = "The store does not answer", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> ApiResult<Json<StatusBody>> {
    let query = StreamListQuery { limit: 1, ..StreamListQuery::default() };
    match tokio::time::timeout(READY_TIMEOUT, state.store.list_streams(&query)).await {
        Ok(Ok(_)) => Ok(Json(StatusBody { status: "ready".into() })),
        Ok(Err(e)) => Err(ApiError::unavailable(format!("the store is not reachable: {e}"))),
        Err(_) => Err(ApiError::unavailable("the store did not answer in time")),
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
        (status = 503, description = "No metrics recorder is installed", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let handle = state.metrics.as_ref().ok_or_else(|| ApiError::unavailable("metrics are not enabled"))?;
    crate::metrics::record_group_gauges(state.groups.as_ref()).await;
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render()).into_response())
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
pub(crate) async fn openapi() -> Response {
    json_bytes(crate::openapi::openapi_json())
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(ProblemType::NotFound, "no such route")
}
