//! Opening connections: pragmas and versioned schema migrations.

use std::path::Path;

use bifrost_core::{Error, Result};
use rusqlite::{Connection, OpenFlags};

use crate::Durability;

mod embedded {
    refinery::embed_migrations!("migrations");
}

pub(crate) fn sqlite_error(context: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |e| Error::storage(context.to_owned(), e)
}

/// The writer's connection: WAL, the chosen durability, schema migrated to this version.
pub(crate) fn open_writer(path: &Path, durability: Durability) -> Result<Connection> {
    let mut conn =
        Connection::open(path).map_err(|e| Error::storage(format!("cannot open {}", path.display()), e))?;
    let synchronous = synchronous(durability);
    // WAL: readers never block the writer and see consistent snapshots. A large page cache
    // keeps the indexes hot for group commits. Checkpoints belong to the checkpoint thread;
    // the writer's own threshold (about 400 MB of WAL) is only a backstop should it lag.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {synchronous};
         PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -65536;
         PRAGMA temp_store = MEMORY;
         PRAGMA wal_autocheckpoint = 100000;"
    ))
    .map_err(sqlite_error("cannot configure the database"))?;
    embedded::migrations::runner()
        .run(&mut conn)
        .map_err(|e| Error::storage("schema migration failed", e))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The checkpointer's connection: writes only the database file, from the WAL.
pub(crate) fn open_checkpointer(path: &Path, durability: Durability) -> Result<Connection> {
    let conn = Connection::open(path)
        .map_err(|e| Error::storage(format!("cannot open {} for checkpoints", path.display()), e))?;
    conn.execute_batch(&format!(
        "PRAGMA busy_timeout = 5000;
         PRAGMA synchronous = {};",
        synchronous(durability)
    ))
    .map_err(sqlite_error("cannot configure the checkpoint connection"))?;
    Ok(conn)
}

fn synchronous(durability: Durability) -> &'static str {
    match durability {
        Durability::Full => "FULL",
        Durability::Relaxed => "NORMAL",
    }
}

/// A read-only connection for the read pool.
pub(crate) fn open_reader(path: &Path) -> Result<Connection> {
    let flags =
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::storage(format!("cannot open {} for reading", path.display()), e))?;
    conn.execute_batch(
        "PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -32768;
         PRAGMA mmap_size = 268435456;",
    )
    .map_err(sqlite_error("cannot configure a read connection"))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}
