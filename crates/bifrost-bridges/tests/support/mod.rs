//! What the in-bridge tests share: a node that runs bridges on an in-memory store with the
//! real brokers' connector, and waiting for what it appends.

#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bifrost_api::{BridgeBody, BridgeRequest};
use bifrost_bridges::Bridges;
use bifrost_bridges::kinds::Brokers;
use bifrost_core::lease::Leases;
use bifrost_core::{DurableStore, InMemoryStore, LogFilter, RecordedEvent, StateStore};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub struct Node {
    pub store: Arc<dyn DurableStore>,
    pub bridges: Arc<Bridges>,
    stop: CancellationToken,
}

impl Node {
    pub fn start() -> Self {
        Self::start_on(InMemoryStore::shared())
    }

    pub fn start_on(store: Arc<dyn DurableStore>) -> Self {
        let state: Arc<dyn StateStore> = Arc::clone(&store) as _;
        let leases = Leases::new(state, "node-a", Duration::from_millis(2000));
        let bridges =
            Arc::new(Bridges::new(Arc::clone(&store), leases, Duration::from_millis(200), Arc::new(Brokers)));
        let stop = CancellationToken::new();
        bridges.start(stop.clone());
        Self { store, bridges, stop }
    }

    pub async fn put(&self, name: &str, request: Value) -> BridgeBody {
        let request: BridgeRequest = serde_json::from_value(request).unwrap();
        self.bridges.put(name, request).await.unwrap().1
    }

    /// Every stored event, in log order.
    pub async fn events(&self) -> Vec<RecordedEvent> {
        self.store.read_all(0, &LogFilter::default(), 10_000).await.unwrap().events
    }

    /// Waits until `n` events are stored and returns them.
    pub async fn wait_for_events(&self, n: usize) -> Vec<RecordedEvent> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events = self.events().await;
            if events.len() >= n {
                return events;
            }
            if Instant::now() > deadline {
                let bridges = self.bridges.list().await.unwrap();
                panic!(
                    "{n} events were not stored in time; {} were; the bridges: {bridges:#?}",
                    events.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Polls `check` until it holds, failing the test after 20 s.
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The event with `id`, if stored.
pub fn find(events: &[RecordedEvent], id: uuid::Uuid) -> Option<&RecordedEvent> {
    events.iter().find(|e| e.id == id)
}

pub fn data(event: &RecordedEvent) -> Value {
    serde_json::from_slice(&event.data).unwrap()
}

/// The id an in-bridge named `bridge` gives a message whose own id is `id`.
pub fn id_of(bridge: &str, id: &str) -> uuid::Uuid {
    bifrost_bridges::inbound::event_id(bridge, Some(id))
}
