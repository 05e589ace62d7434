//! An in-bridge whose store refuses appends for a while (a store that is down): nothing is
//! acked or skipped, and every message is stored once the store takes appends again.
//! The broker is the local Redis (`BIFROST_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`); skipped when unreachable unless `BIFROST_REQUIRE_SERVICES=1`.
//! The store is the in-memory one behind a switch that fails its appends.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bifrost_api::BridgeStateBody;
use bifrost_core::{
    AppendResult, DeleteMode, Direction, DurableStore, Error, EventStore, InMemoryStore, LogFilter, LogSlice,
    RecordedEvent, Result, StateChange, StateEntry, StateStore, StreamAppend, StreamInfo, StreamListQuery,
    StreamListing, StreamName, StreamSlice,
};
use bytes::Bytes;
use serde_json::json;
use support::{Node, id_of, until};
use tokio::sync::watch;
use uuid::Uuid;

/// The in-memory store, whose appends fail while `down` is set.
struct Switched {
    inner: Arc<InMemoryStore>,
    down: AtomicBool,
}

#[async_trait]
impl EventStore for Switched {
    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("the store is down (test switch)".into()));
        }
        self.inner.append_many(appends).await
    }
    async fn read_stream(
        &self,
        stream: &StreamName,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice> {
        self.inner.read_stream(stream, from, direction, limit).await
    }
    async fn read_all(&self, after: u64, filter: &LogFilter, limit: usize) -> Result<LogSlice> {
        self.inner.read_all(after, filter, limit).await
    }
    async fn event(&self, id: Uuid) -> Result<Option<RecordedEvent>> {
        self.inner.event(id).await
    }
    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo> {
        self.inner.stream_info(stream).await
    }
    async fn list_streams(&self, query: &StreamListQuery) -> Result<StreamListing> {
        self.inner.list_streams(query).await
    }
    async fn delete_stream(&self, stream: &StreamName, mode: DeleteMode) -> Result<()> {
        self.inner.delete_stream(stream, mode).await
    }
    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head()
    }
}

#[async_trait]
impl StateStore for Switched {
    async fn write_state(&self, changes: Vec<StateChange>) -> Result<()> {
        self.inner.write_state(changes).await
    }
    async fn read_state(&self, scope: &str, key: &str) -> Result<Option<Bytes>> {
        self.inner.read_state(scope, key).await
    }
    async fn scan_state(&self, scope: &str, after: Option<&str>, limit: usize) -> Result<Vec<StateEntry>> {
        self.inner.scan_state(scope, after, limit).await
    }
}

async fn pending(connection: &mut redis::aio::MultiplexedConnection, key: &str) -> redis::Value {
    let summary: redis::Value =
        redis::cmd("XPENDING").arg(key).arg("bifrost").query_async(connection).await.unwrap();
    match summary {
        redis::Value::Array(parts) => parts.into_iter().next().unwrap(),
        other => other,
    }
}

#[tokio::test]
async fn appends_that_fail_are_retried_and_nothing_is_acked_or_lost_meanwhile() {
    let url = std::env::var("BIFROST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection =
        match tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection()).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                bifrost_core::testkit::service_unavailable::<()>("Redis", e);
                return;
            }
            Err(_) => {
                bifrost_core::testkit::service_unavailable::<()>("Redis", "no connection within 5 s");
                return;
            }
        };
    let key = format!("test-{}", Uuid::new_v4().simple());
    let store = Arc::new(Switched { inner: InMemoryStore::shared(), down: AtomicBool::new(true) });
    let outcome = {
        let store = Arc::clone(&store);
        let key = key.clone();
        let mut connection = connection.clone();
        tokio::spawn(async move {
            let node = Node::start_on(Arc::clone(&store) as Arc<dyn DurableStore>);
            let name = format!("in-{}", Uuid::new_v4().simple());
            node.put(&name, json!({"direction": "in", "kind": "redis-stream", "url": url, "source": key}))
                .await;
            for i in 0..3 {
                let event = json!({"type": "t.x", "data": i}).to_string();
                let _: String = redis::cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("id")
                    .arg(format!("m-{i}"))
                    .arg("event")
                    .arg(event)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
            }
            until("the bridge reports the store's failure", || async {
                let body = node.bridges.get(&name).await.unwrap();
                body.state == BridgeStateBody::Failing
                    && body.last_error.is_some_and(|e| e.message.contains("the store did not take"))
            })
            .await;
            assert!(node.events().await.is_empty());
            assert_ne!(
                pending(&mut connection, &key).await,
                redis::Value::Int(0),
                "nothing is acked meanwhile"
            );

            store.down.store(false, Ordering::SeqCst);
            let events = node.wait_for_events(3).await;
            let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
            assert_eq!(ids, (0..3).map(|i| id_of(&name, &format!("m-{i}"))).collect::<Vec<_>>());
            until("every entry is acked", || async {
                pending(&mut connection.clone(), &key).await == redis::Value::Int(0)
            })
            .await;
            let body = node.bridges.get(&name).await.unwrap();
            assert_eq!((body.published, body.checkpoint), (3, 3), "{body:?}");
        })
        .await
    };
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut connection).await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
