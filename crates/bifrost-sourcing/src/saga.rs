//! Sagas (process managers): long-running workflows that react to events, issue commands,
//! compensate when a command fails, and wait with timeouts that survive restarts.
//!
//! Each saga instance is a stream, `<NAME>-<instance id>`, whose events (`<NAME>.step`)
//! each record what caused the step, the instance's whole state after it, the commands it
//! issued and the timeouts it scheduled or cancelled. The stream is the saga's durable state
//! and its outbox at once. Three loops run it:
//!
//! - the **reactor** reads the events the saga listens to from the log and appends a step
//!   per event; an instance remembers the last log position it reacted to, so an event read
//!   twice (after a crash, or by a second manager) is reacted to once;
//! - the **dispatcher** reads the step events from the log and, for each, records its
//!   timeouts and sends its commands through the [`CommandBus`]. Command ids derive from
//!   the step, so re-sending after a crash stores nothing twice. A command that is refused
//!   becomes a step of its own through [`Saga::on_command_failed`] (compensation);
//! - the **timer** fires due timeouts from the store's state space, so a timeout scheduled
//!   before a restart still fires after it. A timeout that was cancelled, or whose instance
//!   has finished, is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use bifrost_core::{
    Category, Direction, EventStore, EventType, ExpectedVersion, LogFilter, NewEvent, Position,
    RecordedEvent, StateChange, StateStore, StreamName, Timestamp, Version,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::checkpoint;
use crate::clock::{Clock, SystemClock};
use crate::command::{Command, CommandBus, CommandEnvelope};
use crate::error::{Error, Result};
use crate::projection::{Projection, ProjectionRunner, RunningProjection, stop_requested};
use crate::upcast::Upcasters;

pub trait Saga: Send + Sync + 'static {
    /// The saga's name: the category of its instance streams, so a valid stream name
    /// without `-`.
    const NAME: &'static str;

    type State: Serialize + DeserializeOwned + Default + Send + Sync;

    /// The events the saga reacts to.
    fn filter(&self) -> LogFilter;

    /// The instance an event (already upcast) belongs to; `None` ignores the event. The id
    /// becomes part of a stream name (`A–Z a–z 0–9 _ . : @ -`).
    fn correlate(&self, event: &RecordedEvent) -> Option<String>;

    /// Reacts to an event of the instance (already upcast).
    fn handle(&self, state: &mut Self::State, event: &RecordedEvent) -> Result<Reaction>;

    /// A timeout the instance scheduled came due.
    fn on_timeout(&self, state: &mut Self::State, timeout: &Timeout) -> Result<Reaction> {
        let _ = (state, timeout);
        Ok(Reaction::none())
    }

    /// A command the instance issued was refused (rejected, invalid or without a handler):
    /// compensate here. The step's later commands are not sent.
    fn on_command_failed(
        &self,
        state: &mut Self::State,
        command: &CommandEnvelope,
        error: &str,
    ) -> Result<Reaction> {
        let _ = (state, command, error);
        Ok(Reaction::none())
    }
}

/// What a saga does in one step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reaction {
    pub commands: Vec<CommandEnvelope>,
    pub schedule: Vec<(String, Duration, serde_json::Value)>,
    pub cancel: Vec<String>,
    pub complete: bool,
}

impl Reaction {
    pub fn none() -> Self {
        Self::default()
    }

    /// Issues `command` once this step is stored.
    pub fn send<C: Command>(mut self, command: &C) -> Result<Self> {
        self.commands.push(CommandEnvelope::new(command)?);
        Ok(self)
    }

    /// Schedules the timeout `name` to fire after `after`, carrying `data`.
    pub fn schedule(mut self, name: &str, after: Duration, data: serde_json::Value) -> Self {
        self.schedule.push((name.to_owned(), after, data));
        self
    }

    /// Cancels every pending timeout called `name`.
    pub fn cancel(mut self, name: &str) -> Self {
        self.cancel.push(name.to_owned());
        self
    }

