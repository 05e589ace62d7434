//! Every node's sweeper: expires overdue leases of every group of the store — a failed
//! attempt each, retried after the backoff or parked at the last one — whichever node
//! handed them out, dead or alive. Nodes share the work: each takes the overdue rows no
//! other node has locked (`FOR UPDATE SKIP LOCKED`).
//!
//! It also vacuums `group_messages`. A delivered event leaves two dead row versions there
//! (its lease and its ack), and a queue table's scans crawl through dead versions until a
//! vacuum removes them: relying on autovacuum (often off, often too slow for a table this
//! small and this busy) would let a group's fetches slow down as its backlog drains. The
//! vacuum also analyses the table, which re-plans the statements cached on every
//! connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bifrost_core::group::{GroupConfig, timeout_reason};
use bifrost_core::{Error, Result};
use tokio::sync::watch;

use super::{GroupTables, decode_config, fail_rows};
use crate::codec::{pg, pool as pool_error};

/// Rows one sweep takes at most; a full sweep is followed by another at once.
const BATCH: i64 = 500;
/// How often a node looks whether `group_messages` needs a vacuum.
const VACUUM_EVERY: Duration = Duration::from_millis(500);
/// Dead row versions that call for a vacuum (when they also outnumber the live rows).
const VACUUM_DEAD: i64 = 5_000;

pub(super) async fn run(tables: Arc<GroupTables>, mut stop: watch::Receiver<bool>) {
    let mut vacuumed = tokio::time::Instant::now();
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if vacuumed.elapsed() >= VACUUM_EVERY {
            vacuumed = tokio::time::Instant::now();
            if let Err(e) = vacuum(&tables).await {
                tracing::warn!(error = %e, "vacuuming the consumer groups' rows failed");
            }
        }
        let wait = match sweep(&tables).await {
            Ok((true, _)) => Duration::ZERO,
            Ok((false, next)) => next.map_or(tables.poll, |n| n.min(tables.poll)).min(VACUUM_EVERY),
            Err(e) => {
                tracing::warn!(error = %e, "expiring the consumer groups' leases failed; retrying");
                tables.poll
            }
        };
        if wait.is_zero() {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = tables.sweep.notified() => {}
            _ = stop.changed() => {}
        }
    }
}

/// One sweep: returns whether there may be more overdue leases, and when the next lease
/// this node knows of is due.
async fn sweep(tables: &GroupTables) -> Result<(bool, Option<Duration>)> {
    let sql = &tables.sql;
    let mut client = tables.pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    let expired = tx.prepare_cached(&sql.expired).await.map_err(pg)?;
    let rows = tx.query(&expired, &[&BATCH]).await.map_err(pg)?;
    let full = rows.len() as i64 == BATCH;
    // Per group: its settings and its overdue rows (position, failures counting this one).
    let mut groups: BTreeMap<i64, (GroupConfig, Vec<(i64, u32)>)> = BTreeMap::new();
    for row in &rows {
        let group: i64 = row.try_get(0).map_err(pg)?;
        let position: i64 = row.try_get(1).map_err(pg)?;
        let failures: i32 = row.try_get(2).map_err(pg)?;
        let failed = match groups.entry(group) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                let config = decode_config(&format!("#{group}"), row.try_get(3).map_err(pg)?)?;
                entry.insert((config, Vec::new()))
            }
        };
        failed.1.push((position, u32::try_from(failures).unwrap_or(0) + 1));
    }
    let count = tx.prepare_cached(&sql.count_timeouts).await.map_err(pg)?;
    for (group, (config, failed)) in &groups {
        let most = failed.iter().map(|f| f.1).max().unwrap_or(1);
        let delay = config.backoff.delay(most);
        let reason = timeout_reason(config.ack_timeout);
        fail_rows(&tx, sql, *group, config, failed, false, delay, &reason).await?;
        let n = i64::try_from(failed.len()).map_err(|e| Error::Internal(e.to_string()))?;
        tx.execute(&count, &[group, &n]).await.map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    for group in groups.keys() {
        tables.wake(*group);
    }
    let next = client.prepare_cached(&sql.next_deadline).await.map_err(pg)?;
    let next: Option<i64> = client.query_one(&next, &[]).await.map_err(pg)?.try_get(0).map_err(pg)?;
    Ok((full, next.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0)))))
}

/// Vacuums `group_messages` when dead row versions pile up; one node at a time (the others
/// skip their turn).
async fn vacuum(tables: &GroupTables) -> Result<()> {
    let sql = &tables.sql;
    let client = tables.pool.get().await.map_err(pool_error)?;
    let stats = client.prepare_cached(&sql.dead_rows).await.map_err(pg)?;
    let row = client.query_one(&stats, &[]).await.map_err(pg)?;
    let (dead, live): (Option<i64>, Option<i64>) = (row.try_get(0).map_err(pg)?, row.try_get(1).map_err(pg)?);
    let (dead, live) = (dead.unwrap_or(0), live.unwrap_or(0));
    if dead < VACUUM_DEAD || dead < live {
        return Ok(());
    }
    let turn = client.prepare_cached(&sql.vacuum_turn).await.map_err(pg)?;
    let mine: bool = client.query_one(&turn, &[]).await.map_err(pg)?.try_get(0).map_err(pg)?;
    if !mine {
        return Ok(());
    }
    let vacuumed = client.batch_execute(&sql.vacuum).await.map_err(pg);
    let release = client.prepare_cached(&sql.vacuum_done).await.map_err(pg)?;
    client.query_one(&release, &[]).await.map_err(pg)?;
    vacuumed
}
