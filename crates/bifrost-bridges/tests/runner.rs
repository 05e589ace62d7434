//! The bridge runner's guarantees, with a broker stood in by a recorder that can be told to
//! fail: at-least-once in log order, the checkpoint only past confirmed batches, retries that
//! never skip, one node at a time under the lease, and a takeover from the checkpoint. (Each
//! real broker is tested on its own against the local service.)

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bifrost_api::{BridgeRequest, BridgeStateBody};
use bifrost_bridges::{BridgeSpec, Bridges, Connector, Outgoing, PublishError, Publisher};
use bifrost_core::lease::Leases;
use bifrost_core::{DurableStore, ExpectedVersion, InMemoryStore, NewEvent, StateStore, StreamName};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Records what it is given; fails the next `fail` batches.
#[derive(Default)]
struct Broker {
    received: Mutex<Vec<(String, Outgoing)>>,
    fail: AtomicUsize,
    batches: AtomicUsize,
}

struct Stand {
    broker: Arc<Broker>,
    node: String,
}

#[async_trait]
impl Publisher for Stand {
    async fn publish(&self, batch: &[Outgoing]) -> Result<(), PublishError> {
        self.broker.batches.fetch_add(1, Ordering::SeqCst);
        if self.broker.fail.load(Ordering::SeqCst) > 0 {
            self.broker.fail.fetch_sub(1, Ordering::SeqCst);
            return Err(PublishError::Unreachable("the stand-in broker is down".into()));
        }
        let mut received = self.broker.received.lock().unwrap();
        received.extend(batch.iter().map(|m| (self.node.clone(), m.clone())));
        Ok(())
    }
}

struct StandConnector {
    broker: Arc<Broker>,
    node: String,
}

#[async_trait]
impl Connector for StandConnector {
    async fn connect(&self, _spec: &BridgeSpec) -> Result<Box<dyn Publisher>, PublishError> {
        Ok(Box::new(Stand { broker: Arc::clone(&self.broker), node: self.node.clone() }))
    }
}

fn node(
    store: &Arc<dyn DurableStore>,
    broker: &Arc<Broker>,
    name: &str,
) -> (Arc<Bridges>, CancellationToken) {
    let state: Arc<dyn StateStore> = Arc::clone(store) as _;
    let leases = Leases::new(state, name, Duration::from_millis(600));
    let connector = Arc::new(StandConnector { broker: Arc::clone(broker), node: name.into() });
    let bridges = Arc::new(Bridges::new(Arc::clone(store), leases, Duration::from_millis(100), connector));
    let stop = CancellationToken::new();
    bridges.start(stop.clone());
    (bridges, stop)
}

async fn append(store: &Arc<dyn DurableStore>, stream: &str, event_type: &str, n: usize) -> Vec<u64> {
    let events = (0..n).map(|i| NewEvent::json(event_type, &json!({"i": i})).unwrap()).collect();
    let r = store.append(StreamName::new(stream).unwrap(), ExpectedVersion::Any, events).await.unwrap();
    (r.first_position..=r.last_position).collect()
}

