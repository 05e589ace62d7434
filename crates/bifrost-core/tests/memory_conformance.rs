//! The in-memory store runs the full conformance suite, for the log and for its state.

use bifrost_core::InMemoryStore;
use bifrost_core::testkit::Harness;

async fn store() -> Harness {
    Harness::durable(InMemoryStore::shared(), ())
}

bifrost_core::conformance_suite!(store);
bifrost_core::state_conformance_suite!(store);
