//! The global log: filtered pages, and one event by id.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use bifrost_api::{EventBody, HeadBody, LogEventsBody, Problem};

use crate::AppState;
use crate::auth::{Caller, forbidden};
use crate::error::{ApiError, ApiResult, ProblemType};
use crate::extract::{PathParams, QueryParams};
use crate::metrics;
use crate::routes::json_bytes;
use crate::wire;

/// Reads a page of the global log after a position, filtered.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "log",
    params(
        ("from_position" = Option<u64>, Query, description = "Exclusive: the last position seen (default 0, the start)"),
        ("limit" = Option<u32>, Query, description = "Page size, default 100, capped at 1000"),
        ("type" = Option<Vec<String>>, Query, explode = true, description = "Type pattern (`*` one segment, `#` zero or more); repeat for several"),
        ("category" = Option<String>, Query, description = "Only events of streams of this category"),
        ("correlation_id" = Option<String>, Query, description = "Only events with this metadata.correlation_id"),
        ("since" = Option<String>, Query, description = "RFC 3339: recorded at or after"),
        ("until" = Option<String>, Query, description = "RFC 3339: recorded before"),
    ),
    responses(
        (status = 200, description = "A page; `next_position` is the `from_position` of the next page", body = LogEventsBody),
        (status = 400, description = "Bad argument or pattern, or a position past the end", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn read_log(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: QueryParams,
) -> ApiResult<Response> {
    let after = query.u64("from_position")?.unwrap_or(0);
    let limit = query.limit()?;
    let view = caller.view();
    let filter = view.log_filter(query.log_filter()?);
    let mut slice = state.store.read_all(after, &filter, limit).await?;
    // Hidden streams leave gaps in a page; `next_position` still moves past them.
    if caller.filters_reads() {
        slice.events.retain(|e| caller.sees(&e.stream));
    }
    view.localize(&mut slice.events);
    metrics::events_read(slice.events.len());
    Ok(json_bytes(wire::log_events_json(&slice.events, slice.next_position)))
}

/// The head of the global log: where a reader that wants only new events starts.
#[utoipa::path(get, path = "/v1/head", tag = "log",
    responses((status = 200, description = "The last committed position", body = HeadBody)))]
pub(crate) async fn head(State(state): State<AppState>) -> Json<HeadBody> {
    let position = *state.store.head().borrow();
    Json(HeadBody { position })
}

/// One event by id.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "log",
    params(("id" = Uuid, Path, description = "The event id")),
    responses(
        (status = 200, description = "The event", body = EventBody),
        (status = 400, description = "Not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The event's stream is outside the credential's read restriction", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such event", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn event_by_id(
    State(state): State<AppState>,
    Caller(caller): Caller,
    path: PathParams,
) -> ApiResult<Response> {
    let id = path.uuid("id")?;
    let view = caller.view();
    let not_found = || {
        ApiError::new(ProblemType::EventNotFound, format!("no event has id {id}"))
            .with("id", id.to_string().into())
    };
    let mut event = state.store.event(view.id(id)).await?.ok_or_else(not_found)?;
    // Another tenant's event does not exist for this caller.
    if !view.owns(&event.stream) {
        return Err(not_found());
    }
    view.localize_one(&mut event);
    if !caller.may_read(&event.stream) {
        return Err(forbidden(format!("this credential may not read stream {}", event.stream)));
    }
    metrics::events_read(1);
    Ok(json_bytes(wire::event_json(&event)))
}
