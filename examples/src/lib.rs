//! Runnable examples of Bifrost's toolkit. Each program sits beside this folder
//! (`order_saga.rs`, `task_notifications.rs`, `bank_account.rs`) and runs with
//! `cargo run --example <name>`; the tests in `tests/` run the same code and check what it
//! printed about.
//!
//! The one helper they share opens the embedded store.

use std::path::Path;
use std::sync::Arc;

use bifrost_sqlite::{SqliteOptions, SqliteStore};

/// Opens the embedded store in `dir` (created when missing).
pub fn open_store(dir: &Path) -> bifrost_core::Result<Arc<SqliteStore>> {
    Ok(Arc::new(SqliteStore::open(dir, SqliteOptions::default())?))
}
