//! Consumer groups kept in the database: the engine behind
//! [`StateStore::shared_groups`](bifrost_core::StateStore::shared_groups) for PostgreSQL,
//! so that every node on one database serves the same groups.
//!
//! A group is a row of `groups`; its unsettled events are rows of `group_messages`, fed
//! from the log by whichever node fetches (`read_to` says how far). A lease is a row marked
//! leased with a deadline and a nonce, so any node can hand it out, ack it, nack it or, once
//! its deadline passes, expire it; a node that dies leaves nothing only it knew. Per-stream
//! order is a property of the rows: only a stream's first row goes out, and only while no
//! row of its stream is leased. Feeding and leasing of one group take turns under a
//! transaction-scoped advisory lock (the in-flight limit is exact, and a feed cannot
//! re-insert what an ack just deleted); acks and nacks lock only their rows. Each node runs a
//! sweeper that expires overdue leases of every group (`FOR UPDATE SKIP LOCKED`, so nodes
//! share that work). Fetchers wait on the log's head, on `NOTIFY` (or the external cluster
//! bus's message) from acks, nacks, sweeps and changes on any node, on the next retry's due time, and on a fallback poll.

mod sql;
mod sweep;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bifrost_core::backend::codec::{corrupt, u64_from};
use bifrost_core::cluster::ClusterBus;
use bifrost_core::group::{
    DeadLetter, DeadLetterEntry, Fetch, GroupConfig, GroupEngine, GroupFilter, GroupKind, GroupName,
    GroupStatus, Lease, LeaseToken, NACKED, NackAction, Put, ReplaySelection, Settled, Verdict, random,
};
use bifrost_core::{Error, EventId, NameCache, Position, Result, TenantScope, Timestamp};
use deadpool_postgres::{Object, Pool};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::codec::{event_from_row, pg, pool as pool_error};
use crate::external::{GROUPS_TOPIC, groups_payload};
use crate::schema::Sql;

pub(crate) use sql::GroupSql;

/// Positions one feed reads at most, so a selective filter over a long log never scans it
/// all in one statement.
const FEED_BUDGET: i64 = 10_000;
/// Events one feed takes in at most: feeding holds the group's lock, so it comes in small
/// steps, each fetch taking a share.
const FEED_ROWS: i64 = 512;
/// Least number of unsettled rows a group keeps ahead of its consumers: enough for many
/// streams to have their first event there, few enough that a fetch's pass over them is short.
const MIN_BUFFER: usize = 2048;
/// Positions counted per query when the lag is counted beyond `read_to`.
const COUNT_CHUNK: u64 = 100_000;
/// A fetch's transaction: its statements keep one plan per connection (their shape does not
/// depend on the arguments, and planning them costs more than running them), and its commit
/// does not wait for the WAL flush. What a fetch writes (leases, the feed) is visible to
/// every node at commit, so a node that dies loses none of it; only a crash of PostgreSQL
/// itself could lose the last few milliseconds of leases, whose events are then delivered
/// again with the attempt uncounted. Acks, nacks and changes still wait for the flush.
const BEGIN_FETCH: &str =
    "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL synchronous_commit = off";
/// How often a consumer's `last_seen` is written, at most.
const SEEN_EVERY: Duration = Duration::from_secs(1);

fn buffer_limit(config: &GroupConfig) -> i64 {
    i64::try_from((config.max_in_flight * 2).max(MIN_BUFFER)).unwrap_or(i64::MAX)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A filter as the statements take it: a regular expression over the category, and the
/// type patterns as regular expressions (none: every type).
///
/// The category expression carries the name rules of [`LogFilter::admits`] as well: a
/// category is `tenant/` + the name's own (`acme/order`), so the tenant and a `$` stream are
/// both read off it. Given a category, it is matched exactly (it already names its tenant,
/// and only a `$` category matches `$` streams).
fn filter_params(filter: &GroupFilter) -> Result<(Option<String>, Vec<String>)> {
    let log = filter.to_log_filter()?;
    let category = match (&log.category, &log.tenant) {
        (Some(category), _) => format!("^{}$", regex_escape(category.as_str())),
        (None, TenantScope::All) => r"^(?![a-z0-9_-]*/?\$)".to_owned(),
        (None, TenantScope::Only(None)) => r"^(?!\$)[^/]*$".to_owned(),
        (None, TenantScope::Only(Some(tenant))) => format!(r"^{}/(?!\$)", regex_escape(tenant)),
    };
    Ok((Some(category), log.types.iter().map(|t| t.to_dotted_regex()).collect()))
}

/// `text` matched literally in a PostgreSQL regular expression.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() && !matches!(c, '_' | '-' | '/' | ':' | '@') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn decode_config(name: &str, bytes: &[u8]) -> Result<GroupConfig> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(&format!("settings of group {name}"), e))
}

