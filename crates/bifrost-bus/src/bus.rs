//! The in-process bus: handlers in a Rust program react to the store's events.
//!
//! Every subscription runs on a [`ConsumerGroup`] whose consumers are worker tasks of this
//! process, so handlers get what HTTP consumers get: per-stream order, bounded
//! concurrency across streams, retries with backoff, a dead-letter queue and isolation
//! (one failing or panicking handler holds back nobody else). A named consumer keeps its
//! cursor in the store and resumes after a restart (at-least-once); an unnamed
//! subscription keeps it in memory and starts at the end of the log. On a store whose
//! database several processes share (PostgreSQL), a named consumer is one group for all of
//! them: processes running the same consumer share its events instead of each handling all.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bifrost_core::group::{
    Backoff, DeadLetterEntry, Fetch, GroupConfig, GroupEngine, GroupFilter, GroupKind, GroupName,
    GroupStatus, Lease, LeaseToken, NackAction, ReplaySelection, Settled, StartFrom, Verdict,
};
use bifrost_core::{
    DurableStore, EventId, EventStore, MemoryState, Position, RecordedEvent, Result, StateStore,
};
use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::group::{ConsumerGroup, Scopes};
use crate::transient::TransientBus;

/// How long an idle worker waits in one fetch before checking whether it should stop.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Why a handler failed, and whether trying again may help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerError {
    message: String,
    retryable: bool,
}

impl HandlerError {
    /// A failure that may pass on a later attempt (a timeout, a busy dependency).
    pub fn retryable(message: impl fmt::Display) -> Self {
        Self { message: message.to_string(), retryable: true }
    }

    /// A failure that no retry will fix (invalid data): parked at once.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self { message: message.to_string(), retryable: false }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Errors of the store, of decoding, or plain messages are retryable unless said otherwise.
impl From<bifrost_core::Error> for HandlerError {
    fn from(e: bifrost_core::Error) -> Self {
        Self::retryable(e)
    }
}

impl From<serde_json::Error> for HandlerError {
    /// A payload that does not decode will not decode next time either.
    fn from(e: serde_json::Error) -> Self {
        Self::permanent(e)
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        Self::retryable(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        Self::retryable(message)
    }
}

/// Reacts to one event at a time; the event is the handler's (no copy is kept for it).
/// Closures `Fn(RecordedEvent) -> impl Future<Output = Result<(), HandlerError>>` are
/// handlers.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, event: RecordedEvent) -> Result<(), HandlerError>;
}

#[async_trait]
impl<F, Fut> Handler for F
where
    F: Fn(RecordedEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    async fn handle(&self, event: RecordedEvent) -> Result<(), HandlerError> {
        self(event).await
    }
}

/// Reacts to a batch of events at once; the batch succeeds or fails as a whole. Closures
/// `Fn(Vec<RecordedEvent>) -> impl Future<Output = Result<(), HandlerError>>` are batch
/// handlers.
#[async_trait]
pub trait BatchHandler: Send + Sync + 'static {
    async fn handle_batch(&self, events: Vec<RecordedEvent>) -> Result<(), HandlerError>;
}

#[async_trait]
impl<F, Fut> BatchHandler for F
where
    F: Fn(Vec<RecordedEvent>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    async fn handle_batch(&self, events: Vec<RecordedEvent>) -> Result<(), HandlerError> {
        self(events).await
    }
}

/// Decides whether a handler's error is worth another attempt.
pub type RetryPredicate = Arc<dyn Fn(&HandlerError) -> bool + Send + Sync>;

/// Which failures are tried again, how often, and how long apart.
#[derive(Clone)]
pub struct RetryPolicy {
    /// Deliveries in all, the first included; then the event is parked.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Decides whether an error is worth another attempt; by default, those marked
    /// [`HandlerError::retryable`].
    pub retry_if: Option<RetryPredicate>,
}

