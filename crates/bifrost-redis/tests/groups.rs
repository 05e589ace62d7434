//! Consumer groups kept in Redis keep the group contract; a restart is another node taking
//! over on the same prefix (after a crash: the old node simply vanishes, its leases left in
//! Redis). Several nodes on one prefix share groups: a lease fetched on one is settled on
//! another, and a dead node's leases come back through the others.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use bifrost_core::group::{GroupEngine, GroupKind};
use bifrost_core::testkit::group_cases::GroupFixture;
use bifrost_core::{EventStore, StateStore};
use bifrost_redis::RedisStore;
use support::{PrefixGuard, fresh_prefix, options, store_with, url};

struct Node {
    prefix: String,
    store: Option<Arc<RedisStore>>,
    _guard: PrefixGuard,
}

impl Node {
    fn store_ref(&self) -> &Arc<RedisStore> {
        self.store.as_ref().expect("running")
    }
}

#[async_trait]
impl GroupFixture for Node {
    fn store(&self) -> Arc<dyn EventStore> {
        self.store_ref().clone()
    }

    fn engine(&self) -> Arc<dyn GroupEngine> {
        self.store_ref().shared_groups(GroupKind::Group).expect("Redis keeps its groups")
    }

    async fn restart(&mut self, crash: bool) {
        let store = self.store.take().expect("running");
        if crash {
            // Gone without a word: whatever it held stays in Redis.
            drop(store);
        } else {
            store.close().await.unwrap();
        }
        let next = RedisStore::connect(&url(), options(&self.prefix)).await.unwrap();
        self.store = Some(Arc::new(next));
    }

