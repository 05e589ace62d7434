//! Prometheus metrics. The server only uses the `metrics` macros; the recorder is global
//! and installed once by whoever runs the server (see [`install_metrics_recorder`]).

use std::future::Future;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use bifrost_core::group::GroupEngine;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) const APPENDS_TOTAL: &str = "bifrost_appends_total";
pub(crate) const EVENTS_APPENDED_TOTAL: &str = "bifrost_events_appended_total";
pub(crate) const APPEND_DURATION_SECONDS: &str = "bifrost_append_duration_seconds";
pub(crate) const SSE_CLIENTS: &str = "bifrost_sse_clients";
pub(crate) const HTTP_REQUESTS_TOTAL: &str = "bifrost_http_requests_total";
pub(crate) const EVENTS_READ_TOTAL: &str = "bifrost_events_read_total";
pub(crate) const GROUP_LAG: &str = "bifrost_group_lag";
pub(crate) const GROUP_IN_FLIGHT: &str = "bifrost_group_in_flight";
pub(crate) const GROUP_PARKED: &str = "bifrost_group_parked";
pub(crate) const GROUP_REDELIVERIES: &str = "bifrost_group_redeliveries";
/// Open live connections, by transport (`sse`, `ws`).
const CONNECTIONS: &str = "bifrost_connections";
/// Time from an event's commit to its frame being queued for a client, by path.
const DELIVERY_LATENCY_SECONDS: &str = "bifrost_delivery_latency_seconds";
const REALTIME_PUBLISHES_TOTAL: &str = "bifrost_realtime_publishes_total";

/// Append latency buckets, in seconds: from sub-millisecond (memory, group commit) to
/// seconds (a stalled disk).
const APPEND_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Webhook attempt buckets, in seconds: a local receiver answers in a millisecond, a slow
/// one up to its timeout.
const WEBHOOK_ATTEMPT_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];
const WEBHOOK_ATTEMPT_DURATION_SECONDS: &str = "bifrost_webhook_attempt_duration_seconds";

/// Installs the global Prometheus recorder, once per process; later calls return the same
/// handle (or the same error).
pub fn install_metrics_recorder() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(APPEND_DURATION_SECONDS.into()), APPEND_BUCKETS)
                .map_err(|e| e.to_string())?
                .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY_SECONDS.into()), APPEND_BUCKETS)
                .map_err(|e| e.to_string())?
                .set_buckets_for_metric(
                    Matcher::Full(WEBHOOK_ATTEMPT_DURATION_SECONDS.into()),
                    WEBHOOK_ATTEMPT_BUCKETS,
                )
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
            Ok(handle)
        })
        .clone()
}

/// `bifrost_store_durable`: 1 when what the store acknowledges survives a crash of its
/// server (the embedded store with `durability = full`, PostgreSQL, Redis with `appendonly
/// yes` and `appendfsync always`), else 0. Set once at start, after the recorder.
pub fn set_store_durable(durable: bool) {
    metrics::gauge!("bifrost_store_durable").set(if durable { 1.0 } else { 0.0 });
}

fn describe() {
    metrics::describe_gauge!(
        "bifrost_store_durable",
        "1 when an acknowledged append survives a crash of the store's server, else 0"
    );
    metrics::describe_counter!(APPENDS_TOTAL, "Successful append requests");
    metrics::describe_counter!("bifrost_webhook_attempts_total", "Webhook attempts, by endpoint and outcome");
    metrics::describe_counter!(
        "bifrost_webhook_deliveries_total",
        "Webhook messages delivered or failed for good, by endpoint"
    );
    metrics::describe_histogram!(
        WEBHOOK_ATTEMPT_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time of a webhook attempt, from sending to the end of the answer"
    );
    metrics::describe_gauge!(
        "bifrost_webhook_backlog",
        "Webhook messages not yet delivered or failed, by endpoint"
    );
    metrics::describe_gauge!("bifrost_webhook_endpoints_disabled", "Webhook endpoints that are disabled");
    metrics::describe_counter!(EVENTS_APPENDED_TOTAL, "Events stored by append requests");
    metrics::describe_histogram!(
        APPEND_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time the store took to answer an append"
    );
    metrics::describe_gauge!(SSE_CLIENTS, "Connected Server-Sent Events clients");
    metrics::describe_gauge!(CONNECTIONS, "Open live connections, by transport (sse, ws)");
    metrics::describe_histogram!(
        DELIVERY_LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "Time from an event's commit to its delivery, by path"
    );
    metrics::describe_counter!(REALTIME_PUBLISHES_TOTAL, "Real-time publishes, ephemeral or persistent");
    metrics::describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests by method, route template and status");
    metrics::describe_counter!(EVENTS_READ_TOTAL, "Events returned by reads and subscriptions");
    metrics::describe_gauge!(
        GROUP_LAG,
        "Matching events a consumer group has not acked yet (parked excluded)"
    );
    metrics::describe_gauge!(GROUP_IN_FLIGHT, "Events leased out by a consumer group");
    metrics::describe_gauge!(GROUP_PARKED, "Dead letters of a consumer group");
    metrics::describe_gauge!(GROUP_REDELIVERIES, "Redeliveries by a consumer group since it started");
    metrics::describe_counter!("bifrost_group_delivered_total", "Leases handed out by a consumer group");
    metrics::describe_counter!("bifrost_group_acked_total", "Leases acked in a consumer group");
    metrics::describe_histogram!(
        "bifrost_group_ack_seconds",
        metrics::Unit::Seconds,
        "Time from lease to ack in a consumer group"
    );
}