impl Default for RetryPolicy {
    /// Three attempts, 1 s then 2 s apart (with jitter): the seeds' retry settings.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)),
            retry_if: None,
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("retry_if", &self.retry_if.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl RetryPolicy {
    pub fn new(max_attempts: u32, backoff: Backoff) -> Self {
        Self { max_attempts, backoff, retry_if: None }
    }

    /// Never retry: the first failure parks the event.
    pub fn none() -> Self {
        Self::new(1, Backoff::fixed(Duration::ZERO))
    }

    pub fn retry_if(mut self, predicate: impl Fn(&HandlerError) -> bool + Send + Sync + 'static) -> Self {
        self.retry_if = Some(Arc::new(predicate));
        self
    }

    fn should_retry(&self, error: &HandlerError, attempt: u32) -> bool {
        let wanted = match &self.retry_if {
            Some(predicate) => predicate(error),
            None => error.is_retryable(),
        };
        wanted && attempt < self.max_attempts
    }
}

/// How a consumer runs.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// Events handled at once, each of a different stream.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Where a new consumer starts (a named consumer that exists resumes instead).
    pub start: StartFrom,
    /// A handler running longer than this is presumed lost and its event redelivered.
    pub handler_timeout: Duration,
    /// Named in dead letters and logs.
    pub handler_name: String,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            concurrency: 16,
            retry: RetryPolicy::default(),
            start: StartFrom::Beginning,
            handler_timeout: Duration::from_secs(60),
            handler_name: "handler".to_owned(),
        }
    }
}

/// How batch handlers get their batches: up to `max_size` events, or whatever arrived
/// within `max_wait` of the first one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    pub max_size: usize,
    pub max_wait: Duration,
    /// Call the handler once per event type present in a batch (each call in log order).
    pub group_by_type: bool,
}

impl Default for BatchOptions {
    /// The seeds' batch size 50 and timeout 5 s.
    fn default() -> Self {
        Self { max_size: 50, max_wait: Duration::from_secs(5), group_by_type: false }
    }
}

/// The consumer group under a subscription: run in this process, or kept in the store's
/// database for every process that runs the same durable consumer.
#[derive(Clone)]
pub struct SubscriptionGroup(Backing);

#[derive(Clone)]
enum Backing {
    Local(ConsumerGroup),
    Shared { engine: Arc<dyn GroupEngine>, name: GroupName },
}

impl SubscriptionGroup {
    pub fn name(&self) -> &GroupName {
        match &self.0 {
            Backing::Local(group) => group.name(),
            Backing::Shared { name, .. } => name,
        }
    }

    pub async fn status(&self) -> Result<GroupStatus> {
        match &self.0 {
            Backing::Local(group) => group.status().await,
            Backing::Shared { engine, name } => engine.status(name).await,
        }
    }

    /// Dead letters in log order, after `after` (exclusive), up to `limit`.
    pub async fn dead_letters(&self, after: Option<Position>, limit: usize) -> Result<Vec<DeadLetterEntry>> {
        match &self.0 {
            Backing::Local(group) => group.dead_letters(after, limit).await,
            Backing::Shared { engine, name } => engine.dead_letters(name, after, limit).await,
        }
    }

    /// Delivers dead letters again with fresh attempts.
    pub async fn replay(&self, selection: ReplaySelection) -> Result<usize> {
        match &self.0 {
            Backing::Local(group) => group.replay(selection).await,
            Backing::Shared { engine, name } => engine.replay(name, selection).await,
        }
    }

    /// Removes one dead letter. `false` when there is none for that event.
    pub async fn discard(&self, id: EventId) -> Result<bool> {
        match &self.0 {
            Backing::Local(group) => group.discard(id).await,
            Backing::Shared { engine, name } => engine.discard(name, id).await,
        }
    }

