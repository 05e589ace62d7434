//! The RabbitMQ publisher against a real broker (`BIFROST_TEST_AMQP_URL`, default the local
//! one): what lands in a queue bound to the `bifrost` exchange, message by message, and what
//! the broker refuses. Each test binds its own queue to its own routing-key prefix, so tests
//! running side by side never see each other's messages.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bifrost_api::BridgeContentModeBody;
use bifrost_bridges::kinds::rabbitmq::{EXCHANGE, RabbitPublisher};
use bifrost_bridges::message::outgoing;
use bifrost_bridges::{Outgoing, PublishError, Publisher, Target};
use bifrost_core::testkit::service_unavailable;
use bifrost_core::{EventType, RecordedEvent, StreamName, Timestamp};
use bytes::Bytes;
use lapin::message::Delivery;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use uuid::Uuid;

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn url() -> String {
    std::env::var("BIFROST_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// A publisher on the test broker, or `None` (skipped) when it is down.
async fn publisher() -> Option<RabbitPublisher> {
    match tokio::time::timeout(Duration::from_secs(10), RabbitPublisher::connect(&url())).await {
        Ok(Ok(p)) => Some(p),
        Ok(Err(e)) => service_unavailable("RabbitMQ", e),
        Err(_) => service_unavailable("RabbitMQ", "no connection within 10 s"),
    }
}

/// A queue of this test's own, bound to `bifrost` with `<prefix>.#`.
struct TestQueue {
    _connection: Connection,
    channel: Channel,
    name: String,
    /// The routing-key prefix this queue takes.
    prefix: String,
}

impl TestQueue {
    /// Declared after the publisher connected, which declares the exchange.
    async fn bind() -> Self {
        let connection = Connection::connect(&url(), ConnectionProperties::default()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let id = Uuid::new_v4();
        let (name, prefix) = (format!("bifrost-test-{id}"), format!("test-{id}"));
        channel
            .queue_declare(
                ShortString::from(name.as_str()),
                QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                ShortString::from(name.as_str()),
                ShortString::from(EXCHANGE),
                ShortString::from(format!("{prefix}.#")),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self { _connection: connection, channel, name, prefix }
    }

    /// A target whose routing keys this queue takes.
    fn target(&self) -> Target {
        Target::parse(&format!("{}.{{type}}", self.prefix)).unwrap()
    }

    /// Every message in the queue, in queue order (taken off it).
    async fn take_all(&self) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Some(got) = self
            .channel
            .basic_get(ShortString::from(self.name.as_str()), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(got.delivery);
        }
        out
    }

    async fn delete(self) {
        self.channel
            .queue_delete(ShortString::from(self.name.as_str()), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
}

fn event(position: u64, event_type: &str) -> RecordedEvent {
    RecordedEvent {
        id: Uuid::now_v7(),
        stream: StreamName::new("order-123").unwrap(),
        aggregate_type: "order".into(),
        event_type: EventType::new(event_type).unwrap(),
        schema_version: 1,
        version: position,
        position,
        data: Bytes::from(format!(r#"{{"n": {position}}}"#)),
        metadata: Bytes::from_static(b"{}"),
        occurred_at: Timestamp::from_micros(1_764_000_000_000_000),
        recorded_at: Timestamp::from_micros(1_764_000_000_000_100),
    }
}

fn message(event: &RecordedEvent, target: &Target, mode: BridgeContentModeBody) -> Outgoing {
    outgoing(event, target, mode).unwrap()
}

fn header(delivery: &Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => panic!("header {name} is not a string: {other:?}"),
    }
}

fn short(value: &Option<ShortString>) -> Option<&str> {
    value.as_ref().map(ShortString::as_str)
}

#[tokio::test]
async fn a_batch_lands_in_order_persistent_with_its_routing_keys_ids_and_bodies() {
    let Some(publisher) = publisher().await else { return };
    let queue = TestQueue::bind().await;
    let target = queue.target();
    let events: Vec<_> =
        (1..=20).map(|n| event(100 + n, if n % 2 == 0 { "order.paid" } else { "order.submitted" })).collect();
    let batch: Vec<_> = events.iter().map(|e| message(e, &target, BridgeContentModeBody::Bifrost)).collect();

    publisher.publish(&batch).await.unwrap();

    let got = queue.take_all().await;
    assert_eq!(got.len(), 20);
    for (delivery, event) in got.iter().zip(&events) {
        let routing_key = format!("{}.{}", queue.prefix, event.event_type.as_str());
        assert_eq!(delivery.exchange.as_str(), EXCHANGE);
        assert_eq!(delivery.routing_key.as_str(), routing_key);
        let p = &delivery.properties;
        assert_eq!(short(p.message_id()), Some(event.id.to_string().as_str()));
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(short(p.content_type()), Some("application/json"));
        assert_eq!(short(p.kind()), Some(event.event_type.as_str()));
        assert_eq!(*p.headers(), None, "no CloudEvents headers outside binary mode");
        let body: Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(body["id"], json!(event.id.to_string()));
        assert_eq!(body["position"], json!(event.position));
        assert_eq!(body["type"], json!(event.event_type.as_str()));
        assert_eq!(body["data"], json!({"n": event.position}));
    }
    queue.delete().await;
}

#[tokio::test]
async fn binary_mode_puts_the_data_in_the_body_and_the_attributes_in_cloudevents_headers() {
    let Some(publisher) = publisher().await else { return };
    let queue = TestQueue::bind().await;
    let e = event(7, "order.submitted");
    let batch = [message(&e, &queue.target(), BridgeContentModeBody::CloudeventsBinary)];

    publisher.publish(&batch).await.unwrap();

    let got = queue.take_all().await;
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.routing_key.as_str(), format!("{}.order.submitted", queue.prefix));
    assert_eq!(serde_json::from_slice::<Value>(&d.data).unwrap(), json!({"n": 7}));
    assert_eq!(short(d.properties.content_type()), Some("application/json"));
    assert_eq!(short(d.properties.message_id()), Some(e.id.to_string().as_str()));
    assert_eq!(*d.properties.delivery_mode(), Some(2));
    assert_eq!(header(d, "cloudEvents:id"), Some(e.id.to_string()));
    assert_eq!(header(d, "cloudEvents:type").as_deref(), Some("order.submitted"));
    assert_eq!(header(d, "cloudEvents:specversion").as_deref(), Some("1.0"));
    assert_eq!(header(d, "cloudEvents:subject").as_deref(), Some("order-123"));
    assert_eq!(header(d, "cloudEvents:data"), None);
    queue.delete().await;
}

#[tokio::test]
async fn a_routing_key_no_queue_is_bound_to_is_refused_naming_the_key() {
    let Some(publisher) = publisher().await else { return };
    let queue = TestQueue::bind().await;
    let unbound = Target::parse(&format!("unbound-{}.{{type}}", Uuid::new_v4())).unwrap();
    let routed = message(&event(1, "order.submitted"), &queue.target(), BridgeContentModeBody::Bifrost);
    let lost = message(&event(2, "order.paid"), &unbound, BridgeContentModeBody::Bifrost);

    match publisher.publish(&[routed.clone(), lost.clone()]).await {
        Err(PublishError::Refused(why)) => {
            assert!(why.contains(&lost.target), "{why:?} names {:?}", lost.target)
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    // The routed one arrived (the bridge retries the whole batch; the id dedupes it).
    let got = queue.take_all().await;
    assert_eq!(got.len(), 1);
    assert_eq!(short(got[0].properties.message_id()), Some(routed.id.to_string().as_str()));

    // A returned message leaves the channel usable.
    publisher.publish(std::slice::from_ref(&routed)).await.unwrap();
    assert_eq!(queue.take_all().await.len(), 1);
    queue.delete().await;
}

#[tokio::test]
async fn a_closed_port_is_unreachable_within_seconds() {
    let started = Instant::now();
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        RabbitPublisher::connect("amqp://guest:guest@127.0.0.1:1/%2f"),
    )
    .await
    .expect("connect gave up within 5 s");
    match connected {
        Err(PublishError::Unreachable(why)) => assert!(why.contains("connect"), "{why}"),
        Err(other) => panic!("expected Unreachable, got {other:?}"),
        Ok(_) => panic!("connected to a closed port"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}
