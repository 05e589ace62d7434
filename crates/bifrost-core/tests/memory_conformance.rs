//! The in-memory store runs the full conformance suite.

use bifrost_core::InMemoryStore;
use bifrost_core::testkit::Harness;

async fn store() -> Harness {
    Harness::new(InMemoryStore::shared())
}

bifrost_core::conformance_suite!(store);
