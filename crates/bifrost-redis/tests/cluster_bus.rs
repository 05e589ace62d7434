//! The cluster bus on Redis Pub/Sub, between two stores on one prefix (two nodes) and
//! between standalone buses (a PostgreSQL deployment's `--cluster-bus redis://…`): what one
//! publishes reaches every subscriber of its topic on both, the publisher's node included,
//! once and in order.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bifrost_core::cluster::{ClusterBus, MAX_BUS_PAYLOAD};
use bifrost_core::testkit::service_unavailable;
use bifrost_core::{Error, EventStore, StateStore};
use bifrost_redis::{RedisBus, RedisStore};
use bytes::Bytes;
use support::{PrefixGuard, fresh_prefix, options, store_with};
use tokio::sync::broadcast;

/// How long a message may take before a test fails; it normally takes milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

struct Nodes {
    a: Arc<RedisStore>,
    bus_a: Arc<dyn ClusterBus>,
    bus_b: Arc<dyn ClusterBus>,
    _b: Arc<RedisStore>,
    _guard: PrefixGuard,
}

/// Two stores on one fresh prefix, each listening on the bus already.
async fn two_nodes() -> Option<Nodes> {
    let prefix = fresh_prefix();
    let (a, guard) = store_with(options(&prefix)).await?;
    let (b, same_prefix) = store_with(options(&prefix)).await?;
    std::mem::forget(same_prefix); // one guard removes the keys
    let (bus_a, bus_b) = (a.cluster_bus().unwrap(), b.cluster_bus().unwrap());
    listening(&bus_a, &[&bus_a, &bus_b]).await;
    Some(Nodes { a: Arc::new(a), _b: Arc::new(b), bus_a, bus_b, _guard: guard })
}