    async fn finish(mut self: Box<Self>) {
        if let Some(store) = self.store.take() {
            store.close().await.unwrap();
        }
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

async fn node() -> Option<Box<dyn GroupFixture>> {
    let prefix = fresh_prefix();
    let (store, guard) = store_with(options(&prefix)).await?;
    Some(Box::new(Node { prefix, store: Some(Arc::new(store)), _guard: guard }))
}

bifrost_core::group_conformance_suite!(node);

/// Several nodes on one prefix, each with its own connections (its own `RedisStore`).
mod nodes {
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use bifrost_core::group::{
        Backoff, Fetch, GroupConfig, GroupFilter, GroupName, NackAction, Put, Verdict,
    };
    use bifrost_core::testkit::{events, stream};
    use bifrost_core::{Error, ExpectedVersion};

    use super::*;

    struct Cluster {
        nodes: Vec<Option<Arc<RedisStore>>>,
        _guard: PrefixGuard,
    }

    impl Cluster {
        async fn start(n: usize) -> Option<Self> {
            let prefix = fresh_prefix();
            let (first, guard) = store_with(options(&prefix)).await?;
            let mut nodes = vec![Some(Arc::new(first))];
            for _ in 1..n {
                nodes.push(Some(Arc::new(RedisStore::connect(&url(), options(&prefix)).await.unwrap())));
            }
            Some(Self { nodes, _guard: guard })
        }

        fn node(&self, i: usize) -> Arc<RedisStore> {
            self.nodes[i].clone().expect("alive")
        }

        fn groups(&self, i: usize) -> Arc<dyn GroupEngine> {
            self.node(i).shared_groups(GroupKind::Group).unwrap()
        }

        async fn finish(mut self) {
            for node in self.nodes.iter_mut().filter_map(Option::take) {
                node.close().await.unwrap();
            }
            let _ = tokio::task::spawn_blocking(move || drop(self)).await;
        }
    }

    fn g() -> GroupName {
        GroupName::new("g").unwrap()
    }

    const WAIT: Duration = Duration::from_secs(5);

    /// (stream, version) → (attempt, stamp before the ack was sent) of each answered ack.
    type Acked = HashMap<(String, u64), Vec<(u32, u64)>>;
    /// (stream, version, attempt, stamp when the fetch answer arrived).
    type Delivered = (String, u64, u32, u64);

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_group_created_changed_and_deleted_on_one_node_is_seen_on_the_others_at_once() {
        let Some(c) = Cluster::start(3).await else { return };
        let (a, b, d) = (c.groups(0), c.groups(1), c.groups(2));
        assert!(matches!(b.status(&g()).await, Err(Error::GroupNotFound(_))));
        assert_eq!(
            a.put(&g(), GroupConfig { max_attempts: 3, ..GroupConfig::default() }).await.unwrap(),
            Put::Created
        );
        for other in [&b, &d] {
            assert_eq!(other.status(&g()).await.unwrap().config.max_attempts, 3);
            assert_eq!(other.list().await.unwrap(), [g()]);
        }
        // Created again through another node: an update of the same group.
        assert_eq!(
            b.put(&g(), GroupConfig { max_attempts: 7, ..GroupConfig::default() }).await.unwrap(),
            Put::Updated
        );
        assert_eq!(d.status(&g()).await.unwrap().config.max_attempts, 7);
        d.delete(&g()).await.unwrap();
        for other in [&a, &b] {
            assert!(matches!(other.status(&g()).await, Err(Error::GroupNotFound(_))));
            assert!(other.list().await.unwrap().is_empty());
        }
        drop((a, b, d));
        c.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_lease_fetched_on_one_node_is_acked_or_nacked_on_another_and_status_agrees() {
        let Some(c) = Cluster::start(3).await else { return };
        let (a, b, d) = (c.groups(0), c.groups(1), c.groups(2));
        c.node(0).append(stream("s-1"), ExpectedVersion::Any, events(2)).await.unwrap();
        c.node(1).append(stream("s-2"), ExpectedVersion::Any, events(1)).await.unwrap();
        let config =
            GroupConfig { backoff: Backoff::fixed(Duration::from_millis(10)), ..GroupConfig::default() };
        a.put(&g(), config).await.unwrap();
        let leases = a.fetch(&g(), Fetch::new("x", 10, WAIT)).await.unwrap();
        assert_eq!(leases.len(), 2);
        // The same figures from every node.
        let figures = |s: bifrost_core::group::GroupStatus| (s.checkpoint, s.lag, s.in_flight, s.parked);
        let on_a = figures(a.status(&g()).await.unwrap());
        assert_eq!(on_a, (0, 3, 2, 0));
        assert_eq!(figures(b.status(&g()).await.unwrap()), on_a);
        assert_eq!(figures(d.status(&g()).await.unwrap()), on_a);
        // Acked on b, nacked on d; a stale ack on a is expired.
        let acked = b.settle(&g(), &[leases[0].token], Verdict::Ack, false).await.unwrap();
        assert_eq!(acked.count, 1);
        let nack = Verdict::Nack(NackAction::Retry(Some(Duration::ZERO)), Some("later"));
        assert_eq!(d.settle(&g(), &[leases[1].token], nack, false).await.unwrap().count, 1);
        let stale = a.settle(&g(), &[leases[0].token, leases[1].token], Verdict::Ack, false).await.unwrap();
        assert_eq!((stale.count, stale.expired.len()), (0, 2));
        // The nacked one comes back, through any node, with its attempt counted.
        let again = d.fetch(&g(), Fetch::new("y", 10, WAIT)).await.unwrap();
        let got: HashMap<u64, u32> = again.iter().map(|l| (l.event.position, l.attempt)).collect();
        assert_eq!(got.get(&leases[1].event.position), Some(&2));
        drop((a, b, d));
        c.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_long_poll_on_one_node_wakes_when_another_node_acks_or_appends() {
        let Some(c) = Cluster::start(2).await else { return };
        let (a, b) = (c.groups(0), c.groups(1));
        c.node(0).append(stream("s-1"), ExpectedVersion::Any, events(2)).await.unwrap();
        a.put(&g(), GroupConfig::default()).await.unwrap();
        let first = a.fetch(&g(), Fetch::new("x", 10, WAIT)).await.unwrap();
        assert_eq!(first.len(), 1);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.fetch(&g(), Fetch::new("y", 10, Duration::from_secs(20))).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.settle(&g(), &[first[0].token], Verdict::Ack, false).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap().unwrap();
        assert_eq!(next.iter().map(|l| l.event.version).collect::<Vec<_>>(), [2]);
        // An event appended on a reaches a long poll on b.
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.fetch(&g(), Fetch::new("y", 10, Duration::from_secs(20))).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.node(0).append(stream("s-2"), ExpectedVersion::Any, events(1)).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap().unwrap();
        assert_eq!(next.iter().map(|l| l.event.stream.as_str()).collect::<Vec<_>>(), ["s-2"]);
        drop((a, b));
        c.finish().await;
    }

    /// 3 nodes, 2 competing consumers on each, 2,000 events over 200 streams appended while
    /// they run; node 2 dies (without a word) while its consumers hold leases. Every event is
    /// acked exactly once, each stream in version order, and the dead node's leases come
    /// back through the others with their attempt counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_nodes_deliver_every_event_once_in_stream_order_and_survive_a_dead_node() {
        const STREAMS: usize = 200;
        const PER_STREAM: u64 = 10;
        let Some(mut c) = Cluster::start(3).await else { return };
        let config = GroupConfig {
            ack_timeout: Duration::from_secs(2),
            backoff: Backoff::fixed(Duration::from_millis(20)),
            max_attempts: 100,
            ..GroupConfig::default()
        };
        c.groups(0)
            .put(&g(), GroupConfig { filter: GroupFilter::types(["test.#"]), ..config })
            .await
            .unwrap();
        let writer = {
            let store = c.node(1);
            tokio::spawn(async move {
                for _ in 0..PER_STREAM {
                    for s in 0..STREAMS {
                        store
                            .append(stream(&format!("s-{s}")), ExpectedVersion::Any, events(1))
                            .await
                            .unwrap();
                    }
                }
            })
        };
        // One clock orders what consumers see: (stream, version) → (attempt, stamp before
        // the ack was sent) for every answered ack, and every delivery with the stamp of
        // its arrival.
        let clock = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let acked: Arc<Mutex<Acked>> = Arc::default();
        let delivered: Arc<Mutex<Vec<Delivered>>> = Arc::default();
        let stop_dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Node 2's consumers holding leases right now.
        let holding = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut consumers = Vec::new();
        for node in 0..3 {
            for k in 0..2 {
                let engine = c.groups(node);
                let (acked, delivered, stop_dead) = (acked.clone(), delivered.clone(), stop_dead.clone());
                let holding = holding.clone();
                let clock = clock.clone();
                let stamp = move || clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                consumers.push(tokio::spawn(async move {
                    let name = format!("n{node}c{k}");
                    let mut idle = 0;
                    while idle < 8 {
                        // The dead node's consumers die with it, holding what they leased.
                        if node == 2 && stop_dead.load(std::sync::atomic::Ordering::SeqCst) {
                            return;
                        }
                        let Ok(leases) =
                            engine.fetch(&g(), Fetch::new(&name, 25, Duration::from_millis(500))).await
                        else {
                            return;
                        };
                        if leases.is_empty() {
                            idle += 1;
                            continue;
                        }
                        idle = 0;
                        let received = stamp();
                        for l in &leases {
                            let d = (l.event.stream.to_string(), l.event.version, l.attempt, received);
                            delivered.lock().unwrap().push(d);
                        }
                        if node == 2 {
                            // At work on them for a while; if the node dies meanwhile, so does
                            // this consumer, holding them.
                            holding.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            if stop_dead.load(std::sync::atomic::Ordering::SeqCst) {
                                return;
                            }
                            holding.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        let tokens: Vec<_> = leases.iter().map(|l| l.token).collect();
                        let sent = stamp();
                        let settled = engine.settle(&g(), &tokens, Verdict::Ack, false).await.unwrap();
                        assert!(settled.expired.is_empty(), "a lease acked in time expired");
                        let mut acked = acked.lock().unwrap();
                        for l in &leases {
                            let key = (l.event.stream.to_string(), l.event.version);
                            acked.entry(key).or_default().push((l.attempt, sent));
                        }
                    }
                }));
            }
        }
        // Node 2 dies a third of the way through, while its consumers are at work.
        let started = Instant::now();
        while acked.lock().unwrap().len() < STREAMS * PER_STREAM as usize / 3
            || holding.load(std::sync::atomic::Ordering::SeqCst) == 0
        {
            assert!(started.elapsed() < Duration::from_secs(60), "no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop_dead.store(true, std::sync::atomic::Ordering::SeqCst);
        let dead = c.nodes[2].take().unwrap();
        drop(dead);
        writer.await.unwrap();
        for consumer in consumers {
            consumer.await.unwrap();
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert_eq!(acked.len(), STREAMS * PER_STREAM as usize, "every event acked");
        assert!(acked.values().all(|attempts| attempts.len() == 1), "an event was acked twice");
        // Per stream, in order: no version is handed out before the ack of the one before
        // it was sent.
        let delivered = std::mem::take(&mut *delivered.lock().unwrap());
        for (s, v, attempt, received) in delivered.iter() {
            if *v > 1 {
                let before = acked[&(s.clone(), v - 1)][0].1;
                assert!(
                    before < *received,
                    "{s}@{v} (attempt {attempt}) went out before {s}@{} was acked",
                    v - 1
                );
            }
        }
        let retried: HashSet<_> = delivered.iter().filter(|d| d.2 > 1).collect();
        assert!(!retried.is_empty(), "the dead node held leases, which came back with attempt 2");
        let status = c.groups(0).status(&g()).await.unwrap();
        assert_eq!((status.lag, status.in_flight, status.parked), (0, 0, 0));
        assert!(status.timeouts > 0, "the dead node's leases timed out");
        c.finish().await;
    }

    /// A filter widened on one node delivers, through another, the events above the
    /// checkpoint that match only now, including those the group already read past.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_widened_filter_delivers_events_above_the_checkpoint_that_the_group_read_past() {
        let Some(c) = Cluster::start(2).await else { return };
        let (a, b) = (c.groups(0), c.groups(1));
        for (s, t) in [("order-1", "order.placed"), ("order-2", "order.placed"), ("user-1", "user.created")] {
            let e = bifrost_core::testkit::event(t, "{}");
            c.node(0).append(stream(s), ExpectedVersion::Any, vec![e]).await.unwrap();
        }
        let orders = GroupConfig { filter: GroupFilter::types(["order.#"]), ..GroupConfig::default() };
        a.put(&g(), orders.clone()).await.unwrap();
        // Both orders out, the second acked: the group has read to 3, its checkpoint is 0.
        let out = a.fetch(&g(), Fetch::new("x", 10, WAIT)).await.unwrap();
        assert_eq!(out.len(), 2);
        a.settle(&g(), &[out[1].token], Verdict::Ack, false).await.unwrap();
        let wider = GroupConfig { filter: GroupFilter::types(["order.#", "user.#"]), ..orders };
        assert_eq!(b.put(&g(), wider).await.unwrap(), Put::Updated);
        let got = b.fetch(&g(), Fetch::new("y", 10, WAIT)).await.unwrap();
        assert_eq!(got.iter().map(|l| l.event.position).collect::<Vec<_>>(), [3], "the user event, once");
        b.settle(&g(), &[got[0].token, out[0].token], Verdict::Ack, false).await.unwrap();
        let s = a.status(&g()).await.unwrap();
        assert_eq!((s.checkpoint, s.lag, s.in_flight), (3, 0, 0));
        assert!(b.fetch(&g(), Fetch::new("y", 10, Duration::from_millis(200))).await.unwrap().is_empty());
        drop((a, b));
        c.finish().await;
    }

    /// The in-process bus on two nodes: one durable consumer name, one group between them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn durable_bus_consumers_of_one_name_in_two_processes_share_the_events() {
        use bifrost_bus::{Bus, ConsumerOptions, HandlerError};
        let Some(c) = Cluster::start(2).await else { return };
        let handled: Arc<Mutex<Vec<(usize, String, u64)>>> = Arc::default();
        let mut subs = Vec::new();
        for node in 0..2 {
            let bus = Bus::new(c.node(node));
            let handled = handled.clone();
            let options = ConsumerOptions { concurrency: 4, ..ConsumerOptions::default() };
            let sub = bus
                .consumer(
                    "notifier",
                    GroupFilter::default(),
                    options,
                    move |e: bifrost_core::RecordedEvent| {
                        let handled = handled.clone();
                        async move {
                            handled.lock().unwrap().push((node, e.stream.to_string(), e.version));
                            Ok::<(), HandlerError>(())
                        }
                    },
                )
                .await
                .unwrap();
            subs.push(sub);
        }
        for s in 0..50 {
            c.node(s % 2).append(stream(&format!("s-{s}")), ExpectedVersion::Any, events(4)).await.unwrap();
        }
        let started = Instant::now();
        while handled.lock().unwrap().len() < 200 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "only {} handled",
                handled.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let handled = handled.lock().unwrap().clone();
        assert_eq!(handled.len(), 200, "each event handled once, not once per process");
        let distinct: HashSet<_> = handled.iter().map(|h| (h.1.clone(), h.2)).collect();
        assert_eq!(distinct.len(), 200);
        for node in 0..2 {
            assert!(handled.iter().any(|h| h.0 == node), "process {node} took a share");
        }
        for sub in subs {
            sub.unsubscribe().await.unwrap();
        }
        c.finish().await;
    }
}
