//! Webhooks: endpoints, their messages and attempts, resend, recover and test sends. The
//! delivery itself is `bifrost_webhooks`'s; this module maps it to the wire.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bifrost_api::{
    AttemptsBody, Problem, RecoverRequest, RecoveringBody, RotateSecretBody, RotateSecretRequest, TestBody,
    TestRequest, WebhookBody, WebhookCreatedBody, WebhookListBody, WebhookMessageBody, WebhookMessagesBody,
    WebhookRequest,
};
use bifrost_webhooks::{WebhookError, Webhooks};

use crate::AppState;
use crate::auth::{Caller, Principal};
use crate::error::{ApiError, ApiResult, ProblemType};
use crate::extract::{JsonBytes, OptionalJsonBytes, PathParams, QueryParams};
use crate::wire::parse_body;

impl From<WebhookError> for ApiError {
    fn from(err: WebhookError) -> Self {
        let detail = err.to_string();
        match err {
            WebhookError::Invalid(_) => ApiError::invalid_argument(detail),
            WebhookError::UrlForbidden(_) => ApiError::new(ProblemType::WebhookUrlForbidden, detail),
            WebhookError::NotFound(id) => {
                ApiError::new(ProblemType::WebhookNotFound, detail).with("id", id.into())
            }
            WebhookError::MessageNotFound(_) => ApiError::new(ProblemType::MessageNotFound, detail),
            WebhookError::Disabled(id) => {
                ApiError::new(ProblemType::WebhookDisabled, detail).with("id", id.into())
            }
            WebhookError::Store(e) => e.into(),
        }
    }
}

fn webhooks(state: &AppState) -> ApiResult<&Webhooks> {
    state.webhooks.as_ref().ok_or_else(|| ApiError::unavailable("webhooks are not running on this server"))
}

/// The webhooks, once the endpoint `{id}` is found to be the caller's tenant's: another
/// tenant's endpoint does not exist for it.
async fn owned<'s>(state: &'s AppState, caller: &Principal, path: &PathParams) -> ApiResult<&'s Webhooks> {
    let webhooks = webhooks(state)?;
    let id = path.get("id")?;
    if !caller.view().owns_scope(&webhooks.tenant(id).await?) {
        return Err(WebhookError::NotFound(id.to_owned()).into());
    }
    Ok(webhooks)
}

/// Creates an endpoint. The answer carries its secret, shown this once.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    request_body(content = WebhookRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created, with its secret", body = WebhookCreatedBody),
        (status = 400, description = "A bad field", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The URL names a forbidden address (`bifrost:webhook-url-forbidden`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    body: JsonBytes,
) -> ApiResult<(StatusCode, Json<WebhookCreatedBody>)> {
    let request: WebhookRequest = parse_body(&body.0)?;
    let (webhook, secret) = webhooks(&state)?.create(request, caller.view().scope()).await?;
    Ok((StatusCode::CREATED, Json(WebhookCreatedBody { webhook, secret })))
}

/// Endpoints in creation order.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    params(
        ("after" = Option<String>, Query, description = "The `next` of the previous page"),
        ("limit" = Option<usize>, Query, description = "Default 100, at most 1000"),
    ),
    responses((status = 200, description = "A page of endpoints", body = WebhookListBody))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: QueryParams,
) -> ApiResult<Json<WebhookListBody>> {
    let limit = query.limit()?;
    let view = caller.view();
    let (webhooks, next) =
        webhooks(&state)?.list(query.one("after")?, Some(limit), |tenant| view.owns_scope(tenant)).await?;
    Ok(Json(WebhookListBody { webhooks, next }))
}

/// An endpoint (never its secret).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookBody),
        (status = 404, description = "`bifrost:webhook-not-found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<Json<WebhookBody>> {
    Ok(Json(owned(&state, &caller, &path).await?.get(path.get("id")?).await?))
}

/// Changes an endpoint: a JSON merge patch of any field but `secret` and `start`.
/// `"enabled": true` re-enables it; delivery resumes where it stopped.
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id")),
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 200, description = "The endpoint", body = WebhookBody),
        (status = 400, description = "A bad field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`bifrost:webhook-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`bifrost:webhook-url-forbidden`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn patch(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    body: JsonBytes,
) -> ApiResult<Json<WebhookBody>> {
    let patch: serde_json::Value = parse_body(&body.0)?;
    Ok(Json(owned(&state, &caller, &path).await?.patch(path.get("id")?, &patch).await?))
}

