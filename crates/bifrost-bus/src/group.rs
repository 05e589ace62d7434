//! One consumer group at work: a reader task that fills the [`Ledger`] from the log, a
//! timer task that expires leases and releases retries, and a persister that writes the
//! group's cursor and dead letters to the store's state space, coalescing everything that
//! changed while the previous write ran (group commit for acks).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bifrost_core::{
    Error, EventId, EventStore, LogFilter, Position, RecordedEvent, Result, StateChange, StateStore,
    Timestamp,
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::{GroupConfig, GroupName};
use crate::ledger::{
    Cursor, DeadLetter, Delivery, LeaseId, Ledger, NackAction, lease_token, parse_lease_token,
};

/// Largest page the reader asks the log for.
const READ_PAGE: usize = 1000;
/// Least number of events a group buffers ahead of its consumers.
const MIN_BUFFER: usize = 4096;
/// How long a change that nobody waits for (the checkpoint passing unmatched events, a
/// lease timing out) may sit before it is written.
const LAZY_PERSIST: Duration = Duration::from_millis(200);

/// Longest a fetch waits for the reader to take in events appended before the call.
const CATCH_UP: Duration = Duration::from_secs(1);

/// Events a group reads ahead of its consumers.
fn buffer_limit(config: &GroupConfig) -> usize {
    (config.max_in_flight * 2).max(MIN_BUFFER)
}

/// Consumers a group remembers for its status.
const MAX_CONSUMERS_SEEN: usize = 1024;

/// A leased event, as handed to a consumer.
#[derive(Clone, Debug)]
pub struct Lease {
    /// Opaque; acks and nacks name it.
    pub token: String,
    pub attempt: u32,
    pub event: RecordedEvent,
}

/// The answer to an ack or nack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    pub count: usize,
    /// Tokens that were not held (expired, already settled, from an earlier run, or not
    /// tokens at all).
    pub expired: Vec<String>,
}

/// What a group reports about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupStatus {
    pub name: GroupName,
    pub config: GroupConfig,
    /// Every matching event at or below it is acked or parked.
    pub checkpoint: Position,
    /// Matching events not yet acked (in flight, waiting for a retry, or not yet
    /// delivered); parked ones excluded.
    pub lag: u64,
    pub in_flight: usize,
    pub waiting: usize,
    pub parked: u64,
    pub redeliveries: u64,
    pub timeouts: u64,
    /// Consumers that fetched, with when they last did.
    pub consumers: Vec<(String, Timestamp)>,
}

/// A dead letter with its event (`None` when the event was deleted since).
#[derive(Clone, Debug)]
pub struct DeadLetterEntry {
    pub dead_letter: DeadLetter,
    pub event: Option<RecordedEvent>,
}

/// Which dead letters to replay.
#[derive(Clone, Debug)]
pub enum ReplaySelection {
    All,
    Ids(Vec<EventId>),
    /// Those at or below this position.
    UpTo(Position),
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

    /// The write that fixes a new group's start point, so a restart before the group's
    /// first own write does not move it.
    pub(crate) async fn start(&self, store: &dyn EventStore, config: &GroupConfig) -> Result<StateChange> {
        let cursor = Cursor { checkpoint: start_position(store, config).await?, ..Cursor::default() };
        Ok(StateChange::put(self.cursor.clone(), "cursor", encode(&cursor)?))
    }
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| Error::Storage { message: format!("encoding consumer-group state: {e}"), source: None })
}

fn dead_letter_key(position: Position) -> String {
    format!("{position:020}")
}

struct Inner {
    ledger: Ledger,
    config: GroupConfig,
    /// When the timer task will look next (`None`: it is not sleeping on a deadline), so
    /// a new lease wakes it only when it expires earlier than that.
    timer_at: Option<Instant>,
    consumers: HashMap<String, Timestamp>,
}

#[derive(Clone, Debug, Default)]
struct Flushed {
    generation: u64,
    /// The newest generation whose write failed, and why.
    failed: Option<(u64, String)>,
}

