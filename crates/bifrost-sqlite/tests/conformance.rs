//! The embedded store runs the full conformance suite and the state suite, once per
//! durability mode.

use std::sync::Arc;

use bifrost_core::testkit::Harness;
use bifrost_sqlite::{Durability, SqliteOptions, SqliteStore};

async fn store() -> Harness {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path(), SqliteOptions::default()).expect("open store");
    Harness::durable(Arc::new(store), dir)
}

bifrost_core::conformance_suite!(store);
bifrost_core::state_conformance_suite!(store);

mod relaxed {
    use super::*;

    async fn store() -> Harness {
        let dir = tempfile::tempdir().expect("temporary directory");
        let options = SqliteOptions { durability: Durability::Relaxed, readers: 2, max_batch: 8 };
        let store = SqliteStore::open(dir.path(), options).expect("open store");
        Harness::durable(Arc::new(store), dir)
    }

    bifrost_core::conformance_suite!(store);
    bifrost_core::state_conformance_suite!(store);
}
