//! Consumer groups: create, change, inspect and delete groups; fetch (long-poll), ack and
//! nack leases; list, replay and discard dead letters. The delivery itself is the group
//! engine's (`bifrost_core::group::GroupEngine`: run in this process by `bifrost-bus`, or
//! shared by every node through PostgreSQL); this module maps it to the wire.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bifrost_api::{
    AckBody, AckRequest, DeadLettersBody, FetchBody, GroupBody, GroupConfigRequest, GroupListBody, NackBody,
    NackRequest, Problem, ReplayBody, ReplayRequest,
};
use bifrost_core::group::{Fetch, GroupName, LeaseToken, MAX_GROUP_NAME_LEN, Put, ReplaySelection, Verdict};

use crate::AppState;
use crate::auth::Caller;
use crate::auth::tenancy::TenantView;
use crate::error::{ApiError, ApiResult, ProblemType};
use crate::extract::{JsonBytes, OptionalJsonBytes, PathParams, QueryParams};
use crate::routes::json_bytes;
use crate::wire;

/// Events handed out by one fetch, when `max` is not given.
const DEFAULT_FETCH_MAX: usize = 10;
/// Larger `max` values are capped to this.
const MAX_FETCH_MAX: usize = 1000;
/// Longest long-poll, in milliseconds; larger `wait` values are capped to this.
const MAX_WAIT_MS: u64 = 30_000;
/// The consumer name of a fetch that gives none.
const DEFAULT_CONSUMER: &str = "anonymous";

async fn group_body(state: &AppState, view: TenantView<'_>, name: &GroupName) -> ApiResult<GroupBody> {
    let mut status = state.groups.status(name).await.map_err(|e| view.localize_error(e))?;
    status.name = view.local_group(&status.name);
    Ok(wire::group_body(status))
}