/// Matching events beyond what the reader has taken in, counted in chunks so a lag query
/// reads each event of the log once, not once per query.
#[derive(Default)]
struct UnreadCount {
    /// (after, up to, matching events in between), in log order.
    chunks: Vec<(Position, Position, u64)>,
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

/// What a consumer says about leased events.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Verdict<'a> {
    Ack,
    Nack(NackAction, Option<&'a str>),
}

struct Shared {
    name: GroupName,
    scopes: Scopes,
    metrics: GroupMetrics,
    store: Arc<dyn EventStore>,
    state: Arc<dyn StateStore>,
    filter: LogFilter,
    epoch: u64,
    inner: Mutex<Inner>,
    /// Serialises state writes, so a newer cursor is never overwritten by an older one.
    persist_lock: tokio::sync::Mutex<()>,
    fetchers: Notify,
    reader: Notify,
    timer: Notify,
    persist_now: Notify,
    persist_later: Notify,
    flushed: watch::Sender<Flushed>,
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
    pub async fn open(
        name: GroupName,
        config: GroupConfig,
        store: Arc<dyn EventStore>,
        state: Arc<dyn StateStore>,
    ) -> Result<Self> {
        let scopes = Scopes::group(&name);
        Self::open_in(name, scopes, config, store, state).await
    }