    async fn fetch(&self, fetch: Fetch<'_>) -> Result<Vec<Lease>> {
        match &self.0 {
            Backing::Local(group) => group.fetch(fetch).await,
            Backing::Shared { engine, name } => engine.fetch(name, fetch).await,
        }
    }

    /// In-process verdicts are written with the group's next write, not waited for.
    async fn settle(&self, leases: &[LeaseToken], verdict: Verdict<'_>) -> Result<Settled> {
        match &self.0 {
            Backing::Local(group) => group.settle(leases, verdict, true).await,
            Backing::Shared { engine, name } => engine.settle(name, leases, verdict, true).await,
        }
    }

    /// A group run here stops (writing its state); a shared one goes on for the others.
    async fn close(&self) -> Result<()> {
        match &self.0 {
            Backing::Local(group) => group.close().await,
            Backing::Shared { .. } => Ok(()),
        }
    }
}

/// A running subscription. [`unsubscribe`](Self::unsubscribe) stops it after the handlers
/// in progress finish; dropping it stops it without waiting.
pub struct Subscription {
    group: SubscriptionGroup,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl Subscription {
    /// The consumer group underneath: its status, dead letters, replay.
    pub fn group(&self) -> &SubscriptionGroup {
        &self.group
    }

    /// Stops taking new events, waits for handlers in progress, and writes the cursor.
    pub async fn unsubscribe(mut self) -> Result<()> {
        self.stop.send_replace(true);
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.await;
        }
        self.group.close().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if !self.workers.is_empty() {
            let group = self.group.clone();
            let workers = std::mem::take(&mut self.workers);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    for worker in workers {
                        let _ = worker.await;
                    }
                    let _ = group.close().await;
                });
            }
        }
    }
}

/// The bus of one store.
#[derive(Clone)]
pub struct Bus {
    store: Arc<dyn EventStore>,
    state: Arc<dyn StateStore>,
    transient: TransientBus,
}

impl Bus {
    pub fn new(store: Arc<dyn DurableStore>) -> Self {
        Self { store: store.clone(), state: store, transient: TransientBus::new() }
    }

    /// The path for messages that are never stored (typing indicators, test signals).
    pub fn transient(&self) -> &TransientBus {
        &self.transient
    }

    /// Handles events of types matching `pattern` (`*` one segment, `#` any) appended from
    /// now on, with the default options. Its position is kept in memory only.
    pub async fn subscribe(&self, pattern: &str, handler: impl Handler) -> Result<Subscription> {
        let options = ConsumerOptions { start: StartFrom::End, ..ConsumerOptions::default() };
        self.subscribe_with(GroupFilter::types([pattern]), options, handler).await
    }

    /// An unnamed subscription with a full filter and options.
    pub async fn subscribe_with(
        &self,
        filter: GroupFilter,
        options: ConsumerOptions,
        handler: impl Handler,
    ) -> Result<Subscription> {
        let name = GroupName::new(&format!("subscription-{}", uuid::Uuid::now_v7()))?;
        let config = consumer_config(&filter, &options, None)?;
        let group = open_local(name, config, self.store.clone(), Arc::new(MemoryState::new())).await?;
        Ok(start_workers(group, options, Worker::Single(Arc::new(handler))))
    }

    /// A durable consumer: `name` keeps its cursor, retries and dead letters in the store
    /// and resumes where it stopped. At-least-once: an event is handled again if the
    /// process stops between its handler's success and the next cursor write.
    pub async fn consumer(
        &self,
        name: &str,
        filter: GroupFilter,
        options: ConsumerOptions,
        handler: impl Handler,
    ) -> Result<Subscription> {
        let group = self.durable_group(name, &filter, &options, None).await?;
        Ok(start_workers(group, options, Worker::Single(Arc::new(handler))))
    }

