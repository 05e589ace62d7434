//! NATS in-bridges against a real server (2.9+, JetStream on): a durable pull consumer on the
//! stream that captures the subject. `BIFROST_TEST_NATS_URL`, default
//! `nats://127.0.0.1:4222`; skipped when unreachable unless `BIFROST_REQUIRE_SERVICES=1`.
//! Each test makes its own JetStream stream over `test-<uuid>.>` and deletes it (with the
//! bridges' consumers) afterwards, also when the test fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::time::Duration;

use async_nats::HeaderMap;
use base64::Engine as _;
use bifrost_api::BridgeStateBody;
use bytes::Bytes;
use serde_json::{Value, json};
use support::{Node, data, find, id_of, until};
use uuid::Uuid;

fn url() -> String {
    std::env::var("BIFROST_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

struct Ctx {
    client: async_nats::Client,
    prefix: String,
}

impl Ctx {
    async fn publish(&self, subject: &str, headers: &[(&str, &str)], body: &str) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        let reply = self
            .client
            .request_with_headers(format!("{}.{subject}", self.prefix), map, Bytes::from(body.to_owned()))
            .await
            .unwrap();
        let ack: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert!(ack.get("seq").is_some(), "PubAck: {ack}");
    }

    fn subject(&self, subject: &str) -> String {
        format!("{}.{subject}", self.prefix)
    }

    fn bridge(&self, source: &str, extra: Value) -> Value {
        let mut request = json!({"direction": "in", "kind": "nats", "url": url(), "source": self.subject(source),
                                 "batch_timeout_ms": 2000});
        for (k, v) in extra.as_object().unwrap() {
            request[k] = v.clone();
        }
        request
    }
}

async fn with_stream<F, Fut>(test: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let client = match async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url())
        .await
    {
        Ok(client) => client,
        Err(e) => {
            bifrost_core::testkit::service_unavailable::<()>("NATS", e);
            return;
        }
    };
    let name = format!("test-{}", Uuid::new_v4().simple());
    let config = json!({"name": name, "subjects": [format!("{name}.>")], "storage": "memory",
                        "max_age": 600_000_000_000_u64});
    let created = api(&client, &format!("STREAM.CREATE.{name}"), config).await;
    assert!(created.get("error").is_none(), "create stream (is JetStream on?): {created}");
    let outcome = tokio::spawn(test(Ctx { client: client.clone(), prefix: name.clone() })).await;
    let deleted = api(&client, &format!("STREAM.DELETE.{name}"), json!({})).await;
    assert_eq!(deleted["success"], true, "delete stream: {deleted}");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn api(client: &async_nats::Client, what: &str, body: Value) -> Value {
    let reply = client.request(format!("$JS.API.{what}"), Bytes::from(body.to_string())).await.unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

fn bridge_name() -> String {
    format!("in-{}", Uuid::new_v4().simple())
}

#[tokio::test]
async fn messages_in_each_content_mode_are_appended_with_their_stream_type_and_id() {
    with_stream(|ctx| async move {
        let node = Node::start();
        let (plain, structured, binary, raw) = (bridge_name(), bridge_name(), bridge_name(), bridge_name());
        node.put(&plain, ctx.bridge("plain", json!({}))).await;
        node.put(
            &structured,
            ctx.bridge(
                "structured",
                json!({"content_mode": "cloudevents-structured",
            "stream": "ce-{type}"}),
            ),
        )
        .await;
        node.put(
            &binary,
            ctx.bridge(
                "binary",
                json!({"content_mode": "cloudevents-binary",
            "stream": "bin-{subject}"}),
            ),
        )
        .await;
        node.put(
            &raw,
            ctx.bridge(
                "raw",
                json!({"content_mode": "raw", "type": "sensor.read",
            "stream": "raw-x"}),
            ),
        )
        .await;

        ctx.publish("plain", &[("Nats-Msg-Id", "m-1")], r#"{"type":"order.placed","data":{"n":1}}"#).await;
        let ce = json!({"specversion": "1.0", "id": "ce-1", "source": "shop", "type": "order.paid",
                        "data": {"n": 2}});
        ctx.publish("structured", &[], &ce.to_string()).await;
        let binary_id = Uuid::now_v7().to_string();
        ctx.publish(
            "binary",
            &[
                ("ce-specversion", "1.0"),
                ("ce-id", &binary_id),
                ("ce-type", "order.shipped"),
                ("ce-source", "x"),
            ],
            r#"{"n":3}"#,
        )
        .await;
        ctx.publish("raw", &[], r#"{"n":4}"#).await;

        let events = node.wait_for_events(4).await;
        let e = find(&events, id_of(&plain, "m-1")).expect("bifrost mode, id from Nats-Msg-Id");
        assert_eq!(
            (e.stream.as_str(), e.event_type.as_str()),
            (format!("ingest-{plain}").as_str(), "order.placed")
        );
        assert_eq!(data(e), json!({"n": 1}));
        let e = find(&events, id_of(&structured, "ce-1")).expect("structured CloudEvent, id from its id");
        assert_eq!((e.stream.as_str(), e.event_type.as_str()), ("ce-order.paid", "order.paid"));
        assert_eq!(data(e), json!({"n": 2}));
        let e = find(&events, binary_id.parse().unwrap()).expect("binary CloudEvent, a UUID id kept as is");
        assert_eq!(
            (e.stream.as_str(), e.event_type.as_str()),
            (format!("bin-{}", ctx.subject("binary")).as_str(), "order.shipped")
        );
        assert_eq!(data(e), json!({"n": 3}));
        let e = events.iter().find(|e| e.stream.as_str() == "raw-x").expect("raw");
        assert_eq!(e.event_type.as_str(), "sensor.read");
        assert_eq!(data(e), json!({"n": 4}));
        // No message id: the JetStream stream sequence (the 4th message of the stream).
        assert_eq!(e.id, id_of(&raw, "4"));

        let body = node.bridges.get(&plain).await.unwrap();
        assert_eq!(
            (body.published, body.checkpoint, body.state),
            (1, 1, BridgeStateBody::Running),
            "{body:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_replayed_message_is_stored_once_and_a_malformed_one_is_dead_lettered_without_blocking() {
    with_stream(|ctx| async move {
        let node = Node::start();
        let name = bridge_name();
        let id = Uuid::now_v7();
        let event = json!({"type": "order.placed", "data": {"n": 1}, "id": id}).to_string();
        // Published twice with no Nats-Msg-Id (JetStream keeps both): the bridge stores one.
        ctx.publish("in", &[], &event).await;
        ctx.publish("in", &[], "this is not JSON").await;
        ctx.publish("in", &[], &event).await;
        ctx.publish("in", &[], r#"{"type":"order.closed","data":{}}"#).await;
        node.put(&name, ctx.bridge("in", json!({}))).await;

        until("the bridge took all four", || async {
            node.bridges.get(&name).await.unwrap().checkpoint == 4
        })
        .await;
        let events = node.events().await;
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            ["order.placed", "order.closed"],
            "the replay is stored once, the one after the bad one arrives"
        );
        assert_eq!(events[0].id, id);

        let letters = node.bridges.dead_letters(&name).await.unwrap();
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert!(!letters[0].reason.is_empty());
        assert_eq!(
            base64::engine::general_purpose::STANDARD.decode(&letters[0].body).unwrap(),
            b"this is not JSON"
        );
        node.bridges.delete_dead_letter(&name, &letters[0].id).await.unwrap();
        assert!(node.bridges.dead_letters(&name).await.unwrap().is_empty());
        assert!(matches!(
            node.bridges.delete_dead_letter(&name, &letters[0].id).await,
            Err(bifrost_bridges::BridgeError::DeadLetterNotFound { .. })
        ));
        assert_eq!(node.bridges.get(&name).await.unwrap().published, 2);
    })
    .await;
}

#[tokio::test]
async fn a_broker_unreachable_at_first_loses_nothing_once_the_url_is_fixed() {
    with_stream(|ctx| async move {
        let node = Node::start();
        let name = bridge_name();
        let mut bridge = ctx.bridge("in", json!({}));
        bridge["url"] = json!("nats://127.0.0.1:1");
        node.put(&name, bridge.clone()).await;
        for i in 0..3 {
            ctx.publish(
                "in",
                &[("Nats-Msg-Id", &format!("m-{i}"))],
                &json!({"type": "t.x", "data": i}).to_string(),
            )
            .await;
        }
        until("the bridge reports its failure", || async {
            let body = node.bridges.get(&name).await.unwrap();
            body.state == BridgeStateBody::Failing && body.last_error.is_some()
        })
        .await;
        assert!(node.events().await.is_empty());

        bridge["url"] = json!(url());
        node.put(&name, bridge).await;
        let events = node.wait_for_events(3).await;
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids, (0..3).map(|i| id_of(&name, &format!("m-{i}"))).collect::<Vec<_>>());
        until("the bridge is healthy again", || async {
            node.bridges.get(&name).await.unwrap().state == BridgeStateBody::Running
        })
        .await;
    })
    .await;
}
