//! Streams: append, read, info, delete, list, and the multi-stream append.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bifrost_api::{
    AppendRequest, AppendResultBody, MultiAppendRequest, MultiAppendResultBody, Problem, StreamEventsBody,
    StreamInfoBody, StreamListBody,
};
use bifrost_core::{Category, DeleteMode, Direction, StreamAppend, StreamListQuery, StreamName};

use crate::AppState;
use crate::auth::{Caller, ClientIp, forbidden};
use crate::error::{ApiError, ApiResult, ProblemType};
use crate::extract::{JsonBytes, QueryParams, StreamPath};
use crate::metrics;
use crate::routes::json_bytes;
use crate::schemas::Checked;
use crate::wire;

/// Appends events to one stream, atomically, with an optional expected version.
#[utoipa::path(
    post,
    path = "/v1/streams/{stream}/events",
    tag = "streams",
    params(("stream" = String, Path, description = "1-256 characters of A-Z a-z 0-9 _ . : @ -")),
    request_body(content = AppendRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored (or an idempotent re-send of stored events)", body = AppendResultBody),
        (status = 400, description = "Malformed body, bad name, type or argument", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Wrong expected version (with `expected`, `actual`) or duplicate event id", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The stream was deleted permanently", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body, event or event count over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn append(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ClientIp(ip): ClientIp,
    StreamPath(stream): StreamPath,
    JsonBytes(body): JsonBytes,
) -> ApiResult<(StatusCode, Json<AppendResultBody>)> {
    if stream.is_system() {
        return Err(ApiError::new(
            ProblemType::InvalidStreamName,
            format!("{} is written by the server only", stream.local()),
        ));
    }
    let request: AppendRequest<'_> = wire::parse_body(&body)?;
    let count = request.events.len();
    check_event_count(&state, count)?;
    state.limits.events(&caller, ip, count)?;
    let expected = wire::parse_expected_version(request.expected_version)?;
    let mut events = wire::to_new_events(&body, request.events, &state.config)?;
    caller.stamp(&mut events)?;
    let view = caller.view();
    let local = view.local_name(&stream);
    let checked: Vec<Checked<'_>> =
        events.iter().enumerate().map(|(index, event)| Checked { stream: &local, index, event }).collect();
    state.schemas.check(caller.tenant.as_deref(), &checked).await?;
    drop(checked);
    for event in &mut events {
        event.id = view.id(event.id);
    }
    let mut result = metrics::timed_append(count, state.store.append(stream, expected, events))
        .await
        .map_err(|e| view.localize_error(e))?;
    result.stream = view.local_name(&result.stream);
    Ok((StatusCode::CREATED, Json(wire::append_result(result))))
}

/// Appends to several streams atomically, each with its own expected version.
#[utoipa::path(
    post,
    path = "/v1/append",
    tag = "streams",
    request_body(content = MultiAppendRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Stored, results in request order", body = MultiAppendResultBody),
        (status = 400, description = "Malformed body, bad name, type or argument", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Wrong expected version (`conflicts` names every stream) or duplicate event id", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "A stream was deleted permanently", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body, event or event count over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn append_many(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ClientIp(ip): ClientIp,
    JsonBytes(body): JsonBytes,
) -> ApiResult<(StatusCode, Json<MultiAppendResultBody>)> {
    let request: MultiAppendRequest<'_> = wire::parse_body(&body)?;
    if request.appends.is_empty() {
        return Err(ApiError::invalid_argument("appends must not be empty"));
    }
    let count = request.appends.iter().map(|a| a.events.len()).sum();
    check_event_count(&state, count)?;
    let view = caller.view();
    let mut appends = Vec::with_capacity(request.appends.len());
    for append in &request.appends {
        let stream = StreamName::new(&append.stream)?;
        // `restrict.append` judges the whole request.
        if !caller.may_append(&stream) {
            return Err(forbidden(format!("this credential may not append to stream {stream}")));
        }
    }
    state.limits.events(&caller, ip, count)?;
    for append in request.appends {
        let stream = StreamName::new(&append.stream)?;
        let expected = wire::parse_expected_version(append.expected_version)?;
        let mut events = wire::to_new_events(&body, append.events, &state.config)?;
        caller.stamp(&mut events)?;
        for event in &mut events {
            event.id = view.id(event.id);
        }
        appends.push(StreamAppend::new(view.stream(&stream), expected, events));
    }
    let locals: Vec<StreamName> = appends.iter().map(|a| view.local_name(&a.stream)).collect();
    let checked: Vec<Checked<'_>> = appends
        .iter()
        .zip(&locals)
        .flat_map(|(a, local)| {
            a.events.iter().enumerate().map(move |(index, event)| Checked { stream: local, index, event })
        })
        .collect();
    state.schemas.check(caller.tenant.as_deref(), &checked).await?;
    drop(checked);
    let results = metrics::timed_append(count, state.store.append_many(appends))
        .await
        .map_err(|e| view.localize_error(e))?;
    let results = results
        .into_iter()
        .map(|mut result| {
            result.stream = view.local_name(&result.stream);
            wire::append_result(result)
        })
        .collect();
    Ok((StatusCode::CREATED, Json(MultiAppendResultBody { results })))
}

fn check_event_count(state: &AppState, count: usize) -> ApiResult<()> {
    let max = state.config.max_events_per_append;
    if count > max {
        return Err(ApiError::payload_too_large(format!("{count} events in one append; the limit is {max}")));
    }
    Ok(())
}

/// Reads a page of one stream.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream}/events",
    tag = "streams",
    params(
        ("stream" = String, Path, description = "The stream name"),
        ("from" = Option<u64>, Query, description = "First version to return (inclusive); default 1 forward, the last version backward"),
        ("limit" = Option<u32>, Query, description = "Page size, default 100, capped at 1000"),
        ("direction" = Option<String>, Query, description = "`forward` (default) or `backward`"),
    ),
    responses(
        (status = 200, description = "A page; `next` is the version to continue from, or null", body = StreamEventsBody),
        (status = 400, description = "Bad argument, or `from` past the end (`bifrost:out-of-range`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such stream (or soft-deleted)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The stream was deleted permanently", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn read(
    State(state): State<AppState>,
    Caller(caller): Caller,
    StreamPath(stream): StreamPath,
    query: QueryParams,
) -> ApiResult<Response> {
    let direction = match query.one("direction")? {
        None | Some("forward") => Direction::Forward,
        Some("backward") => Direction::Backward,
        Some(other) => {
            return Err(ApiError::invalid_argument(format!(
                "direction must be forward or backward, got {other:?}"
            )));
        }
    };
    let from = query.u64("from")?.unwrap_or(match direction {
        Direction::Forward => 1,
        Direction::Backward => u64::MAX,
    });
    let limit = query.limit()?;
    let view = caller.view();
    let mut slice =
        state.store.read_stream(&stream, from, direction, limit).await.map_err(|e| view.localize_error(e))?;
    view.localize(&mut slice.events);
    metrics::events_read(slice.events.len());
    Ok(json_bytes(wire::stream_events_json(&slice.events, slice.next)))
}

/// What the store knows about one stream.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream}",
    tag = "streams",
    params(("stream" = String, Path, description = "The stream name")),
    responses(
        (status = 200, description = "The stream (`deleted`: soft-deleted)", body = StreamInfoBody),
        (status = 400, description = "Bad stream name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such stream", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The stream was deleted permanently", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn info(
    State(state): State<AppState>,
    Caller(caller): Caller,
    StreamPath(stream): StreamPath,
) -> ApiResult<Json<StreamInfoBody>> {
    let view = caller.view();
    let mut info = state.store.stream_info(&stream).await.map_err(|e| view.localize_error(e))?;
    info.stream = view.local_name(&info.stream);
    Ok(Json(wire::stream_info(info)))
}

/// Deletes a stream: soft by default (a later append continues after the last version),
/// permanently with `hard=true` (the name can never be written again).
#[utoipa::path(
    delete,
    path = "/v1/streams/{stream}",
    tag = "streams",
    params(
        ("stream" = String, Path, description = "The stream name"),
        ("hard" = Option<bool>, Query, description = "`true`: tombstone the stream"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad stream name or argument", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such stream", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Already deleted permanently", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    StreamPath(stream): StreamPath,
    query: QueryParams,
) -> ApiResult<StatusCode> {
    if stream.local() == format!("${}", crate::auth::audit::AUDIT_STREAM) {
        return Err(ApiError::invalid_argument("the audit stream cannot be deleted"));
    }
    let mode = if query.bool("hard")?.unwrap_or(false) { DeleteMode::Hard } else { DeleteMode::Soft };
    state.store.delete_stream(&stream, mode).await.map_err(|e| caller.view().localize_error(e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists live streams in name order.
#[utoipa::path(
    get,
    path = "/v1/streams",
    tag = "streams",
    params(
        ("prefix" = Option<String>, Query, description = "Only names starting with this"),
        ("category" = Option<String>, Query, description = "Only streams of this category (the name before its first `-`)"),
        ("after" = Option<String>, Query, description = "Exclusive: names after this one (the previous page's `next`)"),
        ("limit" = Option<u32>, Query, description = "Page size, default 100, capped at 1000"),
    ),
    responses(
        (status = 200, description = "A page of streams; `next` continues the listing, null at the end", body = StreamListBody),
        (status = 400, description = "Bad argument", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: QueryParams,
) -> ApiResult<Json<StreamListBody>> {
    let view = caller.view();
    let after = query.one("after")?;
    let prefix = query.one("prefix")?;
    let category = query.category()?;
    // `$` streams are listed when asked for (their category, or a prefix naming them).
    let system =
        category.as_ref().is_some_and(Category::is_system) || prefix.is_some_and(|p| p.starts_with('$'));
    let listing_query = StreamListQuery {
        prefix: view.prefix(prefix),
        category: category.map(|c| view.category(&c)),
        after: after.and_then(|after| view.prefix(Some(after))),
        limit: query.limit()?,
    };
    let mut listing = state.store.list_streams(&listing_query).await?;
    // Hidden streams (other tenants', outside a read restriction, `$` ones without `admin`)
    // leave a page short; `next` still continues after them.
    if caller.filters_reads() || !system {
        listing.streams.retain(|s| (system || !s.stream.is_system()) && caller.sees(&s.stream));
    }
    Ok(Json(StreamListBody {
        streams: listing
            .streams
            .into_iter()
            .map(|mut summary| {
                summary.stream = view.local_name(&summary.stream);
                wire::stream_summary(summary)
            })
            .collect(),
        next: listing.next.map(|s| view.local_name(&s).to_string()),
    }))
}