    /// Finishes the instance: later events and pending timeouts are ignored.
    pub fn complete(mut self) -> Self {
        self.complete = true;
        self
    }
}

/// A scheduled timeout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timeout {
    pub id: Uuid,
    pub instance: String,
    pub name: String,
    pub due_at: Timestamp,
    pub data: serde_json::Value,
}

/// What caused a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Event { id: Uuid, position: Position, event_type: String },
    Timeout { id: Uuid, name: String },
    CommandFailed { command_id: Uuid, command_type: String, error: String },
}

/// One event of an instance stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step<S> {
    pub trigger: Trigger,
    /// The instance's state after the step.
    pub state: S,
    /// The highest log position the instance has reacted to.
    pub last_position: Position,
    /// Timeouts scheduled and neither fired nor cancelled.
    pub pending: Vec<Timeout>,
    pub done: bool,
    pub commands: Vec<CommandEnvelope>,
    pub scheduled: Vec<Timeout>,
    /// Timeouts this step cancelled (or fired), whose records can go.
    pub dropped: Vec<Timeout>,
}

/// An instance as loaded from its stream.
struct Instance<S> {
    stream: StreamName,
    id: String,
    version: Version,
    state: S,
    last_position: Position,
    pending: Vec<Timeout>,
    done: bool,
}

/// How far a running saga has come.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SagaStatus {
    /// The last log position the reactor has processed.
    pub reacted: Position,
    /// The last log position the dispatcher has processed (steps sent).
    pub dispatched: Position,
    /// A failure of the reactor, the dispatcher or the timer, cleared when the loop that
    /// failed gets through again (another loop's progress does not clear it).
    pub error: Option<String>,
    /// Items set aside since the start because the saga's own code failed on them (see
    /// [`RunningSaga::parked`]).
    pub parked: u64,
    /// A loop stopped for good on a fault no retry can get past (stored data that does not
    /// decode, a broken invariant), named in `error`; see
    /// [`ProjectionStatus::halted`](crate::projection::ProjectionStatus::halted).
    pub halted: bool,
}

/// An event, step or timeout the saga's code failed on, set aside so that the others go on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// `event/<position>`, `step/<position>` or `timeout/<id>`.
    pub item: String,
    pub error: String,
    pub parked_at: Timestamp,
}

struct Shared<G: Saga> {
    saga: G,
    store: Arc<dyn EventStore>,
    state: Arc<dyn StateStore>,
    bus: Arc<CommandBus>,
    upcasters: Upcasters,
    step_type: EventType,
    timeouts_scope: String,
    parked_scope: String,
    dispatcher_filter: LogFilter,
    wake_timer: Notify,
    clock: Arc<dyn Clock>,
    counters: Arc<Counters>,
}

/// What a running saga reports beside its runners' status.
#[derive(Default)]
struct Counters {
    /// Items parked since the start.
    parked: AtomicU64,
    /// The timer's last failure, cleared when it gets through again (the reactor's and the
    /// dispatcher's are in their runners' status).
    timer_error: Mutex<Option<String>>,
    /// The timer stopped on a fault.
    timer_halted: AtomicBool,
}

/// Runs a saga.
pub struct SagaManager<G: Saga> {
    shared: Shared<G>,
}