fn request(value: serde_json::Value) -> BridgeRequest {
    serde_json::from_value(value).unwrap()
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn positions(broker: &Broker) -> Vec<u64> {
    broker.received.lock().unwrap().iter().map(|(_, m)| m.position).collect()
}

#[tokio::test]
async fn a_bridge_sends_matching_events_in_order_and_retries_a_failing_broker_without_skipping() {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let broker = Arc::new(Broker::default());
    let before = append(&store, "order-1", "order.placed", 3).await;
    let (bridges, _stop) = node(&store, &broker, "a");
    let (created, body) = bridges
        .put(
            "orders",
            request(json!({"direction": "out", "kind": "nats", "url": "nats://127.0.0.1:4222",
                           "filter": {"types": ["order.#"]}, "start": "beginning", "batch_size": 4,
                           "target": "orders.{type}"})),
        )
        .await
        .unwrap();
    assert!(created);
    assert_eq!(body.checkpoint, 0);
    let (again, _) = bridges
        .put(
            "orders",
            request(json!({"direction": "out", "kind": "nats", "url": "nats://127.0.0.1:4222",
                                      "filter": {"types": ["order.#"]}, "start": "end", "batch_size": 4,
                                      "target": "orders.{type}"})),
        )
        .await
        .unwrap();
    assert!(!again, "a second put replaces; start counts only at creation");

    // Others are filtered out; the broker goes down for three batches in the middle.
    append(&store, "user-1", "user.joined", 2).await;
    let mut expected = before.clone();
    expected.extend(append(&store, "order-2", "order.paid", 5).await);
    until("the first events", || positions(&broker).len() >= 8).await;
    broker.fail.store(3, Ordering::SeqCst);
    expected.extend(append(&store, "order-3", "order.shipped", 6).await);
    until("everything, after the failures", || positions(&broker).len() >= expected.len()).await;
    assert_eq!(positions(&broker), expected, "each matching event once, in log order, nothing skipped");
    let received = broker.received.lock().unwrap().clone();
    assert_eq!(received[0].1.target, "orders.order.placed");
    assert!(broker.batches.load(Ordering::SeqCst) >= 3 + 4, "the failed batches were retried");

    let head = *store.head().borrow();
    let mut body = bridges.get("orders").await.unwrap();
    for _ in 0..100 {
        if body.checkpoint == head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        body = bridges.get("orders").await.unwrap();
    }
    assert_eq!((body.checkpoint, body.lag, body.published), (head, 0, expected.len() as u64));
    assert_eq!((body.state, body.node.as_deref()), (BridgeStateBody::Running, Some("a")));
    assert!(body.last_error.as_ref().is_some_and(|e| e.message.contains("down")), "{body:?}");
    assert_eq!(bridges.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn one_node_runs_a_bridge_and_another_resumes_from_its_checkpoint() {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let broker = Arc::new(Broker::default());
    let (a, stop_a) = node(&store, &broker, "a");
    let (b, stop_b) = node(&store, &broker, "b");
    a.put("all", request(json!({"direction": "out", "kind": "redis-stream", "url": "redis://127.0.0.1:6379", "start": "beginning"})))
        .await
        .unwrap();
    let mut expected = append(&store, "s-1", "a.b", 10).await;
    until("the first ten", || positions(&broker).len() >= 10).await;
    let owners: Vec<String> = broker.received.lock().unwrap().iter().map(|(n, _)| n.clone()).collect();
    let first = owners[0].clone();
    assert!(owners.iter().all(|o| *o == first), "one node at a time: {owners:?}");
    let body = b.get("all").await.unwrap();
    assert_eq!(body.node.as_deref(), Some(first.as_str()), "every node shows who runs it");

    // The owner stops: the other takes over from the checkpoint, nothing lost.
    let (survivor, stop_owner) = if first == "a" { (&b, stop_a) } else { (&a, stop_b) };
    stop_owner.cancel();
    expected.extend(append(&store, "s-1", "a.b", 10).await);
    until("the next ten", || positions(&broker).len() >= 20).await;
    let got = positions(&broker);
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique, expected, "in order; a takeover may repeat, never skip");
    let body = survivor.get("all").await.unwrap();
    assert_ne!(body.node.as_deref(), Some(first.as_str()), "{body:?}");

    // Deleted: stops everywhere.
    survivor.delete("all").await.unwrap();
    assert!(matches!(survivor.get("all").await, Err(bifrost_bridges::BridgeError::NotFound(_))));
    let sent = positions(&broker).len();
    append(&store, "s-1", "a.b", 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(positions(&broker).len(), sent);
}

#[tokio::test]
async fn a_file_dropping_a_bridge_leaves_it_in_place_and_hands_it_to_the_api() {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let broker = Arc::new(Broker::default());
    let (bridges, stop) = node(&store, &broker, "a");
    let file =
        vec![("filed".to_owned(), request(json!({"direction": "out", "kind": "nats", "url": "nats://x"})))];
    bridges.configure(&file).await.unwrap();
    let managed =
        bridges.put("filed", request(json!({"direction": "out", "kind": "nats", "url": "nats://y"}))).await;
    assert!(matches!(managed, Err(bifrost_bridges::BridgeError::ConfigManaged(_))), "{managed:?}");
    assert!(matches!(bridges.delete("filed").await, Err(bifrost_bridges::BridgeError::ConfigManaged(_))));

    // Applied again (a restart) with the file changed: the new settings win.
    let changed =
        vec![("filed".to_owned(), request(json!({"direction": "out", "kind": "nats", "url": "nats://z"})))];
    bridges.configure(&changed).await.unwrap();
    assert_eq!(bridges.get("filed").await.unwrap().config.url, "nats://z");

    // A file without it: the bridge stays, and the API may change and delete it.
    bridges.configure(&[]).await.unwrap();
    assert_eq!(bridges.get("filed").await.unwrap().config.url, "nats://z");
    let (created, _) = bridges
        .put("filed", request(json!({"direction": "out", "kind": "nats", "url": "nats://y"})))
        .await
        .unwrap();
    assert!(!created);
    bridges.delete("filed").await.unwrap();
    stop.cancel();
}
