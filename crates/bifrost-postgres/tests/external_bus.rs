//! Two stores on one schema (two nodes) whose wake-ups travel on an external cluster bus
//! (`PostgresOptions::bus`) instead of `NOTIFY`: the bus carries them when it works, and
//! when it loses everything the poll still brings every append and every group event to
//! the other node, only later.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bifrost_core::cluster::ClusterBus;
use bifrost_core::group::{Fetch, GroupConfig, GroupKind, GroupName, Verdict};
use bifrost_core::{EventStore, EventType, ExpectedVersion, NewEvent, StateStore, StreamName};
use bifrost_postgres::{PostgresOptions, PostgresStore};
use bytes::Bytes;
use support::{SchemaGuard, fresh_schema, options, store_with};
use tokio::sync::broadcast;

/// How long a wake-up may take before a test fails: many poll intervals.
const PATIENCE: Duration = Duration::from_secs(15);

/// A bus that loses every message: what a broker outage looks like to the store.
struct LosingBus {
    /// Kept so that subscriptions stay open (and simply hear nothing).
    topics: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    published: Mutex<Vec<String>>,
}

impl LosingBus {
    fn new() -> Arc<Self> {
        Arc::new(Self { topics: Mutex::new(HashMap::new()), published: Mutex::new(Vec::new()) })
    }
}

#[async_trait]
impl ClusterBus for LosingBus {
    async fn publish(&self, topic: &str, _payload: Bytes) -> bifrost_core::Result<()> {
        self.published.lock().unwrap().push(topic.to_owned());
        Ok(())
    }

    fn subscribe(&self, topic: &str) -> broadcast::Receiver<Bytes> {
        let mut topics = self.topics.lock().unwrap();
        topics.entry(topic.to_owned()).or_insert_with(|| broadcast::channel(16).0).subscribe()
    }
}

/// A bus inside this process that delivers every message to every subscriber: two stores
/// sharing it are two nodes on a working bus.
#[derive(Default)]
struct LocalBus {
    topics: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
}

impl LocalBus {
    fn sender(&self, topic: &str) -> broadcast::Sender<Bytes> {
        let mut topics = self.topics.lock().unwrap();
        topics.entry(topic.to_owned()).or_insert_with(|| broadcast::channel(1024).0).clone()
    }
}

#[async_trait]
impl ClusterBus for LocalBus {
    async fn publish(&self, topic: &str, payload: Bytes) -> bifrost_core::Result<()> {
        let _ = self.sender(topic).send(payload);
        Ok(())
    }

    fn subscribe(&self, topic: &str) -> broadcast::Receiver<Bytes> {
        self.sender(topic).subscribe()
    }
}

struct Nodes {
    a: Arc<PostgresStore>,
    b: Arc<PostgresStore>,
    _guard: SchemaGuard,
}

impl Nodes {
    async fn start(bus: Arc<dyn ClusterBus>, poll: Duration) -> Option<Self> {
        let schema = fresh_schema();
        let with_bus = || PostgresOptions { bus: Some(bus.clone()), poll_interval: poll, ..options(&schema) };
        let (a, guard) = store_with(with_bus()).await?;
        let (b, same_schema) = store_with(with_bus()).await?;
        std::mem::forget(same_schema); // one guard drops the schema
        Some(Self { a: Arc::new(a), b: Arc::new(b), _guard: guard })
    }