/// Counts every request under its route template (`/v1/streams/{stream}`), never the raw
/// path, so that the label set stays bounded.
pub(crate) async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    metrics::counter!(
        HTTP_REQUESTS_TOTAL,
        "method" => method,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// Runs one append of `events` events, timing it and counting it when it succeeds.
pub(crate) async fn timed_append<T>(
    events: usize,
    append: impl Future<Output = bifrost_core::Result<T>>,
) -> bifrost_core::Result<T> {
    let started = Instant::now();
    let result = append.await;
    metrics::histogram!(APPEND_DURATION_SECONDS).record(started.elapsed().as_secs_f64());
    if result.is_ok() {
        metrics::counter!(APPENDS_TOTAL).increment(1);
        metrics::counter!(EVENTS_APPENDED_TOTAL).increment(events as u64);
    }
    result
}

/// Sets the per-group gauges from each group's status; called when metrics are scraped,
/// so the figures are as fresh as the scrape and cost nothing in between.
pub(crate) async fn record_group_gauges(groups: &dyn GroupEngine) {
    let names = match groups.list().await {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the consumer groups");
            return;
        }
    };
    for name in names {
        let status = match groups.status(&name).await {
            Ok(status) => status,
            // Deleted since it was listed.
            Err(bifrost_core::Error::GroupNotFound(_)) => continue,
            Err(e) => {
                tracing::warn!(group = %name, error = %e, "cannot read a consumer group's status");
                continue;
            }
        };
        let name = status.name.to_string();
        metrics::gauge!(GROUP_LAG, "group" => name.clone()).set(status.lag as f64);
        metrics::gauge!(GROUP_IN_FLIGHT, "group" => name.clone()).set(status.in_flight as f64);
        metrics::gauge!(GROUP_PARKED, "group" => name.clone()).set(status.parked as f64);
        metrics::gauge!(GROUP_REDELIVERIES, "group" => name).set(status.redeliveries as f64);
    }
}

pub(crate) fn events_read(n: usize) {
    metrics::counter!(EVENTS_READ_TOTAL).increment(n as u64);
}

/// Keeps the SSE client gauge right however the stream ends (client gone, shutdown, error).
pub(crate) struct SseClientGuard(());

impl SseClientGuard {
    pub(crate) fn connect() -> Self {
        metrics::gauge!(SSE_CLIENTS).increment(1.0);
        metrics::gauge!(CONNECTIONS, "transport" => "sse").increment(1.0);
        Self(())
    }
}

impl Drop for SseClientGuard {
    fn drop(&mut self) {
        metrics::gauge!(SSE_CLIENTS).decrement(1.0);
        metrics::gauge!(CONNECTIONS, "transport" => "sse").decrement(1.0);
    }
}

/// Keeps the WebSocket connection gauge right however the connection ends.
pub(crate) struct WsConnectionGuard(());

impl WsConnectionGuard {
    pub(crate) fn connect() -> Self {
        metrics::gauge!(CONNECTIONS, "transport" => "ws").increment(1.0);
        Self(())
    }
}

impl Drop for WsConnectionGuard {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS, "transport" => "ws").decrement(1.0);
    }
}

/// A stored event reached WebSocket queues.
pub(crate) fn delivered_ws(recorded_at: bifrost_core::Timestamp) {
    let age = bifrost_core::Timestamp::now().as_micros().saturating_sub(recorded_at.as_micros()).max(0);
    metrics::histogram!(DELIVERY_LATENCY_SECONDS, "via" => "ws").record(age as f64 / 1e6);
}

pub(crate) fn realtime_published(persistent: bool) {
    let persistent = if persistent { "true" } else { "false" };
    metrics::counter!(REALTIME_PUBLISHES_TOTAL, "persistent" => persistent).increment(1);
}