const BATCH: usize = 200;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl<G: Saga> SagaManager<G> {
    pub fn new(
        saga: G,
        store: Arc<dyn EventStore>,
        state: Arc<dyn StateStore>,
        bus: Arc<CommandBus>,
    ) -> Result<Self> {
        // The name is the category of the instance streams: a `-` would split it.
        Category::new(G::NAME)?;
        let step_type = EventType::new(&format!("{}.step", G::NAME))?;
        let dispatcher_filter = LogFilter::default().with_types([step_type.as_str()])?;
        Ok(Self {
            shared: Shared {
                saga,
                store,
                state,
                bus,
                upcasters: Upcasters::default(),
                step_type,
                timeouts_scope: format!("sourcing/saga-timeouts/{}", G::NAME),
                parked_scope: format!("sourcing/saga-parked/{}", G::NAME),
                dispatcher_filter,
                wake_timer: Notify::new(),
                clock: Arc::new(SystemClock),
                counters: Arc::default(),
            },
        })
    }

    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.shared.upcasters = upcasters;
        self
    }

    /// The clock timeouts are scheduled and fired by (the system clock by default; a
    /// [`ManualClock`](crate::clock::ManualClock) lets a test move time instead of waiting).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.shared.clock = clock;
        self
    }

    /// Starts the reactor, the dispatcher and the timer.
    pub fn start(self) -> RunningSaga {
        let shared = Arc::new(self.shared);
        let run = |role| {
            let projection = Arc::new(SagaLoop::new(Arc::clone(&shared), role));
            ProjectionRunner::new(Arc::clone(&shared.store), projection).with_batch_size(BATCH).start()
        };
        let (reactor, dispatcher) = (run(Role::Reactor), run(Role::Dispatcher));
        let (stop, stopped) = watch::channel(false);
        let timer = tokio::spawn(timer(Arc::clone(&shared), stopped));
        RunningSaga {
            reactor,
            dispatcher,
            timer,
            stop,
            counters: Arc::clone(&shared.counters),
            state: Arc::clone(&shared.state),
            parked_scope: shared.parked_scope.clone(),
        }
    }
}

/// A saga running in the background. Dropping it leaves the saga running;
/// [`stop`](Self::stop) or [`abort`](Self::abort) end it.
pub struct RunningSaga {
    reactor: RunningProjection,
    dispatcher: RunningProjection,
    timer: JoinHandle<()>,
    /// Stops the timer (the runners have their own).
    stop: watch::Sender<bool>,
    counters: Arc<Counters>,
    state: Arc<dyn StateStore>,
    parked_scope: String,
}

impl RunningSaga {
    pub fn status(&self) -> SagaStatus {
        let (reactor, dispatcher) = (self.reactor.status(), self.dispatcher.status());
        SagaStatus {
            reacted: reactor.checkpoint,
            dispatched: dispatcher.checkpoint,
            error: reactor
                .error
                .or(dispatcher.error)
                .or_else(|| self.counters.timer_error.lock().ok()?.clone()),
            parked: self.counters.parked.load(Ordering::Relaxed),
            halted: reactor.halted || dispatcher.halted || self.counters.timer_halted.load(Ordering::Relaxed),
        }
    }

    /// Waits until both the reactor and the dispatcher have processed the log up to
    /// `position`.
    pub async fn wait_for(&self, position: Position) -> SagaStatus {
        self.reactor.wait_for(position).await;
        self.dispatcher.wait_for(position).await;
        self.status()
    }

    /// Up to `limit` parked items (kept across restarts), in the order of their keys.
    pub async fn parked(&self, limit: usize) -> Result<Vec<Parked>> {
        let entries = self.state.scan_state(&self.parked_scope, None, limit).await?;
        entries
            .into_iter()
            .map(|e| {
                serde_json::from_slice(&e.value)
                    .map_err(|err| Error::corrupt(format!("parked {}", e.key), err))
            })
            .collect()
    }

    /// Stops the loops after the work in flight.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        self.reactor.stop().await;
        self.dispatcher.stop().await;
        let _ = self.timer.await;
    }

    /// Stops at once, possibly in the middle of a step (as a crash would).
    pub fn abort(self) {
        self.reactor.abort();
        self.dispatcher.abort();
        self.timer.abort();
    }
}

impl<G: Saga> Shared<G> {
    fn stream(&self, id: &str) -> Result<StreamName> {
        Ok(StreamName::new(&format!("{}-{id}", G::NAME))?)
    }

