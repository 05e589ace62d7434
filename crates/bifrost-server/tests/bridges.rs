//! `/v1/bridges` over HTTP: create, replace, read (password masked), list, delete, and the
//! refusals. (The brokers themselves are tested in `bifrost-bridges` and end to end in the
//! binary's tests.)

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use bifrost_core::{DurableStore, InMemoryStore};
use bifrost_server::ServerConfig;
use common::ws::Node;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn bridges_are_created_read_listed_and_deleted() {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let node = Node::start(store, ServerConfig::default()).await;
    // A broker nobody listens on: the bridge exists and reports its failure.
    let bridge = json!({"direction": "out", "kind": "rabbitmq", "url": "amqp://guest:s3cret@127.0.0.1:1/%2f",
                        "filter": {"types": ["order.#"]}, "batch_timeout_ms": 200});
    let (status, body) = node.call(Method::PUT, "/v1/bridges/orders", Some(bridge.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "orders");
    assert_eq!(body["config"]["url"], "amqp://guest:***@127.0.0.1:1/%2f", "the password never shows");
    assert_eq!(body["config"]["target"], "{type}");
    assert_eq!(
        (body["config"]["batch_size"].as_u64(), body["config"]["max_len"].as_u64()),
        (Some(50), Some(1_000_000))
    );
    assert_eq!(body["config"]["start"], "end");
    assert_eq!(node.call(Method::PUT, "/v1/bridges/orders", Some(bridge)).await.0, 200);

    // Some event for it to try: it fails, retries, and says so.
    let (status, _) = node
        .call(
            Method::POST,
            "/v1/streams/order-1/events",
            Some(json!({"events": [{"type": "order.placed", "data": {}}]})),
        )
        .await;
    assert_eq!(status, 201);
    let mut failing = None;
    for _ in 0..100 {
        let (_, body) = node.call(Method::GET, "/v1/bridges/orders", None).await;
        if body["state"] == "failing" {
            failing = Some(body);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let failing = failing.expect("the bridge reports its failure");
    assert_eq!((failing["checkpoint"].as_u64(), failing["lag"].as_u64()), (Some(0), Some(1)), "{failing}");
    assert!(failing["last_error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{failing}");
    assert!(failing["node"].as_str().is_some());
    assert!(!failing.to_string().contains("s3cret"));

    let (status, list) = node.call(Method::GET, "/v1/bridges", None).await;
    assert_eq!((status, list["bridges"].as_array().unwrap().len()), (200, 1));
    assert_eq!(node.call(Method::DELETE, "/v1/bridges/orders", None).await.0, 204);
    let (status, problem) = node.call(Method::GET, "/v1/bridges/orders", None).await;
    assert_eq!((status, problem["type"].as_str()), (404, Some("bifrost:bridge-not-found")));
    assert_eq!(node.call(Method::DELETE, "/v1/bridges/orders", None).await.0, 404);
}

#[tokio::test]
async fn bad_bridges_are_refused() {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let node = Node::start(store, ServerConfig::default()).await;
    for (name, body) in [
        ("ok", json!({"direction": "out", "kind": "nats", "url": "amqp://h"})),
        (
            "ok",
            json!({"direction": "out", "kind": "redis-pubsub", "url": "redis://h", "content_mode": "cloudevents-binary"}),
        ),
        ("ok", json!({"direction": "out", "kind": "nats", "url": "nats://h", "target": "x.{nope}"})),
        ("ok", json!({"direction": "out", "kind": "nats", "url": "nats://h", "batch_size": 5000})),
        ("ok", json!({"direction": "out", "kind": "kafka", "url": "nats://h"})),
        ("ok", json!({"direction": "out", "kind": "nats"})),
        ("ok", json!({"direction": "out", "kind": "nats", "url": "nats://h", "surprise": 1})),
        ("bad name", json!({"direction": "out", "kind": "nats", "url": "nats://h"})),
    ] {
        let path = format!("/v1/bridges/{}", name.replace(' ', "%20"));
        let (status, problem) = node.call(Method::PUT, &path, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {problem}");
        assert!(problem["type"].as_str().is_some_and(|t| t.starts_with("bifrost:")), "{problem}");
    }
    let (_, list) = node.call(Method::GET, "/v1/bridges", None).await;
    assert_eq!(list["bridges"], json!([]), "nothing was stored");
}