/// Deletes an endpoint with its messages and attempts.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`bifrost:webhook-not-found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<StatusCode> {
    owned(&state, &caller, &path).await?.delete(path.get("id")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new secret; the previous one keeps signing for `grace_s` (default a day).
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/secret/rotate",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id")),
    request_body(content = Option<RotateSecretRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "The new secret", body = RotateSecretBody),
        (status = 400, description = "A bad secret", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`bifrost:webhook-not-found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn rotate_secret(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    body: OptionalJsonBytes,
) -> ApiResult<Json<RotateSecretBody>> {
    let request = body.parse_or_default::<RotateSecretRequest>()?;
    Ok(Json(owned(&state, &caller, &path).await?.rotate_secret(path.get("id")?, request).await?))
}

/// Attempted messages, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/messages",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "The endpoint id"),
        ("status" = Option<String>, Query, description = "pending, succeeded or failed"),
        ("before" = Option<String>, Query, description = "The `next` of the previous page"),
        ("limit" = Option<usize>, Query, description = "Default 100, at most 1000"),
    ),
    responses(
        (status = 200, description = "A page of messages", body = WebhookMessagesBody),
        (status = 404, description = "`bifrost:webhook-not-found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn messages(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<Json<WebhookMessagesBody>> {
    let limit = query.limit()?;
    let body = owned(&state, &caller, &path)
        .await?
        .messages(path.get("id")?, query.one("status")?, query.one("before")?, Some(limit))
        .await?;
    Ok(Json(body))
}

/// One message: its status, attempts and the body it is sent with.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/messages/{event_id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id"), ("event_id" = String, Path, description = "The event id")),
    responses(
        (status = 200, description = "The message", body = WebhookMessageBody),
        (status = 404, description = "`bifrost:webhook-not-found`, or `bifrost:message-not-found` when the filter does not match", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn message(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<Json<WebhookMessageBody>> {
    Ok(Json(owned(&state, &caller, &path).await?.message(path.get("id")?, path.get("event_id")?).await?))
}

/// Sends a message again now, with a fresh schedule, whatever its status.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/messages/{event_id}/resend",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id"), ("event_id" = String, Path, description = "The event id")),
    responses(
        (status = 202, description = "Queued"),
        (status = 404, description = "`bifrost:webhook-not-found` or `bifrost:message-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The endpoint is disabled (`bifrost:webhook-disabled`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn resend(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<StatusCode> {
    owned(&state, &caller, &path).await?.resend(path.get("id")?, path.get("event_id")?).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Sends again, in position order, every message that failed in the window.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/recover",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id")),
    request_body(content = RecoverRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued", body = RecoveringBody),
        (status = 400, description = "A bad timestamp", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`bifrost:webhook-not-found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The endpoint is disabled (`bifrost:webhook-disabled`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn recover(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    body: JsonBytes,
) -> ApiResult<(StatusCode, Json<RecoveringBody>)> {
    let request: RecoverRequest = parse_body(&body.0)?;
    let recovering = owned(&state, &caller, &path).await?.recover(path.get("id")?, request).await?;
    Ok((StatusCode::ACCEPTED, Json(RecoveringBody { recovering })))
}

/// The attempt log, newest first (kept 30 days).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/attempts",
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "The endpoint id"),
        ("status" = Option<String>, Query, description = "succeeded or failed"),
        ("event_id" = Option<String>, Query, description = "Only this message's attempts"),
        ("before" = Option<String>, Query, description = "The `next` of the previous page"),
        ("limit" = Option<usize>, Query, description = "Default 100, at most 1000"),
    ),
    responses(
        (status = 200, description = "A page of attempts", body = AttemptsBody),
        (status = 404, description = "`bifrost:webhook-not-found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn attempts(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<Json<AttemptsBody>> {
    let limit = query.limit()?;
    let body = owned(&state, &caller, &path)
        .await?
        .attempts(
            path.get("id")?,
            query.one("status")?,
            query.one("event_id")?,
            query.one("before")?,
            Some(limit),
        )
        .await?;
    Ok(Json(body))
}

/// One attempt of a `bifrost.webhook.test` message (not stored, no retry).
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/test",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint id")),
    request_body(content = Option<TestRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "The attempt", body = TestBody),
        (status = 404, description = "`bifrost:webhook-not-found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn test(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    body: OptionalJsonBytes,
) -> ApiResult<Json<TestBody>> {
    let request = body.parse_or_default::<TestRequest>()?;
    let attempt = owned(&state, &caller, &path).await?.test(path.get("id")?, request).await?;
    Ok(Json(TestBody { attempt }))
}