fn encode_config(config: &GroupConfig) -> Result<Vec<u8>> {
    serde_json::to_vec(config).map_err(|e| Error::Internal(format!("cannot encode group settings: {e}")))
}

/// Fetchers of a group waiting on this node, woken by what happens to the group here and,
/// through `LISTEN`, on every other node.
#[derive(Default)]
pub(crate) struct Wakeups {
    groups: Mutex<HashMap<i64, Arc<Notify>>>,
}

impl Wakeups {
    fn of(&self, group: i64) -> Arc<Notify> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.entry(group).or_default().clone()
    }

    pub(crate) fn wake(&self, group: i64) {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(notify) = groups.get(&group) {
            notify.notify_waiters();
        }
    }

    /// After a lost notification connection: anything may have happened.
    pub(crate) fn wake_all(&self) {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        for notify in groups.values() {
            notify.notify_waiters();
        }
    }
}

/// Matching events beyond a group's `read_to`, counted in chunks of the log, each once per
/// node and filter.
#[derive(Default)]
struct Unread {
    filter: GroupFilter,
    /// (after, up to, matching events in between), in log order.
    chunks: Vec<(Position, Position, u64)>,
}

/// What every engine of one store shares: the pool, the statements, the wakeups, the
/// sweeper.
pub(crate) struct GroupTables {
    pool: Pool,
    sql: Arc<GroupSql>,
    head: watch::Receiver<Position>,
    wakeups: Arc<Wakeups>,
    /// Groups whose fetchers on other nodes should look again, for the notifier task.
    notify: mpsc::UnboundedSender<i64>,
    /// Wakes this node's sweeper early (a lease shorter than its poll went out).
    sweep: Notify,
    poll: Duration,
    unread: tokio::sync::Mutex<HashMap<i64, Unread>>,
    seen: Mutex<HashMap<(i64, String), Instant>>,
}

