//! One consumer group at work in this process: the [`Ledger`] in memory, kept current by
//! three tasks (`tasks.rs`: a reader that fills it from the log, a timer that expires
//! leases and releases retries, a persister that writes its cursor and new dead letters to
//! the store's state space, coalescing whatever changed while the previous write ran), its
//! dead-letter queue (`dead_letters.rs`) and its lag (`lag.rs`).

mod dead_letters;
mod lag;
mod tasks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bifrost_core::group::{
    DeadLetter, Fetch, GroupConfig, GroupKind, GroupName, GroupStatus, Lease, LeaseToken, Settled, Verdict,
    random,
};
use bifrost_core::{Error, EventStore, LogFilter, Result, StateChange, StateStore, Timestamp};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::ledger::{Cursor, Ledger, Moment};

use self::lag::UnreadCount;

/// Largest page the reader asks the log for.
const READ_PAGE: usize = 1000;
/// Least number of events a group buffers ahead of its consumers.
const MIN_BUFFER: usize = 4096;
/// How long a change that nobody waits for (the checkpoint passing unmatched events, a
/// lease timing out, an in-process ack) may sit before it is written.
const LAZY_PERSIST: Duration = Duration::from_millis(200);
/// Longest a fetch waits for the reader to take in events appended before the call.
const CATCH_UP: Duration = Duration::from_secs(1);
/// Consumers a group remembers for its status.
const MAX_CONSUMERS_SEEN: usize = 1024;

/// Events a group reads ahead of its consumers.
fn buffer_limit(config: &GroupConfig) -> usize {
    (config.max_in_flight * 2).max(MIN_BUFFER)
}

/// Where a group keeps its cursor and dead letters in the state space (see
/// [`crate::groups`] for the group list).
#[derive(Clone, Debug)]
pub(crate) struct Scopes {
    pub(crate) cursor: String,
    pub(crate) dead_letters: String,
}

impl Scopes {
    /// A consumer group of the server's API.
    pub(crate) fn group(name: &GroupName) -> Self {
        Self { cursor: format!("group/{name}"), dead_letters: format!("dlq/{name}") }
    }

    /// A durable consumer of the in-process bus, apart from the server's groups.
    pub(crate) fn consumer(name: &GroupName) -> Self {
        Self { cursor: format!("consumer/{name}"), dead_letters: format!("consumer-dlq/{name}") }
    }

    /// A webhook endpoint's delivery.
    pub(crate) fn webhook(name: &GroupName) -> Self {
        Self { cursor: format!("webhook/{name}"), dead_letters: format!("webhook-dlq/{name}") }
    }

    /// The groups of `kind` named `name`.
    pub(crate) fn of(kind: GroupKind, name: &GroupName) -> Self {
        match kind {
            GroupKind::Group => Self::group(name),
            GroupKind::Consumer => Self::consumer(name),
            GroupKind::Webhook => Self::webhook(name),
        }
    }

    /// The write that fixes a new group's start point, so a restart before the group's
    /// first own write does not move it.
    pub(crate) async fn start(&self, store: &dyn EventStore, config: &GroupConfig) -> Result<StateChange> {
        let cursor =
            Cursor { checkpoint: config.start_position(*store.head().borrow())?, ..Cursor::default() };
        Ok(StateChange::put(self.cursor.clone(), "cursor", encode(&cursor)?))
    }
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(format!("cannot encode consumer-group state: {e}")))
}

/// Reads state this engine wrote; anything else is corrupt.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    group: &GroupName,
    what: &str,
    bytes: &[u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::corrupt(format!("group {group}: unreadable {what}"), e))
}

struct Inner {
    ledger: Ledger,
    config: GroupConfig,
    /// When the timer task will look next (`None`: it is not sleeping on a deadline), so
    /// a new lease wakes it only when it expires earlier than that.
    timer_at: Option<Instant>,
    consumers: HashMap<String, Timestamp>,
}