/// Creates a consumer group, or changes its settings.
#[utoipa::path(
    put,
    path = "/v1/groups/{group}",
    tag = "groups",
    params(("group" = String, Path, description = "1-128 characters of A-Z a-z 0-9 _ . : @ -")),
    request_body(content = Option<GroupConfigRequest>, content_type = "application/json",
        description = "Every field optional (the `config` of the group as GET shows it is accepted as is); no body means every default. \
            `start` counts only at creation. Changing `filter` restarts delivery from the checkpoint: leases still out expire."),
    responses(
        (status = 201, description = "Created", body = GroupBody),
        (status = 200, description = "Updated", body = GroupBody),
        (status = 400, description = "Malformed body, unknown field, bad group name, pattern, category or setting", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not application/json", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn put_group(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    body: OptionalJsonBytes,
) -> ApiResult<(StatusCode, Json<GroupBody>)> {
    let view = caller.view();
    let name = view.group(&path.group()?);
    let mut config = wire::group_config(body.parse_or_default::<GroupConfigRequest>()?)?;
    // The group sees its tenant's streams only.
    config.filter.tenant = view.scope();
    let status = match state.groups.put(&name, config).await.map_err(|e| view.localize_error(e))? {
        Put::Created => StatusCode::CREATED,
        Put::Updated => StatusCode::OK,
    };
    Ok((status, Json(group_body(&state, view, &name).await?)))
}

/// A consumer group's settings and figures.
#[utoipa::path(
    get,
    path = "/v1/groups/{group}",
    tag = "groups",
    params(("group" = String, Path, description = "The group name")),
    responses(
        (status = 200, description = "The group", body = GroupBody),
        (status = 400, description = "Bad group name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group (`bifrost:group-not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_group(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<Json<GroupBody>> {
    let view = caller.view();
    Ok(Json(group_body(&state, view, &view.group(&path.group()?)).await?))
}

/// Deletes a consumer group with its checkpoint and dead letters.
#[utoipa::path(
    delete,
    path = "/v1/groups/{group}",
    tag = "groups",
    params(("group" = String, Path, description = "The group name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad group name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group (`bifrost:group-not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_group(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<StatusCode> {
    let view = caller.view();
    state.groups.delete(&view.group(&path.group()?)).await.map_err(|e| view.localize_error(e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every consumer group, in name order.
#[utoipa::path(
    get,
    path = "/v1/groups",
    tag = "groups",
    responses((status = 200, description = "Every group", body = GroupListBody))
)]
pub(crate) async fn list_groups(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> ApiResult<Json<GroupListBody>> {
    let view = caller.view();
    let mut groups = Vec::new();
    for name in state.groups.list().await?.into_iter().filter(|name| view.owns_group(name)) {
        match state.groups.status(&name).await {
            Ok(mut status) => {
                status.name = view.local_group(&status.name);
                groups.push(wire::group_body(status));
            }
            // Deleted (through any node) since it was listed.
            Err(bifrost_core::Error::GroupNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(GroupListBody { groups }))
}

/// Leases events to a consumer, waiting up to `wait` ms for the first one.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/fetch",
    tag = "groups",
    params(
        ("group" = String, Path, description = "The group name"),
        ("max" = Option<u32>, Query, description = "Most events to lease: default 10, at least 1, larger values capped at 1000"),
        ("wait" = Option<u32>, Query, description = "Milliseconds to wait for a first event: default 0 (answer at once), larger values capped at 30000"),
        ("consumer" = Option<String>, Query, description = "Who fetches, shown in the group's `consumers`: 1-128 characters of A-Z a-z 0-9 _ . : @ -, default `anonymous`"),
    ),
    responses(
        (status = 200, description = "Leased events (an empty `messages` when none came in time). \
            While an event of a stream is leased or waiting for a retry, no later event of that stream is handed out.", body = FetchBody),
        (status = 400, description = "Bad group name, `max`, `wait` or `consumer`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group (`bifrost:group-not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn fetch(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<Response> {
    let view = caller.view();
    let name = view.group(&path.group()?);
    let max = query.count("max", DEFAULT_FETCH_MAX, MAX_FETCH_MAX)?;
    let wait = Duration::from_millis(query.u64("wait")?.unwrap_or(0).min(MAX_WAIT_MS));
    let consumer = consumer_name(query.one("consumer")?)?;
    let mut leases = tokio::select! {
        leases = state.groups.fetch(&name, Fetch::new(consumer, max, wait)) => leases.map_err(|e| view.localize_error(e))?,
        // Shutdown must not wait for long polls. A fetch cut short here hands nothing out;
        // whatever it had leased comes back after the ack timeout, as a lost answer would.
        () = state.shutdown.cancelled() => Vec::new(),
    };
    view.localize_leases(&mut leases);
    Ok(json_bytes(wire::fetch_json(&leases)))
}

/// A consumer's name follows the rule of group names.
fn consumer_name(name: Option<&str>) -> ApiResult<&str> {
    let Some(name) = name else { return Ok(DEFAULT_CONSUMER) };
    if GroupName::new(name).is_err() {
        return Err(ApiError::invalid_argument(format!(
            "invalid consumer {name:?}: use 1-{MAX_GROUP_NAME_LEN} characters of A-Z a-z 0-9 _ . : @ -"
        ))
        .with("consumer", name.into()));
    }
    Ok(name)
}

/// Acks leases: their events are done and never delivered again. Durable when answered.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/ack",
    tag = "groups",
    params(("group" = String, Path, description = "The group name")),
    request_body(content = AckRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Acked; `expired` lists the leases no longer held", body = AckBody),
        (status = 400, description = "Malformed body, bad group name, more than 1000 leases", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group (`bifrost:group-not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn ack(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    JsonBytes(body): JsonBytes,
) -> ApiResult<Json<AckBody>> {
    let view = caller.view();
    let name = view.group(&path.group()?);
    let request: AckRequest = wire::parse_body(&body)?;
    wire::check_leases(&request.leases)?;
    let (acked, expired) = settle(&state, view, &name, &request.leases, Verdict::Ack).await?;
    Ok(Json(wire::ack_body(acked, expired)))
}

/// Nacks leases: retry later, or park in the dead-letter queue. Durable when answered.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/nack",
    tag = "groups",
    params(("group" = String, Path, description = "The group name")),
    request_body(content = NackRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Nacked; `expired` lists the leases no longer held", body = NackBody),
        (status = 400, description = "Malformed body, bad group name, action, delay or reason, more than 1000 leases", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group (`bifrost:group-not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn nack(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    JsonBytes(body): JsonBytes,
) -> ApiResult<Json<NackBody>> {
    let view = caller.view();
    let name = view.group(&path.group()?);
    let request: NackRequest = wire::parse_body(&body)?;
    wire::check_leases(&request.leases)?;
    let action = wire::nack_action(&request)?;
    let reason = wire::nack_reason(&request)?;
    let (nacked, expired) =
        settle(&state, view, &name, &request.leases, Verdict::Nack(action, reason)).await?;
    Ok(Json(wire::nack_body(nacked, expired)))
}

/// Settles the leases named by `tokens`, durably. Returns how many were held and, in
/// request order, the tokens that were not (including text that is no token at all).
async fn settle(
    state: &AppState,
    view: TenantView<'_>,
    name: &GroupName,
    tokens: &[String],
    verdict: Verdict<'_>,
) -> ApiResult<(usize, Vec<String>)> {
    let parsed: Vec<Option<LeaseToken>> = tokens.iter().map(|t| t.parse().ok()).collect();
    let leases: Vec<LeaseToken> = parsed.iter().flatten().copied().collect();
    let settled =
        state.groups.settle(name, &leases, verdict, false).await.map_err(|e| view.localize_error(e))?;
    let expired: std::collections::HashSet<LeaseToken> = settled.expired.into_iter().collect();
    let not_held = tokens
        .iter()
        .zip(&parsed)
        .filter(|(_, lease)| lease.is_none_or(|l| expired.contains(&l)))
        .map(|(t, _)| t.clone())
        .collect();
    Ok((settled.count, not_held))
}

/// The group's dead letters, in log order.
#[utoipa::path(
    get,
    path = "/v1/groups/{group}/dead-letters",
    tag = "groups",
    params(
        ("group" = String, Path, description = "The group name"),
        ("limit" = Option<u32>, Query, description = "Page size, default 100, capped at 1000"),
        ("after" = Option<u64>, Query, description = "Exclusive: the `next` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of dead letters; `event` is null when the event was deleted since", body = DeadLettersBody),
        (status = 400, description = "Bad group name or argument", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group (`bifrost:group-not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn dead_letters(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<Response> {
    let view = caller.view();
    let name = view.group(&path.group()?);
    let limit = query.limit()?;
    let after = query.u64("after")?;
    let mut entries =
        state.groups.dead_letters(&name, after, limit).await.map_err(|e| view.localize_error(e))?;
    view.localize_dead_letters(&mut entries);
    let next = if entries.len() == limit { entries.last().map(|e| e.dead_letter.position) } else { None };
    Ok(json_bytes(wire::dead_letters_json(&entries, next)))
}

/// Delivers dead letters again, with fresh attempts.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/dead-letters/replay",
    tag = "groups",
    params(("group" = String, Path, description = "The group name")),
    request_body(content = Option<ReplayRequest>, content_type = "application/json",
        description = "Optional: no body, or no `event_ids`, replays every dead letter"),
    responses(
        (status = 200, description = "Replayed", body = ReplayBody),
        (status = 400, description = "Malformed body, bad group name or event id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group (`bifrost:group-not-found`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not application/json", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn replay(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
    body: OptionalJsonBytes,
) -> ApiResult<Json<ReplayBody>> {
    let view = caller.view();
    let name = view.group(&path.group()?);
    let selection = match wire::replay_selection(body.parse_or_default::<ReplayRequest>()?)? {
        ReplaySelection::Ids(ids) => ReplaySelection::Ids(ids.into_iter().map(|id| view.id(id)).collect()),
        other => other,
    };
    let replayed = state.groups.replay(&name, selection).await.map_err(|e| view.localize_error(e))?;
    Ok(Json(ReplayBody { replayed: u64::try_from(replayed).unwrap_or(u64::MAX) }))
}

/// Discards one dead letter: its event is not delivered again.
#[utoipa::path(
    delete,
    path = "/v1/groups/{group}/dead-letters/{event_id}",
    tag = "groups",
    params(
        ("group" = String, Path, description = "The group name"),
        ("event_id" = Uuid, Path, description = "The id of the parked event"),
    ),
    responses(
        (status = 204, description = "Discarded"),
        (status = 400, description = "Bad group name or event id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such group (`bifrost:group-not-found`) or dead letter (`bifrost:dead-letter-not-found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn discard(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<StatusCode> {
    let view = caller.view();
    let local = path.group()?;
    let name = view.group(&local);
    let id = path.uuid("event_id")?;
    if state.groups.discard(&name, view.id(id)).await.map_err(|e| view.localize_error(e))? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            ProblemType::DeadLetterNotFound,
            format!("consumer group {local} has no dead letter for event {id}"),
        )
        .with("group", local.as_str().into())
        .with("event_id", id.to_string().into()))
    }
}
