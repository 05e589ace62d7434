//! `/v1/bridges` over HTTP: create, replace, read (password masked), list, delete, and the
//! refusals, for out- and in-bridges; an in-bridge's dead letters (the one test that makes
//! some needs Redis: `BIFROST_TEST_REDIS_ADDR`, default `127.0.0.1:6379`). (The brokers themselves are tested in `bifrost-bridges` and end to end in the
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
    assert_eq!(body["config"]["start"], "beginning", "start defaults as a group's");
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

#[tokio::test]
async fn in_bridges_are_created_and_read_with_their_source_and_stream() {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let node = Node::start(store, ServerConfig::default()).await;
    let bridge = json!({"direction": "in", "kind": "rabbitmq", "url": "amqp://guest:s3cret@127.0.0.1:1/%2f",
                        "source": "orders", "batch_timeout_ms": 200});
    let (status, body) = node.call(Method::PUT, "/v1/bridges/orders-in", Some(bridge.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["config"]["direction"], "in");
    assert_eq!(
        (body["config"]["source"].as_str(), body["config"]["stream"].as_str()),
        (Some("orders"), Some("ingest-{name}"))
    );
    assert_eq!(body["config"]["content_mode"], "bifrost");
    assert_eq!(body["config"]["url"], "amqp://guest:***@127.0.0.1:1/%2f");
    assert_eq!(node.call(Method::PUT, "/v1/bridges/orders-in", Some(bridge)).await.0, 200);

    // Nobody listens at that address: the bridge says so, and has taken nothing.
    let mut failing = None;
    for _ in 0..100 {
        let (_, body) = node.call(Method::GET, "/v1/bridges/orders-in", None).await;
        if body["state"] == "failing" {
            failing = Some(body);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let failing = failing.expect("the bridge reports its failure");
    assert_eq!(
        (failing["checkpoint"].as_u64(), failing["lag"].as_u64(), failing["published"].as_u64()),
        (Some(0), Some(0), Some(0))
    );
    assert!(failing["last_error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{failing}");
    assert!(!failing.to_string().contains("s3cret"));

    let (status, letters) = node.call(Method::GET, "/v1/bridges/orders-in/dead-letters", None).await;
    assert_eq!((status, letters), (200, json!({"dead_letters": []})));
    let (status, problem) = node.call(Method::DELETE, "/v1/bridges/orders-in/dead-letters/nope", None).await;
    assert_eq!((status, problem["type"].as_str()), (404, Some("bifrost:dead-letter-not-found")), "{problem}");
    for (method, path) in
        [(Method::GET, "/v1/bridges/nope/dead-letters"), (Method::DELETE, "/v1/bridges/nope/dead-letters/x")]
    {
        let (status, problem) = node.call(method, path, None).await;
        assert_eq!(
            (status, problem["type"].as_str()),
            (404, Some("bifrost:bridge-not-found")),
            "{path}: {problem}"
        );
    }
    assert_eq!(node.call(Method::DELETE, "/v1/bridges/orders-in", None).await.0, 204);
}

#[tokio::test]
async fn bad_in_bridges_are_refused() {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let node = Node::start(store, ServerConfig::default()).await;
    for body in [
        json!({"direction": "in", "kind": "nats", "url": "nats://h", "source": "a", "content_mode": "raw"}),
        json!({"direction": "in", "kind": "redis-pubsub", "url": "redis://h", "source": "a"}),
        json!({"direction": "in", "kind": "nats", "url": "nats://h"}),
        json!({"direction": "in", "kind": "nats", "url": "nats://h", "source": "a", "target": "x"}),
        json!({"direction": "in", "kind": "nats", "url": "nats://h", "source": "a", "stream": "s-{nope}"}),
        json!({"direction": "in", "kind": "nats", "url": "nats://h", "source": "a", "type": "only.for.raw"}),
        json!({"direction": "in", "kind": "redis-stream", "url": "amqp://h", "source": "a"}),
    ] {
        let (status, problem) = node.call(Method::PUT, "/v1/bridges/in", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {problem}");
        assert!(problem["type"].as_str().is_some_and(|t| t.starts_with("bifrost:")), "{problem}");
    }
    let (_, list) = node.call(Method::GET, "/v1/bridges", None).await;
    assert_eq!(list["bridges"], json!([]), "nothing was stored");
}

/// A Redis command over a plain TCP connection (RESP), for the one test that needs Redis.
async fn redis_command(args: &[&str]) -> Result<(), std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = std::env::var("BIFROST_TEST_REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".into());
    let mut connection = tokio::net::TcpStream::connect(address).await?;
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    connection.write_all(command.as_bytes()).await?;
    let mut reply = [0_u8; 64];
    let _ = connection.read(&mut reply).await?;
    Ok(())
}

#[tokio::test]
async fn an_in_bridges_dead_letters_are_listed_and_deleted() {
    if let Err(e) = redis_command(&["PING"]).await {
        bifrost_core::testkit::service_unavailable::<()>("Redis", e);
        return;
    }
    let key = format!("test-{}", uuid::Uuid::new_v4().simple());
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let node = Node::start(store, ServerConfig::default()).await;
    // An out-bridge writes the event JSON to the key; an in-bridge that expects binary
    // CloudEvents finds no CloudEvents attributes there: a dead letter.
    let out =
        json!({"direction": "out", "kind": "redis-stream", "url": "redis://127.0.0.1:6379", "target": key});
    assert_eq!(node.call(Method::PUT, "/v1/bridges/out", Some(out)).await.0, 201);
    let inb = json!({"direction": "in", "kind": "redis-stream", "url": "redis://127.0.0.1:6379", "source": key,
                     "content_mode": "cloudevents-binary"});
    assert_eq!(node.call(Method::PUT, "/v1/bridges/in", Some(inb)).await.0, 201);
    let (status, _) = node
        .call(
            Method::POST,
            "/v1/streams/order-1/events",
            Some(json!({"events": [{"type": "order.placed", "data": {}}]})),
        )
        .await;
    assert_eq!(status, 201);

    let mut letters = json!(null);
    for _ in 0..200 {
        let (status, body) = node.call(Method::GET, "/v1/bridges/in/dead-letters", None).await;
        assert_eq!(status, 200);
        if body["dead_letters"].as_array().is_some_and(|l| !l.is_empty()) {
            letters = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = redis_command(&["DEL", &key]).await;
    let letter = &letters["dead_letters"][0];
    assert!(letter["reason"].as_str().is_some_and(|r| r.contains("specversion")), "{letters}");
    assert!(
        letter["received_at"].as_str().is_some() && letter["body"].as_str().is_some_and(|b| !b.is_empty()),
        "{letters}"
    );
    let id = letter["id"].as_str().unwrap();
    let path = format!("/v1/bridges/in/dead-letters/{id}");
    assert_eq!(node.call(Method::DELETE, &path, None).await.0, 204);
    assert_eq!(node.call(Method::DELETE, &path, None).await.0, 404);
    let (_, body) = node.call(Method::GET, "/v1/bridges/in/dead-letters", None).await;
    assert_eq!(body, json!({"dead_letters": []}));
    let (_, inb) = node.call(Method::GET, "/v1/bridges/in", None).await;
    assert_eq!((inb["checkpoint"].as_u64(), inb["published"].as_u64()), (Some(1), Some(0)), "{inb}");
}

#[tokio::test]
async fn bridges_of_the_configuration_file_are_in_place_at_start_and_refused_to_put_and_delete() {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let request = serde_json::from_value(json!({"direction": "out", "kind": "redis-stream",
        "url": "redis://:pw@127.0.0.1:1", "filter": {"types": ["order.#"]}, "start": "beginning"}))
    .unwrap();
    // An API-made bridge that an earlier start's file had named: only the file's are managed.
    let config =
        ServerConfig { bridges: Some(vec![("from-file".into(), request)]), ..ServerConfig::default() };
    let node = Node::start(Arc::clone(&store), config).await;

    let (status, body) = node.call(Method::GET, "/v1/bridges/from-file", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["config"]["url"], "redis://:***@127.0.0.1:1");
    assert_eq!(body["config"]["start"], "beginning");

    let change = json!({"direction": "out", "kind": "nats", "url": "nats://127.0.0.1:1"});
    let (status, body) = node.call(Method::PUT, "/v1/bridges/from-file", Some(change.clone())).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["type"], "bifrost:bridge-config-managed");
    assert_eq!(body["bridge"], "from-file");
    let (status, body) = node.call(Method::DELETE, "/v1/bridges/from-file", None).await;
    assert_eq!((status, body["type"].as_str()), (409, Some("bifrost:bridge-config-managed")));
    let (_, body) = node.call(Method::GET, "/v1/bridges/from-file", None).await;
    assert_eq!(body["config"]["kind"], "redis-stream", "nothing changed");

    // Another node on the store, whose file has no bridges, refuses it the same way.
    let other = Node::start(Arc::clone(&store), ServerConfig::default()).await;
    let (status, _) = other.call(Method::PUT, "/v1/bridges/from-file", Some(change.clone())).await;
    assert_eq!(status, 409);

    // Other bridges stay the API's.
    assert_eq!(other.call(Method::PUT, "/v1/bridges/by-api", Some(change)).await.0, 201);
    assert_eq!(node.call(Method::DELETE, "/v1/bridges/by-api", None).await.0, 204);
}

#[tokio::test]
async fn an_in_bridge_appends_only_events_that_pass_their_schema() {
    if let Err(e) = redis_command(&["PING"]).await {
        bifrost_core::testkit::service_unavailable::<()>("Redis", e);
        return;
    }
    let key = format!("test-{}", uuid::Uuid::new_v4().simple());
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let node = Node::start(store, ServerConfig::default()).await;
    let schema = json!({"schema": {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}});
    assert_eq!(node.call(Method::PUT, "/v1/schemas/sensor.read/1", Some(schema)).await.0, 201);
    let inb = json!({"direction": "in", "kind": "redis-stream", "url": "redis://127.0.0.1:6379", "source": key,
                     "content_mode": "raw", "type": "sensor.read", "stream": "sensor-1"});
    assert_eq!(node.call(Method::PUT, "/v1/bridges/in", Some(inb)).await.0, 201);
    redis_command(&["XADD", &key, "*", "event", r#"{"total":"not a number"}"#]).await.unwrap();
    redis_command(&["XADD", &key, "*", "event", r#"{"total":7}"#]).await.unwrap();

    let mut stored = json!(null);
    for _ in 0..200 {
        let (status, body) = node.call(Method::GET, "/v1/streams/sensor-1/events", None).await;
        if status == 200 && !body["events"].as_array().unwrap().is_empty() {
            stored = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, letters) = node.call(Method::GET, "/v1/bridges/in/dead-letters", None).await;
    let _ = redis_command(&["DEL", &key]).await;
    let events = stored["events"].as_array().expect("the valid message was appended");
    assert_eq!(events.len(), 1, "{stored}");
    assert_eq!(events[0]["data"], json!({"total": 7}));
    let letter = &letters["dead_letters"][0];
    let reason = letter["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("schema violation") && reason.contains("/total"), "{letters}");
}
