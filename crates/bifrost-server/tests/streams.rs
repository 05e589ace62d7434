//! The stream routes: append, read, info, delete, list and the multi-stream append.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::{Method, StatusCode};
use bifrost_server::ServerConfig;
use common::{TestApp, request};
use serde_json::{Value, json};

const ID_1: &str = "0193a000-0000-7000-8000-000000000001";
const ID_2: &str = "0193a000-0000-7000-8000-000000000002";

fn assert_timestamp(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    assert_eq!(s.len(), 27, "{s}");
    assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T' && s.as_bytes()[19] == b'.', "{s}");
}

#[tokio::test]
async fn append_to_a_new_stream_answers_201_with_versions_and_positions() {
    let app = TestApp::memory().await;
    let resp = app.post_json("/v1/streams/order-1/events", common::events_body(2).to_string()).await;
    assert_eq!(resp.status, StatusCode::CREATED);
    assert_eq!(resp.content_type(), "application/json");
    assert_eq!(
        resp.json(),
        json!({"stream": "order-1", "first_version": 1, "last_version": 2, "first_position": 1, "last_position": 2})
    );
    let second = app.append("user-7", common::events_body(1)).await;
    assert_eq!(
        second,
        json!({"stream": "user-7", "first_version": 1, "last_version": 1, "first_position": 3, "last_position": 3})
    );
}

