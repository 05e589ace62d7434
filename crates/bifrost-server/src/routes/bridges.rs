//! `/v1/bridges`: broker bridges. The bridging itself is `bifrost_bridges`'s; this module
//! maps it to the wire.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bifrost_api::{BridgeBody, BridgeListBody, BridgeRequest, Problem};
use bifrost_bridges::{BridgeError, DeadLetter, check_name, local_name};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Caller;
use crate::auth::tenancy::TenantView;
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
            BridgeError::ConfigManaged(name) => {
                ApiError::new(ProblemType::BridgeConfigManaged, detail).with("bridge", name.into())
            }
            BridgeError::DeadLetterNotFound { bridge, id } => {
                ApiError::new(ProblemType::DeadLetterNotFound, detail)
                    .with("bridge", bridge.into())
                    .with("id", id.into())
            }
            BridgeError::Store(e) => e.into(),
        }
    }
}

/// Creates (`201`) or replaces (`200`) a bridge, run by one node at a time. Out: matching
/// events to NATS JetStream, RabbitMQ, Redis Streams or Redis Pub/Sub, at-least-once and in
/// log order; `start` counts only at creation. In: a JetStream durable consumer, a RabbitMQ
/// queue or a Redis stream's group `bifrost`, each message appended as an event (idempotent
/// by the message's id) and acked once stored.
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
        (status = 409, description = "Set in the configuration file (`bifrost:bridge-config-managed`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    body: JsonBytes,
) -> ApiResult<(StatusCode, Json<BridgeBody>)> {
    let view = caller.view();
    let request: BridgeRequest = parse_body(&body.0)?;
    let name = bridge_name(view, &path)?;
    let (created, bridge) =
        state.bridges.put_in(&name, request, view.scope()).await.map_err(|e| local_error(view, e))?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(local_body(view, bridge))))
}

/// The `{name}` of the path as the store keeps it: in the caller's tenant.
fn bridge_name(view: TenantView<'_>, path: &PathParams) -> ApiResult<String> {
    let local = path.get("name")?;
    check_name(local).map_err(BridgeError::from)?;
    Ok(view.prefix(Some(local)).unwrap_or_default())
}

fn local_body(view: TenantView<'_>, mut body: BridgeBody) -> BridgeBody {
    if view.is_tenant() {
        body.name = local_name(&body.name).to_owned();
    }
    body
}

fn local_error(view: TenantView<'_>, error: BridgeError) -> BridgeError {
    match error {
        BridgeError::NotFound(name) if view.is_tenant() => {
            BridgeError::NotFound(local_name(&name).to_owned())
        }
        BridgeError::ConfigManaged(name) if view.is_tenant() => {
            BridgeError::ConfigManaged(local_name(&name).to_owned())
        }
        other => other,
    }
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
pub(crate) async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<Json<BridgeBody>> {
    let view = caller.view();
    let bridge = state.bridges.get(&bridge_name(view, &path)?).await.map_err(|e| local_error(view, e))?;
    Ok(Json(local_body(view, bridge)))
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
        (status = 409, description = "Set in the configuration file (`bifrost:bridge-config-managed`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<StatusCode> {
    let view = caller.view();
    state.bridges.delete(&bridge_name(view, &path)?).await.map_err(|e| local_error(view, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every bridge, by name.
#[utoipa::path(
    get,
    path = "/v1/bridges",
    tag = "bridges",
    responses((status = 200, description = "The bridges", body = BridgeListBody))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> ApiResult<Json<BridgeListBody>> {
    let view = caller.view();
    let bridges = state.bridges.list().await?;
    let bridges = bridges
        .into_iter()
        .filter(|bridge| view.owns_tenant(bridge.name.split_once('/').map(|(tenant, _)| tenant)))
        .map(|bridge| local_body(view, bridge))
        .collect();
    Ok(Json(BridgeListBody { bridges }))
}

/// An in-bridge's message that is not an event, acked and kept.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub(crate) struct BridgeDeadLetterBody {
    pub(crate) id: String,
    /// Why it is not an event.
    pub(crate) reason: String,
    /// RFC 3339.
    pub(crate) received_at: String,
    /// The message body, base64, at most 64 KiB of it.
    pub(crate) body: String,
}

/// `GET /v1/bridges/{name}/dead-letters`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub(crate) struct BridgeDeadLetterListBody {
    pub(crate) dead_letters: Vec<BridgeDeadLetterBody>,
}

impl From<DeadLetter> for BridgeDeadLetterBody {
    fn from(letter: DeadLetter) -> Self {
        Self { id: letter.id, reason: letter.reason, received_at: letter.received_at, body: letter.body }
    }
}

/// An in-bridge's dead letters, oldest first: broker messages that were not valid events
/// (JSON, names, schema, size), acked so the ones after them went on. At most 1000 are kept
/// a bridge; an out-bridge has none.
#[utoipa::path(
    get,
    path = "/v1/bridges/{name}/dead-letters",
    tag = "bridges",
    params(("name" = String, Path, description = "The bridge's name")),
    responses(
        (status = 200, description = "The dead letters", body = BridgeDeadLetterListBody),
        (status = 404, description = "`bifrost:bridge-not-found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn dead_letters(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<Json<BridgeDeadLetterListBody>> {
    let view = caller.view();
    let letters =
        state.bridges.dead_letters(&bridge_name(view, &path)?).await.map_err(|e| local_error(view, e))?;
    Ok(Json(BridgeDeadLetterListBody { dead_letters: letters.into_iter().map(Into::into).collect() }))
}

/// Forgets one dead letter of an in-bridge.
#[utoipa::path(
    delete,
    path = "/v1/bridges/{name}/dead-letters/{id}",
    tag = "bridges",
    params(
        ("name" = String, Path, description = "The bridge's name"),
        ("id" = String, Path, description = "The dead letter's id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such bridge (`bifrost:bridge-not-found`) or dead letter (`bifrost:dead-letter-not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_dead_letter(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<StatusCode> {
    let view = caller.view();
    let name = bridge_name(view, &path)?;
    state.bridges.delete_dead_letter(&name, path.get("id")?).await.map_err(|e| match e {
        BridgeError::DeadLetterNotFound { bridge, id } if view.is_tenant() => {
            BridgeError::DeadLetterNotFound { bridge: local_name(&bridge).to_owned(), id }
        }
        other => local_error(view, other),
    })?;
    Ok(StatusCode::NO_CONTENT)
}
