//! Readers' state (`StateStore`): per scope a hash of values and a sorted set of its keys
//! (all scores 0, so `ZRANGEBYLEX` pages them in byte order). A write is one script: every
//! expectation is checked, then every change applied, with no other command in between.

use bifrost_core::{Error, Result, StateChange, StateEntry};
use bytes::Bytes;
use redis::Value;
use redis::aio::ConnectionManager;

use crate::codec::{array, bytes, redis_error, text};
use crate::scripts::{Keys, SCAN_STATE, WRITE_STATE};

pub(crate) async fn write(conn: &mut ConnectionManager, keys: &Keys, changes: &[StateChange]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut invocation = WRITE_STATE.prepare_invoke();
    invocation.arg(&keys.state_values).arg(&keys.state_keys);
    for change in changes {
        let (op, scope, key, value): (&str, &str, &str, &[u8]) = match change {
            StateChange::Put { scope, key, value } => ("p", scope, key, value),
            StateChange::Delete { scope, key } => ("d", scope, key, b""),
            StateChange::DeleteScope { scope } => ("s", scope, "", b""),
            StateChange::Expect { scope, key, value: Some(value) } => ("e", scope, key, value),
            StateChange::Expect { scope, key, value: None } => ("a", scope, key, b""),
        };
        invocation.arg(op).arg(scope).arg(key).arg(value);
    }
    let reply: Value = invocation.invoke_async(conn).await.map_err(redis_error)?;
    let mut failed = array(reply)?.into_iter();
    match (failed.next(), failed.next()) {
        (Some(scope), Some(key)) => Err(Error::StateConflict { scope: text(scope)?, key: text(key)? }),
        _ => Ok(()),
    }
}

pub(crate) async fn read(
    conn: &mut ConnectionManager,
    keys: &Keys,
    scope: &str,
    key: &str,
) -> Result<Option<Bytes>> {
    let value: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(format!("{}{scope}", keys.state_values))
        .arg(key)
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    Ok(value.map(Bytes::from))
}

pub(crate) async fn scan(
    conn: &mut ConnectionManager,
    keys: &Keys,
    scope: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<StateEntry>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let min = match after {
        Some(after) => format!("({after}"),
        None => "-".to_owned(),
    };
    let mut invocation = SCAN_STATE.prepare_invoke();
    invocation
        .arg(format!("{}{scope}", keys.state_values))
        .arg(format!("{}{scope}", keys.state_keys))
        .arg(min)
        .arg(limit.min(i64::MAX as usize));
    let reply: Value = invocation.invoke_async(conn).await.map_err(redis_error)?;
    let mut flat = array(reply)?.into_iter();
    let mut entries = Vec::new();
    while let (Some(key), Some(value)) = (flat.next(), flat.next()) {
        entries.push(StateEntry { key: text(key)?, value: Bytes::from(bytes(value)?) });
    }
    Ok(entries)
}