/// The engines of one store, one per kind, and the tasks they share (the sweeper, the
/// notifier).
pub(crate) struct StoreGroups {
    engines: [Arc<PgGroups>; 3],
    stop: watch::Sender<bool>,
    tasks: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl StoreGroups {
    pub(crate) fn start(
        pool: Pool,
        store_sql: &Sql,
        head: watch::Receiver<Position>,
        wakeups: Arc<Wakeups>,
        poll: Duration,
        bus: Option<Arc<dyn ClusterBus>>,
    ) -> Self {
        let sql = Arc::new(GroupSql::new(store_sql));
        let (notify, notes) = mpsc::unbounded_channel();
        let tables = Arc::new(GroupTables {
            pool,
            sql,
            head,
            wakeups,
            notify,
            sweep: Notify::new(),
            poll,
            unread: tokio::sync::Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let notifier =
            tokio::spawn(notifier(tables.pool.clone(), tables.sql.clone(), bus, notes, stopped.clone()));
        let sweeper = tokio::spawn(sweep::run(tables.clone(), stopped));
        let engine = |kind| {
            let (closed, _) = watch::channel(false);
            Arc::new(PgGroups { tables: tables.clone(), kind, closed })
        };
        Self {
            engines: [engine(GroupKind::Group), engine(GroupKind::Consumer), engine(GroupKind::Webhook)],
            stop,
            tasks: tokio::sync::Mutex::new(vec![sweeper, notifier]),
        }
    }

    pub(crate) fn engine(&self, kind: GroupKind) -> Arc<PgGroups> {
        match kind {
            GroupKind::Group => self.engines[0].clone(),
            GroupKind::Consumer => self.engines[1].clone(),
            GroupKind::Webhook => self.engines[2].clone(),
        }
    }

    /// Stops the sweeper and ends every fetch in progress.
    pub(crate) async fn stop(&self) {
        self.stop.send_replace(true);
        for engine in &self.engines {
            engine.closed.send_replace(true);
        }
        for task in std::mem::take(&mut *self.tasks.lock().await) {
            let _ = task.await;
        }
    }
}

impl Drop for StoreGroups {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Ok(mut tasks) = self.tasks.try_lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

/// The groups of one kind in a PostgreSQL store.
pub(crate) struct PgGroups {
    tables: Arc<GroupTables>,
    kind: GroupKind,
    closed: watch::Sender<bool>,
}

/// A group as a statement finds it.
struct Found {
    id: i64,
    config: GroupConfig,
}

/// The metric handles of a group.
fn delivered(name: &GroupName) -> metrics::Counter {
    metrics::counter!("bifrost_group_delivered_total", "group" => name.to_string())
}

impl PgGroups {
    fn sql(&self) -> &GroupSql {
        &self.tables.sql
    }

    async fn client(&self) -> Result<Object> {
        self.tables.pool.get().await.map_err(pool_error)
    }

    async fn find(&self, client: &Object, name: &GroupName) -> Result<Found> {
        let stmt = client.prepare_cached(&self.sql().find).await.map_err(pg)?;
        let row = client.query_opt(&stmt, &[&self.kind.as_str(), &name.as_str()]).await.map_err(pg)?;
        let row = row.ok_or_else(|| Error::GroupNotFound(name.to_string()))?;
        Ok(Found {
            id: row.try_get(0).map_err(pg)?,
            config: decode_config(name.as_str(), row.try_get(1).map_err(pg)?)?,
        })
    }

    fn closed_error(&self) -> Error {
        Error::Unavailable("the consumer groups are closed".into())
    }

    /// Wakes this node's fetchers of `group` at once and, through `NOTIFY` right after (the
    /// change is committed), every other node's.
    fn wake(&self, group: i64) {
        self.tables.wake(group);
    }

    /// One attempt at leasing: feeds the group from the log if it needs it, leases what is
    /// ready and records the consumer, in one transaction. Returns the leases, or when the
    /// earliest waiting retry is due.
    async fn try_fetch(
        &self,
        name: &GroupName,
        group: &Found,
        fetch: &Fetch<'_>,
    ) -> Result<(Vec<Lease>, Option<Duration>)> {
        let sql = self.sql();
        let config = &group.config;
        let (category, types) = filter_params(&config.filter)?;
        let client = self.client().await?;
        let note_seen = self.note_seen(group.id, fetch.consumer);
        let nonce = random::next_u64();
        let (lock, feed, lease, seen) = futures::try_join!(
            client.prepare_cached(&sql.lock),
            client.prepare_cached(&sql.feed),
            client.prepare_cached(&sql.lease),
            client.prepare_cached(&sql.seen),
        )
        .map_err(pg)?;
        let max = i64::try_from(fetch.max).unwrap_or(i64::MAX);
        let max_in_flight = i64::try_from(config.max_in_flight).unwrap_or(i64::MAX);
        let ack_timeout = micros(config.ack_timeout);
        let nonce_param = nonce as i64;
        let buffer = buffer_limit(config);
        let feed_params: [&(dyn ToSql + Sync); 7] =
            [&group.id, &FEED_BUDGET, &buffer, &category, &types, &FEED_ROWS, &config.ordered];
        let lease_params: [&(dyn ToSql + Sync); 5] =
            [&group.id, &max, &max_in_flight, &ack_timeout, &nonce_param];
        let lock_params: [&(dyn ToSql + Sync); 1] = [&group.id];
        // One round trip, the commit included: the group's lock is held only while the
        // database works, never while this node waits for the answer.
        let pipeline = async {
            futures::try_join!(
                client.batch_execute(BEGIN_FETCH),
                client.execute(&lock, &lock_params),
                client.query(&feed, &feed_params),
                client.query(&lease, &lease_params),
                async {
                    if note_seen { client.execute(&seen, &[&group.id, &fetch.consumer]).await } else { Ok(0) }
                },
                client.batch_execute("COMMIT"),
            )
        };
        let mut rows = match pipeline.await {
            Ok((_, _, _, rows, _, _)) => rows,
            Err(e) => {
                // The session may be left inside the failed transaction: it is not pooled again.
                drop(Object::take(client));
                return Err(pg(e));
            }
        };
        if fetch.per_stream > 1 && !rows.is_empty() && rows.len() < fetch.max {
            // The first rows are leased (their streams are busy to every other fetch): the
            // rows right after them go out with them.
            let streams: Vec<String> =
                rows.iter().map(|r| r.try_get::<_, String>(13)).collect::<Result<_, _>>().map_err(pg)?;
            let per_stream = i64::try_from(fetch.per_stream - 1).unwrap_or(i64::MAX);
            let room = i64::try_from(fetch.max - rows.len()).unwrap_or(i64::MAX);
            let followers = client.prepare_cached(&sql.lease_followers).await.map_err(pg)?;
            let more = client
                .query(&followers, &[&group.id, &streams, &per_stream, &ack_timeout, &nonce_param, &room])
                .await
                .map_err(pg)?;
            rows.extend(more);
            rows.sort_by_key(|r| r.try_get::<_, i64>(12).unwrap_or(0));
        }
        let (leases, gone) = leases_of(&rows, nonce)?;
        if !gone.is_empty() {
            // Their events were deleted since: nothing to deliver, nothing to wait for.
            let drop = client.prepare_cached(&sql.drop_messages).await.map_err(pg)?;
            client.execute(&drop, &[&group.id, &gone]).await.map_err(pg)?;
        }
        let next_due = if leases.is_empty() {
            let next = client.prepare_cached(&sql.next_due).await.map_err(pg)?;
            let row = client.query_one(&next, &[&group.id]).await.map_err(pg)?;
            row.try_get::<_, Option<i64>>(0)
                .map_err(pg)?
                .map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0)))
        } else {
            None
        };
        if !leases.is_empty() {
            delivered(name).increment(leases.len() as u64);
            if config.ack_timeout < self.tables.poll {
                self.tables.sweep.notify_one();
            }
        }
        Ok((leases, next_due))
    }

    /// Whether this fetch should write the consumer's `last_seen` (at most once a second
    /// per consumer and node).
    fn note_seen(&self, group: i64, consumer: &str) -> bool {
        let mut seen = self.tables.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match seen.get_mut(&(group, consumer.to_owned())) {
            Some(at) if now.duration_since(*at) < SEEN_EVERY => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                if seen.len() > 100_000 {
                    seen.clear();
                }
                seen.insert((group, consumer.to_owned()), now);
                true
            }
        }
    }

