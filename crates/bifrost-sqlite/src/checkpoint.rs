//! Checkpoints off the writer's path.
//!
//! SQLite checkpoints the WAL into the database file inside whichever commit crosses the
//! auto-checkpoint threshold, which stalls the writer (and every append waiting on it) for
//! the copy and its fsyncs. Here a thread with its own connection runs passive checkpoints
//! once about a thousand events have been committed since the last one, on the other core;
//! passive checkpoints never block the writer.
//! The writer keeps a far higher auto-checkpoint threshold only as a backstop.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use bifrost_core::{Error, Result};
use rusqlite::Connection;

use crate::Durability;
use crate::schema::open_checkpointer;

pub(crate) struct Checkpointer {
    nudge: mpsc::SyncSender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    pub(crate) fn start(path: &Path, durability: Durability) -> Result<Self> {
        let conn = open_checkpointer(path, durability)?;
        // Capacity one: nudges coalesce while a checkpoint runs.
        let (nudge, nudged) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("bifrost-sqlite-checkpoint".into())
            .spawn(move || run(&conn, &nudged))
            .map_err(|e| Error::storage("cannot start the checkpoint thread", e))?;
        Ok(Self { nudge, thread })
    }

    /// Asks for a checkpoint soon; never blocks.
    pub(crate) fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }

    /// Runs a last checkpoint and stops.
    pub(crate) fn stop(self) {
        drop(self.nudge);
        let _ = self.thread.join();
    }
}

fn run(conn: &Connection, nudged: &mpsc::Receiver<()>) {
    while nudged.recv().is_ok() {
        checkpoint(conn, "PASSIVE");
    }
    checkpoint(conn, "TRUNCATE");
}

fn checkpoint(conn: &Connection, mode: &str) {
    let result = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, mode, "WAL checkpoint failed; the writer's backstop threshold still applies");
    }
}
