//! Every bad input gets a 4xx problem with a stable type, and nothing stored changes.
//! Each case runs against the in-memory store and the embedded SQLite store.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::Method;
use bifrost_server::ServerConfig;
use common::{TestApp, request};
use serde_json::json;

fn small_limits() -> ServerConfig {
    ServerConfig {
        max_body_bytes: 4096,
        max_event_bytes: 256,
        max_events_per_append: 5,
        ..ServerConfig::default()
    }
}

/// Both backends, each seeded with one stream of two events.
async fn apps() -> Vec<TestApp> {
    let mut apps =
        vec![TestApp::memory_with(small_limits()).await, TestApp::sqlite_with(small_limits()).await];
    for app in &mut apps {
        app.append("order-1", common::events_body(2)).await;
    }
    apps
}

/// Sends a POST with `content_type` and `body` to each backend and checks the problem and
/// that the store is untouched.
async fn rejects_post(uri: &str, content_type: Option<&str>, body: &str, status: u16, problem: &str) {
    for app in apps().await {
        let before = app.snapshot().await;
        let resp = app.call(request(Method::POST, uri, content_type, body.to_owned())).await;
        resp.assert_problem(status, problem);
        assert_eq!(app.snapshot().await, before, "the store changed after a rejected request");
    }
}

async fn rejects_append(body: &str, status: u16, problem: &str) {
    rejects_post("/v1/streams/order-1/events", Some("application/json"), body, status, problem).await;
}

async fn rejects_get(uri: &str, status: u16, problem: &str) {
    for app in apps().await {
        let before = app.snapshot().await;
        app.get(uri).await.assert_problem(status, problem);
        assert_eq!(app.snapshot().await, before);
    }
}