/// How far the group's state is written.
#[derive(Clone, Debug, Default)]
struct Flushed {
    /// Written: survives a crash of the process.
    generation: u64,
    /// Written and flushed to stable storage: survives a crash of the machine too.
    flushed: u64,
    /// The newest generation whose write failed, and why.
    failed: Option<(u64, String)>,
}

/// How durable a change must be before a caller is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Surviving the process: a recorded lease (whose loss in a power cut only leaves an
    /// attempt uncounted).
    Process,
    /// Surviving the machine: an ack, a nack, a park.
    Machine,
}

/// The group's metric handles, resolved once instead of per call.
struct GroupMetrics {
    delivered: metrics::Counter,
    acked: metrics::Counter,
    ack_seconds: metrics::Histogram,
}

impl GroupMetrics {
    fn new(name: &GroupName) -> Self {
        let group = name.to_string();
        Self {
            delivered: metrics::counter!("bifrost_group_delivered_total", "group" => group.clone()),
            acked: metrics::counter!("bifrost_group_acked_total", "group" => group.clone()),
            ack_seconds: metrics::histogram!("bifrost_group_ack_seconds", "group" => group),
        }
    }
}

struct Shared {
    name: GroupName,
    scopes: Scopes,
    created_at: Timestamp,
    metrics: GroupMetrics,
    store: Arc<dyn EventStore>,
    state: Arc<dyn StateStore>,
    filter: LogFilter,
    inner: Mutex<Inner>,
    /// Serialises state writes, so a newer cursor is never overwritten by an older one.
    persist_lock: tokio::sync::Mutex<()>,
    fetchers: Notify,
    reader: Notify,
    timer: Notify,
    persist_now: Notify,
    persist_later: Notify,
    flushed: watch::Sender<Flushed>,
    /// The newest generation a caller waits to see flushed.
    flush_wanted: std::sync::atomic::AtomicU64,
    closed: watch::Sender<bool>,
    unread: tokio::sync::Mutex<UnreadCount>,
}

/// A running consumer group. Cheap to clone; [`ConsumerGroup::close`] stops it, and so
/// does dropping the last clone (without the final write, as a crash would).
#[derive(Clone)]
pub struct ConsumerGroup {
    shared: Arc<Shared>,
    tasks: Arc<Tasks>,
}

/// The group's background tasks, stopped when the last handle goes.
struct Tasks {
    closed: watch::Sender<bool>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.closed.send_replace(true);
        for task in self.handles.get_mut().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for ConsumerGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerGroup").field("name", &self.shared.name).finish_non_exhaustive()
    }
}

impl ConsumerGroup {
    /// Starts a group from its stored cursor, or from `config.start` when it has none.
    /// `store` is read, `state` keeps the cursor and dead letters (usually the same store).
    /// One process at a time may run a group of a given state space.
    pub async fn open(
        name: GroupName,
        config: GroupConfig,
        store: Arc<dyn EventStore>,
        state: Arc<dyn StateStore>,
    ) -> Result<Self> {
        let scopes = Scopes::group(&name);
        Self::open_in(name, scopes, config, store, state, Timestamp::now()).await
    }