/// Publishes probes on `from` until every one of `nodes` has heard one of them: a bus
/// subscribes in the background, and until then its node misses messages (best effort).
async fn listening(from: &Arc<dyn ClusterBus>, nodes: &[&Arc<dyn ClusterBus>]) {
    let probe = Bytes::from(format!("{{\"probe\":\"{}\"}}", uuid::Uuid::new_v4()));
    let mut probes: Vec<_> = nodes.iter().map(|n| n.subscribe("probe")).collect();
    let mut heard = vec![false; nodes.len()];
    for _ in 0..100 {
        from.publish("probe", probe.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (rx, heard) in probes.iter_mut().zip(heard.iter_mut()) {
            while let Ok(got) = rx.try_recv() {
                *heard |= got == probe;
            }
        }
        if heard.iter().all(|h| *h) {
            return;
        }
    }
    panic!("a node never heard the bus: {heard:?}");
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

/// A JSON text of exactly `len` bytes, with multi-byte characters in it.
fn json_of_len(len: usize, seed: usize) -> String {
    let mut text = format!("{{\"seed\":{seed},\"text\":\"");
    let filler = "é€😀 quick brown fox ";
    while text.len() + filler.len() + 2 <= len {
        text.push_str(filler);
    }
    while text.len() + 2 < len {
        text.push('x');
    }
    text.push_str("\"}");
    assert_eq!(text.len(), len);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_every_subscriber_on_every_node_once_the_publishers_included() {
    let Some(nodes) = two_nodes().await else { return };
    let mut on_a = nodes.bus_a.subscribe("chat");
    let mut on_b = nodes.bus_b.subscribe("chat");
    let mut also_on_b = nodes.bus_b.subscribe("chat");

    nodes.bus_a.publish("chat", Bytes::from_static(b"{\"text\":\"hello\"}")).await.unwrap();
    nodes.bus_a.publish("chat", Bytes::from_static(b"{\"text\":\"end\"}")).await.unwrap();

    for rx in [&mut on_a, &mut on_b, &mut also_on_b] {
        assert_eq!(next(rx).await, Bytes::from_static(b"{\"text\":\"hello\"}"));
        assert_eq!(next(rx).await, Bytes::from_static(b"{\"text\":\"end\"}"));
        nothing_more(rx);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_one_topic_never_sees_another() {
    let Some(nodes) = two_nodes().await else { return };
    let mut x = nodes.bus_b.subscribe("x");
    let mut y = nodes.bus_b.subscribe("y");
    let mut x_on_a = nodes.bus_a.subscribe("x");

    nodes.bus_a.publish("y", Bytes::from_static(b"\"for y\"")).await.unwrap();
    nodes.bus_a.publish("x", Bytes::from_static(b"\"for x\"")).await.unwrap();
    nodes.bus_b.publish("nobody-listens", Bytes::from_static(b"\"lost\"")).await.unwrap();
    nodes.bus_a.publish("y", Bytes::from_static(b"\"for y again\"")).await.unwrap();

    assert_eq!(next(&mut x).await, Bytes::from_static(b"\"for x\""));
    assert_eq!(next(&mut x_on_a).await, Bytes::from_static(b"\"for x\""));
    assert_eq!(next(&mut y).await, Bytes::from_static(b"\"for y\""));
    assert_eq!(next(&mut y).await, Bytes::from_static(b"\"for y again\""));
    for rx in [&mut x, &mut x_on_a, &mut y] {
        nothing_more(rx);
    }
}

/// Small and large messages (up to `MAX_BUS_PAYLOAD`), one publisher's in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_up_to_the_largest_arrive_intact_and_in_publishing_order() {
    let Some(nodes) = two_nodes().await else { return };
    let mut on_a = nodes.bus_a.subscribe("seq");
    let mut on_b = nodes.bus_b.subscribe("seq");
    let mut sent: Vec<String> = (0..40)
        .map(|i| if i % 4 == 1 { json_of_len(20_000, i) } else { format!("{{\"seq\":{i}}}") })
        .collect();
    sent.push(json_of_len(MAX_BUS_PAYLOAD, 99));
    for payload in &sent {
        nodes.bus_b.publish("seq", Bytes::from(payload.clone())).await.unwrap();
    }
    for rx in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            got.push(String::from_utf8(next(rx).await.to_vec()).unwrap());
        }
        assert!(got == sent, "messages arrive whole and in publishing order");
        nothing_more(rx);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_topic_or_payload_is_refused_with_invalid_argument() {
    let Some(nodes) = two_nodes().await else { return };
    let mut watched = nodes.bus_b.subscribe("ok");
    let long_topic = "t".repeat(201);
    for topic in ["", "two\nlines", "tab\there", "caf\u{e9}", long_topic.as_str()] {
        let result = nodes.bus_a.publish(topic, Bytes::from_static(b"{}")).await;
        assert!(matches!(result, Err(Error::InvalidArgument(_))), "topic {topic:?}: {result:?}");
    }
    let too_large = Bytes::from(vec![b'a'; MAX_BUS_PAYLOAD + 1]);
    let not_utf8 = Bytes::from_static(b"{\"a\":\"\xff\"}");
    for payload in [too_large, not_utf8] {
        let result = nodes.bus_a.publish("ok", payload).await;
        assert!(matches!(result, Err(Error::InvalidArgument(_))), "{result:?}");
    }
    nodes.bus_a.publish("ok", Bytes::from_static(b"\"fine\"")).await.unwrap();
    assert_eq!(next(&mut watched).await, Bytes::from_static(b"\"fine\""));
    nothing_more(&mut watched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_store_ends_its_subscriptions_and_the_other_node_goes_on() {
    let Some(nodes) = two_nodes().await else { return };
    let mut before = nodes.bus_a.subscribe("t");
    nodes.a.close().await.unwrap();
    let ended = tokio::time::timeout(PATIENCE, before.recv()).await.unwrap();
    assert_eq!(ended, Err(broadcast::error::RecvError::Closed));
    let mut after = nodes.bus_a.subscribe("t");
    assert_eq!(after.recv().await, Err(broadcast::error::RecvError::Closed));
    assert!(
        nodes.bus_a.publish("t", Bytes::from_static(b"{}")).await.is_err(),
        "a closed store sends nothing"
    );
    let mut on_b = nodes.bus_b.subscribe("t");
    nodes.bus_b.publish("t", Bytes::from_static(b"{}")).await.unwrap();
    assert_eq!(next(&mut on_b).await, Bytes::from_static(b"{}"));
}

/// Two standalone buses on one namespace (two nodes of another store) hear each other; a
/// bus on another namespace hears neither; a closed bus ends its subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_buses_on_one_namespace_hear_each_other_and_no_other_namespace() {
    let namespace = fresh_prefix();
    let a = match RedisBus::connect(&support::url(), &namespace).await {
        Ok(bus) => bus,
        Err(e) => {
            let _ = service_unavailable::<()>("Redis", e);
            return;
        }
    };
    let b = RedisBus::connect(&support::url(), &namespace).await.unwrap();
    let other = RedisBus::connect(&support::url(), &fresh_prefix()).await.unwrap();
    let (dyn_a, dyn_b, dyn_other): (Arc<dyn ClusterBus>, Arc<dyn ClusterBus>, Arc<dyn ClusterBus>) =
        (a.clone(), b.clone(), other.clone());
    listening(&dyn_a, &[&dyn_a, &dyn_b]).await;
    listening(&dyn_other, &[&dyn_other]).await;

    let mut on_a = dyn_a.subscribe("presence");
    let mut on_b = dyn_b.subscribe("presence");
    let mut on_other = dyn_other.subscribe("presence");
    dyn_b.publish("presence", Bytes::from_static(b"{\"join\":\"u-1\"}")).await.unwrap();
    dyn_a.publish("presence", Bytes::from_static(b"{\"leave\":\"u-1\"}")).await.unwrap();
    for rx in [&mut on_a, &mut on_b] {
        let mut got = vec![next(rx).await, next(rx).await];
        got.sort();
        assert_eq!(
            got,
            [Bytes::from_static(b"{\"join\":\"u-1\"}"), Bytes::from_static(b"{\"leave\":\"u-1\"}")]
        );
    }
    dyn_other.publish("presence", Bytes::from_static(b"\"mine\"")).await.unwrap();
    assert_eq!(next(&mut on_other).await, Bytes::from_static(b"\"mine\""));
    nothing_more(&mut on_a);
    nothing_more(&mut on_b);

    a.close().await;
    assert_eq!(
        tokio::time::timeout(PATIENCE, on_a.recv()).await.unwrap(),
        Err(broadcast::error::RecvError::Closed)
    );
    assert!(matches!(dyn_a.publish("presence", Bytes::from_static(b"{}")).await, Err(Error::Unavailable(_))));
    dyn_b.publish("presence", Bytes::from_static(b"\"still\"")).await.unwrap();
    assert_eq!(next(&mut on_b).await, Bytes::from_static(b"\"still\""));
    b.close().await;
    other.close().await;
}
