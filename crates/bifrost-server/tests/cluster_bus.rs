//! The cluster bus on NATS, between two connections on one namespace (two nodes) against
//! the real server: what one publishes reaches every subscriber of its topic on both,
//! once, in order; another namespace hears nothing; a slow subscriber loses the oldest.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bifrost_core::Error;
use bifrost_core::cluster::{ClusterBus, MAX_BUS_PAYLOAD};
use bifrost_core::testkit::service_unavailable;
use bifrost_server::{ClusterBusError, ClusterBusSpec, NatsBus};
use bytes::Bytes;
use tokio::sync::broadcast;

/// How long a message may take before a test fails; it normally takes milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

fn url() -> String {
    std::env::var("BIFROST_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A namespace no other test run uses.
fn fresh_namespace() -> String {
    format!("test_{}", uuid::Uuid::new_v4().simple())
}

async fn connect(namespace: &str) -> Option<Arc<NatsBus>> {
    match NatsBus::connect(&url(), namespace).await {
        Ok(bus) => Some(bus),
        Err(e) => service_unavailable("NATS", e),
    }
}

async fn next(rx: &mut broadcast::Receiver<Bytes>) -> Bytes {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a message arrives in time")
        .expect("the subscription neither lags nor ends")
}

/// Asserts that `rx` has nothing more for now. Called after a later message of the same
/// publisher arrived, so anything misrouted or doubled would already be there.
fn nothing_more(rx: &mut broadcast::Receiver<Bytes>) {
    assert_eq!(rx.try_recv(), Err(broadcast::error::TryRecvError::Empty));
}

#[tokio::test]
async fn a_message_reaches_every_subscriber_on_both_nodes_once_and_in_order() {
    let namespace = fresh_namespace();
    let Some(a) = connect(&namespace).await else { return };
    let b = connect(&namespace).await.unwrap();
    let (mut on_a, mut on_b, mut also_b) =
        (a.subscribe("room.lobby"), b.subscribe("room.lobby"), b.subscribe("room.lobby"));
    let mut other_topic = b.subscribe("room.other");
    for i in 0..100 {
        a.publish("room.lobby", Bytes::from(format!("{{\"i\":{i}}}"))).await.unwrap();
    }
    b.publish("room.other", Bytes::from_static(b"{\"end\":true}")).await.unwrap();
    for rx in [&mut on_a, &mut on_b, &mut also_b] {
        for i in 0..100 {
            assert_eq!(
                next(rx).await,
                Bytes::from(format!("{{\"i\":{i}}}")),
                "the sender's own node too, in order"
            );
        }
    }
    assert_eq!(next(&mut other_topic).await, Bytes::from_static(b"{\"end\":true}"));
    // b's message came after all of a's on b's node; a's arrived before it on one connection.
    nothing_more(&mut on_b);
    nothing_more(&mut other_topic);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn topics_with_any_printable_characters_stay_apart_and_the_largest_payload_travels() {
    let namespace = fresh_namespace();
    let Some(a) = connect(&namespace).await else { return };
    let b = connect(&namespace).await.unwrap();
    // As subjects these would overlap (`.`, `*`, `>`); as topics they are distinct.
    let topics = ["a.b", "a", "a.*", "a.>", "a b", "a~2Eb"];
    let mut receivers: Vec<_> = topics.iter().map(|t| b.subscribe(t)).collect();
    for topic in topics {
        a.publish(topic, Bytes::from(topic)).await.unwrap();
    }
    for (topic, rx) in topics.iter().zip(receivers.iter_mut()) {
        assert_eq!(next(rx).await, Bytes::from(*topic));
    }
    let big = Bytes::from("x".repeat(MAX_BUS_PAYLOAD));
    let mut big_rx = b.subscribe("big");
    a.publish("big", big.clone()).await.unwrap();
    assert_eq!(next(&mut big_rx).await, big);
    a.publish("a", Bytes::from_static(b"last")).await.unwrap();
    assert_eq!(next(&mut receivers[1]).await, Bytes::from_static(b"last"));
    for rx in &mut receivers {
        nothing_more(rx);
    }
    let too_big = Bytes::from("x".repeat(MAX_BUS_PAYLOAD + 1));
    assert!(matches!(a.publish("big", too_big).await, Err(Error::InvalidArgument(_))));
    assert!(matches!(a.publish("", Bytes::new()).await, Err(Error::InvalidArgument(_))));
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn another_namespace_hears_nothing() {
    let Some(a) = connect(&fresh_namespace()).await else { return };
    let other = connect(&fresh_namespace()).await.unwrap();
    let mut on_a = a.subscribe("presence");
    let mut on_other = other.subscribe("presence");
    other.publish("presence", Bytes::from_static(b"{\"other\":1}")).await.unwrap();
    // Once it reached its own node, the server has routed it to every matching
    // subscription, a's too had it matched, ahead of anything a sends next.
    assert_eq!(next(&mut on_other).await, Bytes::from_static(b"{\"other\":1}"));
    a.publish("presence", Bytes::from_static(b"{\"a\":1}")).await.unwrap();
    assert_eq!(next(&mut on_a).await, Bytes::from_static(b"{\"a\":1}"));
    nothing_more(&mut on_a);
    a.close().await;
    other.close().await;
}

#[tokio::test]
async fn a_slow_subscriber_loses_the_oldest() {
    let Some(a) = connect(&fresh_namespace()).await else { return };
    let mut slow = a.subscribe("flood");
    let mut end = a.subscribe("end");
    const SENT: usize = 6000; // more than a subscriber may fall behind by (4096)
    for i in 0..SENT {
        a.publish("flood", Bytes::from(i.to_string())).await.unwrap();
    }
    a.publish("end", Bytes::from_static(b"{}")).await.unwrap();
    // One publisher's order: every flood message was dispatched before this one.
    next(&mut end).await;
    let lost = match slow.recv().await {
        Err(broadcast::error::RecvError::Lagged(lost)) => lost,
        other => panic!("the slow subscriber should have lagged: {other:?}"),
    };
    assert!(lost > 0);
    // What is left are the newest, in order, ending with the last one sent.
    let mut kept = Vec::new();
    while let Ok(message) = slow.try_recv() {
        kept.push(String::from_utf8(message.to_vec()).unwrap().parse::<usize>().unwrap());
    }
    assert_eq!(kept.len() as u64 + lost, SENT as u64);
    assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "the newest, without gaps");
    assert_eq!(kept.last(), Some(&(SENT - 1)));
    a.close().await;
}

#[tokio::test]
async fn a_closed_bus_ends_its_subscriptions() {
    let Some(a) = connect(&fresh_namespace()).await else { return };
    let mut rx = a.subscribe("t");
    a.close().await;
    assert_eq!(rx.recv().await, Err(broadcast::error::RecvError::Closed));
    assert!(matches!(a.subscribe("t").recv().await, Err(broadcast::error::RecvError::Closed)));
}

#[tokio::test]
async fn an_unreachable_broker_is_an_error_at_connect() -> Result<(), ClusterBusError> {
    let spec = ClusterBusSpec::parse("nats://u:secret@127.0.0.1:1").unwrap();
    let err = spec.connect("ns").await.err().expect("nothing listens on port 1");
    assert!(err.to_string().starts_with("cannot connect to NATS"), "{err}");
    assert!(spec.to_string().contains("u:***@"), "{spec}");
    let redis = ClusterBusSpec::parse("redis://:secret@127.0.0.1:1").unwrap();
    let err = redis.connect("ns").await.err().expect("nothing listens on port 1");
    assert!(err.to_string().starts_with("cannot connect to Redis"), "{err}");
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(ClusterBusSpec::Postgres.connect("ns").await?.is_none());
    Ok(())
}