    async fn ack(&self, name: &GroupName, leases: &[LeaseToken]) -> Result<Settled> {
        let client = self.client().await?;
        let group = self.find(&client, name).await?;
        let (positions, nonces) = token_params(leases);
        let stmt = client.prepare_cached(&self.sql().ack).await.map_err(pg)?;
        let rows = client.query(&stmt, &[&group.id, &positions, &nonces]).await.map_err(pg)?;
        let histogram = metrics::histogram!("bifrost_group_ack_seconds", "group" => name.to_string());
        let mut acked = std::collections::HashSet::with_capacity(rows.len());
        for row in &rows {
            acked.insert(row.try_get::<_, i64>(0).map_err(pg)?);
            let held_for: i64 = row.try_get(1).map_err(pg)?;
            histogram.record(held_for.max(0) as f64 / 1e6);
        }
        metrics::counter!("bifrost_group_acked_total", "group" => name.to_string())
            .increment(rows.len() as u64);
        if !rows.is_empty() {
            self.wake(group.id);
        }
        Ok(settled(leases, |t| acked.contains(&(t.high() as i64))))
    }

    async fn nack(
        &self,
        name: &GroupName,
        leases: &[LeaseToken],
        action: NackAction,
        reason: Option<&str>,
    ) -> Result<Settled> {
        let sql = self.sql();
        let mut client = self.client().await?;
        let group = self.find(&client, name).await?;
        let (positions, nonces) = token_params(leases);
        let tx = client.transaction().await.map_err(pg)?;
        let held = tx.prepare_cached(&sql.held).await.map_err(pg)?;
        let rows = tx.query(&held, &[&group.id, &positions, &nonces]).await.map_err(pg)?;
        let reason = reason.unwrap_or(NACKED);
        // A release hands the rows back with their failures as they were.
        let counted = u32::from(!matches!(action, NackAction::Release(_)));
        let mut held_positions = std::collections::HashSet::with_capacity(rows.len());
        let mut failed = Vec::with_capacity(rows.len());
        for row in &rows {
            let position: i64 = row.try_get(0).map_err(pg)?;
            let failures: i32 = row.try_get(1).map_err(pg)?;
            held_positions.insert(position);
            failed.push((position, u32::try_from(failures).unwrap_or(0) + counted));
        }
        // One delay for the whole call: a batch that failed together comes back together.
        let most = failed.iter().map(|f| f.1).max().unwrap_or(1);
        let delay = match action {
            NackAction::Retry(Some(delay)) | NackAction::Release(delay) => delay,
            _ => group.config.backoff.delay(most),
        };
        let park_all = action == NackAction::Park;
        self.fail(&tx, &group, &failed, park_all, delay, reason).await?;
        tx.commit().await.map_err(pg)?;
        if !rows.is_empty() {
            self.wake(group.id);
        }
        Ok(settled(leases, |t| held_positions.contains(&(t.high() as i64))))
    }

