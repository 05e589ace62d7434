//! Bifrost's Redis event store.
