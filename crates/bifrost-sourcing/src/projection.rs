//! Projections: read models fed from the durable log, never inline after a commit.
//!
//! A [`Projection`] receives events in log order, in batches, together with the checkpoint
//! the batch brings it to, and must record that checkpoint atomically with its own effects
//! (the same database transaction). That makes a projection idempotent by position: a runner
//! killed at any point resumes from the last recorded checkpoint and never applies an event
//! twice. The write is also fenced: it applies only if the recorded checkpoint is still the
//! one the batch started from, so two runners at once apply each batch once between them.
//! [`ViewProjection`](crate::view::ViewProjection) does all this for keyed views kept in a
//! store's state space (with `StateChange::Expect`); a projection into an application's own
//! database does it in its own transaction (compare the checkpoint row, then write).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bifrost_core::{EventStore, LogFilter, Position, RecordedEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::upcast::Upcasters;

#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// A stable name: the key of its checkpoint and its metrics label.
    fn name(&self) -> &str;

    /// The events it reads (all by default).
    fn filter(&self) -> LogFilter {
        LogFilter::default()
    }

    /// The last position it recorded, `0` when it has none.
    async fn checkpoint(&self) -> Result<Position>;

    /// Applies `events` — those after `from` up to `to`, in log order, already upcast;
    /// possibly none when the filter skipped a stretch of the log — and records `to` as the
    /// checkpoint in the same atomic write, provided the recorded checkpoint is still
    /// `from`. When it is not (another runner of the projection got there first), the write
    /// must fail with [`bifrost_core::Error::StateConflict`] and apply nothing: the runner
    /// then reloads the checkpoint and goes on from there. (A projection whose effects are
    /// idempotent by themselves, like a saga's loops, may leave the check out.)
    async fn apply(&self, events: Vec<RecordedEvent>, from: Position, to: Position) -> Result<()>;

    /// Forgets everything (read model and checkpoint), for a rebuild by replay from zero.
    async fn reset(&self) -> Result<()>;
}

/// How far a running projection has come.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectionStatus {
    pub checkpoint: Position,
    /// The head of the log when last looked at.
    pub head: Position,
    /// The last failure, cleared by the next successful batch (or once nothing is left to
    /// apply). The runner keeps retrying from its checkpoint with a growing delay, unless
    /// the failure is a fault (see `halted`).
    pub error: Option<String>,
    /// The runner stopped for good on a fault no retry can get past — stored data that does
    /// not decode (a checkpoint, a view, an event row) or a broken invariant — named in
    /// `error`. Repair the data, then start the projection again.
    pub halted: bool,
}

impl ProjectionStatus {
    /// Log positions between the checkpoint and the head (an upper bound on the events the
    /// projection still has to read).
    pub fn lag(&self) -> u64 {
        self.head.saturating_sub(self.checkpoint)
    }
}

/// Feeds a projection from the log.
///
/// Several runners of one projection (a rolling deploy, a restart right after `abort`)
/// apply each batch once between them: a batch is applied only if the checkpoint it starts
/// from is still the recorded one, so the runner that loses the race reloads and goes on.
pub struct ProjectionRunner<P: Projection> {
    store: Arc<dyn EventStore>,
    projection: Arc<P>,
    upcasters: Upcasters,
    batch_size: usize,
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl<P: Projection> ProjectionRunner<P> {
    pub fn new(store: Arc<dyn EventStore>, projection: Arc<P>) -> Self {
        Self { store, projection, upcasters: Upcasters::default(), batch_size: 500 }
    }

    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Events per batch (and so per atomic write of the read model).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.clamp(1, 1000);
        self
    }

    pub fn projection(&self) -> &Arc<P> {
        &self.projection
    }