    /// [`open`](Self::open) with the cursor and dead letters under other scopes.
    pub(crate) async fn open_in(
        name: GroupName,
        scopes: Scopes,
        config: GroupConfig,
        store: Arc<dyn EventStore>,
        state: Arc<dyn StateStore>,
    ) -> Result<Self> {
        config.validate()?;
        let filter = config.filter.to_log_filter()?;
        let cursor = match state.read_state(&scopes.cursor, "cursor").await? {
            Some(bytes) => serde_json::from_slice::<Cursor>(&bytes).map_err(|e| Error::Corrupt {
                message: format!("group {name}: unreadable cursor: {e}"),
                source: None,
            })?,
            None => {
                Cursor { checkpoint: start_position(store.as_ref(), &config).await?, ..Cursor::default() }
            }
        };
        let replays = cursor.replays.clone();
        let parked = count_scope(state.as_ref(), &scopes.dead_letters).await?;
        let (flushed, _) = watch::channel(Flushed::default());
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            metrics: GroupMetrics::new(&name),
            name,
            scopes,
            store,
            state,
            filter,
            epoch: crate::random::next_u64(),
            inner: Mutex::new(Inner {
                ledger: Ledger::new(cursor, parked),
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
            tokio::spawn(read_loop(shared.clone())),
            tokio::spawn(timer_loop(shared.clone())),
            tokio::spawn(persist_loop(shared.clone())),
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

    /// Applies new settings that do not change which events the group reads (those need a
    /// new group run, see [`crate::Groups::put`]). Leases already out keep their deadline.
    pub(crate) fn set_config(&self, config: GroupConfig) {
        self.shared.lock().config = config;
        self.shared.fetchers.notify_waiters();
    }

    /// Leases up to `max` events to `consumer`, waiting up to `wait` for the first one.
    pub async fn fetch(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        self.fetch_with(consumer, max, 1, wait).await
    }

    /// Like [`fetch`](Self::fetch), but hands out up to `per_stream` consecutive events of
    /// one stream together (for batch handlers, which settle a batch as one).
    pub async fn fetch_with(
        &self,
        consumer: &str,
        max: usize,
        per_stream: usize,
        wait: Duration,
    ) -> Result<Vec<Lease>> {
        let deliveries = self.deliveries(consumer, max, per_stream, wait).await?;
        let epoch = self.shared.epoch;
        Ok(deliveries
            .into_iter()
            .map(|d| Lease { token: lease_token(epoch, d.lease), attempt: d.attempt, event: d.event })
            .collect())
    }

    /// The leasing behind [`fetch_with`](Self::fetch_with), with lease ids instead of
    /// tokens: in-process consumers need no token text.
    pub(crate) async fn deliveries(
        &self,
        consumer: &str,
        max: usize,
        per_stream: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>> {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + wait;
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
            let (deliveries, wake_timer, behind) = {
                let mut inner = shared.lock();
                let inner = &mut *inner;
                match inner.consumers.get_mut(consumer) {
                    Some(seen) => *seen = Timestamp::now(),
                    None => {
                        // Consumer names come from clients: remember a bounded number,
                        // forgetting the one seen longest ago.
                        if inner.consumers.len() >= MAX_CONSUMERS_SEEN
                            && let Some(oldest) =
                                inner.consumers.iter().min_by_key(|(_, t)| **t).map(|(n, _)| n.clone())
                        {
                            inner.consumers.remove(&oldest);
                        }
                        inner.consumers.insert(consumer.to_owned(), Timestamp::now());
                    }
                }
                let now = Instant::now();
                let deliveries = inner.ledger.lease(max, per_stream, now, &inner.config);
                let expires = now + inner.config.ack_timeout;
                let room = inner.ledger.buffered() < buffer_limit(&inner.config);
                let behind = room && inner.ledger.read_to() < head_at_call;
                (deliveries, inner.timer_at.is_none_or(|at| expires < at), behind)
            };
            if !deliveries.is_empty() {
                if wake_timer {
                    shared.timer.notify_one();
                }
                shared.metrics.delivered.increment(deliveries.len() as u64);
                return Ok(deliveries);
            }
            if max == 0 {
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

    /// The lease ids among `tokens`; a token that is not one of this run's is expired.
    fn parse(&self, tokens: &[String]) -> Vec<LeaseId> {
        tokens.iter().filter_map(|t| parse_lease_token(self.shared.epoch, t)).collect()
    }

    /// The tokens, in request order, that were not held.
    fn expired_tokens(&self, tokens: &[String], expired: &[LeaseId]) -> Vec<String> {
        let expired: std::collections::HashSet<&LeaseId> = expired.iter().collect();
        tokens
            .iter()
            .filter(|t| parse_lease_token(self.shared.epoch, t).is_none_or(|id| expired.contains(&id)))
            .cloned()
            .collect()
    }

    /// Acks leases; durable when it returns.
    pub async fn ack(&self, tokens: &[String]) -> Result<Settled> {
        self.settle_tokens(tokens, Verdict::Ack).await
    }

    /// Nacks leases: retry after `action`'s delay (or the backoff), or park now. Durable
    /// when it returns.
    pub async fn nack(&self, tokens: &[String], action: NackAction, reason: Option<&str>) -> Result<Settled> {
        self.settle_tokens(tokens, Verdict::Nack(action, reason)).await
    }

    async fn settle_tokens(&self, tokens: &[String], verdict: Verdict<'_>) -> Result<Settled> {
        let ids = self.parse(tokens);
        let (count, expired) = self.settle(&ids, verdict, true).await?;
        Ok(Settled { count, expired: self.expired_tokens(tokens, &expired) })
    }

    /// Settles leases by id. With `durable` false it returns at once and the change is
    /// written with the next batch (an in-process consumer, which accepts a redelivery
    /// after a crash). Returns how many were held, and the ids that were not.
    pub(crate) async fn settle(
        &self,
        ids: &[LeaseId],
        verdict: Verdict<'_>,
        durable: bool,
    ) -> Result<(usize, Vec<LeaseId>)> {
        let shared = &self.shared;
        let (count, expired, generation) = {
            let mut inner = shared.lock();
            let inner = &mut *inner;
            let (count, expired) = match verdict {
                Verdict::Ack => {
                    let (acked, expired) = inner.ledger.ack(ids);
                    let now = Instant::now();
                    for since in &acked {
                        shared.metrics.ack_seconds.record(now.duration_since(*since).as_secs_f64());
                    }
                    shared.metrics.acked.increment(acked.len() as u64);
                    (acked.len(), expired)
                }
                Verdict::Nack(action, reason) => {
                    inner.ledger.nack(ids, action, reason, Instant::now(), &inner.config)
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
            if durable {
                shared.durable(generation).await?;
            } else {
                shared.persist_later.notify_one();
            }
        }
        Ok((count, expired))
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
                checkpoint: ledger.checkpoint(),
                lag: 0,
                in_flight: counts.in_flight,
                waiting: counts.waiting,
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

    /// Dead letters in log order, after `after` (exclusive), up to `limit`.
    pub async fn dead_letters(&self, after: Option<Position>, limit: usize) -> Result<Vec<DeadLetterEntry>> {
        // Events parked by a lazy (in-process) nack may not be written yet.
        self.shared.persist().await?;
        let after = after.map(dead_letter_key);
        let entries =
            self.shared.state.scan_state(&self.shared.scopes.dead_letters, after.as_deref(), limit).await?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let dead_letter: DeadLetter = decode(&self.shared.name, &entry.value)?;
            let event = self.shared.store.event(dead_letter.event_id).await?;
            out.push(DeadLetterEntry { dead_letter, event });
        }
        Ok(out)
    }

    async fn select_dead_letters(&self, selection: &ReplaySelection) -> Result<Vec<DeadLetter>> {
        self.shared.persist().await?;
        let scope = &self.shared.scopes.dead_letters;
        if let ReplaySelection::Ids(ids) = selection {
            return self.dead_letters_by_id(ids).await;
        }
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.shared.state.scan_state(scope, after.as_deref(), 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for entry in page {
                let dl: DeadLetter = decode(&self.shared.name, &entry.value)?;
                if let ReplaySelection::UpTo(p) = selection
                    && dl.position > *p
                {
                    // Keys are positions in order: nothing further is wanted.
                    return Ok(out);
                }
                out.push(dl);
            }
        }
        Ok(out)
    }

    /// Dead letters are keyed by position: an id is found through its event. Only an id
    /// whose event is gone (deleted since) needs a scan.
    async fn dead_letters_by_id(&self, ids: &[EventId]) -> Result<Vec<DeadLetter>> {
        let scope = &self.shared.scopes.dead_letters;
        let mut out = Vec::new();
        let mut unknown = Vec::new();
        for &id in ids {
            let Some(event) = self.shared.store.event(id).await? else {
                unknown.push(id);
                continue;
            };
            if let Some(value) = self.shared.state.read_state(scope, &dead_letter_key(event.position)).await?
            {
                out.push(decode(&self.shared.name, &value)?);
            }
        }
        let mut after: Option<String> = None;
        while !unknown.is_empty() {
            let page = self.shared.state.scan_state(scope, after.as_deref(), 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for entry in page {
                let dl: DeadLetter = decode(&self.shared.name, &entry.value)?;
                if let Some(at) = unknown.iter().position(|id| *id == dl.event_id) {
                    unknown.swap_remove(at);
                    out.push(dl);
                }
            }
        }
        out.sort_by_key(|dl| dl.position);
        out.dedup_by_key(|dl| dl.position);
        Ok(out)
    }

    fn dead_letter_deletes(&self, dead_letters: &[DeadLetter]) -> Vec<StateChange> {
        let scope = &self.shared.scopes.dead_letters;
        dead_letters
            .iter()
            .map(|dl| StateChange::delete(scope.clone(), dead_letter_key(dl.position)))
            .collect()
    }

    /// Delivers dead letters again with fresh attempts. Returns how many were replayed;
    /// dead letters whose event was deleted meanwhile are dropped, not replayed.
    pub async fn replay(&self, selection: ReplaySelection) -> Result<usize> {
        let selected = self.select_dead_letters(&selection).await?;
        if selected.is_empty() {
            return Ok(0);
        }
        let mut events = Vec::with_capacity(selected.len());
        for dl in &selected {
            if let Some(event) = self.shared.store.event(dl.event_id).await? {
                events.push(event);
            }
        }
        let replayed = events.len();
        // The cursor that remembers the replays and the removal of their dead letters are
        // one write: a crash leaves either both or neither.
        let _guard = self.shared.persist_lock.lock().await;
        let (cursor, parked, generation) = {
            let mut inner = self.shared.lock();
            for event in events {
                inner.ledger.admit_replay(event, 0);
            }
            inner.ledger.parked = inner.ledger.parked.saturating_sub(selected.len() as u64);
            (inner.ledger.cursor(), inner.ledger.take_parked(), inner.ledger.generation)
        };
        self.shared.write(cursor, parked, self.dead_letter_deletes(&selected), generation).await?;
        self.shared.fetchers.notify_waiters();
        Ok(replayed)
    }

    /// Removes one dead letter. `false` when the group has none for that event.
    pub async fn discard(&self, id: EventId) -> Result<bool> {
        let selected = self.select_dead_letters(&ReplaySelection::Ids(vec![id])).await?;
        if selected.is_empty() {
            return Ok(false);
        }
        self.shared.state.write_state(self.dead_letter_deletes(&selected)).await?;
        let mut inner = self.shared.lock();
        inner.ledger.parked = inner.ledger.parked.saturating_sub(selected.len() as u64);
        Ok(true)
    }

    /// Stops the group's tasks and writes what is not written yet. Fetches in progress
    /// return an error; leases still out are redelivered by the next run.
    pub async fn close(&self) -> Result<()> {
        self.shared.closed.send_replace(true);
        let tasks = std::mem::take(&mut *self.shared_tasks());
        for task in tasks {
            let _ = task.await;
        }
        self.shared.persist().await
    }

    fn shared_tasks(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.handles.lock().unwrap_or_else(|p| p.into_inner())
    }
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

    /// Waits until the changes up to `generation` are written.
    async fn durable(&self, generation: u64) -> Result<()> {
        let mut flushed = self.flushed.subscribe();
        self.persist_now.notify_one();
        loop {
            {
                let f = flushed.borrow_and_update();
                if f.generation >= generation {
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
                return self.persist().await;
            }
            if flushed.changed().await.is_err() {
                return Err(Error::Unavailable("the consumer group is closed".into()));
            }
        }
    }

    /// Writes the cursor and new dead letters if anything changed since the last write.
    async fn persist(&self) -> Result<()> {
        let _guard = self.persist_lock.lock().await;
        let (cursor, parked, generation) = {
            let mut inner = self.lock();
            if inner.ledger.generation <= self.flushed.borrow().generation {
                return Ok(());
            }
            (inner.ledger.cursor(), inner.ledger.take_parked(), inner.ledger.generation)
        };
        self.write(cursor, parked, Vec::new(), generation).await
    }

    /// One atomic state write; on failure the dead letters go back for the next attempt.
    async fn write(
        &self,
        cursor: Cursor,
        parked: Vec<DeadLetter>,
        mut extra: Vec<StateChange>,
        generation: u64,
    ) -> Result<()> {
        let mut changes = Vec::with_capacity(parked.len() + extra.len() + 1);
        changes.append(&mut extra);
        changes.push(StateChange::put(self.scopes.cursor.clone(), "cursor", encode(&cursor)?));
        for dl in &parked {
            let key = dead_letter_key(dl.position);
            changes.push(StateChange::put(self.scopes.dead_letters.clone(), key, encode(dl)?));
        }
        match self.state.write_state(changes).await {
            Ok(()) => {
                self.flushed.send_modify(|f| f.generation = f.generation.max(generation));
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

    async fn count_unread(&self, read_to: Position) -> Result<u64> {
        let mut unread = self.unread.lock().await;
        unread.chunks.retain(|&(_, to, _)| to > read_to);
        // The chunk the reader is inside: count what is left of it again.
        if let Some(first) = unread.chunks.first_mut()
            && first.0 < read_to
        {
            let page = self.store.read_all(read_to, &self.filter, READ_PAGE).await?;
            let to = first.1;
            *first = (read_to, to, page.events.iter().filter(|e| e.position <= to).count() as u64);
        }
        let head = *self.store.head().borrow();
        let mut after = unread.chunks.last().map_or(read_to, |c| c.1).max(read_to);
        while after < head {
            let page = self.store.read_all(after, &self.filter, READ_PAGE).await?;
            if page.next_position <= after {
                break;
            }
            unread.chunks.push((after, page.next_position, page.events.len() as u64));
            after = page.next_position;
        }
        Ok(unread.chunks.iter().map(|c| c.2).sum())
    }
}

fn decode<T: serde::de::DeserializeOwned>(group: &GroupName, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        message: format!("group {group}: unreadable dead letter: {e}"),
        source: None,
    })
}

async fn count_scope(state: &dyn StateStore, scope: &str) -> Result<u64> {
    let mut count = 0;
    let mut after: Option<String> = None;
    loop {
        let page = state.scan_state(scope, after.as_deref(), 1000).await?;
        let Some(last) = page.last() else { return Ok(count) };
        after = Some(last.key.clone());
        count += page.len() as u64;
    }
}

/// The checkpoint a new group starts from.
pub(crate) async fn start_position(store: &dyn EventStore, config: &GroupConfig) -> Result<Position> {
    let head = *store.head().borrow();
    match config.start {
        crate::config::StartFrom::Beginning => Ok(0),
        crate::config::StartFrom::End => Ok(head),
        crate::config::StartFrom::Position(p) if p <= head => Ok(p),
        crate::config::StartFrom::Position(p) => {
            Err(Error::InvalidArgument(format!("start position {p} is beyond the head of the log ({head})")))
        }
    }
}

/// Fills the ledger from the log while it has room, then waits for new events.
async fn read_loop(shared: Arc<Shared>) {
    let mut head = shared.store.head();
    let mut closed = shared.closed.subscribe();
    loop {
        if *closed.borrow_and_update() {
            return;
        }
        let room_wait = shared.reader.notified();
        tokio::pin!(room_wait);
        room_wait.as_mut().enable();
        let (after, room) = {
            let inner = shared.lock();
            (inner.ledger.read_to(), buffer_limit(&inner.config).saturating_sub(inner.ledger.buffered()))
        };
        if room == 0 {
            tokio::select! {
                () = &mut room_wait => {}
                _ = closed.changed() => {}
            }
            continue;
        }
        let head_now = *head.borrow_and_update();
        if after >= head_now {
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                _ = closed.changed() => {}
            }
            continue;
        }
        match shared.store.read_all(after, &shared.filter, room.min(READ_PAGE)).await {
            Ok(page) => {
                let moved = {
                    let mut inner = shared.lock();
                    let before = inner.ledger.generation;
                    inner.ledger.admit(page.events, page.next_position, Instant::now());
                    inner.ledger.generation != before
                };
                shared.fetchers.notify_waiters();
                if moved {
                    shared.persist_later.notify_one();
                }
            }
            Err(e) => {
                tracing::warn!(group = %shared.name, error = %e, "reading the log failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = closed.changed() => {}
                }
            }
        }
    }
}

/// Expires leases and releases retries when they are due.
async fn timer_loop(shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    loop {
        if *closed.borrow_and_update() {
            return;
        }
        let wake = shared.timer.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let (changed, next) = {
            let mut inner = shared.lock();
            let inner = &mut *inner;
            let result = inner.ledger.tick(Instant::now(), &inner.config);
            inner.timer_at = result.1;
            result
        };
        if changed {
            shared.fetchers.notify_waiters();
            shared.reader.notify_one();
            shared.persist_later.notify_one();
        }
        let sleep = match next {
            Some(at) => tokio::time::sleep_until(at.into()),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            () = sleep => {}
            () = &mut wake => {}
            _ = closed.changed() => {}
        }
    }
}

/// Writes the group's state: at once when someone waits for it, otherwise a little later
/// so that unhurried changes share a write.
async fn persist_loop(shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    loop {
        tokio::select! {
            () = shared.persist_now.notified() => {}
            () = shared.persist_later.notified() => {
                tokio::select! {
                    () = tokio::time::sleep(LAZY_PERSIST) => {}
                    () = shared.persist_now.notified() => {}
                    _ = closed.changed() => {}
                }
            }
            _ = closed.changed() => {}
        }
        if *closed.borrow_and_update() {
            return;
        }
        if shared.persist().await.is_err() {
            // Try again soon; waiters already have their error.
            tokio::time::sleep(Duration::from_millis(100)).await;
            shared.persist_later.notify_one();
        }
    }
}