    /// A durable consumer whose handler takes batches.
    pub async fn batch_consumer(
        &self,
        name: &str,
        filter: GroupFilter,
        options: ConsumerOptions,
        batch: BatchOptions,
        handler: impl BatchHandler,
    ) -> Result<Subscription> {
        if batch.max_size == 0 {
            return Err(bifrost_core::Error::InvalidArgument("a batch holds at least one event".into()));
        }
        let group = self.durable_group(name, &filter, &options, Some(batch)).await?;
        Ok(start_workers(group, options, Worker::Batch(Arc::new(handler), batch)))
    }

    async fn durable_group(
        &self,
        name: &str,
        filter: &GroupFilter,
        options: &ConsumerOptions,
        batch: Option<BatchOptions>,
    ) -> Result<SubscriptionGroup> {
        let name = GroupName::new(name)?;
        let config = consumer_config(filter, options, batch)?;
        if let Some(engine) = self.state.shared_groups(GroupKind::Consumer) {
            engine.put(&name, config).await?;
            return Ok(SubscriptionGroup(Backing::Shared { engine, name }));
        }
        open_local(name, config, self.store.clone(), self.state.clone()).await
    }
}

/// A consumer's group, run in this process from `state`.
async fn open_local(
    name: GroupName,
    config: GroupConfig,
    store: Arc<dyn EventStore>,
    state: Arc<dyn StateStore>,
) -> Result<SubscriptionGroup> {
    let scopes = Scopes::consumer(&name);
    if state.read_state(&scopes.cursor, "cursor").await?.is_none() {
        state.write_state(vec![scopes.start(store.as_ref(), &config).await?]).await?;
    }
    let group =
        ConsumerGroup::open_in(name, scopes, config, store, state, bifrost_core::Timestamp::now()).await?;
    Ok(SubscriptionGroup(Backing::Local(group)))
}

/// The group settings that run a consumer with these options.
fn consumer_config(
    filter: &GroupFilter,
    options: &ConsumerOptions,
    batch: Option<BatchOptions>,
) -> Result<GroupConfig> {
    if options.concurrency == 0 {
        return Err(bifrost_core::Error::InvalidArgument(
            "a consumer needs a concurrency of at least 1".into(),
        ));
    }
    // A batch is leased while it fills up and while it is handled.
    let ack_timeout = options.handler_timeout + batch.map_or(Duration::ZERO, |b| b.max_wait);
    let per_worker = batch.map_or(1, |b| b.max_size);
    Ok(GroupConfig {
        filter: filter.clone(),
        start: options.start,
        ack_timeout,
        max_attempts: options.retry.max_attempts.max(1),
        backoff: options.retry.backoff,
        // Twice what the handlers hold, so that a shared group's next fetch overlaps the acks
        // of the last one (workers of a group run here never hold more than one each).
        max_in_flight: options.concurrency.saturating_mul(per_worker).saturating_mul(2),
        ordered: true,
    })
}

enum Worker {
    Single(Arc<dyn Handler>),
    Batch(Arc<dyn BatchHandler>, BatchOptions),
}

fn start_workers(group: SubscriptionGroup, options: ConsumerOptions, worker: Worker) -> Subscription {
    let (stop, _) = watch::channel(false);
    let options = Arc::new(options);
    // A group kept in a database: one task fetches for every handler and acks are sent in
    // batches, so that each event does not cost two round trips of its own.
    if let (Backing::Shared { .. }, Worker::Single(handler)) = (&group.0, &worker) {
        let run = Run {
            group: group.clone(),
            id: format!("{}#pump", options.handler_name),
            options: options.clone(),
            stop: stop.subscribe(),
        };
        let pump = tokio::spawn(run.pump(handler.clone()));
        return Subscription { group, stop, workers: vec![pump] };
    }
    let workers = (0..options.concurrency)
        .map(|n| {
            let run = Run {
                group: group.clone(),
                id: format!("{}#{n}", options.handler_name),
                options: options.clone(),
                stop: stop.subscribe(),
            };
            match &worker {
                Worker::Single(handler) => tokio::spawn(run.single(handler.clone())),
                Worker::Batch(handler, batch) => tokio::spawn(run.batch(handler.clone(), *batch)),
            }
        })
        .collect();
    Subscription { group, stop, workers }
}

