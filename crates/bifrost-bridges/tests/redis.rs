//! The Redis publishers against a real Redis (`BIFROST_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Skipped when Redis is down, unless `BIFROST_REQUIRE_SERVICES=1`.
//! Each test works on its own `test-<uuid>:…` keys and channels and deletes them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bifrost_api::BridgeContentModeBody;
use bifrost_bridges::kinds::redis::{RedisPubSubPublisher, RedisStreamPublisher};
use bifrost_bridges::message::outgoing;
use bifrost_bridges::{Outgoing, PublishError, Publisher, Target};
use bifrost_core::testkit::service_unavailable;
use bifrost_core::{EventType, RecordedEvent, StreamName, Timestamp};
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, ProtocolVersion, PushKind, Value,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
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

/// A TCP relay in front of Redis whose connections a test can cut, or stall (commands are
/// swallowed, so no reply ever comes).
struct Relay {
    url: String,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    stalled: Arc<AtomicBool>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// `None` (test skipped) when Redis is not plain TCP.
    async fn start() -> Option<Self> {
        let url = url();
        let upstream = match url.as_str().into_connection_info().unwrap().addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            other => {
                eprintln!("skipped: the relay speaks plain TCP, not {other:?}");
                return None;
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let (host, port) = &upstream;
        let relay_url = if url.contains(&format!("{host}:{port}")) {
            url.replacen(&format!("{host}:{port}"), &local.to_string(), 1)
        } else {
            url.replacen(&format!("://{host}"), &format!("://{local}"), 1)
        };
        let links = Arc::new(Mutex::new(Vec::new()));
        let stalled = Arc::new(AtomicBool::new(false));
        let accept = tokio::spawn({
            let (links, stalled) = (links.clone(), stalled.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (upstream, stalled) = (upstream.clone(), stalled.clone());
                    let link = tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else { return };
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::select! {
                            () = forward(client_read, server_write, Some(stalled)) => {}
                            () = forward(server_read, client_write, None) => {}
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            }
        });
        Some(Self { url: relay_url, links, stalled, accept })
    }

    /// Closes every connection made so far; new ones are still relayed.
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Option<Arc<AtomicBool>>,
) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_broken_connection_is_unreachable_and_the_next_batch_goes_out_on_a_new_one() {
    let Some(mut redis) = redis().await else { return };
    let Some(relay) = Relay::start().await else { return };
    let key = format!("{}:broken", prefix());
    let batch = messages(1..=6, &key, BridgeContentModeBody::Bifrost);

    let publisher = RedisStreamPublisher::connect(&relay.url, 1000).await.unwrap();
    publisher.publish(&batch[..3]).await.unwrap();
    relay.cut();
    let broken = tokio::time::timeout(Duration::from_secs(10), publisher.publish(&batch[3..]))
        .await
        .expect("a broken connection fails the batch, it does not hang");
    // The manager reconnects in the background; the bridge's retry finds the new connection.
    let mut retried = Err(PublishError::Unreachable("not retried".into()));
    for _ in 0..50 {
        retried = publisher.publish(&batch[3..]).await;
        if retried.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = entries(&mut redis, &key).await;
    delete(&mut redis, &key).await;

    assert!(matches!(broken, Err(PublishError::Unreachable(_))), "{broken:?}");
    assert!(retried.is_ok(), "{retried:?}");
    let positions: Vec<&[u8]> = got.iter().filter_map(|entry| field(entry, "position")).collect();
    assert_eq!(positions, [&b"1"[..], b"2", b"3", b"4", b"5", b"6"]);
}

#[tokio::test]
async fn a_server_that_stops_answering_is_unreachable_after_the_response_timeout() {
    let Some(mut redis) = redis().await else { return };
    let Some(relay) = Relay::start().await else { return };
    let channel = format!("{}.{{type}}", prefix());
    let key = format!("{}:silent", prefix());
    let to_stream = messages(1..=2, &key, BridgeContentModeBody::Bifrost);
    let to_channel = messages(1..=2, &channel, BridgeContentModeBody::Bifrost);

    let stream = RedisStreamPublisher::connect(&relay.url, 1000).await.unwrap();
    let pubsub = RedisPubSubPublisher::connect(&relay.url).await.unwrap();
    stream.publish(&to_stream[..1]).await.unwrap();
    pubsub.publish(&to_channel).await.unwrap();
    relay.stall();
    let started = Instant::now();
    let (silent_stream, silent_pubsub) = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::join!(stream.publish(&to_stream[1..]), pubsub.publish(&to_channel))
    })
    .await
    .expect("an unanswered batch fails after the response timeout, it does not hang");
    let waited = started.elapsed();
    let len: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut redis).await.unwrap();
    delete(&mut redis, &key).await;

    assert!(matches!(silent_stream, Err(PublishError::Unreachable(_))), "{silent_stream:?}");
    assert!(matches!(silent_pubsub, Err(PublishError::Unreachable(_))), "{silent_pubsub:?}");
    assert!(waited >= Duration::from_secs(4), "gave up after {waited:?}");
    assert_eq!(len, 1);
}