    /// [`open`](Self::open) with the cursor and dead letters under other scopes.
    pub(crate) async fn open_in(
        name: GroupName,
        scopes: Scopes,
        config: GroupConfig,
        store: Arc<dyn EventStore>,
        state: Arc<dyn StateStore>,
        created_at: Timestamp,
    ) -> Result<Self> {
        config.validate()?;
        let filter = config.filter.to_log_filter()?;
        let cursor = match state.read_state(&scopes.cursor, "cursor").await? {
            Some(bytes) => decode::<Cursor>(&name, "cursor", &bytes)?,
            None => {
                Cursor { checkpoint: config.start_position(*store.head().borrow())?, ..Cursor::default() }
            }
        };
        let replays = cursor.replays.clone();
        let parked = dead_letters::count(state.as_ref(), &scopes.dead_letters).await?;
        let (flushed, _) = watch::channel(Flushed::default());
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            metrics: GroupMetrics::new(&name),
            name,
            scopes,
            created_at,
            store,
            state,
            filter,
            inner: Mutex::new(Inner {
                ledger: Ledger::new(cursor, parked, random::next_u64(), config.ordered),
                config,
                timer_at: None,
                consumers: HashMap::new(),
            }),
            persist_lock: tokio::sync::Mutex::new(()),
            fetchers: Notify::new(),
            reader: Notify::new(),
            timer: Notify::new(),
            persist_now: Notify::new(),
            persist_later: Notify::new(),
            flushed,
            flush_wanted: std::sync::atomic::AtomicU64::new(0),
            closed,
            unread: tokio::sync::Mutex::new(UnreadCount::default()),
        });
        // Replays an earlier run had not finished come back first.
        for (_, id, failures) in replays {
            if let Some(event) = shared.store.event(id).await? {
                shared.lock().ledger.admit_replay(event, failures);
            }
        }
        let tasks = vec![
            tokio::spawn(tasks::read_loop(shared.clone())),
            tokio::spawn(tasks::timer_loop(shared.clone())),
            tokio::spawn(tasks::persist_loop(shared.clone())),
        ];
        let tasks = Arc::new(Tasks { closed: shared.closed.clone(), handles: Mutex::new(tasks) });
        Ok(Self { shared, tasks })
    }

    pub fn name(&self) -> &GroupName {
        &self.shared.name
    }

    pub fn config(&self) -> GroupConfig {
        self.shared.lock().config.clone()
    }

    pub fn created_at(&self) -> Timestamp {
        self.shared.created_at
    }

    /// Applies new settings that do not change which events the group reads (those need a
    /// new group run, see [`crate::groups`]). Leases already out keep their deadline.
    pub(crate) fn set_config(&self, config: GroupConfig) {
        self.shared.lock().config = config;
        self.shared.fetchers.notify_waiters();
    }

    /// Leases events, waiting up to `fetch.wait` for the first one. A fetch that is not
    /// deferred returns once its leases are recorded in the store.
    pub async fn fetch(&self, fetch: Fetch<'_>) -> Result<Vec<Lease>> {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + fetch.wait;
        // Events appended before the call count as there even if the reader has not taken
        // them in yet: a fetch waits (a little) for it rather than answer empty.
        let head_at_call = *shared.store.head().borrow();
        let catch_up = tokio::time::Instant::now() + CATCH_UP;
        let mut closed = shared.closed.subscribe();
        loop {
            let notified = shared.fetchers.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if *closed.borrow_and_update() {
                return Err(Error::Unavailable(format!("consumer group {} is closed", shared.name)));
            }
            let (leased, generation, wake_timer, behind) = {
                let mut inner = shared.lock();
                let inner = &mut *inner;
                remember_consumer(&mut inner.consumers, fetch.consumer);
                let now = Instant::now();
                let leased =
                    inner.ledger.lease(fetch.max, fetch.per_stream, now, &inner.config, fetch.deferred);
                let expires = now + inner.config.ack_timeout;
                let room = inner.ledger.buffered() < buffer_limit(&inner.config);
                let behind = room && inner.ledger.read_to() < head_at_call;
                (leased, inner.ledger.generation, inner.timer_at.is_none_or(|at| expires < at), behind)
            };
            if !leased.leases.is_empty() {
                if wake_timer {
                    shared.timer.notify_one();
                }
                if leased.record {
                    if let Err(e) = shared.durable(generation, Durability::Process).await {
                        // Not handed out: put them back as they were, their attempt uncounted.
                        let tokens: Vec<LeaseToken> = leased.leases.iter().map(|l| l.token).collect();
                        shared.lock().ledger.unlease(&tokens);
                        shared.fetchers.notify_waiters();
                        return Err(e);
                    }
                } else {
                    shared.persist_later.notify_one();
                }
                shared.metrics.delivered.increment(leased.leases.len() as u64);
                return Ok(leased.leases);
            }
            if fetch.max == 0 {
                return Ok(Vec::new());
            }
            let until = if behind { deadline.max(catch_up) } else { deadline };
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => return Ok(Vec::new()),
                _ = closed.changed() => {}
            }
        }
    }

    /// Acks or nacks leases. With `deferred` false it returns once the verdict is written;
    /// with `deferred` true (an in-process consumer, which accepts a redelivery after a
    /// crash) it returns at once and the verdict is written with the next batch.
    pub async fn settle(
        &self,
        leases: &[LeaseToken],
        verdict: Verdict<'_>,
        deferred: bool,
    ) -> Result<Settled> {
        let shared = &self.shared;
        let (count, expired, generation) = {
            let mut inner = shared.lock();
            let inner = &mut *inner;
            let (count, expired) = match verdict {
                Verdict::Ack => {
                    let (acked, expired) = inner.ledger.ack(leases);
                    let now = Instant::now();
                    for since in &acked {
                        shared.metrics.ack_seconds.record(now.duration_since(*since).as_secs_f64());
                    }
                    shared.metrics.acked.increment(acked.len() as u64);
                    (acked.len(), expired)
                }
                Verdict::Nack(action, reason) => {
                    inner.ledger.nack(leases, action, reason, Moment::now(), &inner.config)
                }
            };
            (count, expired, inner.ledger.generation)
        };
        if count > 0 {
            if matches!(verdict, Verdict::Nack(..)) {
                shared.timer.notify_one();
            }
            shared.reader.notify_one();
            shared.fetchers.notify_waiters();
            if deferred {
                shared.persist_later.notify_one();
            } else {
                shared.durable(generation, Durability::Machine).await?;
            }
        }
        Ok(Settled { count, expired })
    }

    /// The group's figures. Counting the lag reads the part of the log the group has not
    /// reached yet (each event once over the group's life, not once per call).
    pub async fn status(&self) -> Result<GroupStatus> {
        let (mut status, read_to, settled_ahead, unsettled) = {
            let inner = self.shared.lock();
            let ledger = &inner.ledger;
            let counts = ledger.counts();
            let mut consumers: Vec<_> = inner.consumers.iter().map(|(n, t)| (n.clone(), *t)).collect();
            consumers.sort();
            let status = GroupStatus {
                name: self.shared.name.clone(),
                config: inner.config.clone(),
                created_at: self.shared.created_at,
                checkpoint: ledger.checkpoint(),
                lag: 0,
                in_flight: counts.in_flight as u64,
                waiting: counts.waiting as u64,
                parked: ledger.parked,
                redeliveries: ledger.redeliveries,
                timeouts: ledger.timeouts,
                consumers,
            };
            (status, ledger.read_to(), ledger.settled_ahead() as u64, counts.unsettled as u64)
        };
        let unread = self.shared.count_unread(read_to).await?;
        status.lag = (unsettled + unread).saturating_sub(settled_ahead);
        Ok(status)
    }

    /// Whether both handles are of the same run of the group.
    pub(crate) fn same_run(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Stops the group's tasks and writes what is not written yet. Fetches in progress
    /// return an error; leases still out count as failed attempts for the next run.
    pub async fn close(&self) -> Result<()> {
        self.stop(false).await
    }

    /// [`close`](Self::close), for a new run that takes over at once (a changed filter):
    /// leases still out are put back, their attempt uncounted.
    pub(crate) async fn close_releasing(&self) -> Result<()> {
        self.stop(true).await
    }

    async fn stop(&self, release: bool) -> Result<()> {
        self.shared.closed.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        if release {
            self.shared.lock().ledger.unlease_all();
        }
        self.shared.persist(true).await
    }
}