    async fn finish(self) {
        self.a.close().await.unwrap();
        self.b.close().await.unwrap();
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::new(EventType::new("thing.happened").unwrap(), format!("{{\"i\":{i}}}")))
        .collect()
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

/// Waits until `store`'s head reaches `position`.
async fn head_reaches(store: &PostgresStore, position: u64) {
    let mut head = store.head();
    tokio::time::timeout(PATIENCE, head.wait_for(|h| *h >= position))
        .await
        .expect("the other node's head moves in time")
        .expect("the store is open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_external_bus_is_the_cluster_bus_and_carries_the_head_to_the_other_node() {
    let bus = Arc::new(LocalBus::default());
    // A poll far beyond the test's patience: only the bus can move the other node's head.
    let Some(nodes) = Nodes::start(bus.clone(), Duration::from_secs(3600)).await else { return };
    let own: Arc<dyn ClusterBus> = bus;
    assert!(Arc::ptr_eq(&nodes.a.cluster_bus().unwrap(), &own), "the store hands out the external bus");

    let written = nodes.a.append(stream("s-1"), ExpectedVersion::Any, events(3)).await.unwrap();
    head_reaches(&nodes.b, written.last_position).await;
    // An outbox commit is announced as well.
    let mut tx = nodes.b.begin().await.unwrap();
    tx.append(stream("s-2"), ExpectedVersion::NoStream, events(1)).unwrap();
    let committed = tx.commit().await.unwrap();
    head_reaches(&nodes.a, committed[0].last_position).await;
    nodes.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_fetch_on_one_node_wakes_on_the_bus_when_another_node_acks_or_appends() {
    let bus = Arc::new(LocalBus::default());
    let Some(nodes) = Nodes::start(bus, Duration::from_secs(3600)).await else { return };
    let (a, b) =
        (nodes.a.shared_groups(GroupKind::Group).unwrap(), nodes.b.shared_groups(GroupKind::Group).unwrap());
    let g = GroupName::new("g").unwrap();
    nodes.a.append(stream("s-1"), ExpectedVersion::Any, events(2)).await.unwrap();
    a.put(&g, GroupConfig::default()).await.unwrap();
    let first = a.fetch(&g, Fetch::new("x", 10, PATIENCE)).await.unwrap();
    assert_eq!(first.len(), 1, "one event of a stream at a time");
    // B waits on the stream's second event, held back until A acks the first.
    let waiter = {
        let (b, g) = (b.clone(), g.clone());
        tokio::spawn(async move { b.fetch(&g, Fetch::new("y", 10, Duration::from_secs(60))).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.settle(&g, &[first[0].token], Verdict::Ack, false).await.unwrap();
    let next = tokio::time::timeout(PATIENCE, waiter).await.expect("the ack wakes B").unwrap().unwrap();
    assert_eq!(next.iter().map(|l| l.event.version).collect::<Vec<_>>(), [2]);
    b.settle(&g, &[next[0].token], Verdict::Ack, false).await.unwrap();

    let waiter = {
        let (b, g) = (b.clone(), g.clone());
        tokio::spawn(async move { b.fetch(&g, Fetch::new("y", 10, Duration::from_secs(60))).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes.a.append(stream("s-2"), ExpectedVersion::Any, events(1)).await.unwrap();
    let next = tokio::time::timeout(PATIENCE, waiter).await.expect("the append wakes B").unwrap().unwrap();
    assert_eq!(next.iter().map(|l| l.event.stream.as_str()).collect::<Vec<_>>(), ["s-2"]);
    drop((a, b));
    nodes.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_wake_up_lost_the_poll_still_brings_appends_and_group_events_to_the_other_node() {
    let bus = LosingBus::new();
    let Some(nodes) = Nodes::start(bus.clone(), Duration::from_millis(200)).await else { return };
    let written = nodes.a.append(stream("s-1"), ExpectedVersion::Any, events(2)).await.unwrap();
    head_reaches(&nodes.b, written.last_position).await;

    let (a, b) =
        (nodes.a.shared_groups(GroupKind::Group).unwrap(), nodes.b.shared_groups(GroupKind::Group).unwrap());
    let g = GroupName::new("g").unwrap();
    a.put(&g, GroupConfig::default()).await.unwrap();
    let first = a.fetch(&g, Fetch::new("x", 10, PATIENCE)).await.unwrap();
    assert_eq!(first.len(), 1);
    let waiter = {
        let (b, g) = (b.clone(), g.clone());
        tokio::spawn(async move { b.fetch(&g, Fetch::new("y", 10, Duration::from_secs(60))).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.settle(&g, &[first[0].token], Verdict::Ack, false).await.unwrap();
    let next =
        tokio::time::timeout(PATIENCE, waiter).await.expect("the poll finds the ack").unwrap().unwrap();
    assert_eq!(next.iter().map(|l| l.event.version).collect::<Vec<_>>(), [2]);
    b.settle(&g, &[next[0].token], Verdict::Ack, false).await.unwrap();

    let waiter = {
        let (b, g) = (b.clone(), g.clone());
        tokio::spawn(async move { b.fetch(&g, Fetch::new("y", 10, Duration::from_secs(60))).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes.a.append(stream("s-2"), ExpectedVersion::Any, events(1)).await.unwrap();
    let next =
        tokio::time::timeout(PATIENCE, waiter).await.expect("the poll finds the append").unwrap().unwrap();
    assert_eq!(next.iter().map(|l| l.event.stream.as_str()).collect::<Vec<_>>(), ["s-2"]);

    // The wake-ups were sent on the bus (and lost there), not through NOTIFY.
    let published = bus.published.lock().unwrap().clone();
    assert!(published.iter().any(|t| t == "store.head"), "{published:?}");
    assert!(published.iter().any(|t| t == "store.groups"), "{published:?}");
    drop((a, b));
    nodes.finish().await;
}