    /// Failed deliveries (position, failures counting this one): parked when `park_all` or
    /// at the last attempt, else waiting `delay`. Wakes every node's fetchers at commit.
    async fn fail(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        group: &Found,
        failed: &[(i64, u32)],
        park_all: bool,
        delay: Duration,
        reason: &str,
    ) -> Result<()> {
        fail_rows(tx, self.sql(), group.id, &group.config, failed, park_all, delay, reason).await
    }

    async fn unread(
        &self,
        group: i64,
        config: &GroupConfig,
        read_to: Position,
        head: Position,
    ) -> Result<u64> {
        let mut all = self.tables.unread.lock().await;
        let unread = all.entry(group).or_default();
        if unread.filter != config.filter {
            *unread = Unread { filter: config.filter.clone(), chunks: Vec::new() };
        }
        unread.chunks.retain(|&(_, to, _)| to > read_to);
        let (category, types) = filter_params(&config.filter)?;
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql().count_events).await.map_err(pg)?;
        let count = async |after: Position, upto: Position| -> Result<u64> {
            let (after, upto) = (after as i64, upto as i64);
            let row = client.query_one(&stmt, &[&after, &upto, &category, &types]).await.map_err(pg)?;
            u64_from(row.try_get(0).map_err(pg)?, "count")
        };
        // The chunk `read_to` is inside: count what is left of it again.
        if let Some(first) = unread.chunks.first_mut()
            && first.0 < read_to
        {
            *first = (read_to, first.1, count(read_to, first.1).await?);
        }
        let mut after = unread.chunks.last().map_or(read_to, |c| c.1).max(read_to);
        while after < head {
            let upto = head.min(after + COUNT_CHUNK);
            unread.chunks.push((after, upto, count(after, upto).await?));
            after = upto;
        }
        Ok(unread.chunks.iter().map(|c| c.2).sum())
    }
}

impl GroupTables {
    /// Wakes this node's fetchers of `group`, and has the notifier tell the other nodes.
    pub(crate) fn wake(&self, group: i64) {
        self.wakeups.wake(group);
        let _ = self.notify.send(group);
    }
}

/// Sends the other nodes their wake-ups: whatever groups were changed while the previous
/// `NOTIFY` went out, each once, in one statement outside any writing transaction — or, with
/// an external cluster bus, in one message on it. A lost one only delays a fetch until the
/// fallback poll.
async fn notifier(
    pool: Pool,
    sql: Arc<GroupSql>,
    bus: Option<Arc<dyn ClusterBus>>,
    mut notes: mpsc::UnboundedReceiver<i64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            note = notes.recv() => match note {
                Some(group) => group,
                None => return,
            },
            _ = stop.changed() => return,
        };
        let mut groups = vec![first];
        while let Ok(group) = notes.try_recv() {
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        let sent = async {
            if let Some(bus) = &bus {
                return bus.publish(GROUPS_TOPIC, groups_payload(&groups)).await;
            }
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client.prepare_cached(&sql.notify).await.map_err(pg)?;
            client.query(&stmt, &[&sql.channel, &groups]).await.map_err(pg).map(drop)
        };
        if let Err(e) = sent.await {
            tracing::debug!(error = %e, "could not notify the other nodes of a group change");
        }
    }
}

/// Fails rows of one group: see [`PgGroups::fail`]; the sweeper uses it for timeouts.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fail_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &GroupSql,
    group: i64,
    config: &GroupConfig,
    failed: &[(i64, u32)],
    park_all: bool,
    delay: Duration,
    reason: &str,
) -> Result<()> {
    let (mut retry_pos, mut retry_failures, mut retry_delays, mut retry_reasons) =
        (vec![], vec![], vec![], vec![]);
    let (mut park_pos, mut park_attempts, mut park_reasons) = (vec![], vec![], vec![]);
    for &(position, failures) in failed {
        let attempts = i32::try_from(failures).unwrap_or(i32::MAX);
        if park_all || failures >= config.max_attempts {
            park_pos.push(position);
            park_attempts.push(attempts);
            park_reasons.push(reason);
        } else {
            retry_pos.push(position);
            retry_failures.push(attempts);
            retry_delays.push(micros(delay));
            retry_reasons.push(reason);
        }
    }
    if !retry_pos.is_empty() {
        let stmt = tx.prepare_cached(&sql.retry).await.map_err(pg)?;
        tx.execute(&stmt, &[&group, &retry_pos, &retry_failures, &retry_delays, &retry_reasons])
            .await
            .map_err(pg)?;
    }
    if !park_pos.is_empty() {
        let stmt = tx.prepare_cached(&sql.park).await.map_err(pg)?;
        tx.execute(&stmt, &[&group, &park_pos, &park_attempts, &park_reasons]).await.map_err(pg)?;
    }
    Ok(())
}