#[tokio::test]
async fn append_accepts_a_json_content_type_with_parameters() {
    let app = TestApp::memory().await;
    let req = request(
        Method::POST,
        "/v1/streams/order-1/events",
        Some("Application/JSON; charset=utf-8"),
        common::events_body(1).to_string(),
    );
    assert_eq!(app.call(req).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn read_returns_events_in_the_documented_shape() {
    let app = TestApp::memory().await;
    app.append(
        "order-123",
        json!({"expected_version": "no_stream", "events": [{
            "id": ID_1,
            "type": "order.submitted",
            "data": {"total": 42.5},
            "metadata": {"correlation_id": "c-1", "source": "checkout", "user_id": "u-9", "any_other_key": "kept"},
            "schema_version": 2,
            "occurred_at": "2026-11-22T10:00:00.123456Z",
            "aggregate_type": "Order",
        }]}),
    )
    .await;
    let resp = app.get("/v1/streams/order-123/events").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.content_type(), "application/json");
    let mut body = resp.json();
    let recorded_at = body["events"][0].as_object_mut().unwrap().remove("recorded_at").unwrap();
    assert_timestamp(&recorded_at);
    assert_eq!(
        body,
        json!({"events": [{
            "id": ID_1,
            "stream": "order-123",
            "aggregate_type": "Order",
            "type": "order.submitted",
            "schema_version": 2,
            "version": 1,
            "position": 1,
            "data": {"total": 42.5},
            "metadata": {"correlation_id": "c-1", "causation_id": null, "source": "checkout",
                         "user_id": "u-9", "tenant_id": null, "any_other_key": "kept"},
            "occurred_at": "2026-11-22T10:00:00.123456Z",
        }], "next": null})
    );
}

#[tokio::test]
async fn events_default_their_id_aggregate_type_schema_version_and_occurred_at() {
    let app = TestApp::memory().await;
    app.append("order-9", json!({"events": [{"type": "order.placed", "data": null}]})).await;
    let event = app.get("/v1/streams/order-9/events").await.json()["events"][0].clone();
    assert_eq!(event["aggregate_type"], "order");
    assert_eq!(event["schema_version"], 1);
    assert_eq!(event["data"], Value::Null);
    assert_eq!(event["occurred_at"], event["recorded_at"]);
    let id = uuid::Uuid::parse_str(event["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7);
}

#[tokio::test]
async fn data_comes_back_byte_for_byte() {
    let app = TestApp::memory().await;
    let data = r#"{ "a" :1.50,	"text":"h\u00e9llo ü 🦀 \u0000 \"q\" \n",
  "nested": [ 1e3 , -0.0 , {"x" : null} ] }"#;
    let body = format!(r#"{{"events": [{{"type": "raw.bytes", "id": "{ID_1}", "data": {data}}}]}}"#);
    let resp = app.post_json("/v1/streams/raw-1/events", body).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let expected = format!(r#""data":{data},"metadata""#);
    for uri in ["/v1/streams/raw-1/events", "/v1/events", &format!("/v1/events/{ID_1}")] {
        let resp = app.get(uri).await;
        assert_eq!(resp.status, StatusCode::OK);
        assert!(resp.text().contains(&expected), "{uri}: {}", resp.text());
        resp.json(); // and the whole answer is still valid JSON
    }
}

#[tokio::test]
async fn metadata_strings_keep_unicode_and_nul() {
    let app = TestApp::memory().await;
    let metadata = json!({"correlation_id": "c-\u{0}-é", "tenant_id": "🦀", "extra": {"k": [1, "\u{0}"]}});
    app.append("order-1", json!({"events": [{"type": "a", "data": 1, "metadata": metadata}]})).await;
    let event = app.get("/v1/streams/order-1/events").await.json()["events"][0].clone();
    assert_eq!(event["metadata"]["correlation_id"], "c-\u{0}-é");
    assert_eq!(event["metadata"]["tenant_id"], "🦀");
    assert_eq!(event["metadata"]["extra"], json!({"k": [1, "\u{0}"]}));
    let found = app.get("/v1/events?correlation_id=c-%00-%C3%A9").await.json();
    assert_eq!(found["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn read_pages_forward_and_backward_with_next() {
    let app = TestApp::memory().await;
    app.append("order-1", common::events_body(5)).await;
    let versions = |body: &Value| -> Vec<u64> {
        body["events"].as_array().unwrap().iter().map(|e| e["version"].as_u64().unwrap()).collect()
    };
    let page = app.get("/v1/streams/order-1/events?limit=2").await.json();
    assert_eq!((versions(&page), page["next"].clone()), (vec![1, 2], json!(3)));
    let page = app.get("/v1/streams/order-1/events?from=3&limit=2").await.json();
    assert_eq!((versions(&page), page["next"].clone()), (vec![3, 4], json!(5)));
    let page = app.get("/v1/streams/order-1/events?from=5").await.json();
    assert_eq!((versions(&page), page["next"].clone()), (vec![5], json!(null)));
    let page = app.get("/v1/streams/order-1/events?direction=backward&limit=2").await.json();
    assert_eq!((versions(&page), page["next"].clone()), (vec![5, 4], json!(3)));
    let page = app.get("/v1/streams/order-1/events?direction=backward&from=2").await.json();
    assert_eq!((versions(&page), page["next"].clone()), (vec![2, 1], json!(null)));
    // One past the end is an empty page, not an error.
    let page = app.get("/v1/streams/order-1/events?from=6").await.json();
    assert_eq!(page, json!({"events": [], "next": null}));
}

#[tokio::test]
async fn a_limit_above_1000_is_capped_not_rejected() {
    let app = TestApp::memory().await;
    app.append("big-1", common::events_body(1000)).await;
    app.append("big-1", common::events_body(1)).await;
    let page = app.get("/v1/streams/big-1/events?limit=5000").await.json();
    assert_eq!(page["events"].as_array().unwrap().len(), 1000);
    assert_eq!(page["next"], 1001);
    let page = app.get("/v1/events?limit=99999999999999999999").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "beyond u64 is not a number: {}", page.text());
    let page = app.get("/v1/events?limit=18446744073709551615").await.json();
    assert_eq!(page["events"].as_array().unwrap().len(), 1000);
    assert_eq!(page["next_position"], 1000);
}

#[tokio::test]
async fn stream_info_shows_version_and_times() {
    let app = TestApp::memory().await;
    app.append("order-1", common::events_body(3)).await;
    let mut info = app.get("/v1/streams/order-1").await.json();
    let obj = info.as_object_mut().unwrap();
    assert_timestamp(&obj.remove("created_at").unwrap());
    assert_timestamp(&obj.remove("updated_at").unwrap());
    assert_eq!(info, json!({"stream": "order-1", "version": 3, "aggregate_type": "order", "deleted": false}));
}

#[tokio::test]
async fn soft_delete_hides_the_stream_and_a_new_append_continues_after_the_last_version() {
    let app = TestApp::memory().await;
    app.append("order-1", common::events_body(2)).await;
    let resp = app.delete("/v1/streams/order-1").await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    assert!(resp.body.is_empty());
    app.get("/v1/streams/order-1/events").await.assert_problem(404, "bifrost:stream-not-found");
    assert_eq!(app.get("/v1/streams/order-1").await.json()["deleted"], true);
    assert_eq!(app.get("/v1/streams").await.json()["streams"], json!([]));
    let result = app
        .append("order-1", json!({"expected_version": "no_stream", "events": [{"type": "a", "data": 1}]}))
        .await;
    assert_eq!(result["first_version"], 3);
    assert_eq!(app.get("/v1/streams/order-1").await.json()["deleted"], false);
}

#[tokio::test]
async fn hard_delete_tombstones_the_stream_forever() {
    let app = TestApp::memory().await;
    app.append("order-1", common::events_body(2)).await;
    assert_eq!(app.delete("/v1/streams/order-1?hard=true").await.status, StatusCode::NO_CONTENT);
    let resp = app.post_json("/v1/streams/order-1/events", common::events_body(1).to_string()).await;
    resp.assert_problem(410, "bifrost:stream-deleted");
    app.get("/v1/streams/order-1/events").await.assert_problem(410, "bifrost:stream-deleted");
    app.delete("/v1/streams/order-1?hard=true").await.assert_problem(410, "bifrost:stream-deleted");
    assert_eq!(app.get("/v1/events").await.json()["events"], json!([]));
}

#[tokio::test]
async fn list_streams_filters_by_prefix_and_category_and_pages_in_name_order() {
    let app = TestApp::memory().await;
    for stream in ["user-1", "order-2", "order-1", "orders", "payment-1"] {
        app.append(stream, common::events_body(1)).await;
    }
    let names = |body: &Value| -> Vec<String> {
        body["streams"].as_array().unwrap().iter().map(|s| s["stream"].as_str().unwrap().to_owned()).collect()
    };
    let all = app.get("/v1/streams").await.json();
    assert_eq!(names(&all), ["order-1", "order-2", "orders", "payment-1", "user-1"]);
    assert_eq!(all["next"], Value::Null);
    let first = &all["streams"][0];
    assert_eq!(first["version"], 1);
    assert_eq!(first["aggregate_type"], "order");
    assert_timestamp(&first["updated_at"]);
    assert_eq!(first.as_object().unwrap().len(), 4);

    assert_eq!(names(&app.get("/v1/streams?prefix=order").await.json()), ["order-1", "order-2", "orders"]);
    assert_eq!(names(&app.get("/v1/streams?category=order").await.json()), ["order-1", "order-2"]);
    let page = app.get("/v1/streams?limit=2").await.json();
    assert_eq!(
        (names(&page), page["next"].clone()),
        (vec!["order-1".into(), "order-2".into()], json!("order-2"))
    );
    let page = app.get("/v1/streams?limit=2&after=order-2").await.json();
    assert_eq!(names(&page), ["orders", "payment-1"]);
}

#[tokio::test]
async fn append_with_stale_expected_version_is_rejected_with_actual_version() {
    let app = TestApp::memory().await;
    app.append("order-1", common::events_body(2)).await;
    let body = json!({"expected_version": 1, "events": [{"type": "a", "data": 1}]});
    let resp = app.post_json("/v1/streams/order-1/events", body.to_string()).await;
    let problem = resp.assert_problem(409, "bifrost:wrong-expected-version");
    assert_eq!((problem["expected"].clone(), problem["actual"].clone()), (json!(1), json!(2)));

    let body = json!({"expected_version": "exists", "events": [{"type": "a", "data": 1}]});
    let resp = app.post_json("/v1/streams/order-9/events", body.to_string()).await;
    let problem = resp.assert_problem(409, "bifrost:wrong-expected-version");
    assert_eq!((problem["expected"].clone(), problem["actual"].clone()), (json!("exists"), Value::Null));

    let ok =
        app.append("order-1", json!({"expected_version": 2, "events": [{"type": "a", "data": 1}]})).await;
    assert_eq!(ok["first_version"], 3);
    let ok =
        app.append("order-1", json!({"expected_version": "any", "events": [{"type": "a", "data": 1}]})).await;
    assert_eq!(ok["first_version"], 4);
}

#[tokio::test]
async fn re_sending_the_same_event_ids_returns_the_original_result() {
    let app = TestApp::memory().await;
    let body = json!({"expected_version": "no_stream", "events": [
        {"id": ID_1, "type": "a", "data": {"x": 1}},
        {"id": ID_2, "type": "b", "data": [1]},
    ]});
    let first = app.append("order-1", body.clone()).await;
    app.append("other-1", common::events_body(1)).await;
    let again = app.append("order-1", body).await;
    assert_eq!(again, first);
    assert_eq!(app.get("/v1/events").await.json()["events"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn reusing_an_event_id_for_a_different_event_is_a_duplicate() {
    let app = TestApp::memory().await;
    app.append("order-1", json!({"events": [{"id": ID_1, "type": "a", "data": 1}]})).await;
    let before = app.snapshot().await;
    let resp = app
        .post_json(
            "/v1/streams/order-1/events",
            json!({"events": [{"id": ID_1, "type": "a", "data": 2}]}).to_string(),
        )
        .await;
    resp.assert_problem(409, "bifrost:duplicate-event-id");
    let resp = app
        .post_json(
            "/v1/streams/order-2/events",
            json!({"events": [{"id": ID_1, "type": "a", "data": 1}]}).to_string(),
        )
        .await;
    resp.assert_problem(409, "bifrost:duplicate-event-id");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn multi_stream_append_is_atomic_and_answers_in_request_order() {
    let app = TestApp::memory().await;
    app.append("order-1", common::events_body(1)).await;
    let body = json!({"appends": [
        {"stream": "payment-1", "expected_version": "no_stream", "events": [{"type": "payment.taken", "data": 1}]},
        {"stream": "order-1", "expected_version": 1, "events": [{"type": "order.paid", "data": 1}, {"type": "order.shipped", "data": 2}]},
    ]});
    let resp = app.post_json("/v1/append", body.to_string()).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"results": [
            {"stream": "payment-1", "first_version": 1, "last_version": 1, "first_position": 2, "last_position": 2},
            {"stream": "order-1", "first_version": 2, "last_version": 3, "first_position": 3, "last_position": 4},
        ]})
    );
    // Idempotent like the single-stream route (ids were generated, so re-send with ids).
    let body = json!({"appends": [{"stream": "x-1", "events": [{"id": ID_2, "type": "a", "data": 1}]}]});
    let first = app.post_json("/v1/append", body.to_string()).await.json();
    let again = app.post_json("/v1/append", body.to_string()).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.json(), first);
}

#[tokio::test]
async fn configured_limits_apply() {
    let app =
        TestApp::memory_with(ServerConfig { max_events_per_append: 2, ..ServerConfig::default() }).await;
    app.append("order-1", common::events_body(2)).await;
    let resp = app.post_json("/v1/streams/order-1/events", common::events_body(3).to_string()).await;
    resp.assert_problem(413, "bifrost:payload-too-large");
}
