//! The `state` table: the key-value space readers of the log keep their bookkeeping in
//! (see `bifrost_core::state`). Writes take a pooled connection and a transaction of their
//! own; they never touch the `head` row, so they do not wait behind appends.

use std::collections::{BTreeMap, BTreeSet};

use bifrost_core::backend::codec::corrupt;
use bifrost_core::{Error, Result, StateChange, StateEntry};
use bytes::Bytes;
use deadpool_postgres::{Object, Pool};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::codec::{pg, pool as pool_error};
use crate::schema::Sql;

/// How often a write is tried when PostgreSQL aborts it as a deadlock victim (concurrent
/// writes to the same keys), before the error reaches the caller.
const ATTEMPTS: usize = 3;

/// The effect of a list of changes applied in order, as three set operations: empty the
/// `cleared` scopes, then write or remove each of `keys` (sorted, so that concurrent
/// writes lock rows in one order). The round trips stay the same whatever the list's size,
/// but for one read per expectation.
#[derive(Default)]
struct Net<'a> {
    cleared: BTreeSet<&'a str>,
    keys: BTreeMap<(&'a str, &'a str), Option<&'a [u8]>>,
    /// The expectations, checked before anything is written (sorted: locks in one order).
    expected: BTreeMap<(&'a str, &'a str), Option<&'a [u8]>>,
}

impl<'a> Net<'a> {
    fn of(changes: &'a [StateChange]) -> Self {
        let mut net = Self::default();
        for change in changes {
            match change {
                StateChange::Put { scope, key, value } => {
                    net.keys.insert((scope, key), Some(value.as_ref()));
                }
                StateChange::Delete { scope, key } => {
                    net.keys.insert((scope, key), None);
                }
                StateChange::DeleteScope { scope } => {
                    // Whatever came before in this scope is gone; what comes after stays.
                    net.keys.retain(|(s, _), _| s != scope);
                    net.cleared.insert(scope);
                }
                StateChange::Expect { scope, key, value } => {
                    net.expected.insert((scope, key), value.as_deref());
                }
            }
        }
        net
    }

    fn is_empty(&self) -> bool {
        self.cleared.is_empty() && self.keys.is_empty() && self.expected.is_empty()
    }
}

/// Applies validated changes in one transaction: all of them or none.
pub(crate) async fn write(pool: &Pool, sql: &Sql, changes: &[StateChange]) -> Result<()> {
    let net = Net::of(changes);
    if net.is_empty() {
        return Ok(());
    }
    let mut client = pool.get().await.map_err(pool_error)?;
    let mut attempt = 1;
    loop {
        match try_write(&mut client, sql, &net).await {
            Err(e)
                if attempt < ATTEMPTS
                    && matches!(
                        e.code(),
                        Some(&SqlState::T_R_DEADLOCK_DETECTED | &SqlState::T_R_SERIALIZATION_FAILURE)
                    ) =>
            {
                attempt += 1;
            }
            Ok(Err(Conflict(scope, key))) => {
                return Err(Error::StateConflict { scope: scope.to_owned(), key: key.to_owned() });
            }
            result => return result.map(|_| ()).map_err(pg),
        }
    }
}

/// The expectation that did not hold.
struct Conflict<'a>(&'a str, &'a str);

async fn try_write<'a>(
    client: &mut Object,
    sql: &Sql,
    net: &Net<'a>,
) -> Result<Result<(), Conflict<'a>>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    if !net.expected.is_empty() {
        // Writers expecting the same key take turns (transaction-scoped advisory locks, so
        // that even an absent key is fenced; all taken in one statement, in the order of
        // their lock ids, so two writers cannot wait on each other), and each reads what the
        // one before committed — locking the row, so that a writer without expectations
        // (a reset) cannot change it between this check and the commit.
        let names: Vec<String> =
            net.expected.keys().map(|(scope, key)| format!("{scope}\u{1f}{key}")).collect();
        let lock = tx.prepare_cached(STATE_KEY_LOCKS).await?;
        tx.execute(&lock, &[&names]).await?;
        let read = tx.prepare_cached(&format!("{} FOR UPDATE", sql.read_state)).await?;
        for (&(scope, key), expected) in &net.expected {
            let row = tx.query_opt(&read, &[&scope, &key]).await?;
            let current: Option<Vec<u8>> = row.map(|r| r.try_get(0)).transpose()?;
            if current.as_deref() != *expected {
                return Ok(Err(Conflict(scope, key)));
            }
        }
    }
    if !net.cleared.is_empty() {
        // Before the puts, which may refill a cleared scope.
        let clear = tx.prepare_cached(&sql.clear_state_scopes).await?;
        let scopes: Vec<&str> = net.cleared.iter().copied().collect();
        tx.execute(&clear, &[&scopes]).await?;
    }
    let (mut put_scopes, mut put_keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
    let (mut delete_scopes, mut delete_keys) = (Vec::new(), Vec::new());
    for (&(scope, key), value) in &net.keys {
        match value {
            Some(value) => {
                put_scopes.push(scope);
                put_keys.push(key);
                values.push(*value);
            }
            None => {
                delete_scopes.push(scope);
                delete_keys.push(key);
            }
        }
    }
    let put = tx.prepare_cached(&sql.put_state).await?;
    let delete = tx.prepare_cached(&sql.delete_state).await?;
    let put_params: [&(dyn ToSql + Sync); 3] = [&put_scopes, &put_keys, &values];
    let delete_params: [&(dyn ToSql + Sync); 2] = [&delete_scopes, &delete_keys];
    // Pipelined: the two touch different keys, so their order does not matter.
    futures::try_join!(
        async { if values.is_empty() { Ok(0) } else { tx.execute(&put, &put_params).await } },
        async { if delete_keys.is_empty() { Ok(0) } else { tx.execute(&delete, &delete_params).await } },
    )?;
    tx.commit().await.map(Ok)
}

/// A lock per state key, in a class of its own (the two-key form never meets the one-key
/// advisory lock of the migrations), taken in the order of the lock ids.
const STATE_KEY_LOCKS: &str = "SELECT pg_advisory_xact_lock(1650877011, id) \
     FROM (SELECT DISTINCT hashtext(name) AS id FROM unnest($1::text[]) AS name ORDER BY id) AS ids";

pub(crate) async fn read(pool: &Pool, sql: &Sql, scope: &str, key: &str) -> Result<Option<Bytes>> {
    let client = pool.get().await.map_err(pool_error)?;
    let stmt = client.prepare_cached(&sql.read_state).await.map_err(pg)?;
    let row = client.query_opt(&stmt, &[&scope, &key]).await.map_err(pg)?;
    row.map(|r| r.try_get::<_, Vec<u8>>(0).map(Bytes::from).map_err(|e| corrupt("state", e))).transpose()
}

/// Keys sort with `COLLATE "C"`: byte order. Keys are never empty, so a scan from the start
/// is a scan after the empty key.
pub(crate) async fn scan(
    pool: &Pool,
    sql: &Sql,
    scope: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<StateEntry>> {
    let client = pool.get().await.map_err(pool_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let stmt = client.prepare_cached(&sql.scan_state).await.map_err(pg)?;
    let rows = client.query(&stmt, &[&scope, &after.unwrap_or(""), &limit]).await.map_err(pg)?;
    rows.iter()
        .map(|r| {
            Ok(StateEntry {
                key: r.try_get(0).map_err(|e| corrupt("state key", e))?,
                value: Bytes::from(r.try_get::<_, Vec<u8>>(1).map_err(|e| corrupt("state value", e))?),
            })
        })
        .collect()
}