/// Tokens as the statements take them: positions and nonces.
fn token_params(leases: &[LeaseToken]) -> (Vec<i64>, Vec<i64>) {
    leases.iter().map(|t| (t.high() as i64, t.low() as i64)).unzip()
}

/// The answer to a settle: how many of `leases` were held, and the others in order.
fn settled(leases: &[LeaseToken], held: impl Fn(&LeaseToken) -> bool) -> Settled {
    let mut out = Settled::default();
    let mut counted = std::collections::HashSet::new();
    for token in leases {
        if held(token) && counted.insert(*token) {
            out.count += 1;
        } else {
            out.expired.push(*token);
        }
    }
    out
}

/// Leases from the rows of a lease statement (event columns, failures, position, stream),
/// and the positions whose event is gone.
fn leases_of(rows: &[Row], nonce: u64) -> Result<(Vec<Lease>, Vec<i64>)> {
    let mut names = NameCache::default();
    let mut leases = Vec::with_capacity(rows.len());
    let mut gone = Vec::new();
    for row in rows {
        let failures: i32 = row.try_get(11).map_err(pg)?;
        let position: i64 = row.try_get(12).map_err(pg)?;
        if row.try_get::<_, Option<i64>>(0).map_err(pg)?.is_none() {
            gone.push(position);
            continue;
        }
        let event = event_from_row(row, &mut names)?;
        let attempt = u32::try_from(failures).map_err(|e| corrupt("failure count", e))? + 1;
        leases.push(Lease { token: LeaseToken::new(u64_from(position, "position")?, nonce), attempt, event });
    }
    Ok((leases, gone))
}

#[async_trait]
impl GroupEngine for PgGroups {
    async fn put(&self, name: &GroupName, config: GroupConfig) -> Result<Put> {
        config.validate()?;
        let sql = self.sql();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let lock_row = tx.prepare_cached(&sql.lock_row).await.map_err(pg)?;
        let row = tx.query_opt(&lock_row, &[&self.kind.as_str(), &name.as_str()]).await.map_err(pg)?;
        let Some(row) = row else {
            // The database's head, not this node's view of it (another node may have
            // appended a moment ago).
            let head_stmt = tx.prepare_cached(&sql.head).await.map_err(pg)?;
            let head =
                u64_from(tx.query_one(&head_stmt, &[]).await.map_err(pg)?.try_get(0).map_err(pg)?, "head")?;
            let start = i64::try_from(config.start_position(head)?).unwrap_or(i64::MAX);
            let create = tx.prepare_cached(&sql.create).await.map_err(pg)?;
            let created = tx
                .query_opt(&create, &[&self.kind.as_str(), &name.as_str(), &encode_config(&config)?, &start])
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            return match created {
                Some(_) => Ok(Put::Created),
                // Created meanwhile through another node: this put is an update of it.
                None => Box::pin(self.put(name, config)).await,
            };
        };
        let id: i64 = row.try_get(0).map_err(pg)?;
        let old = decode_config(name.as_str(), row.try_get(1).map_err(pg)?)?;
        let read_to: i64 = row.try_get(2).map_err(pg)?;
        let config = GroupConfig { start: old.start, ..config };
        if old.filter != config.filter {
            // From the checkpoint on: what no longer matches goes, what newly matches above
            // the checkpoint (and up to what was read) comes; fetches wait meanwhile.
            let (new_category, new_types) = filter_params(&config.filter)?;
            let (old_category, old_types) = filter_params(&old.filter)?;
            let (lock, checkpoint, drop_unmatched, add_matched) = futures::try_join!(
                tx.prepare_cached(&sql.lock),
                tx.prepare_cached(&sql.checkpoint),
                tx.prepare_cached(&sql.drop_unmatched),
                tx.prepare_cached(&sql.add_matched),
            )
            .map_err(pg)?;
            tx.execute(&lock, &[&id]).await.map_err(pg)?;
            let checkpoint: i64 =
                tx.query_one(&checkpoint, &[&id]).await.map_err(pg)?.try_get(0).map_err(pg)?;
            tx.execute(&drop_unmatched, &[&id, &new_category, &new_types]).await.map_err(pg)?;
            let params: [&(dyn ToSql + Sync); 8] = [
                &id,
                &checkpoint,
                &read_to,
                &new_category,
                &new_types,
                &old_category,
                &old_types,
                &config.ordered,
            ];
            tx.execute(&add_matched, &params).await.map_err(pg)?;
        }
        if old.ordered != config.ordered {
            // Under the group's lock, like a fetch: no lease is taken from half-changed queues.
            let (lock, requeue) =
                futures::try_join!(tx.prepare_cached(&sql.lock), tx.prepare_cached(&sql.requeue))
                    .map_err(pg)?;
            tx.execute(&lock, &[&id]).await.map_err(pg)?;
            tx.execute(&requeue, &[&id, &config.ordered]).await.map_err(pg)?;
        }
        let set_config = tx.prepare_cached(&sql.set_config).await.map_err(pg)?;
        tx.execute(&set_config, &[&id, &encode_config(&config)?]).await.map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        self.wake(id);
        Ok(Put::Updated)
    }

