//! API keys: create (the secret shown once), list, revoke.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bifrost_api::{KeyBody, KeyListBody, KeyRequest, Problem};

use crate::AppState;
use crate::auth::{Caller, forbidden};
use crate::error::ApiResult;
use crate::extract::{JsonBytes, PathParams};
use crate::wire::parse_body;

/// Creates an API key of the caller's tenant (a default-tenant admin may name another).
/// The answer holds the secret (`bfk_…`): the only time it is shown.
#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "security",
    request_body(content = KeyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created, with its secret", body = KeyBody),
        (status = 400, description = "A bad field", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Naming another tenant without being a default-tenant admin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    body: JsonBytes,
) -> ApiResult<(StatusCode, Json<KeyBody>)> {
    let mut request: KeyRequest = parse_body(&body.0)?;
    let tenant = match request.tenant.take() {
        Some(tenant) if caller.tenant.as_deref() == Some(tenant.as_str()) => Some(tenant),
        Some(_) if caller.tenant.is_some() => {
            return Err(forbidden("only an admin of the default tenant may make keys of another tenant"));
        }
        Some(tenant) => Some(tenant),
        None => caller.tenant.clone(),
    };
    let key = state.auth.keys.create(request, tenant).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// The keys of the caller's tenant (never their secrets).
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "security",
    responses((status = 200, description = "The keys, oldest first", body = KeyListBody))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> ApiResult<Json<KeyListBody>> {
    Ok(Json(KeyListBody { keys: state.auth.keys.list(caller.tenant.as_deref()).await? }))
}

/// Revokes a key: refused at once here, and on every node within 5 s.
#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "security",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such key in this tenant (`bifrost:key-not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<StatusCode> {
    let id = path.get("id")?;
    state.auth.keys.revoke(id, caller.tenant.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}