    async fn load(&self, id: &str) -> Result<Instance<G::State>> {
        let stream = self.stream(id)?;
        let slice = match self.store.read_stream(&stream, Version::MAX, Direction::Backward, 1).await {
            Ok(slice) => slice,
            Err(bifrost_core::Error::StreamNotFound(_)) => {
                return Ok(Instance {
                    stream,
                    id: id.to_owned(),
                    version: 0,
                    state: G::State::default(),
                    last_position: 0,
                    pending: Vec::new(),
                    done: false,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let Some(last) = slice.events.into_iter().next() else {
            return Err(Error::corrupt(format!("saga stream {stream}"), "it has no events"));
        };
        let step: Step<G::State> = serde_json::from_slice(&last.data)
            .map_err(|e| Error::corrupt(format!("step {} of {stream}", last.version), e))?;
        Ok(Instance {
            stream,
            id: id.to_owned(),
            version: last.version,
            state: step.state,
            last_position: step.last_position,
            pending: step.pending,
            done: step.done,
        })
    }

    /// Appends the step `reaction` makes of `instance`. `Ok(false)`: the step was already
    /// stored (its id is taken) or the stream moved on (the caller reloads and decides again).
    async fn append_step(
        &self,
        mut instance: Instance<G::State>,
        step_id: Uuid,
        trigger: Trigger,
        reaction: Reaction,
    ) -> Result<StepOutcome> {
        let now = self.clock.now();
        let mut dropped = Vec::new();
        if let Trigger::Timeout { id, .. } = &trigger {
            instance.pending.retain(|t| {
                let keep = t.id != *id;
                if !keep {
                    dropped.push(t.clone());
                }
                keep
            });
        }
        let mut kept = Vec::with_capacity(instance.pending.len());
        for t in instance.pending {
            if reaction.complete || reaction.cancel.contains(&t.name) {
                dropped.push(t);
            } else {
                kept.push(t);
            }
        }
        let scheduled: Vec<Timeout> = reaction
            .schedule
            .into_iter()
            .enumerate()
            .map(|(i, (name, after, data))| Timeout {
                id: Uuid::new_v5(&step_id, format!("timeout/{i}").as_bytes()),
                instance: instance.id.clone(),
                name,
                due_at: Timestamp::from_micros(
                    now.as_micros().saturating_add(i64::try_from(after.as_micros()).unwrap_or(i64::MAX)),
                ),
                data,
            })
            .collect();
        if !reaction.complete {
            kept.extend(scheduled.iter().cloned());
        }
        let causation = match &trigger {
            Trigger::Event { id, .. } | Trigger::Timeout { id, .. } => id.to_string(),
            Trigger::CommandFailed { command_id, .. } => command_id.to_string(),
        };
        let commands = reaction
            .commands
            .into_iter()
            .enumerate()
            .map(|(i, mut command)| {
                command.id = Uuid::new_v5(&step_id, format!("command/{i}").as_bytes());
                let metadata = &mut command.metadata;
                metadata.correlation_id.get_or_insert_with(|| instance.id.clone());
                metadata.causation_id.get_or_insert_with(|| causation.clone());
                command
            })
            .collect();
        let last_position = match &trigger {
            Trigger::Event { position, .. } => (*position).max(instance.last_position),
            _ => instance.last_position,
        };
        let step = Step {
            trigger,
            state: instance.state,
            last_position,
            pending: kept,
            done: instance.done || reaction.complete,
            commands,
            scheduled: if reaction.complete { Vec::new() } else { scheduled },
            dropped,
        };
        let data =
            serde_json::to_vec(&step).map_err(|e| Error::encode(format!("a step of {}", G::NAME), e))?;
        let event = NewEvent::new(self.step_type.clone(), data).with_id(step_id);
        let expected = if instance.version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(instance.version)
        };
        match self.store.append(instance.stream, expected, vec![event]).await {
            Ok(_) => Ok(StepOutcome::Stored),
            Err(bifrost_core::Error::DuplicateEventId { .. }) => Ok(StepOutcome::AlreadyStored),
            Err(bifrost_core::Error::WrongExpectedVersion(_)) => Ok(StepOutcome::Raced),
            Err(e) => Err(e.into()),
        }
    }

    /// Reacts to one event of the log.
    async fn react(&self, event: RecordedEvent) -> Result<()> {
        // Correlated in the schema the saga's code reads, as `handle` gets it: a payload
        // field an upcaster renamed still finds the instance.
        let position = event.position;
        let event = match self.upcasters.upcast(event) {
            Ok(event) => event,
            Err(e) => return self.park(format!("event/{position}"), &e.to_string()).await,
        };
        let Some(id) = self.saga.correlate(&event) else { return Ok(()) };
        if let Err(e) = self.stream(&id) {
            tracing::warn!(saga = G::NAME, event = %event.id, error = %e, "correlation id cannot name a saga instance; event ignored");
            return Ok(());
        }
        let step_id = Uuid::new_v5(&event.id, format!("saga/{}/{id}", G::NAME).as_bytes());
        loop {
            let mut instance = match self.load(&id).await {
                Ok(instance) => instance,
                // Its stream does not decode as this saga's state (a changed state type):
                // the event waits aside instead of stopping every instance.
                Err(e) if !e.is_transient() => {
                    return self.park(format!("event/{position}"), &e.to_string()).await;
                }
                Err(e) => return Err(e),
            };
            if instance.done || event.position <= instance.last_position {
                return Ok(());
            }
            let reaction = match self.saga.handle(&mut instance.state, &event) {
                Ok(reaction) => reaction,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => return self.park(format!("event/{position}"), &e.to_string()).await,
            };
            let trigger = Trigger::Event {
                id: event.id,
                position: event.position,
                event_type: event.event_type.to_string(),
            };
            match self.append_step(instance, step_id, trigger, reaction).await? {
                StepOutcome::Stored | StepOutcome::AlreadyStored => return Ok(()),
                StepOutcome::Raced => continue,
            }
        }
    }

    /// Records a step's timeouts and sends its commands.
    async fn dispatch(&self, event: &RecordedEvent) -> Result<()> {
        let step: Step<serde_json::Value> = match serde_json::from_slice(&event.data) {
            Ok(step) => step,
            Err(e) => {
                return self.park(format!("step/{}", event.position), &format!("not a step: {e}")).await;
            }
        };
        let mut changes = Vec::new();
        for t in &step.dropped {
            changes.push(StateChange::delete(self.timeouts_scope.clone(), timeout_key(t)));
        }
        for t in &step.scheduled {
            let value = serde_json::to_vec(t).map_err(|e| Error::encode("a timeout", e))?;
            changes.push(StateChange::put(self.timeouts_scope.clone(), timeout_key(t), value));
        }
        if !changes.is_empty() {
            self.state.write_state(changes).await?;
            self.wake_timer.notify_one();
        }
        let Some(id) = event.stream.as_str().strip_prefix(G::NAME).and_then(|rest| rest.strip_prefix('-'))
        else {
            return self
                .park(format!("step/{}", event.position), "not an instance stream of this saga")
                .await;
        };
        for command in &step.commands {
            // A transient failure (the store unavailable, a writer that kept winning) fails
            // the batch: the loop reports it, backs off and reads the batch again, and the
            // commands already sent are sent again harmlessly (their ids are the step's).
            // Read again after a crash or a failed batch, a command that was refused has its
            // compensation stored already: sending it again could now succeed, after the
            // saga gave up on it.
            if self.store.event(failure_step_id(command)).await?.is_some() {
                break;
            }
            // Only a refusal is compensated. Anything else (the store unavailable, a missing
            // upcaster, a handler's outage) fails the batch: the loop reports it, backs off
            // and reads the batch again; commands already sent are re-sent harmlessly
            // (their ids are the step's).
            let refusal = match self.bus.dispatch_envelope(command).await {
                Ok(()) => None,
                Err(e) if e.is_refusal() => Some(e.to_string()),
                Err(e) => return Err(e),
            };
            if let Some(error) = refusal {
                match self.command_failed(id, command, &error).await {
                    Ok(()) => {}
                    Err(e) if !e.is_transient() => {
                        let reason = format!("compensating {} failed: {e}", command.command_type);
                        return self.park(format!("step/{}", event.position), &reason).await;
                    }
                    Err(e) => return Err(e),
                }
                break;
            }
        }
        Ok(())
    }

    async fn command_failed(&self, id: &str, command: &CommandEnvelope, error: &str) -> Result<()> {
        let step_id = failure_step_id(command);
        loop {
            let mut instance = self.load(id).await?;
            if instance.done {
                return Ok(());
            }
            let reaction = self.saga.on_command_failed(&mut instance.state, command, error)?;
            let trigger = Trigger::CommandFailed {
                command_id: command.id,
                command_type: command.command_type.clone(),
                error: error.to_owned(),
            };
            match self.append_step(instance, step_id, trigger, reaction).await? {
                StepOutcome::Stored | StepOutcome::AlreadyStored => return Ok(()),
                StepOutcome::Raced => continue,
            }
        }
    }

    /// Fires one due timeout; its record goes once the step is stored.
    async fn fire(&self, timeout: &Timeout) -> Result<()> {
        let step_id = Uuid::new_v5(&timeout.id, b"fired");
        loop {
            let mut instance = self.load(&timeout.instance).await?;
            if instance.done || !instance.pending.iter().any(|t| t.id == timeout.id) {
                break;
            }
            let reaction = self.saga.on_timeout(&mut instance.state, timeout)?;
            let trigger = Trigger::Timeout { id: timeout.id, name: timeout.name.clone() };
            match self.append_step(instance, step_id, trigger, reaction).await? {
                StepOutcome::Stored | StepOutcome::AlreadyStored => break,
                StepOutcome::Raced => continue,
            }
        }
        let delete = StateChange::delete(self.timeouts_scope.clone(), timeout_key(timeout));
        Ok(self.state.write_state(vec![delete]).await?)
    }

    /// Sets an item aside (the saga's own code failed on it) so that the loop goes on;
    /// `also` is written in the same atomic write.
    async fn park_with(&self, item: String, error: &str, also: Vec<StateChange>) -> Result<()> {
        tracing::error!(saga = G::NAME, %item, %error, "saga item parked");
        let parked = Parked { item: item.clone(), error: error.to_owned(), parked_at: self.clock.now() };
        let value = serde_json::to_vec(&parked).map_err(|e| Error::encode("a parked item", e))?;
        let mut changes = vec![StateChange::put(self.parked_scope.clone(), item, value)];
        changes.extend(also);
        self.state.write_state(changes).await?;
        self.counters.parked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn set_timer_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.counters.timer_error.lock() {
            *slot = error;
        }
    }

    async fn park(&self, item: String, error: &str) -> Result<()> {
        self.park_with(item, error, Vec::new()).await
    }
}

/// The id of the step that records a command's refusal.
fn failure_step_id(command: &CommandEnvelope) -> Uuid {
    Uuid::new_v5(&command.id, b"failed")
}

enum StepOutcome {
    Stored,
    AlreadyStored,
    Raced,
}

/// Timeout records sort by due time: the timer reads the first few.
fn timeout_key(t: &Timeout) -> String {
    format!("{:020}/{}", t.due_at.as_micros().max(0), t.id)
}

#[derive(Clone, Copy)]
enum Role {
    Reactor,
    Dispatcher,
}

/// The reactor or the dispatcher: each a projection of the log whose effects are steps
/// stored and commands sent, run by a [`ProjectionRunner`] with its retries and status.
///
/// Unlike a read model it does not fence its checkpoint: its effects are idempotent by
/// their ids, so a second manager of the saga simply works through the log too (what both
/// store is stored once), and neither ever sends a batch's commands again because the
/// other moved the checkpoint.
struct SagaLoop<G: Saga> {
    shared: Arc<Shared<G>>,
    role: Role,
    /// `saga/<NAME>/reactor` or `saga/<NAME>/dispatcher`: its name and checkpoint key.
    name: String,
}

impl<G: Saga> SagaLoop<G> {
    fn new(shared: Arc<Shared<G>>, role: Role) -> Self {
        let which = match role {
            Role::Reactor => "reactor",
            Role::Dispatcher => "dispatcher",
        };
        Self { shared, role, name: format!("saga/{}/{which}", G::NAME) }
    }
}

#[async_trait]
impl<G: Saga> Projection for SagaLoop<G> {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> LogFilter {
        match self.role {
            Role::Reactor => self.shared.saga.filter(),
            Role::Dispatcher => self.shared.dispatcher_filter.clone(),
        }
    }

    async fn checkpoint(&self) -> Result<Position> {
        checkpoint::load(self.shared.state.as_ref(), &self.name).await
    }

    async fn apply(&self, events: Vec<RecordedEvent>, _from: Position, to: Position) -> Result<()> {
        for event in events {
            match self.role {
                Role::Reactor => self.shared.react(event).await?,
                Role::Dispatcher => self.shared.dispatch(&event).await?,
            }
        }
        Ok(self.shared.state.write_state(vec![checkpoint::put(&self.name, to)]).await?)
    }

    async fn reset(&self) -> Result<()> {
        let forget = StateChange::delete(checkpoint::SCOPE, self.name.clone());
        Ok(self.shared.state.write_state(vec![forget]).await?)
    }
}

async fn timer<G: Saga>(shared: Arc<Shared<G>>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            return;
        }
        // What to wait for next: the first pending due time, nothing (`None`), or no wait at
        // all after firing (the page may have been full).
        let outcome: Result<Option<Timestamp>> = async {
            let due = shared.state.scan_state(&shared.timeouts_scope, None, 64).await?;
            let now = shared.clock.now();
            let mut fired = false;
            for entry in due {
                // A record that does not decode, or a timeout the saga's code fails on, is
                // parked: it must not keep every later timeout from firing.
                let remove = || vec![StateChange::delete(shared.timeouts_scope.clone(), entry.key.clone())];
                let timeout: Timeout = match serde_json::from_slice(&entry.value) {
                    Ok(timeout) => timeout,
                    Err(e) => {
                        shared
                            .park_with(
                                format!("timeout/{}", entry.key),
                                &format!("not a timeout: {e}"),
                                remove(),
                            )
                            .await?;
                        fired = true;
                        continue;
                    }
                };
                if timeout.due_at > now {
                    return Ok(Some(timeout.due_at));
                }
                match shared.fire(&timeout).await {
                    Ok(()) => {}
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => {
                        shared.park_with(format!("timeout/{}", timeout.id), &e.to_string(), remove()).await?
                    }
                }
                fired = true;
            }
            Ok(fired.then_some(now))
        }
        .await;
        if outcome.is_ok() {
            shared.set_timer_error(None);
        }
        let (due, retry_after) = match outcome {
            Ok(due) => {
                backoff = Duration::from_millis(50);
                // Nothing pending: the dispatcher wakes the timer when it records a timeout;
                // a slow look now and then covers records written by another process.
                (due, Duration::from_secs(60))
            }
            Err(e) if e.is_fault() => {
                tracing::error!(saga = G::NAME, error = %e, "saga timer halted: a fault no retry can get past");
                shared.set_timer_error(Some(e.to_string()));
                shared.counters.timer_halted.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                tracing::warn!(saga = G::NAME, error = %e, "saga timer failed; retrying");
                shared.set_timer_error(Some(e.to_string()));
                backoff = (backoff * 2).min(MAX_BACKOFF);
                (None, backoff)
            }
        };
        let clock = Arc::clone(&shared.clock);
        let due_time = async move {
            match due {
                Some(at) => clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = due_time => {}
            () = tokio::time::sleep(retry_after) => {}
            () = shared.wake_timer.notified() => {}
            () = stop_requested(&mut stop) => {}
        }
    }
}

/// Decodes a saga's state from a step event's payload, for tools that inspect instances.
pub fn step_of<S: DeserializeOwned>(event: &RecordedEvent) -> Result<Step<S>> {
    serde_json::from_slice(&event.data)
        .map_err(|e| Error::corrupt(format!("step {} of {}", event.version, event.stream), e))
}
