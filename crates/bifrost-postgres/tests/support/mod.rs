//! Finding the test database and giving every store its own schema.

#![allow(dead_code)]

use std::sync::Arc;

use bifrost_core::testkit::{Harness, service_unavailable};
use bifrost_postgres::{PostgresOptions, PostgresStore, drop_schema};

pub(crate) fn url() -> String {
    std::env::var("BIFROST_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema name no other test run uses.
pub(crate) fn fresh_schema() -> String {
    format!("bifrost_test_{}", uuid::Uuid::new_v4().simple())
}

/// Drops the schema when the test is done (also when it panicked).
pub(crate) struct SchemaGuard {
    pub(crate) schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        // Drop cannot await: a thread with its own runtime does the work. Inside a test's
        // multi-thread runtime, waiting for it happens in `block_in_place`, so that this
        // worker's queued tasks (the store's connections closing) move to other workers
        // instead of waiting behind the drop.
        let drop_it = move || {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                let _ = rt.block_on(drop_schema(&url(), &schema));
            })
            .join();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(drop_it)
            }
            _ => drop_it(),
        }
    }
}

pub(crate) fn options(schema: &str) -> PostgresOptions {
    PostgresOptions { schema: schema.to_owned(), ..PostgresOptions::default() }
}

/// A store on a fresh schema, or `None` (skip) when PostgreSQL is unreachable.
pub(crate) async fn store_with(options: PostgresOptions) -> Option<(PostgresStore, SchemaGuard)> {
    let guard = SchemaGuard { schema: options.schema.clone() };
    match PostgresStore::connect(&url(), options).await {
        Ok(store) => Some((store, guard)),
        Err(e) => service_unavailable("PostgreSQL", e),
    }
}

pub(crate) async fn harness() -> Option<Harness> {
    let (store, guard) = store_with(options(&fresh_schema())).await?;
    Some(Harness::durable(Arc::new(store), guard))
}
