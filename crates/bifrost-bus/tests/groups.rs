//! Consumer groups run in one process (`LocalGroups`) keep the group contract on the
//! in-memory store and on the embedded SQLite store, across graceful restarts and crashes.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use async_trait::async_trait;
use bifrost_bus::{GroupEngine, LocalGroups};
use bifrost_core::testkit::group_cases::GroupFixture;
use bifrost_core::{DurableStore, EventStore, InMemoryStore};
use bifrost_sqlite::{SqliteOptions, SqliteStore};

/// A store and the groups this process runs on it. A restart closes (or, for a crash,
/// just drops) the groups and opens them again; on SQLite the store is reopened as well.
struct Local {
    store: Arc<dyn DurableStore>,
    engine: Option<Arc<LocalGroups>>,
    sqlite: Option<tempfile::TempDir>,
}

impl Local {
    async fn start(store: Arc<dyn DurableStore>, sqlite: Option<tempfile::TempDir>) -> Box<dyn GroupFixture> {
        let engine = Arc::new(LocalGroups::open(store.clone(), store.clone()).await.unwrap());
        Box::new(Self { store, engine: Some(engine), sqlite })
    }
}

fn open_sqlite(dir: &tempfile::TempDir) -> Arc<dyn DurableStore> {
    Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap())
}

#[async_trait]
impl GroupFixture for Local {
    fn store(&self) -> Arc<dyn EventStore> {
        self.store.clone()
    }

    fn engine(&self) -> Arc<dyn GroupEngine> {
        self.engine.clone().expect("running")
    }

    async fn restart(&mut self, crash: bool) {
        let engine = self.engine.take().expect("running");
        if !crash {
            engine.close().await.unwrap();
        }
        assert_eq!(Arc::strong_count(&engine), 1, "a case still holds the old engine");
        drop(engine);
        if let Some(dir) = &self.sqlite {
            self.store.close().await.unwrap();
            self.store = open_sqlite(dir);
        }
        self.engine =
            Some(Arc::new(LocalGroups::open(self.store.clone(), self.store.clone()).await.unwrap()));
    }

    async fn finish(self: Box<Self>) {
        if let Some(engine) = &self.engine {
            engine.close().await.unwrap();
        }
        self.store.close().await.unwrap();
    }
}

mod memory {
    use super::*;

    async fn fixture() -> Option<Box<dyn GroupFixture>> {
        Some(Local::start(InMemoryStore::shared(), None).await)
    }

    bifrost_core::group_conformance_suite!(fixture);
}

mod sqlite {
    use super::*;

    async fn fixture() -> Option<Box<dyn GroupFixture>> {
        let dir = tempfile::tempdir().unwrap();
        let store = open_sqlite(&dir);
        Some(Local::start(store, Some(dir)).await)
    }

    bifrost_core::group_conformance_suite!(fixture);
}
