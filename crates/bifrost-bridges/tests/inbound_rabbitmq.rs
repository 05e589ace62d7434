//! RabbitMQ in-bridges against a real broker: a queue consumed with manual acks.
//! `BIFROST_TEST_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`; skipped when
//! unreachable unless `BIFROST_REQUIRE_SERVICES=1`. Each test declares its own queues
//! (`test-<uuid>-…`) and deletes them afterwards, also when the test fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::time::Duration;

use base64::Engine as _;
use bifrost_api::BridgeStateBody;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use support::{Node, data, find, id_of, until};
use uuid::Uuid;

fn url() -> String {
    std::env::var("BIFROST_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

struct Ctx {
    channel: Channel,
    prefix: String,
}

impl Ctx {
    fn queue(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    async fn declare(&self, name: &str) {
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        self.channel
            .queue_declare(ShortString::from(self.queue(name)), durable, FieldTable::default())
            .await
            .unwrap();
    }

    /// Publishes to queue `name` through the default exchange, waiting for the confirm.
    async fn publish(&self, name: &str, message_id: Option<&str>, headers: &[(&str, &str)], body: &str) {
        let mut properties = BasicProperties::default();
        if let Some(id) = message_id {
            properties = properties.with_message_id(ShortString::from(id));
        }
        if !headers.is_empty() {
            let mut table = FieldTable::default();
            for (name, value) in headers {
                table.insert(ShortString::from(*name), AMQPValue::LongString(LongString::from(*value)));
            }
            properties = properties.with_headers(table);
        }
        self.channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(self.queue(name)),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    fn bridge(&self, queue: &str, extra: Value) -> Value {
        let mut request = json!({"direction": "in", "kind": "rabbitmq", "url": url(), "source": self.queue(queue),
                                 "batch_timeout_ms": 2000});
        for (k, v) in extra.as_object().unwrap() {
            request[k] = v.clone();
        }
        request
    }
}

async fn with_queues<F, Fut>(queues: &[&str], test: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let connection = match tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&url(), ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            bifrost_core::testkit::service_unavailable::<()>("RabbitMQ", e);
            return;
        }
        Err(_) => {
            bifrost_core::testkit::service_unavailable::<()>("RabbitMQ", "no connection within 10 s");
            return;
        }
    };
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(lapin::options::ConfirmSelectOptions::default()).await.unwrap();
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let ctx = Ctx { channel: channel.clone(), prefix: prefix.clone() };
    for queue in queues {
        ctx.declare(queue).await;
    }
    let outcome = tokio::spawn(test(ctx)).await;
    for queue in queues {
        channel
            .queue_delete(ShortString::from(format!("{prefix}-{queue}")), QueueDeleteOptions::default())
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
async fn messages_in_each_content_mode_are_appended_with_their_stream_type_and_id() {
    with_queues(&["plain", "structured", "binary", "raw"], |ctx| async move {
        let node = Node::start();
        let (plain, structured, binary, raw) = (bridge_name(), bridge_name(), bridge_name(), bridge_name());
        node.put(&plain, ctx.bridge("plain", json!({}))).await;
        node.put(&structured, ctx.bridge("structured", json!({"content_mode": "cloudevents-structured",
            "stream": "ce-{type}"}))).await;
        node.put(&binary, ctx.bridge("binary", json!({"content_mode": "cloudevents-binary",
            "stream": "bin-{source}"}))).await;
        node.put(&raw, ctx.bridge("raw", json!({"content_mode": "raw", "type": "sensor.read",
            "stream": "raw-{subject}"}))).await;

        ctx.publish("plain", Some("m-1"), &[], r#"{"type":"order.placed","data":{"n":1}}"#).await;
        let ce = json!({"specversion": "1.0", "id": "ce-1", "source": "shop", "type": "order.paid", "data": {"n": 2}});
        ctx.publish("structured", None, &[], &ce.to_string()).await;
        let binary_id = Uuid::now_v7().to_string();
        let headers = [("cloudEvents:specversion", "1.0"), ("cloudEvents:id", binary_id.as_str()),
                       ("cloudEvents_type", "order.shipped"), ("cloudEvents:source", "x")];
        ctx.publish("binary", None, &headers, r#"{"n":3}"#).await;
        ctx.publish("raw", Some("r-1"), &[], r#"{"n":4}"#).await;

        let events = node.wait_for_events(4).await;
        let e = find(&events, id_of(&plain, "m-1")).expect("bifrost mode, id from message_id");
        assert_eq!((e.stream.as_str(), e.event_type.as_str()), (format!("ingest-{plain}").as_str(), "order.placed"));
        assert_eq!(data(e), json!({"n": 1}));
        let e = find(&events, id_of(&structured, "ce-1")).expect("structured CloudEvent, id from its id");
        assert_eq!((e.stream.as_str(), e.event_type.as_str()), ("ce-order.paid", "order.paid"));
        let e = find(&events, binary_id.parse().unwrap()).expect("binary CloudEvent from application properties");
        assert_eq!((e.stream.as_str(), e.event_type.as_str()), (format!("bin-{}", ctx.queue("binary")).as_str(), "order.shipped"));
        assert_eq!(data(e), json!({"n": 3}));
        let e = find(&events, id_of(&raw, "r-1")).expect("raw, id from message_id");
        assert_eq!((e.stream.as_str(), e.event_type.as_str()), (format!("raw-{}", ctx.queue("raw")).as_str(), "sensor.read"));
        assert_eq!(data(e), json!({"n": 4}));
    })
    .await;
}

#[tokio::test]
async fn a_replayed_message_is_stored_once_and_a_malformed_one_is_dead_lettered_without_blocking() {
    with_queues(&["in"], |ctx| async move {
        let node = Node::start();
        let name = bridge_name();
        let event = r#"{"type":"order.placed","data":{"n":1}}"#;
        ctx.publish("in", Some("m-1"), &[], event).await;
        ctx.publish("in", Some("m-2"), &[], "{\"type\": \"no data\"}").await;
        ctx.publish("in", Some("m-1"), &[], event).await;
        ctx.publish("in", Some("m-3"), &[], r#"{"type":"order.closed","data":{}}"#).await;
        node.put(&name, ctx.bridge("in", json!({}))).await;

        until("the bridge took all four", || async {
            node.bridges.get(&name).await.unwrap().checkpoint == 4
        })
        .await;
        let events = node.events().await;
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids, [id_of(&name, "m-1"), id_of(&name, "m-3")]);
        let letters = node.bridges.dead_letters(&name).await.unwrap();
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(
            base64::engine::general_purpose::STANDARD.decode(&letters[0].body).unwrap(),
            b"{\"type\": \"no data\"}"
        );
        node.bridges.delete_dead_letter(&name, &letters[0].id).await.unwrap();
        assert!(node.bridges.dead_letters(&name).await.unwrap().is_empty());
        let body = node.bridges.get(&name).await.unwrap();
        assert_eq!((body.published, body.lag), (2, 0), "{body:?}");
    })
    .await;
}

#[tokio::test]
async fn a_broker_unreachable_at_first_loses_nothing_once_the_url_is_fixed() {
    with_queues(&["in"], |ctx| async move {
        let node = Node::start();
        let name = bridge_name();
        let mut bridge = ctx.bridge("in", json!({}));
        bridge["url"] = json!("amqp://guest:guest@127.0.0.1:1/%2f");
        node.put(&name, bridge.clone()).await;
        for i in 0..3 {
            ctx.publish("in", Some(&format!("m-{i}")), &[], &json!({"type": "t.x", "data": i}).to_string())
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
    })
    .await;
}
