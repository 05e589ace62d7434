//! Live delivery over Server-Sent Events: catch-up from the log, then live, resumable with
//! `Last-Event-ID`.

use std::convert::Infallible;
use std::future::ready;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bifrost_api::Problem;
use bifrost_core::subscription::subscribe as subscribe_log;
use bifrost_core::{LogFilter, RecordedEvent, SubscribeFrom};
use futures::StreamExt;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::metrics::{self, SseClientGuard};
use crate::wire;

/// Subscribes to the global log as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/v1/subscribe",
    tag = "live",
    params(
        ("from_position" = Option<u64>, Query, description = "Exclusive: deliver events after this position; without it (and without Last-Event-ID) only new events"),
        ("type" = Option<Vec<String>>, Query, explode = true, description = "Type pattern; repeat for several"),
        ("category" = Option<String>, Query, description = "Only events of streams of this category"),
        ("correlation_id" = Option<String>, Query, description = "Only events with this metadata.correlation_id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this position; overrides from_position"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: per event `id: <position>`, `event: <type>`, `data: <event JSON>`; heartbeat comments when idle", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad argument or pattern, or a position past the end", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    query: QueryParams,
) -> ApiResult<Response> {
    let filter = caller.view().log_filter(query.log_filter()?);
    let from_position = query.u64("from_position")?;
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
                ApiError::invalid_argument("Last-Event-ID must be a position (a non-negative integer)")
            })
        })
        .transpose()?;
    let from = match last_event_id.or(from_position) {
        Some(after) => {
            // Fails with out-of-range for a position this log never had, before answering 200.
            state.store.read_all(after, &LogFilter::default(), 1).await?;
            SubscribeFrom::After(after)
        }
        None => SubscribeFrom::End,
    };

    let guard = SseClientGuard::connect();
    let events = subscribe_log(state.store.clone(), from, filter)
        .take_until(state.shutdown.clone().cancelled_owned())
        .take_while(|item| {
            if let Err(e) = item {
                tracing::warn!(error = %e, "subscription failed; ending the SSE response");
            }
            ready(item.is_ok())
        })
        .filter_map(move |item| {
            let _connected = &guard;
            let visible = item.ok().filter(|event| !caller.filters_reads() || caller.sees(&event.stream));
            ready(visible.map(|mut event| {
                caller.view().localize_one(&mut event);
                Ok::<_, Infallible>(sse_event(&event))
            }))
        });
    let keep_alive = KeepAlive::new().interval(state.config.sse_heartbeat).text("heartbeat");
    Ok(Sse::new(events).keep_alive(keep_alive).into_response())
}

fn sse_event(event: &RecordedEvent) -> Event {
    metrics::events_read(1);
    let mut json = wire::event_json(event);
    // An SSE `data:` line ends at CR or LF. Valid JSON has those only as insignificant
    // whitespace (inside strings they are escaped), so blanking them keeps the event on
    // one line and its meaning intact.
    for byte in &mut json {
        if matches!(*byte, b'\n' | b'\r') {
            *byte = b' ';
        }
    }
    Event::default()
        .id(event.position.to_string())
        .event(event.event_type.as_str())
        .data(String::from_utf8_lossy(&json))
}

#[cfg(test)]
mod tests {
    use bifrost_core::{EventType, StreamName, Timestamp};
    use bytes::Bytes;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn an_event_with_line_breaks_in_its_payload_is_one_data_line() {
        let event = RecordedEvent {
            id: Uuid::nil(),
            stream: StreamName::new("order-1").unwrap(),
            aggregate_type: "order".into(),
            event_type: EventType::new("order.placed").unwrap(),
            schema_version: 1,
            version: 1,
            position: 7,
            data: Bytes::from_static(b"{\r\n  \"text\": \"a\\nb\"\n}"),
            metadata: Bytes::from_static(b"{}"),
            occurred_at: Timestamp::from_micros(0),
            recorded_at: Timestamp::from_micros(0),
        };
        let sse = Sse::new(futures::stream::iter([Ok::<_, Infallible>(sse_event(&event))]));
        let body = sse.into_response().into_body();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let frame = rt.block_on(axum::body::to_bytes(body, usize::MAX)).unwrap();
        let text = String::from_utf8(frame.to_vec()).unwrap();
        let lines: Vec<&str> = text.strip_suffix("\n\n").unwrap().split('\n').collect();
        assert_eq!(lines[..2], ["id: 7", "event: order.placed"]);
        let data = lines[2].strip_prefix("data: ").unwrap();
        assert_eq!(lines.len(), 3, "{text:?}");
        let json: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(json["data"]["text"], "a\nb");
    }
}
