//! Redis in-bridges against a real server: the consumer group `bifrost` on a stream key.
//! `BIFROST_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`; skipped when unreachable
//! unless `BIFROST_REQUIRE_SERVICES=1`. Each test uses its own keys (`test-<uuid>-…`) and
//! deletes them afterwards, also when the test fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::time::Duration;

use base64::Engine as _;
use bifrost_api::BridgeStateBody;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use support::{Node, data, find, id_of, until};
use uuid::Uuid;

fn url() -> String {
    std::env::var("BIFROST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

struct Ctx {
    connection: MultiplexedConnection,
    prefix: String,
}

impl Ctx {
    fn key(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// `XADD <key> * field value …`; the entry id.
    async fn add(&self, key: &str, fields: &[(&str, &str)]) -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.key(key)).arg("*");
        for (field, value) in fields {
            cmd.arg(*field).arg(*value);
        }
        cmd.query_async(&mut self.connection.clone()).await.unwrap()
    }

    fn bridge(&self, key: &str, extra: Value) -> Value {
        let mut request = json!({"direction": "in", "kind": "redis-stream", "url": url(), "source": self.key(key),
                                 "batch_timeout_ms": 2000});
        for (k, v) in extra.as_object().unwrap() {
            request[k] = v.clone();
        }
        request
    }
}

async fn with_keys<F, Fut>(keys: &[&str], test: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let connection = match redis::Client::open(url()) {
        Ok(client) => {
            match tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
                .await
            {
                Ok(Ok(connection)) => connection,
                Ok(Err(e)) => {
                    bifrost_core::testkit::service_unavailable::<()>("Redis", e);
                    return;
                }
                Err(_) => {
                    bifrost_core::testkit::service_unavailable::<()>("Redis", "no connection within 5 s");
                    return;
                }
            }
        }
        Err(e) => panic!("{e}"),
    };
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let outcome = tokio::spawn(test(Ctx { connection: connection.clone(), prefix: prefix.clone() })).await;
    for key in keys {
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{prefix}-{key}"))
            .query_async(&mut connection.clone())
            .await
            .unwrap();
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn bridge_name() -> String {
    format!("in-{}", Uuid::new_v4().simple())
}

#[tokio::test]
async fn entries_in_each_content_mode_are_appended_with_their_stream_type_and_id() {
    with_keys(&["plain", "structured", "binary", "raw"], |ctx| async move {
        let node = Node::start();
        let (plain, structured, binary, raw) = (bridge_name(), bridge_name(), bridge_name(), bridge_name());
        node.put(&plain, ctx.bridge("plain", json!({}))).await;
        node.put(&structured, ctx.bridge("structured", json!({"content_mode": "cloudevents-structured",
            "stream": "ce-{type}"}))).await;
        node.put(&binary, ctx.bridge("binary", json!({"content_mode": "cloudevents-binary",
            "stream": "bin-{subject}"}))).await;
        node.put(&raw, ctx.bridge("raw", json!({"content_mode": "raw", "type": "sensor.read", "stream": "raw-x"}))).await;

        ctx.add("plain", &[("id", "m-1"), ("event", r#"{"type":"order.placed","data":{"n":1}}"#)]).await;
        let ce = json!({"specversion": "1.0", "id": "ce-1", "source": "shop", "type": "order.paid", "data": {"n": 2}});
        ctx.add("structured", &[("event", &ce.to_string())]).await;
        let binary_id = Uuid::now_v7().to_string();
        ctx.add("binary", &[("ce_specversion", "1.0"), ("ce_id", &binary_id), ("ce_type", "order.shipped"),
                            ("event", r#"{"n":3}"#)]).await;
        let entry = ctx.add("raw", &[("event", r#"{"n":4}"#)]).await;

        let events = node.wait_for_events(4).await;
        let e = find(&events, id_of(&plain, "m-1")).expect("bifrost mode, id from field id");
        assert_eq!((e.stream.as_str(), e.event_type.as_str()), (format!("ingest-{plain}").as_str(), "order.placed"));
        assert_eq!(data(e), json!({"n": 1}));
        let e = find(&events, id_of(&structured, "ce-1")).expect("structured CloudEvent");
        assert_eq!((e.stream.as_str(), e.event_type.as_str()), ("ce-order.paid", "order.paid"));
        let e = find(&events, binary_id.parse().unwrap()).expect("binary CloudEvent from ce_ fields");
        assert_eq!((e.stream.as_str(), data(e)), (format!("bin-{}", ctx.key("binary")).as_str(), json!({"n": 3})));
        let e = find(&events, id_of(&raw, &entry)).expect("raw, id from the entry id");
        assert_eq!((e.stream.as_str(), e.event_type.as_str()), ("raw-x", "sensor.read"));
    })
    .await;
}

#[tokio::test]
async fn a_replayed_entry_is_stored_once_and_a_malformed_one_is_dead_lettered_without_blocking() {
    with_keys(&["in"], |ctx| async move {
        let node = Node::start();
        let name = bridge_name();
        let event = r#"{"type":"order.placed","data":{"n":1}}"#;
        ctx.add("in", &[("id", "m-1"), ("event", event)]).await;
        ctx.add("in", &[("id", "m-2"), ("event", r#"{"type":"bad type!","data":1}"#)]).await;
        ctx.add("in", &[("id", "m-1"), ("event", event)]).await;
        ctx.add("in", &[("id", "m-3"), ("event", r#"{"type":"order.closed","data":{}}"#)]).await;
        node.put(&name, ctx.bridge("in", json!({}))).await;

        until("the bridge took all four", || async {
            node.bridges.get(&name).await.unwrap().checkpoint == 4
        })
        .await;
        let ids: Vec<Uuid> = node.events().await.iter().map(|e| e.id).collect();
        assert_eq!(ids, [id_of(&name, "m-1"), id_of(&name, "m-3")]);
        let letters = node.bridges.dead_letters(&name).await.unwrap();
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(
            base64::engine::general_purpose::STANDARD.decode(&letters[0].body).unwrap(),
            br#"{"type":"bad type!","data":1}"#
        );
        node.bridges.delete_dead_letter(&name, &letters[0].id).await.unwrap();
        assert!(node.bridges.dead_letters(&name).await.unwrap().is_empty());
        // Every entry acked: nothing pending in the group.
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(ctx.key("in"))
            .arg("bifrost")
            .query_async(&mut ctx.connection.clone())
            .await
            .unwrap();
        let count = match &pending {
            redis::Value::Array(parts) => parts.first().cloned(),
            _ => None,
        };
        assert_eq!(count, Some(redis::Value::Int(0)), "{pending:?}");
    })
    .await;
}

#[tokio::test]
async fn entries_a_dead_owner_left_pending_are_claimed_and_appended() {
    with_keys(&["in"], |ctx| async move {
        let name = bridge_name();
        let key = ctx.key("in");
        let mut connection = ctx.connection.clone();
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg("bifrost")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await
            .unwrap();
        for i in 0..3 {
            ctx.add(
                "in",
                &[("id", &format!("m-{i}")), ("event", &json!({"type": "t.x", "data": i}).to_string())],
            )
            .await;
        }
        // Another node read them and died before appending and acking.
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("bifrost")
            .arg("dead-node")
            .arg("COUNT")
            .arg(10)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut connection)
            .await
            .unwrap();
        ctx.add("in", &[("id", "m-3"), ("event", r#"{"type":"t.x","data":3}"#)]).await;

        let node = Node::start();
        node.put(&name, ctx.bridge("in", json!({}))).await;
        let events = node.wait_for_events(4).await;
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids, (0..4).map(|i| id_of(&name, &format!("m-{i}"))).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test]
async fn a_broker_unreachable_at_first_loses_nothing_once_the_url_is_fixed() {
    with_keys(&["in"], |ctx| async move {
        let node = Node::start();
        let name = bridge_name();
        let mut bridge = ctx.bridge("in", json!({}));
        bridge["url"] = json!("redis://127.0.0.1:1");
        node.put(&name, bridge.clone()).await;
        for i in 0..3 {
            ctx.add(
                "in",
                &[("id", &format!("m-{i}")), ("event", &json!({"type": "t.x", "data": i}).to_string())],
            )
            .await;
        }
        until("the bridge reports its failure", || async {
            let body = node.bridges.get(&name).await.unwrap();
            body.state == BridgeStateBody::Failing && body.last_error.is_some()
        })
        .await;
        bridge["url"] = json!(url());
        node.put(&name, bridge).await;
        let events = node.wait_for_events(3).await;
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids, (0..3).map(|i| id_of(&name, &format!("m-{i}"))).collect::<Vec<_>>());
        assert_eq!(data(&events[2]), json!(2));
    })
    .await;
}
