//! The Redis publishers against a real Redis (`BIFROST_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Skipped when Redis is down, unless `BIFROST_REQUIRE_SERVICES=1`.
//! Each test works on its own `test-<uuid>:…` keys and channels and deletes them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bifrost_api::BridgeContentModeBody;
use bifrost_bridges::kinds::redis::{RedisPubSubPublisher, RedisStreamPublisher};
use bifrost_bridges::message::outgoing;
use bifrost_bridges::{Outgoing, PublishError, Publisher, Target};
use bifrost_core::testkit::service_unavailable;
use bifrost_core::{EventType, RecordedEvent, StreamName, Timestamp};
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, PushKind, Value};
use uuid::Uuid;

const TIMEOUT: Duration = Duration::from_secs(5);

fn url() -> String {
    std::env::var("BIFROST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A plain connection for setting up and checking, or `None` (test skipped) without Redis.
async fn redis() -> Option<MultiplexedConnection> {
    let client = match Client::open(url()) {
        Ok(client) => client,
        Err(e) => return service_unavailable("Redis", e),
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    match client.get_multiplexed_async_connection_with_config(&config).await {
        Ok(connection) => Some(connection),
        Err(e) => service_unavailable("Redis", e),
    }
}

/// A prefix no other test (or run) uses.
fn prefix() -> String {
    format!("test-{}", Uuid::new_v4())
}

fn event(position: u64, event_type: &str, data: &str) -> RecordedEvent {
    RecordedEvent {
        id: Uuid::new_v4(),
        stream: StreamName::new(&format!("order-{position}")).unwrap(),
        aggregate_type: "order".into(),
        event_type: EventType::new(event_type).unwrap(),
        schema_version: 1,
        version: 1,
        position,
        data: Bytes::from(data.to_owned()),
        metadata: Bytes::from_static(b"{}"),
        occurred_at: Timestamp::from_micros(1_764_000_000_000_000),
        recorded_at: Timestamp::from_micros(1_764_000_000_000_100),
    }
}

fn messages(
    positions: std::ops::RangeInclusive<u64>,
    target: &str,
    mode: BridgeContentModeBody,
) -> Vec<Outgoing> {
    let target = Target::parse(target).unwrap();
    positions
        .map(|p| {
            let event_type = if p % 2 == 0 { "order.submitted" } else { "order.paid" };
            outgoing(&event(p, event_type, &format!(r#"{{"n":{p}}}"#)), &target, mode).unwrap()
        })
        .collect()
}

/// Every entry of `key`, oldest first: its fields and values in the order they were written.
async fn entries(redis: &mut MultiplexedConnection, key: &str) -> Vec<Vec<(String, Vec<u8>)>> {
    let raw: Vec<(String, Vec<Vec<u8>>)> =
        redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(redis).await.unwrap();
    raw.into_iter()
        .map(|(_, flat)| {
            flat.chunks(2)
                .map(|pair| (String::from_utf8(pair[0].clone()).unwrap(), pair[1].clone()))
                .collect()
        })
        .collect()
}

async fn delete(redis: &mut MultiplexedConnection, key: &str) {
    let _: () = redis::cmd("DEL").arg(key).query_async(redis).await.unwrap();
}

fn field<'a>(entry: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    entry.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
}

#[tokio::test]
async fn a_batch_becomes_stream_entries_in_order_with_id_type_position_event_and_content_type() {
    let Some(mut redis) = redis().await else { return };
    let prefix = prefix();
    let key = format!("{prefix}:order");
    let batch = messages(1..=20, &format!("{prefix}:{{category}}"), BridgeContentModeBody::Bifrost);
    assert!(batch.iter().all(|m| m.target == key));

    let publisher = RedisStreamPublisher::connect(&url(), 1000).await.unwrap();
    publisher.publish(&batch).await.unwrap();
    let got = entries(&mut redis, &key).await;
    delete(&mut redis, &key).await;

    let expected: Vec<Vec<(String, Vec<u8>)>> = batch
        .iter()
        .map(|m| {
            vec![
                ("id".to_owned(), m.id.to_string().into_bytes()),
                ("type".to_owned(), m.event_type.clone().into_bytes()),
                ("position".to_owned(), m.position.to_string().into_bytes()),
                ("event".to_owned(), m.body.to_vec()),
                ("content_type".to_owned(), b"application/json".to_vec()),
            ]
        })
        .collect();
    assert_eq!(got.len(), 20);
    assert_eq!(got, expected);
}

#[tokio::test]
async fn streams_are_trimmed_to_about_max_len() {
    let Some(mut redis) = redis().await else { return };
    let key = format!("{}:trimmed", prefix());
    let batch = messages(1..=200, &key, BridgeContentModeBody::Bifrost);

    let publisher = RedisStreamPublisher::connect(&url(), 10).await.unwrap();
    for chunk in batch.chunks(20) {
        publisher.publish(chunk).await.unwrap();
    }
    let len: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut redis).await.unwrap();
    let got = entries(&mut redis, &key).await;
    delete(&mut redis, &key).await;

    // `MAXLEN ~` trims whole radix-tree nodes only, so it keeps at least max_len entries and
    // usually some more (up to a node's worth, 100 by default).
    assert!((10..150).contains(&len), "XLEN {len}");
    // What is kept is the newest entries.
    let last = got.last().and_then(|entry| field(entry, "position"));
    assert_eq!(last, Some(&b"200"[..]));
}

#[tokio::test]
async fn binary_mode_entries_carry_the_data_and_the_cloudevents_attributes_as_ce_fields() {
    let Some(mut redis) = redis().await else { return };
    let key = format!("{}:binary", prefix());
    let batch = messages(7..=7, &key, BridgeContentModeBody::CloudeventsBinary);

    let publisher = RedisStreamPublisher::connect(&url(), 1000).await.unwrap();
    publisher.publish(&batch).await.unwrap();
    let got = entries(&mut redis, &key).await;
    delete(&mut redis, &key).await;

    assert_eq!(got.len(), 1);
    let entry = &got[0];
    let id = batch[0].id.to_string();
    assert_eq!(field(entry, "event"), Some(&br#"{"n":7}"#[..]));
    assert_eq!(field(entry, "content_type"), Some(&b"application/json"[..]));
    assert_eq!(field(entry, "id"), Some(id.as_bytes()));
    assert_eq!(field(entry, "type"), Some(&b"order.paid"[..]));
    assert_eq!(field(entry, "position"), Some(&b"7"[..]));
    assert_eq!(field(entry, "ce_id"), Some(id.as_bytes()));
    assert_eq!(field(entry, "ce_type"), Some(&b"order.paid"[..]));
    assert_eq!(field(entry, "ce_specversion"), Some(&b"1.0"[..]));
    assert_eq!(field(entry, "ce_subject"), Some(&b"order-7"[..]));
    assert_eq!(field(entry, "ce_data"), None);
    // Every attribute, and nothing else, besides the five fields every entry has.
    let ce_fields = entry.iter().filter(|(name, _)| name.starts_with("ce_")).count();
    assert_eq!(ce_fields, batch[0].attributes.len());
    assert_eq!(entry.len(), 5 + batch[0].attributes.len());
}

#[tokio::test]
async fn a_key_that_is_not_a_stream_is_refused_naming_the_key() {
    let Some(mut redis) = redis().await else { return };
    let key = format!("{}:plain", prefix());
    let _: () = redis::cmd("SET").arg(&key).arg("not a stream").query_async(&mut redis).await.unwrap();
    let batch = messages(1..=3, &key, BridgeContentModeBody::Bifrost);

    let publisher = RedisStreamPublisher::connect(&url(), 1000).await.unwrap();
    let result = publisher.publish(&batch).await;
    let kept: String = redis::cmd("GET").arg(&key).query_async(&mut redis).await.unwrap();
    delete(&mut redis, &key).await;

    match result {
        Err(PublishError::Refused(message)) => {
            assert!(message.contains(&key), "{message}");
            assert!(message.contains("WRONGTYPE"), "{message}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(kept, "not a stream");
}

#[tokio::test]
async fn pubsub_subscribers_receive_the_bodies_in_order_on_the_rendered_channel() {
    let Some(_) = redis().await else { return };
    let prefix = prefix();
    let channel = format!("{prefix}.order.paid");
    let batch: Vec<Outgoing> =
        messages(1..=10, &format!("{prefix}.{{type}}"), BridgeContentModeBody::Bifrost)
            .into_iter()
            .filter(|m| m.event_type == "order.paid")
            .collect();
    assert_eq!(batch.len(), 5);
    assert!(batch.iter().all(|m| m.target == channel));

    // A RESP3 connection hands what it receives on a subscription to a channel.
    let info = url().into_connection_info().unwrap();
    let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = Client::open(info.set_redis_settings(settings)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = AsyncConnectionConfig::new().set_connection_timeout(Some(TIMEOUT)).set_push_sender(tx);
    let mut subscriber = client.get_multiplexed_async_connection_with_config(&config).await.unwrap();
    subscriber.subscribe(&channel).await.unwrap();

    let publisher = RedisPubSubPublisher::connect(&url()).await.unwrap();
    publisher.publish(&batch).await.unwrap();

    let mut received = Vec::new();
    while received.len() < batch.len() {
        let push = tokio::time::timeout(TIMEOUT, rx.recv()).await.expect("a message within 5 s").unwrap();
        if push.kind != PushKind::Message {
            continue;
        }
        match push.data.as_slice() {
            [Value::BulkString(on), Value::BulkString(body)] => {
                received.push((String::from_utf8(on.clone()).unwrap(), body.clone()))
            }
            other => panic!("unexpected message {other:?}"),
        }
    }
    subscriber.unsubscribe(&channel).await.unwrap();

    let expected: Vec<(String, Vec<u8>)> = batch.iter().map(|m| (channel.clone(), m.body.to_vec())).collect();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn pubsub_with_nobody_listening_is_still_confirmed() {
    let Some(_) = redis().await else { return };
    let batch = messages(1..=3, &format!("{}.{{type}}", prefix()), BridgeContentModeBody::Bifrost);
    let publisher = RedisPubSubPublisher::connect(&url()).await.unwrap();
    publisher.publish(&batch).await.unwrap();
}

#[tokio::test]
async fn a_closed_port_is_unreachable_within_seconds() {
    let url = "redis://127.0.0.1:1";
    let stream = tokio::time::timeout(Duration::from_secs(10), RedisStreamPublisher::connect(url, 10))
        .await
        .expect("connect gives up within 10 s");
    assert!(matches!(stream, Err(PublishError::Unreachable(_))), "{stream:?}");
    let pubsub = tokio::time::timeout(Duration::from_secs(10), RedisPubSubPublisher::connect(url))
        .await
        .expect("connect gives up within 10 s");
    assert!(matches!(pubsub, Err(PublishError::Unreachable(_))), "{pubsub:?}");
}
