//! The schema registry: register a version of an event type's schema, list them, show one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bifrost_api::{Problem, SchemaBody, SchemaListBody, SchemaRequest};

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::{JsonBytes, PathParams};
use crate::wire::parse_body;

/// Registers a JSON Schema (2020-12) for one version of an event type, in the caller's
/// tenant. Appends of that type and `schema_version` are then checked against it.
#[utoipa::path(
    put,
    path = "/v1/schemas/{type}/{version}",
    tag = "schemas",
    params(
        ("type" = String, Path, description = "The event type"),
        ("version" = u32, Path, description = "The schema version (>= 1), as events carry it in `schema_version`"),
    ),
    request_body(content = SchemaRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = SchemaBody),
        (status = 200, description = "The same schema was registered already", body = SchemaBody),
        (status = 400, description = "An invalid schema or a remote `$ref` (`bifrost:invalid-schema`), a bad type or version", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another schema has this version (`bifrost:schema-exists`), or it breaks backward compatibility (`bifrost:schema-incompatible`, with `errors`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    body: JsonBytes,
) -> ApiResult<(StatusCode, Json<SchemaBody>)> {
    let request: SchemaRequest = parse_body(&body.0)?;
    let (created, schema) =
        state.schemas.put(caller.tenant.as_deref(), path.get("type")?, path.get("version")?, request).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(schema)))
}

/// The registered schemas of the caller's tenant, by type and version.
#[utoipa::path(
    get,
    path = "/v1/schemas",
    tag = "schemas",
    responses((status = 200, description = "Every schema (without its document)", body = SchemaListBody))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> ApiResult<Json<SchemaListBody>> {
    Ok(Json(SchemaListBody { schemas: state.schemas.list(caller.tenant.as_deref()).await? }))
}

/// One registered schema with its document.
#[utoipa::path(
    get,
    path = "/v1/schemas/{type}/{version}",
    tag = "schemas",
    params(
        ("type" = String, Path, description = "The event type"),
        ("version" = u32, Path, description = "The schema version"),
    ),
    responses(
        (status = 200, description = "The schema", body = SchemaBody),
        (status = 404, description = "No such schema (`bifrost:schema-not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<Json<SchemaBody>> {
    Ok(Json(state.schemas.get(caller.tenant.as_deref(), path.get("type")?, path.get("version")?).await?))
}
