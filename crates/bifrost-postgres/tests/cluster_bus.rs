//! The cluster bus on PostgreSQL, between two stores on one schema (two nodes): what one
//! publishes reaches every subscriber of its topic on both, once, in order, small messages
//! in the notification and large ones through the `bus_messages` table.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bifrost_core::cluster::{ClusterBus, MAX_BUS_PAYLOAD};
use bifrost_core::{Error, EventStore, StateStore};
use bifrost_postgres::PostgresStore;
use bytes::Bytes;
use support::{SchemaGuard, fresh_schema, options, store_with};
use tokio::sync::broadcast;

/// How long a message may take before a test fails; it normally takes milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

struct Nodes {
    a: Arc<PostgresStore>,
    b: Arc<PostgresStore>,
    bus_a: Arc<dyn ClusterBus>,
    bus_b: Arc<dyn ClusterBus>,
    _guard: SchemaGuard,
}

/// Two stores on one fresh schema, each listening on the bus already.
async fn two_nodes() -> Option<Nodes> {
    let schema = fresh_schema();
    let (a, guard) = store_with(options(&schema)).await?;
    let (b, same_schema) = store_with(options(&schema)).await?;
    std::mem::forget(same_schema); // one guard drops the schema
    let (bus_a, bus_b) = (a.cluster_bus().unwrap(), b.cluster_bus().unwrap());
    // A store's listener connects in the background: until it listens, its node misses
    // messages (best effort). Wait until both hear the bus.
    listening(&bus_a, &[&bus_a, &bus_b]).await;
    Some(Nodes { a: Arc::new(a), b: Arc::new(b), bus_a, bus_b, _guard: guard })
}

/// Publishes probes on `from` until every one of `nodes` has heard one of them (not an
/// earlier call's, which may still be on its way).
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

/// The rows of `bus_messages` now.
async fn stored_rows(store: &PostgresStore) -> i64 {
    let tx = store.begin().await.unwrap();
    let query = format!("SELECT count(*) FROM \"{}\".bus_messages", store.schema());
    let count = tx.client().query_one(&query, &[]).await.unwrap().get(0);
    tx.rollback().await.unwrap();
    count
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

    // Each topic's message is published before the other's, for one of the two.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_message_goes_inline_and_a_large_one_through_the_table_intact() {
    let Some(nodes) = two_nodes().await else { return };
    let mut on_a = nodes.bus_a.subscribe("doc");
    let mut on_b = nodes.bus_b.subscribe("doc");

    // A notification carries fewer than 8000 bytes: "doc", a newline, a mark and 7994
    // bytes of payload is the largest message sent inline.
    let largest_inline = json_of_len(7994, 1);
    nodes.bus_a.publish("doc", Bytes::from(largest_inline.clone())).await.unwrap();
    for rx in [&mut on_a, &mut on_b] {
        assert_eq!(next(rx).await, largest_inline.as_bytes());
    }
    assert_eq!(stored_rows(&nodes.a).await, 0, "an inline message stores nothing");

    let smallest_stored = json_of_len(7995, 2);
    let large = json_of_len(100 * 1024, 3);
    let largest = json_of_len(MAX_BUS_PAYLOAD, 4);
    for payload in [&smallest_stored, &large, &largest] {
        nodes.bus_a.publish("doc", Bytes::from(payload.clone())).await.unwrap();
    }
    for rx in [&mut on_a, &mut on_b] {
        for payload in [&smallest_stored, &large, &largest] {
            let got = next(rx).await;
            assert_eq!(got.len(), payload.len());
            assert!(got == payload.as_bytes(), "a stored message arrives byte for byte");
        }
        nothing_more(rx);
    }
    assert_eq!(stored_rows(&nodes.b).await, 3, "each large message is one row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_one_after_another_arrive_in_that_order_on_every_node() {
    let Some(nodes) = two_nodes().await else { return };
    let mut on_a = nodes.bus_a.subscribe("seq");
    let mut on_b = nodes.bus_b.subscribe("seq");

    // Every fourth message is large: a stored message must not be overtaken by the small
    // ones behind it while it is read.
    let sent: Vec<String> = (0..40)
        .map(|i| if i % 4 == 1 { json_of_len(20_000, i) } else { format!("{{\"seq\":{i}}}") })
        .collect();
    for payload in &sent {
        nodes.bus_b.publish("seq", Bytes::from(payload.clone())).await.unwrap();
    }
    for rx in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            got.push(String::from_utf8(next(rx).await.to_vec()).unwrap());
        }
        assert!(got == sent, "messages arrive in publishing order");
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
    let with_nul = Bytes::from_static(b"{\"a\":\"\0\"}");
    for payload in [too_large, not_utf8, with_nul] {
        let result = nodes.bus_a.publish("ok", payload).await;
        assert!(matches!(result, Err(Error::InvalidArgument(_))), "{result:?}");
    }
    // Nothing refused was sent.
    nodes.bus_a.publish("ok", Bytes::from_static(b"\"fine\"")).await.unwrap();
    assert_eq!(next(&mut watched).await, Bytes::from_static(b"\"fine\""));
    nothing_more(&mut watched);
    assert_eq!(stored_rows(&nodes.a).await, 0);
}

/// The bus is best effort across a lost connection, but not beyond it: once the listener
/// is back, messages flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_listening_connection_was_killed_hears_the_bus_again() {
    let schema = fresh_schema();
    let Some((a, _guard)) = store_with(options(&schema)).await else { return };
    let app = format!("bifrost_bus_{}", &schema[13..21]);
    let url = format!("{}?application_name={app}", support::url());
    let b = PostgresStore::connect(&url, options(&schema)).await.unwrap();
    let (bus_a, bus_b) = (a.cluster_bus().unwrap(), b.cluster_bus().unwrap());
    listening(&bus_a, &[&bus_b]).await;

    let (client, connection) = tokio_postgres::connect(&support::url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let killed = client
        .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", &[&app])
        .await
        .unwrap();
    assert!(!killed.is_empty(), "B's connections were found");

    listening(&bus_a, &[&bus_b]).await;
    let mut on_b = bus_b.subscribe("after");
    bus_a.publish("after", Bytes::from_static(b"\"back\"")).await.unwrap();
    assert_eq!(next(&mut on_b).await, Bytes::from_static(b"\"back\""));
    b.close().await.unwrap();
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_store_ends_its_subscriptions() {
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
    // The other node goes on.
    let mut on_b = nodes.bus_b.subscribe("t");
    nodes.bus_b.publish("t", Bytes::from_static(b"{}")).await.unwrap();
    assert_eq!(next(&mut on_b).await, Bytes::from_static(b"{}"));
}