    async fn status(&self, name: &GroupName) -> Result<GroupStatus> {
        let client = self.client().await?;
        let (stmt, consumers) = futures::try_join!(
            client.prepare_cached(&self.sql().status),
            client.prepare_cached(&self.sql().consumers)
        )
        .map_err(pg)?;
        let row = client.query_opt(&stmt, &[&self.kind.as_str(), &name.as_str()]).await.map_err(pg)?;
        let row = row.ok_or_else(|| Error::GroupNotFound(name.to_string()))?;
        let get = |i: usize| -> Result<i64> { row.try_get::<_, i64>(i).map_err(pg) };
        let id = get(0)?;
        let config = decode_config(name.as_str(), row.try_get(1).map_err(pg)?)?;
        let read_to = u64_from(get(3)?, "read_to")?;
        let first_unsettled: Option<i64> = row.try_get(6).map_err(pg)?;
        let checkpoint = match first_unsettled {
            Some(p) => u64_from(p - 1, "position")?,
            None => read_to,
        };
        let head = u64_from(get(11)?, "head")?;
        let buffered = u64_from(get(7)?, "count")?;
        let unread = self.unread(id, &config, read_to, head).await?;
        let consumers = client
            .query(&consumers, &[&id])
            .await
            .map_err(pg)?
            .iter()
            .map(|r| Ok((r.try_get(0).map_err(pg)?, Timestamp::from_micros(r.try_get(1).map_err(pg)?))))
            .collect::<Result<Vec<_>>>()?;
        Ok(GroupStatus {
            name: name.clone(),
            created_at: Timestamp::from_micros(get(2)?),
            checkpoint,
            lag: buffered + unread,
            in_flight: u64_from(get(8)?, "count")?,
            waiting: u64_from(get(9)?, "count")?,
            parked: u64_from(get(10)?, "count")?,
            redeliveries: u64_from(get(4)?, "count")?,
            timeouts: u64_from(get(5)?, "count")?,
            consumers,
            config,
        })
    }