#[tokio::test]
async fn malformed_json_is_an_invalid_request() {
    rejects_append(r#"{"events": [{"type": "a", "data": 1}"#, 400, "bifrost:invalid-request").await;
    rejects_append("not json", 400, "bifrost:invalid-request").await;
    rejects_append("", 400, "bifrost:invalid-request").await;
    rejects_append(r#"{"events": {"type": "a"}}"#, 400, "bifrost:invalid-request").await;
}

#[tokio::test]
async fn append_without_json_content_type_is_unsupported_media_type() {
    let body = json!({"events": [{"type": "a", "data": 1}]}).to_string();
    for ct in [Some("text/plain"), None, Some("application/x-www-form-urlencoded")] {
        rejects_post("/v1/streams/order-1/events", ct, &body, 415, "bifrost:unsupported-media-type").await;
        rejects_post("/v1/append", ct, &body, 415, "bifrost:unsupported-media-type").await;
    }
}

#[tokio::test]
async fn empty_events_is_an_invalid_argument() {
    rejects_append(r#"{"events": []}"#, 400, "bifrost:invalid-argument").await;
    rejects_post(
        "/v1/append",
        Some("application/json"),
        r#"{"appends": [{"stream": "order-1", "events": []}]}"#,
        400,
        "bifrost:invalid-argument",
    )
    .await;
    rejects_post(
        "/v1/append",
        Some("application/json"),
        r#"{"appends": []}"#,
        400,
        "bifrost:invalid-argument",
    )
    .await;
}

#[tokio::test]
async fn invalid_stream_names_in_the_path_are_rejected() {
    let body = json!({"events": [{"type": "a", "data": 1}]}).to_string();
    let too_long = "x".repeat(257);
    for name in [too_long.as_str(), "has%20space", "nul%00byte", "%C3%A9t%C3%A9", "slash%2Fname", "$all"] {
        let uri = format!("/v1/streams/{name}/events");
        rejects_post(&uri, Some("application/json"), &body, 400, "bifrost:invalid-stream-name").await;
        rejects_get(&uri, 400, "bifrost:invalid-stream-name").await;
        rejects_get(&format!("/v1/streams/{name}"), 400, "bifrost:invalid-stream-name").await;
    }
}

#[tokio::test]
async fn an_empty_stream_name_in_the_path_is_invalid() {
    let body = json!({"events": [{"type": "a", "data": 1}]}).to_string();
    rejects_post("/v1/streams//events", Some("application/json"), &body, 400, "bifrost:invalid-stream-name")
        .await;
    rejects_get("/v1/streams//events", 400, "bifrost:invalid-stream-name").await;
}

#[tokio::test]
async fn invalid_stream_names_in_a_multi_append_are_rejected() {
    for name in ["", "nul\u{0}byte", "ünicode", &"x".repeat(257)] {
        let body = json!({"appends": [
            {"stream": "order-2", "events": [{"type": "a", "data": 1}]},
            {"stream": name, "events": [{"type": "a", "data": 1}]},
        ]});
        rejects_post(
            "/v1/append",
            Some("application/json"),
            &body.to_string(),
            400,
            "bifrost:invalid-stream-name",
        )
        .await;
    }
}

#[tokio::test]
async fn invalid_event_types_are_rejected() {
    for t in ["a..b", ".a", "a.", "", "a\u{0}b", "ünicode", "order.*", &"x".repeat(257)] {
        let body = json!({"events": [{"type": "ok", "data": 1}, {"type": t, "data": 1}]});
        rejects_append(&body.to_string(), 400, "bifrost:invalid-event-type").await;
    }
}

#[tokio::test]
async fn invalid_expected_versions_are_rejected() {
    for ev in ["-1", "\"sometimes\"", "1.5", "true", "[]", "{}"] {
        let body = format!(r#"{{"expected_version": {ev}, "events": [{{"type": "a", "data": 1}}]}}"#);
        rejects_append(&body, 400, "bifrost:invalid-argument").await;
    }
}

#[tokio::test]
async fn an_event_without_data_is_an_invalid_request() {
    rejects_append(r#"{"events": [{"type": "a"}]}"#, 400, "bifrost:invalid-request").await;
}

#[tokio::test]
async fn an_event_without_type_is_an_invalid_request() {
    rejects_append(r#"{"events": [{"data": 1}]}"#, 400, "bifrost:invalid-request").await;
}

#[tokio::test]
async fn unknown_event_fields_are_rejected_to_catch_typos() {
    rejects_append(r#"{"events": [{"tpye": "a", "type": "a", "data": 1}]}"#, 400, "bifrost:invalid-request")
        .await;
    rejects_append(
        r#"{"expected_versoin": 2, "events": [{"type": "a", "data": 1}]}"#,
        400,
        "bifrost:invalid-request",
    )
    .await;
}

#[tokio::test]
async fn bad_event_fields_are_invalid_arguments() {
    for event in [
        json!({"type": "a", "data": 1, "id": "not-a-uuid"}),
        json!({"type": "a", "data": 1, "id": 42}),
        json!({"type": "a", "data": 1, "occurred_at": "yesterday"}),
        json!({"type": "a", "data": 1, "schema_version": 0}),
        json!({"type": "a", "data": 1, "aggregate_type": "has space"}),
    ] {
        rejects_append(&json!({"events": [event]}).to_string(), 400, "bifrost:invalid-argument").await;
    }
}

#[tokio::test]
async fn metadata_of_the_wrong_shape_is_an_invalid_request() {
    for metadata in [json!([1, 2]), json!("text"), json!({"correlation_id": 5}), json!({"user_id": {"a": 1}})]
    {
        let body = json!({"events": [{"type": "a", "data": 1, "metadata": metadata}]});
        rejects_append(&body.to_string(), 400, "bifrost:invalid-request").await;
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_payload_too_large() {
    let big = "x".repeat(5000);
    let body = json!({"events": [{"type": "a", "data": big}]}).to_string();
    rejects_append(&body, 413, "bifrost:payload-too-large").await;
    rejects_post("/v1/append", Some("application/json"), &body, 413, "bifrost:payload-too-large").await;
}

#[tokio::test]
async fn one_event_over_the_per_event_limit_is_payload_too_large() {
    let body = json!({"events": [{"type": "a", "data": 1}, {"type": "a", "data": "y".repeat(300)}]});
    rejects_append(&body.to_string(), 413, "bifrost:payload-too-large").await;
}

#[tokio::test]
async fn too_many_events_is_payload_too_large() {
    rejects_append(&common::events_body(6).to_string(), 413, "bifrost:payload-too-large").await;
    let body = json!({"appends": [
        {"stream": "a-1", "events": common::events_body(3)["events"]},
        {"stream": "a-2", "events": common::events_body(3)["events"]},
    ]});
    rejects_post("/v1/append", Some("application/json"), &body.to_string(), 413, "bifrost:payload-too-large")
        .await;
}

#[tokio::test]
async fn reading_an_unknown_stream_is_not_found() {
    rejects_get("/v1/streams/nope-1/events", 404, "bifrost:stream-not-found").await;
    rejects_get("/v1/streams/nope-1", 404, "bifrost:stream-not-found").await;
    for app in apps().await {
        let before = app.snapshot().await;
        app.delete("/v1/streams/nope-1").await.assert_problem(404, "bifrost:stream-not-found");
        assert_eq!(app.snapshot().await, before);
    }
}

#[tokio::test]
async fn reading_from_past_the_end_is_out_of_range() {
    rejects_get("/v1/streams/order-1/events?from=4", 400, "bifrost:out-of-range").await;
    rejects_get("/v1/events?from_position=99", 400, "bifrost:out-of-range").await;
}

#[tokio::test]
async fn invalid_limits_are_rejected() {
    for limit in ["0", "abc", "-1", "1.5", ""] {
        rejects_get(&format!("/v1/streams/order-1/events?limit={limit}"), 400, "bifrost:invalid-argument")
            .await;
        rejects_get(&format!("/v1/events?limit={limit}"), 400, "bifrost:invalid-argument").await;
        rejects_get(&format!("/v1/streams?limit={limit}"), 400, "bifrost:invalid-argument").await;
    }
}

#[tokio::test]
async fn invalid_query_parameters_are_rejected() {
    for uri in [
        "/v1/streams/order-1/events?from=x",
        "/v1/streams/order-1/events?direction=sideways",
        "/v1/events?from_position=-1",
        "/v1/events?category=has-dash",
        "/v1/events?limit=%FF",
        "/v1/streams?category=bad%20category",
        "/v1/events/not-a-uuid",
    ] {
        rejects_get(uri, 400, "bifrost:invalid-argument").await;
    }
}

#[tokio::test]
async fn invalid_timestamps_are_rejected() {
    rejects_get("/v1/events?since=yesterday", 400, "bifrost:invalid-argument").await;
    rejects_get("/v1/events?until=2026-13-01T00:00:00Z", 400, "bifrost:invalid-argument").await;
}

#[tokio::test]
async fn invalid_type_patterns_are_rejected() {
    for pattern in ["a..b", "a*", "%C3%A9", "a.%23x"] {
        rejects_get(&format!("/v1/events?type=order.*&type={pattern}"), 400, "bifrost:invalid-argument")
            .await;
        rejects_get(&format!("/v1/subscribe?type={pattern}"), 400, "bifrost:invalid-argument").await;
    }
}

#[tokio::test]
async fn an_unknown_event_id_is_not_found() {
    rejects_get("/v1/events/0193a000-0000-7000-8000-000000000000", 404, "bifrost:event-not-found").await;
}

#[tokio::test]
async fn a_multi_append_with_one_bad_event_stores_nothing() {
    let body = json!({"appends": [
        {"stream": "order-2", "events": [{"type": "a", "data": 1}]},
        {"stream": "order-3", "events": [{"type": "a..b", "data": 1}]},
    ]});
    rejects_post(
        "/v1/append",
        Some("application/json"),
        &body.to_string(),
        400,
        "bifrost:invalid-event-type",
    )
    .await;
}

#[tokio::test]
async fn a_multi_append_with_a_conflict_stores_nothing_and_names_every_conflict() {
    for app in apps().await {
        let before = app.snapshot().await;
        let body = json!({"appends": [
            {"stream": "order-1", "expected_version": 1, "events": [{"type": "a", "data": 1}]},
            {"stream": "order-2", "expected_version": "no_stream", "events": [{"type": "a", "data": 1}]},
            {"stream": "order-3", "expected_version": "exists", "events": [{"type": "a", "data": 1}]},
        ]});
        let resp = app.post_json("/v1/append", body.to_string()).await;
        let problem = resp.assert_problem(409, "bifrost:wrong-expected-version");
        assert_eq!(
            problem["conflicts"],
            json!([
                {"stream": "order-1", "expected": 1, "actual": 2},
                {"stream": "order-3", "expected": "exists", "actual": null},
            ])
        );
        assert_eq!(app.snapshot().await, before);
    }
}

#[tokio::test]
async fn a_stale_expected_version_stores_nothing() {
    for app in apps().await {
        let before = app.snapshot().await;
        let body = json!({"expected_version": "no_stream", "events": [{"type": "a", "data": 1}]});
        let resp = app.post_json("/v1/streams/order-1/events", body.to_string()).await;
        let problem = resp.assert_problem(409, "bifrost:wrong-expected-version");
        assert_eq!(problem["expected"], "no_stream");
        assert_eq!(problem["actual"], 2);
        assert_eq!(app.snapshot().await, before);
    }
}

/// A request and the problem it must get: method, URI, content type, body, status, type.
type BadRequest<'a> = (Method, &'a str, Option<&'a str>, &'a str, u16, &'a str);

#[tokio::test]
async fn bad_consumer_group_requests_are_problems_and_change_nothing() {
    let json = Some("application/json");
    let cases: [BadRequest<'_>; 14] = [
        (Method::PUT, "/v1/groups/g", json, r#"{"max_attempts": 0}"#, 400, "bifrost:invalid-argument"),
        (
            Method::PUT,
            "/v1/groups/g",
            json,
            r#"{"max_attempts": 2, "retries": 1}"#,
            400,
            "bifrost:invalid-request",
        ),
        (
            Method::PUT,
            "/v1/groups/g",
            json,
            r#"{"filter": {"types": ["a..b"]}}"#,
            400,
            "bifrost:invalid-argument",
        ),
        (Method::PUT, "/v1/groups/g", json, "{", 400, "bifrost:invalid-request"),
        (Method::PUT, "/v1/groups/g", Some("text/plain"), "{}", 415, "bifrost:unsupported-media-type"),
        (Method::PUT, "/v1/groups/a%20b", json, "{}", 400, "bifrost:invalid-argument"),
        (Method::PUT, "/v1/groups/g", json, &"x".repeat(5000), 413, "bifrost:payload-too-large"),
        (Method::POST, "/v1/groups/g/fetch?max=0", None, "", 400, "bifrost:invalid-argument"),
        (Method::POST, "/v1/groups/g/ack", json, r#"{"lease": []}"#, 400, "bifrost:invalid-request"),
        (Method::POST, "/v1/groups/g/ack", None, r#"{"leases": []}"#, 415, "bifrost:unsupported-media-type"),
        (
            Method::POST,
            "/v1/groups/g/nack",
            json,
            r#"{"leases": [], "action": "drop"}"#,
            400,
            "bifrost:invalid-request",
        ),
        (
            Method::POST,
            "/v1/groups/g/dead-letters/replay",
            json,
            r#"{"event_ids": [1]}"#,
            400,
            "bifrost:invalid-request",
        ),
        (Method::DELETE, "/v1/groups/g/dead-letters/nope", None, "", 400, "bifrost:invalid-argument"),
        (Method::POST, "/v1/groups/missing/ack", json, r#"{"leases": []}"#, 404, "bifrost:group-not-found"),
    ];
    for app in apps().await {
        let resp = app.put_json("/v1/groups/g", r#"{"max_attempts": 3}"#).await;
        assert_eq!(resp.status.as_u16(), 201, "{}", resp.text());
        let before = (app.snapshot().await, app.get("/v1/groups").await.json());
        for (method, uri, content_type, body, status, problem) in &cases {
            let resp = app.call(request(method.clone(), uri, *content_type, body.to_string())).await;
            resp.assert_problem(*status, problem);
        }
        let after = (app.snapshot().await, app.get("/v1/groups").await.json());
        assert_eq!(after, before, "a rejected group request changed something");
    }
}