    /// Applies everything up to the head of the log as it is now and returns the checkpoint.
    pub async fn catch_up(&self) -> Result<Position> {
        let target = *self.store.head().borrow();
        let mut at = self.projection.checkpoint().await?;
        while at < target {
            let next = match self.step(at).await {
                Ok(next) => next,
                // Another runner recorded this stretch first: go on from its checkpoint.
                Err(Error::Store(bifrost_core::Error::StateConflict { .. })) => {
                    let moved = self.projection.checkpoint().await?;
                    if moved == at {
                        // The fence refuses the very checkpoint the projection reports: a
                        // projection that disagrees with itself, not a race to retry.
                        return Err(conflict_without_progress(self.projection.name(), at));
                    }
                    at = moved;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if next == at {
                break;
            }
            at = next;
        }
        Ok(at)
    }

    /// Forgets the read model and replays the log from zero up to the current head. Stop
    /// the projection's other runners first: a batch they are writing as the reset runs
    /// could outlive it.
    pub async fn rebuild(&self) -> Result<Position> {
        self.projection.reset().await?;
        self.catch_up().await
    }

    /// Reads one batch after `at`, applies it and returns the new checkpoint.
    async fn step(&self, at: Position) -> Result<Position> {
        let filter = self.projection.filter();
        let slice = self.store.read_all(at, &filter, self.batch_size).await?;
        if slice.next_position <= at {
            return Ok(at);
        }
        let mut events = Vec::with_capacity(slice.events.len());
        for event in slice.events {
            events.push(self.upcasters.upcast(event)?);
        }
        self.projection.apply(events, at, slice.next_position).await?;
        Ok(slice.next_position)
    }

    /// Runs the projection in the background: catch-up, then live, until stopped.
    pub fn start(self) -> RunningProjection {
        let (status_tx, status) = watch::channel(ProjectionStatus::default());
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(self.run(status_tx, stop));
        RunningProjection { status, stop: stop_tx, task }
    }

    async fn run(self, status: watch::Sender<ProjectionStatus>, mut stop: watch::Receiver<bool>) {
        let name = self.projection.name().to_owned();
        let lag = metrics::gauge!("bifrost_projection_lag", "projection" => name.clone());
        let mut head = self.store.head();
        let mut at: Option<Position> = None;
        // Where the last conflict happened: one at the same place again is no race.
        let mut conflicted: Option<Position> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            if *stop.borrow() {
                return;
            }
            let target = *head.borrow_and_update();
            let outcome = match at {
                None => self.projection.checkpoint().await.map(Some),
                // No progress although the head is ahead: wait for the next commit.
                Some(position) if position < target => {
                    self.step(position).await.map(|p| (p > position).then_some(p))
                }
                Some(_) => Ok(None),
            };
            match outcome {
                Ok(Some(position)) if at.is_none() => {
                    // The checkpoint (re)loaded. After a failure this is not yet a success:
                    // the failure stays reported and the delay keeps growing until a batch
                    // goes through or there is nothing left to apply.
                    at = Some(position);
                    lag.set(target.saturating_sub(position) as f64);
                    status.send_modify(|s| {
                        s.checkpoint = position;
                        s.head = target;
                    });
                }
                Ok(Some(position)) => {
                    at = Some(position);
                    conflicted = None;
                    backoff = Duration::from_millis(50);
                    lag.set(target.saturating_sub(position) as f64);
                    status.send_replace(ProjectionStatus {
                        checkpoint: position,
                        head: target,
                        error: None,
                        halted: false,
                    });
                }
                Ok(None) => {
                    backoff = Duration::from_millis(50);
                    status.send_if_modified(|s| s.error.take().is_some());
                    // Caught up: wait for the next commit.
                    tokio::select! {
                        changed = head.changed() => if changed.is_err() { return },
                        () = stop_requested(&mut stop) => {}
                    }
                }
                Err(Error::Store(bifrost_core::Error::StateConflict { .. })) if conflicted != at => {
                    // Another runner recorded this stretch first: go on from its checkpoint
                    // (a second conflict at the same place is reported and backed off).
                    tracing::debug!(projection = %name, "the checkpoint moved under this runner; reloading it");
                    conflicted = at;
                    at = None;
                }
                Err(e) if e.is_fault() => {
                    // Retrying would read the same bytes (or meet the same bug) again, forever.
                    tracing::error!(projection = %name, error = %e, "projection halted: a fault no retry can get past");
                    status.send_modify(|s| {
                        s.error = Some(e.to_string());
                        s.halted = true;
                    });
                    return;
                }
                Err(e) => {
                    tracing::warn!(projection = %name, error = %e, "projection failed; retrying from its checkpoint");
                    at = None;
                    status.send_modify(|s| s.error = Some(e.to_string()));
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop_requested(&mut stop) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Resolves when a stop is asked for. A handle dropped without asking can ask no more: the
/// wait then never resolves (the loop runs on, as the task of a dropped `JoinHandle` does)
/// rather than resolving at once, which would turn every wait of the loop into a busy loop.
pub(crate) async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    if stop.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A projection running in the background. Dropping it leaves the projection running;
/// [`stop`](Self::stop) or [`abort`](Self::abort) end it.
pub struct RunningProjection {
    status: watch::Receiver<ProjectionStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningProjection {
    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// Waits until the checkpoint reaches `position` (or the runner stops or halts).
    pub async fn wait_for(&self, position: Position) -> ProjectionStatus {
        let mut status = self.status.clone();
        let reached = status.wait_for(|s| s.checkpoint >= position).await;
        match reached {
            Ok(s) => s.clone(),
            Err(_) => self.status(),
        }
    }

    /// Stops after the batch in flight; what was applied stays applied.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }

    /// Stops at once, possibly in the middle of a batch (as a crash would). Unlike a crash,
    /// a write already handed to the store may still land after this returns; a runner
    /// started meanwhile meets it as a moved checkpoint and goes on from there.
    pub fn abort(self) {
        self.task.abort();
    }
}

fn conflict_without_progress(name: &str, at: Position) -> Error {
    Error::corrupt(
        format!("projection {name}"),
        format!("its checkpoint reads {at} but its write's fence refuses {at}"),
    )
}