    async fn list(&self) -> Result<Vec<GroupName>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql().list).await.map_err(pg)?;
        let rows = client.query(&stmt, &[&self.kind.as_str()]).await.map_err(pg)?;
        rows.iter()
            .map(|r| {
                let name: &str = r.try_get(0).map_err(pg)?;
                GroupName::new(name).map_err(|e| corrupt("group name", e))
            })
            .collect()
    }

    async fn delete(&self, name: &GroupName) -> Result<()> {
        let sql = self.sql();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let (find, lock, delete) = futures::try_join!(
            tx.prepare_cached(&sql.find_for_update),
            tx.prepare_cached(&sql.lock),
            tx.prepare_cached(&sql.delete),
        )
        .map_err(pg)?;
        let row = tx.query_opt(&find, &[&self.kind.as_str(), &name.as_str()]).await.map_err(pg)?;
        let id: i64 = row.ok_or_else(|| Error::GroupNotFound(name.to_string()))?.try_get(0).map_err(pg)?;
        // After any fetch of it in progress: nothing of the group is fed or leased again.
        tx.execute(&lock, &[&id]).await.map_err(pg)?;
        // Fetchers of the group, here and on other nodes, find it gone.
        tx.query(&delete, &[&id]).await.map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        self.wake(id);
        Ok(())
    }

    async fn fetch(&self, name: &GroupName, fetch: Fetch<'_>) -> Result<Vec<Lease>> {
        let deadline = tokio::time::Instant::now() + fetch.wait;
        let mut head = self.tables.head.clone();
        let mut closed = self.closed.subscribe();
        loop {
            if *closed.borrow_and_update() {
                return Err(self.closed_error());
            }
            let group = {
                let client = self.client().await?;
                self.find(&client, name).await?
            };
            // Listen before looking, so a wake-up between the look and the wait is not lost.
            let wakeup = self.tables.wakeups.of(group.id);
            let woken = wakeup.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            head.borrow_and_update();
            let (leases, next_due) = self.try_fetch(name, &group, &fetch).await?;
            if !leases.is_empty() || fetch.max == 0 {
                return Ok(leases);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(leases);
            }
            let mut until = deadline.min(now + self.tables.poll);
            if let Some(due) = next_due {
                until = until.min(now + due);
            }
            tokio::select! {
                () = &mut woken => {}
                changed = head.changed() => if changed.is_err() { return Err(self.closed_error()) },
                () = tokio::time::sleep_until(until) => {}
                _ = closed.changed() => {}
            }
        }
    }

    async fn settle(
        &self,
        name: &GroupName,
        leases: &[LeaseToken],
        verdict: Verdict<'_>,
        _deferred: bool,
    ) -> Result<Settled> {
        // Every verdict is written before the answer: rows are the only record of a lease.
        match verdict {
            Verdict::Ack => self.ack(name, leases).await,
            Verdict::Nack(action, reason) => self.nack(name, leases, action, reason).await,
        }
    }

    async fn dead_letters(
        &self,
        name: &GroupName,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>> {
        let client = self.client().await?;
        let group = self.find(&client, name).await?;
        let stmt = client.prepare_cached(&self.sql().dead_letters).await.map_err(pg)?;
        let after = i64::try_from(after.unwrap_or(0)).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client.query(&stmt, &[&group.id, &after, &limit]).await.map_err(pg)?;
        let mut names = NameCache::default();
        rows.iter()
            .map(|row| {
                let get = |e: tokio_postgres::Error| corrupt("dead letter", e);
                let event = match row.try_get::<_, Option<i64>>(0).map_err(get)? {
                    Some(_) => Some(event_from_row(row, &mut names)?),
                    None => None,
                };
                let dead_letter = DeadLetter {
                    event_id: row.try_get(11).map_err(get)?,
                    position: u64_from(row.try_get(12).map_err(get)?, "position")?,
                    stream: row.try_get(13).map_err(get)?,
                    event_type: row.try_get(14).map_err(get)?,
                    attempts: u32::try_from(row.try_get::<_, i32>(15).map_err(get)?)
                        .map_err(|e| corrupt("attempts", e))?,
                    reason: row.try_get(16).map_err(get)?,
                    parked_at: Timestamp::from_micros(row.try_get(17).map_err(get)?),
                };
                Ok(DeadLetterEntry { dead_letter, event })
            })
            .collect()
    }

    async fn replay(&self, name: &GroupName, selection: ReplaySelection) -> Result<usize> {
        let sql = self.sql();
        let mut client = self.client().await?;
        let group = self.find(&client, name).await?;
        let (ids, up_to): (Option<Vec<EventId>>, Option<i64>) = match selection {
            ReplaySelection::All => (None, None),
            ReplaySelection::Ids(ids) => (Some(ids), None),
            ReplaySelection::UpTo(p) => (None, Some(i64::try_from(p).unwrap_or(i64::MAX))),
        };
        let tx = client.transaction().await.map_err(pg)?;
        let (lock, checkpoint, replay) = futures::try_join!(
            tx.prepare_cached(&sql.lock),
            tx.prepare_cached(&sql.checkpoint),
            tx.prepare_cached(&sql.replay),
        )
        .map_err(pg)?;
        tx.execute(&lock, &[&group.id]).await.map_err(pg)?;
        let checkpoint: i64 =
            tx.query_one(&checkpoint, &[&group.id]).await.map_err(pg)?.try_get(0).map_err(pg)?;
        let ordered = group.config.ordered;
        let replayed =
            tx.query(&replay, &[&group.id, &checkpoint, &ids, &up_to, &ordered]).await.map_err(pg)?.len();
        tx.commit().await.map_err(pg)?;
        self.wake(group.id);
        Ok(replayed)
    }

    async fn discard(&self, name: &GroupName, id: EventId) -> Result<bool> {
        let client = self.client().await?;
        let group = self.find(&client, name).await?;
        let stmt = client.prepare_cached(&self.sql().discard).await.map_err(pg)?;
        Ok(client.execute(&stmt, &[&group.id, &id]).await.map_err(pg)? > 0)
    }

    /// Ends the fetches in progress on this node; the groups live on in the database.
    async fn close(&self) -> Result<()> {
        self.closed.send_replace(true);
        Ok(())
    }
}
