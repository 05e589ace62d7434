//! The global log and events by id.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::TestApp;
use serde_json::{Value, json};

const ID: &str = "0193a000-0000-7000-8000-0000000000aa";

async fn seeded() -> TestApp {
    let app = TestApp::memory().await;
    app.append(
        "order-1",
        json!({"events": [
            {"type": "order.submitted", "data": 1, "metadata": {"correlation_id": "c-1"}},
            {"type": "order.item.added", "data": 2},
        ]}),
    )
    .await;
    app.append("user-1", json!({"events": [{"type": "user.created", "data": 3, "id": ID}]})).await;
    app.append(
        "order-2",
        json!({"events": [{"type": "order", "data": 4, "metadata": {"correlation_id": "c-1"}}]}),
    )
    .await;
    app
}

fn positions(body: &Value) -> Vec<u64> {
    body["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn the_global_log_reads_after_an_exclusive_position_and_gives_the_next_one() {
    let app = seeded().await;
    let page = app.get("/v1/events").await.json();
    assert_eq!(positions(&page), [1, 2, 3, 4]);
    assert_eq!(page["next_position"], 4);
    let page = app.get("/v1/events?from_position=1&limit=2").await.json();
    assert_eq!(positions(&page), [2, 3]);
    assert_eq!(page["next_position"], 3);
    let page = app.get("/v1/events?from_position=4").await.json();
    assert_eq!(page, json!({"events": [], "next_position": 4}));
}

#[tokio::test]
async fn the_global_log_filters_by_repeated_type_patterns() {
    let app = seeded().await;
    assert_eq!(positions(&app.get("/v1/events?type=order.*").await.json()), [1]);
    assert_eq!(positions(&app.get("/v1/events?type=order.%23").await.json()), [1, 2, 4]);
    assert_eq!(positions(&app.get("/v1/events?type=order.*&type=user.%23").await.json()), [1, 3]);
    assert_eq!(positions(&app.get("/v1/events?type=user.created").await.json()), [3]);
}

#[tokio::test]
async fn the_global_log_filters_by_category_correlation_id_and_time() {
    let app = seeded().await;
    assert_eq!(positions(&app.get("/v1/events?category=order").await.json()), [1, 2, 4]);
    assert_eq!(positions(&app.get("/v1/events?correlation_id=c-1").await.json()), [1, 4]);
    assert_eq!(
        positions(&app.get("/v1/events?category=user&correlation_id=c-1").await.json()),
        [] as [u64; 0]
    );
    assert_eq!(positions(&app.get("/v1/events?since=2000-01-01T00:00:00Z").await.json()), [1, 2, 3, 4]);
    assert_eq!(positions(&app.get("/v1/events?since=2999-01-01T00:00:00Z").await.json()), [] as [u64; 0]);
    assert_eq!(
        positions(&app.get("/v1/events?until=2000-01-01T00:00:00%2B02:00").await.json()),
        [] as [u64; 0]
    );
    let third =
        app.get("/v1/events?from_position=2&limit=1").await.json()["events"][0]["recorded_at"].clone();
    let since = third.as_str().unwrap();
    let page = app.get(&format!("/v1/events?since={since}")).await.json();
    // Earlier events may share the timestamp; everything from the third on is included.
    assert!(positions(&page).ends_with(&[3, 4]), "{page}");
}

#[tokio::test]
async fn an_event_is_found_by_id() {
    let app = seeded().await;
    let resp = app.get(&format!("/v1/events/{ID}")).await;
    assert_eq!(resp.status, StatusCode::OK);
    let event = resp.json();
    assert_eq!(
        (event["id"].clone(), event["stream"].clone(), event["position"].clone()),
        (json!(ID), json!("user-1"), json!(3))
    );
    assert_eq!(event["type"], "user.created");
    assert_eq!(event["data"], 3);
}

#[tokio::test]
async fn the_head_is_the_last_committed_position() {
    let app = TestApp::memory().await;
    assert_eq!(app.get("/v1/head").await.json(), json!({"position": 0}));
    let app = seeded().await;
    let resp = app.get("/v1/head").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json(), json!({"position": 4}));
}
