//! The `state` table: the key-value space readers of the log keep their bookkeeping in
//! (see `bifrost_core::state`). The writer thread applies changes; reads run on the pool.

use bifrost_core::{Error, Result, StateChange, StateEntry};
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::codec::sql;

/// Applies `changes` in order inside the writer's open transaction, once every expectation
/// holds (the caller's savepoint undoes what a failure leaves).
pub(crate) fn apply(conn: &Connection, changes: &[StateChange]) -> Result<()> {
    for change in changes {
        if let StateChange::Expect { scope, key, value } = change
            && read(conn, scope, key)?.as_ref() != value.as_ref()
        {
            return Err(Error::StateConflict { scope: scope.clone(), key: key.clone() });
        }
    }
    for change in changes {
        match change {
            StateChange::Expect { .. } => Ok(0),
            StateChange::Put { scope, key, value } => conn
                .prepare_cached(
                    "INSERT INTO state (scope, key, value) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value",
                )
                .map_err(sql)?
                .execute(params![scope, key, value.as_ref()]),
            StateChange::Delete { scope, key } => conn
                .prepare_cached("DELETE FROM state WHERE scope = ?1 AND key = ?2")
                .map_err(sql)?
                .execute(params![scope, key]),
            StateChange::DeleteScope { scope } => {
                conn.prepare_cached("DELETE FROM state WHERE scope = ?1").map_err(sql)?.execute([scope])
            }
        }
        .map_err(sql)?;
    }
    Ok(())
}

pub(crate) fn read(conn: &Connection, scope: &str, key: &str) -> Result<Option<Bytes>> {
    conn.prepare_cached("SELECT value FROM state WHERE scope = ?1 AND key = ?2")
        .map_err(sql)?
        .query_row([scope, key], |row| value(row, 0))
        .optional()
        .map_err(sql)
}

/// Keys compare with SQLite's BINARY collation (memcmp of the UTF-8 bytes): byte order.
/// Keys are never empty, so a scan from the start is a scan after the empty key.
pub(crate) fn scan(
    conn: &Connection,
    scope: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<StateEntry>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached("SELECT key, value FROM state WHERE scope = ?1 AND key > ?2 ORDER BY key LIMIT ?3")
        .map_err(sql)?;
    let mut rows = stmt.query(params![scope, after.unwrap_or(""), limit]).map_err(sql)?;
    let mut entries = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        entries.push(StateEntry { key: row.get(0).map_err(sql)?, value: value(row, 1).map_err(sql)? });
    }
    Ok(entries)
}

fn value(row: &Row<'_>, idx: usize) -> rusqlite::Result<Bytes> {
    row.get::<_, Vec<u8>>(idx).map(Bytes::from)
}