/// One worker task of a subscription.
struct Run {
    group: SubscriptionGroup,
    id: String,
    options: Arc<ConsumerOptions>,
    stop: watch::Receiver<bool>,
}

impl Run {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Up to `room` events, `per_stream` of one stream together, leased deferred (see
    /// [`Fetch::deferred`]). A failed fetch is logged and waited out: `Some(empty)`; `None`
    /// once the subscription stops.
    async fn fetch(&self, room: usize, per_stream: usize, wait: Duration) -> Option<Vec<Lease>> {
        let fetch = Fetch { consumer: &self.id, max: room, per_stream, wait, deferred: true };
        match self.group.fetch(fetch).await {
            Ok(leases) => Some(leases),
            Err(_) if self.stopped() => None,
            Err(e) => {
                tracing::warn!(consumer = %self.group.name(), error = %e, "fetching failed; retrying");
                tokio::time::sleep(IDLE_POLL).await;
                Some(Vec::new())
            }
        }
    }

    async fn single(self, handler: Arc<dyn Handler>) {
        let handled =
            metrics::histogram!("bifrost_handler_seconds", "consumer" => self.group.name().to_string());
        while !self.stopped() {
            let Some(leases) = self.fetch(1, 1, IDLE_POLL).await else { return };
            for lease in leases {
                let started = Instant::now();
                let outcome = guarded(handler.handle(lease.event)).await;
                handled.record(started.elapsed().as_secs_f64());
                self.settle(&[lease.token], lease.attempt, outcome).await;
            }
        }
    }

    async fn batch(self, handler: Arc<dyn BatchHandler>, options: BatchOptions) {
        while !self.stopped() {
            let mut batch: Vec<Lease> = Vec::with_capacity(options.max_size);
            let mut deadline: Option<tokio::time::Instant> = None;
            while batch.len() < options.max_size && !self.stopped() {
                let wait = match deadline {
                    Some(at) => at.saturating_duration_since(tokio::time::Instant::now()),
                    None => IDLE_POLL,
                };
                if deadline.is_some() && wait.is_zero() {
                    break;
                }
                let room = options.max_size - batch.len();
                let Some(leases) = self.fetch(room, room, wait).await else { return };
                if deadline.is_none() && !leases.is_empty() {
                    deadline = Some(tokio::time::Instant::now() + options.max_wait);
                }
                batch.extend(leases);
            }
            if batch.is_empty() {
                continue;
            }
            if options.group_by_type {
                // Each type's events in log order; types in order of their first event.
                while let Some(first) = batch.first() {
                    let event_type = first.event.event_type.clone();
                    let (part, rest) = batch.into_iter().partition(|d| d.event.event_type == event_type);
                    batch = rest;
                    self.run_batch(handler.as_ref(), part).await;
                }
            } else {
                self.run_batch(handler.as_ref(), batch).await;
            }
        }
    }

    async fn run_batch(&self, handler: &dyn BatchHandler, batch: Vec<Lease>) {
        let attempt = batch.iter().map(|l| l.attempt).max().unwrap_or(1);
        let (leases, events): (Vec<_>, Vec<_>) = batch.into_iter().map(|l| (l.token, l.event)).unzip();
        let outcome = guarded(handler.handle_batch(events)).await;
        self.settle(&leases, attempt, outcome).await;
    }

    /// Acks on success; on failure retries with the policy's backoff or parks.
    async fn settle(&self, leases: &[LeaseToken], attempt: u32, outcome: Result<(), HandlerError>) {
        let result = match self.verdict(attempt, outcome) {
            None => self.group.settle(leases, Verdict::Ack).await,
            Some((action, reason)) => self.group.settle(leases, Verdict::Nack(action, Some(&reason))).await,
        };
        if let Err(e) = result {
            tracing::warn!(consumer = %self.group.name(), error = %e, "could not settle a delivery");
        }
    }

    /// What a handler's outcome at `attempt` means: `None` an ack, else a nack — retried
    /// with the policy's backoff, or parked — and its reason.
    fn verdict(&self, attempt: u32, outcome: Result<(), HandlerError>) -> Option<(NackAction, String)> {
        let error = outcome.err()?;
        let reason = format!("{}: {}", self.options.handler_name, error.message());
        if self.options.retry.should_retry(&error, attempt) {
            return Some((NackAction::Retry(Some(self.options.retry.backoff.delay(attempt))), reason));
        }
        tracing::warn!(consumer = %self.group.name(), %reason, attempt, "parking an event");
        Some((NackAction::Park, reason))
    }

    /// The subscription of a group kept in a database: fetches as many events as there are
    /// idle handlers (one round trip for all of them), runs each on its own task, and acks
    /// what succeeded in batches. Nacks go one by one (each has its delay and reason).
    async fn pump(self, handler: Arc<dyn Handler>) {
        let this = Arc::new(self);
        let idle = Arc::new(tokio::sync::Semaphore::new(this.options.concurrency));
        let (acks, settled) = tokio::sync::mpsc::unbounded_channel::<LeaseToken>();
        let acker = tokio::spawn(Arc::clone(&this).ack_batches(settled));
        let mut running = tokio::task::JoinSet::new();
        let handled =
            metrics::histogram!("bifrost_handler_seconds", "consumer" => this.group.name().to_string());
        while !this.stopped() {
            // At least one handler idle before asking for anything.
            let Ok(first) = Arc::clone(&idle).acquire_owned().await else { break };
            let room = idle.available_permits() + 1;
            let Some(leases) = this.fetch(room, 1, IDLE_POLL).await else { break };
            let mut first = Some(first);
            for lease in leases {
                let permit = match first.take() {
                    Some(permit) => permit,
                    None => match Arc::clone(&idle).acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                };
                let (this, handler, acks, handled) =
                    (Arc::clone(&this), handler.clone(), acks.clone(), handled.clone());
                running.spawn(async move {
                    let started = Instant::now();
                    let outcome = guarded(handler.handle(lease.event)).await;
                    handled.record(started.elapsed().as_secs_f64());
                    match this.verdict(lease.attempt, outcome) {
                        None => {
                            let _ = acks.send(lease.token);
                        }
                        Some((action, reason)) => {
                            let nack = Verdict::Nack(action, Some(&reason));
                            if let Err(e) = this.group.settle(&[lease.token], nack).await {
                                tracing::warn!(consumer = %this.group.name(), error = %e, "could not settle a delivery");
                            }
                        }
                    }
                    drop(permit);
                });
            }
            // Reap finished handlers as we go.
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
        drop(acks);
        let _ = acker.await;
    }

    /// Acks leases in batches: whatever succeeded while the previous batch was being acked.
    async fn ack_batches(self: Arc<Self>, mut settled: tokio::sync::mpsc::UnboundedReceiver<LeaseToken>) {
        let mut batch = Vec::new();
        while let Some(first) = settled.recv().await {
            batch.push(first);
            while let Ok(more) = settled.try_recv() {
                batch.push(more);
            }
            if let Err(e) = self.group.settle(&batch, Verdict::Ack).await {
                tracing::warn!(consumer = %self.group.name(), error = %e, "could not ack a batch of deliveries");
            }
            batch.clear();
        }
    }
}

/// Runs a handler's future; a panic becomes a retryable error instead of killing the worker.
async fn guarded(future: impl Future<Output = Result<(), HandlerError>>) -> Result<(), HandlerError> {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(HandlerError::retryable(format!("the handler panicked: {message}")))
        }
    }
}
