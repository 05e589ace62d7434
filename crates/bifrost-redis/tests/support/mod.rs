//! Finding the test Redis and giving every store its own key prefix.

#![allow(dead_code)]

use std::sync::Arc;

use bifrost_core::testkit::{Harness, service_unavailable};
use bifrost_redis::{RedisOptions, RedisStore, remove_prefix};

pub(crate) fn url() -> String {
    std::env::var("BIFROST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A prefix no other test run uses.
pub(crate) fn fresh_prefix() -> String {
    format!("bifrost_test_{}", uuid::Uuid::new_v4().simple())
}

/// Removes the prefix's keys when the test is done (also when it panicked).
pub(crate) struct PrefixGuard {
    pub(crate) prefix: String,
}

impl Drop for PrefixGuard {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        // Drop cannot await: a thread with its own runtime does the work, waited for in
        // `block_in_place` inside a multi-thread runtime so that this worker's tasks move on.
        let remove = move || {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                let _ = rt.block_on(remove_prefix(&url(), &prefix));
            })
            .join();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(remove)
            }
            _ => remove(),
        }
    }
}

pub(crate) fn options(prefix: &str) -> RedisOptions {
    RedisOptions { prefix: prefix.to_owned(), ..RedisOptions::default() }
}

/// A store on a fresh prefix, or `None` (skip) when Redis is unreachable.
pub(crate) async fn store_with(options: RedisOptions) -> Option<(RedisStore, PrefixGuard)> {
    let guard = PrefixGuard { prefix: options.prefix.clone() };
    match RedisStore::connect(&url(), options).await {
        Ok(store) => Some((store, guard)),
        Err(e) => service_unavailable("Redis", e),
    }
}

pub(crate) async fn harness() -> Option<Harness> {
    let (store, guard) = store_with(options(&fresh_prefix())).await?;
    Some(Harness::durable(Arc::new(store), guard))
}