/// Consumer names come from clients: a bounded number is remembered, forgetting the one
/// seen longest ago.
fn remember_consumer(consumers: &mut HashMap<String, Timestamp>, consumer: &str) {
    let now = Timestamp::now();
    if let Some(seen) = consumers.get_mut(consumer) {
        *seen = now;
        return;
    }
    if consumers.len() >= MAX_CONSUMERS_SEEN
        && let Some(oldest) = consumers.iter().min_by_key(|(_, t)| **t).map(|(n, _)| n.clone())
    {
        consumers.remove(&oldest);
    }
    consumers.insert(consumer.to_owned(), now);
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Ledger operations do not panic on any input; a poisoned lock would mean a bug,
        // and the state is still consistent at every step boundary.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits until the changes up to `generation` are written as durably as asked.
    async fn durable(&self, generation: u64, durability: Durability) -> Result<()> {
        if durability == Durability::Machine {
            self.flush_wanted.fetch_max(generation, std::sync::atomic::Ordering::AcqRel);
        }
        let mut flushed = self.flushed.subscribe();
        self.persist_now.notify_one();
        loop {
            {
                let f = flushed.borrow_and_update();
                let written = match durability {
                    Durability::Process => f.generation,
                    Durability::Machine => f.flushed,
                };
                if written >= generation {
                    return Ok(());
                }
                if let Some((failed, why)) = &f.failed
                    && *failed >= generation
                {
                    return Err(Error::Unavailable(format!("could not record the change: {why}")));
                }
            }
            if self.is_closed() {
                // The persister has stopped: write (if still needed) here.
                return self.persist(false).await;
            }
            if flushed.changed().await.is_err() {
                return Err(Error::Unavailable("the consumer group is closed".into()));
            }
        }
    }

    /// Writes the cursor and new dead letters if anything changed since the last write,
    /// flushed when a caller waits for that (and when closing); otherwise not.
    async fn persist(&self, closing: bool) -> Result<()> {
        let _guard = self.persist_lock.lock().await;
        let (cursor, parked, generation, flush) = {
            let mut inner = self.lock();
            let written = self.flushed.borrow().clone();
            let flush =
                closing || self.flush_wanted.load(std::sync::atomic::Ordering::Acquire) > written.flushed;
            if !flush && inner.ledger.generation <= written.generation {
                return Ok(());
            }
            let cursor = if closing { inner.ledger.closing_cursor() } else { inner.ledger.cursor() };
            (cursor, inner.ledger.take_parked(), inner.ledger.generation, flush)
        };
        self.write(cursor, parked, Vec::new(), generation, flush).await
    }

    /// One atomic state write; on failure the dead letters go back for the next attempt.
    async fn write(
        &self,
        cursor: Cursor,
        parked: Vec<DeadLetter>,
        mut extra: Vec<StateChange>,
        generation: u64,
        flush: bool,
    ) -> Result<()> {
        let mut changes = Vec::with_capacity(parked.len() + extra.len() + 1);
        changes.append(&mut extra);
        changes.push(StateChange::put(self.scopes.cursor.clone(), "cursor", encode(&cursor)?));
        for dl in &parked {
            let key = dead_letters::key(dl.position);
            changes.push(StateChange::put(self.scopes.dead_letters.clone(), key, encode(dl)?));
        }
        let written = if flush {
            self.state.write_state(changes).await
        } else {
            self.state.write_state_unflushed(changes).await
        };
        match written {
            Ok(()) => {
                self.lock().ledger.recorded(&cursor);
                self.flushed.send_modify(|f| {
                    f.generation = f.generation.max(generation);
                    if flush {
                        f.flushed = f.flushed.max(generation);
                    }
                });
                Ok(())
            }
            Err(e) => {
                tracing::warn!(group = %self.name, error = %e, "could not write the consumer group's state");
                self.lock().ledger.restore_parked(parked);
                self.flushed.send_modify(|f| f.failed = Some((generation, e.to_string())));
                Err(e)
            }
        }
    }
}
