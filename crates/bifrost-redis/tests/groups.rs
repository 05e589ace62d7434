//! Consumer groups kept in Redis keep the group contract; a restart is another node taking
//! over on the same prefix (after a crash: the old node simply vanishes, its leases left in
//! Redis).

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
