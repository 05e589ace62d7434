//! One bridge at work: hold its lease, read the log after the checkpoint, publish a batch,
//! move the checkpoint past what the broker confirmed, again.
//!
//! The checkpoint and the bridge's status are one record in the state space, written with
//! the value last read as a precondition: a node that lost its lease without noticing (a
//! long pause) fails that write and stops, so two nodes never both move the checkpoint.
//! A failed batch is retried whole after a backoff and never skipped; the broker may see
//! some messages twice, with the same dedupe id.

use std::sync::Arc;
use std::time::Duration;

use bifrost_api::{BridgeErrorBody, BridgeStateBody};
use bifrost_core::lease::Leases;
use bifrost_core::{DurableStore, Error as CoreError, LogFilter, LogSlice, StateChange, Timestamp};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::consume::{ConsumeError, Consumer};
use crate::message::outgoing;
use crate::publish::{PublishError, Publisher};
use crate::spec::BridgeSpec;

/// The scope of bridge states (checkpoint and status).
pub(crate) const STATE_SCOPE: &str = "bridge-state";
/// Backoff of a failing bridge: from this...
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// ...doubling up to this.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where a bridge is: its checkpoint and how it is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeState {
    /// The position of the last event the broker confirmed (or skipped by the filter).
    pub checkpoint: u64,
    /// Messages confirmed since the bridge was created.
    pub published: u64,
    /// The node that last ran it.
    pub node: Option<String>,
    pub running: bool,
    pub failing: bool,
    pub last_error: Option<BridgeErrorBody>,
    /// In-bridges: the broker's pending count as the owner last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

impl BridgeState {
    pub fn state(&self) -> BridgeStateBody {
        match (self.running, self.failing) {
            (true, false) => BridgeStateBody::Running,
            (true, true) => BridgeStateBody::Failing,
            _ => BridgeStateBody::Stopped,
        }
    }
}

/// Opens a bridge's broker: a publisher for an out-bridge (the brokers' modules; tests may
/// stand one in), a consumer for an in-bridge (by default the real broker's).
#[async_trait::async_trait]
pub trait Connector: Send + Sync + 'static {
    async fn connect(&self, spec: &BridgeSpec) -> Result<Box<dyn Publisher>, PublishError>;

    /// The consumer of in-bridge `name`, run on node `node`.
    async fn consume(
        &self,
        name: &str,
        spec: &BridgeSpec,
        node: &str,
    ) -> Result<Box<dyn Consumer>, ConsumeError> {
        crate::kinds::consumer(name, spec, node).await
    }
}

/// The lease of a bridge.
pub(crate) fn lease_name(name: &str) -> String {
    format!("bridge:{name}")
}

pub(crate) struct Runner {
    pub(crate) store: Arc<dyn DurableStore>,
    pub(crate) name: String,
    pub(crate) spec: BridgeSpec,
    pub(crate) leases: Leases,
    pub(crate) heartbeat: Duration,
    pub(crate) connector: Arc<dyn Connector>,
    /// What an in-bridge's events must pass besides their form (the schema registry).
    pub(crate) check: Option<Arc<dyn crate::intake::IngestCheck>>,
}

/// Why a runner stopped publishing for now.
pub(crate) enum Stop {
    /// Asked to (shutdown, the bridge changed or was deleted).
    Asked,
    /// Another node moved the state: it holds the bridge now.
    Fenced,
}

impl Runner {
    /// Runs until `stop`: waits for the lease, then publishes while it holds it.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let lease = lease_name(&self.name);
        loop {
            match self.leases.acquire(&lease).await {
                Ok(true) => match self.serve(&lease, &stop).await {
                    Stop::Asked => break,
                    Stop::Fenced => {}
                },
                Ok(false) => {}
                Err(e) => tracing::warn!(bridge = %self.name, error = %e, "cannot take the bridge's lease"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.heartbeat) => {}
            }
        }
        // Hand the bridge over at once rather than after the lease times out.
        if let Err(e) = self.leases.release(&lease).await {
            tracing::debug!(bridge = %self.name, error = %e, "cannot release the bridge's lease");
        }
    }

    async fn serve(&self, lease: &str, stop: &CancellationToken) -> Stop {
        if self.spec.is_inbound() { self.take_in(lease, stop).await } else { self.hold(lease, stop).await }
    }

    /// Publishes while this node holds the lease.
    async fn hold(&self, lease: &str, stop: &CancellationToken) -> Stop {
        let Ok(filter) = self.spec.log_filter() else { return Stop::Asked };
        let Ok(target) = self.spec.target() else { return Stop::Asked };
        let (mut state, mut stored) = match self.read_state().await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(bridge = %self.name, error = %e, "cannot read the bridge's state");
                return Stop::Fenced;
            }
        };
        let mut publisher: Option<Box<dyn Publisher>> = None;
        let mut backoff = BACKOFF_MIN;
        let mut renewed = tokio::time::Instant::now();
        let mut head = self.store.head();
        let timeout = Duration::from_millis(self.spec.batch_timeout_ms);
        let mut lag_counted: Option<tokio::time::Instant> = None;
        // The gauge's count reads the backlog (up to a million events): off the send loop.
        let mut lag_count: Option<JoinHandle<()>> = None;
        // The checkpoint of the last confirmed batch, being written while the next batch is
        // read and sent: a crash repeats at most that batch (same dedupe ids), and the
        // broker's round trip and the store's commit overlap instead of adding up.
        let mut pending: Option<JoinHandle<Result<(), ()>>> = None;
        let mut next: Option<(u64, JoinHandle<bifrost_core::Result<LogSlice>>)> = None;
        state.node = Some(self.leases.node().to_owned());
        state.running = true;
        loop {
            if stop.is_cancelled() {
                state.running = false;
                if landed(&mut pending).await {
                    let _ = self.write_state(&state, &mut stored, Vec::new()).await;
                }
                return Stop::Asked;
            }
            if lag_counted.is_none_or(|at| at.elapsed() >= LAG_EVERY)
                && lag_count.as_ref().is_none_or(JoinHandle::is_finished)
            {
                lag_counted = Some(tokio::time::Instant::now());
                lag_count = Some(self.count_lag(&filter, state.checkpoint));
            }
            if renewed.elapsed() >= self.heartbeat {
                match self.leases.acquire(lease).await {
                    Ok(true) => renewed = tokio::time::Instant::now(),
                    Ok(false) => return Stop::Fenced,
                    Err(e) => {
                        tracing::warn!(bridge = %self.name, error = %e, "cannot renew the bridge's lease")
                    }
                }
            }
            // The head before the read: a commit after it wakes the wait below.
            head.borrow_and_update();
            // The batch read ahead while the last one was sent, if it starts where we are.
            let ahead = match next.take() {
                Some((from, task)) if from == state.checkpoint => task.await.ok(),
                _ => None,
            };
            let read = match ahead {
                Some(read) => read,
                None => self.store.read_all(state.checkpoint, &filter, self.spec.batch_size as usize).await,
            };
            let slice = match read {
                Ok(slice) => slice,
                Err(e) => {
                    tracing::warn!(bridge = %self.name, error = %e, "the bridge cannot read the log");
                    wait(stop, backoff).await;
                    continue;
                }
            };
            if !slice.events.is_empty() {
                // Read the next batch while this one is on its way to the broker: the store's
                // read and the broker's round trip overlap. Used only if this one succeeds.
                let (store, filter, from) = (Arc::clone(&self.store), filter.clone(), slice.next_position);
                let limit = self.spec.batch_size as usize;
                next = Some((from, tokio::spawn(async move { store.read_all(from, &filter, limit).await })));
            }
            if slice.events.is_empty() {
                if !landed(&mut pending).await {
                    return Stop::Fenced;
                }
                if slice.next_position > state.checkpoint {
                    // Only events the filter skips: the checkpoint moves past them.
                    state.checkpoint = slice.next_position;
                    if self.write_state(&state, &mut stored, Vec::new()).await.is_err() {
                        return Stop::Fenced;
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = head.changed() => {}
                    () = tokio::time::sleep(self.heartbeat) => {}
                }
                continue;
            }
            // A tenant's bridge sends the tenant's names and ids.
            let localized: Vec<_>;
            let events = if self.spec.tenant.tenant().is_some() {
                localized = slice
                    .events
                    .iter()
                    .cloned()
                    .map(|mut event| {
                        self.spec.tenant.localize(&mut event);
                        event
                    })
                    .collect();
                &localized
            } else {
                &slice.events
            };
            let messages: Result<Vec<_>, String> =
                events.iter().map(|e| outgoing(e, &target, self.spec.content_mode)).collect();
            let result = match messages {
                Err(e) => Err(format!("an event cannot be sent: {e}")),
                Ok(messages) => match self.publish(&mut publisher, &messages, timeout).await {
                    Ok(()) => Ok(messages.len()),
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(sent) => {
                    backoff = BACKOFF_MIN;
                    state.checkpoint = slice.next_position.max(slice.events.last().map_or(0, |e| e.position));
                    state.published += sent as u64;
                    state.failing = false;
                    metrics::counter!("bifrost_bridge_published_total", "bridge" => self.name.clone())
                        .increment(sent as u64);
                    // Each write expects the one before it: the fencing chain stays whole.
                    if !landed(&mut pending).await {
                        return Stop::Fenced;
                    }
                    pending = Some(self.spawn_write_state(&state, &mut stored));
                }
                Err(message) => {
                    tracing::warn!(bridge = %self.name, error = %message, "a bridge batch failed; retrying");
                    metrics::counter!("bifrost_bridge_errors_total", "bridge" => self.name.clone(), "direction" => "out").increment(1);
                    publisher = None;
                    state.failing = true;
                    state.last_error = Some(BridgeErrorBody { message, at: Timestamp::now().to_string() });
                    if !landed(&mut pending).await
                        || self.write_state(&state, &mut stored, Vec::new()).await.is_err()
                    {
                        return Stop::Fenced;
                    }
                    wait(stop, backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Starts writing `state` after `stored` (the same fenced write as
    /// [`Self::write_state`]) and takes it as stored: the caller awaits the task before any
    /// other write.
    fn spawn_write_state(
        &self,
        state: &BridgeState,
        stored: &mut Option<Bytes>,
    ) -> JoinHandle<Result<(), ()>> {
        let Ok(value) = serde_json::to_vec(state).map(Bytes::from) else {
            return tokio::spawn(async { Err(()) });
        };
        let expected = stored.replace(value.clone());
        let write = vec![
            StateChange::Expect { scope: STATE_SCOPE.into(), key: self.name.clone(), value: expected },
            StateChange::Put { scope: STATE_SCOPE.into(), key: self.name.clone(), value },
        ];
        let (store, name) = (Arc::clone(&self.store), self.name.clone());
        tokio::spawn(async move { report_write(&name, store.write_state(write).await) })
    }

    /// `bifrost_bridge_lag` of an out-bridge: the count the API shows, counted in a task of
    /// its own.
    fn count_lag(&self, filter: &LogFilter, checkpoint: u64) -> JoinHandle<()> {
        let (store, filter, name) = (Arc::clone(&self.store), filter.clone(), self.name.clone());
        tokio::spawn(async move {
            match out_lag(store.as_ref(), &filter, checkpoint).await {
                Ok(lag) => metrics::gauge!("bifrost_bridge_lag", "bridge" => name, "direction" => "out")
                    .set(lag as f64),
                Err(e) => tracing::debug!(bridge = %name, error = %e, "cannot count the bridge's lag"),
            }
        })
    }

    /// One batch through the publisher (connected first if need be), within `timeout`.
    async fn publish(
        &self,
        publisher: &mut Option<Box<dyn Publisher>>,
        messages: &[crate::Outgoing],
        timeout: Duration,
    ) -> Result<(), String> {
        if publisher.is_none() {
            let connected = tokio::time::timeout(timeout, self.connector.connect(&self.spec)).await;
            *publisher = Some(match connected {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => {
                    return Err(format!("no connection to the broker within {} ms", timeout.as_millis()));
                }
            });
        }
        let Some(p) = publisher.as_ref() else { return Err("no publisher".into()) };
        match tokio::time::timeout(timeout, p.publish(messages)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("the broker did not confirm the batch within {} ms", timeout.as_millis())),
        }
    }

    pub(crate) async fn read_state(&self) -> bifrost_core::Result<(BridgeState, Option<Bytes>)> {
        let stored = self.store.read_state(STATE_SCOPE, &self.name).await?;
        let state = match &stored {
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|e| CoreError::Internal(format!("bridge state {}: {e}", self.name)))?,
            None => BridgeState::default(),
        };
        Ok((state, stored))
    }

    /// Writes `state` if the stored value is still the one last read (else another node
    /// holds the bridge now).
    /// `extra` changes go with it, in the same write.
    pub(crate) async fn write_state(
        &self,
        state: &BridgeState,
        stored: &mut Option<Bytes>,
        extra: Vec<StateChange>,
    ) -> Result<(), ()> {
        let Ok(value) = serde_json::to_vec(state).map(Bytes::from) else { return Err(()) };
        let mut write = vec![
            StateChange::Expect { scope: STATE_SCOPE.into(), key: self.name.clone(), value: stored.clone() },
            StateChange::Put { scope: STATE_SCOPE.into(), key: self.name.clone(), value: value.clone() },
        ];
        write.extend(extra);
        report_write(&self.name, self.store.write_state(write).await)?;
        *stored = Some(value);
        Ok(())
    }
}

/// A fenced state write's outcome, logged: `Err` means this node no longer runs the bridge.
fn report_write(bridge: &str, written: bifrost_core::Result<()>) -> Result<(), ()> {
    match written {
        Ok(()) => Ok(()),
        Err(CoreError::StateConflict { .. }) => {
            tracing::info!(bridge, "another node runs this bridge now");
            Err(())
        }
        Err(e) => {
            tracing::warn!(bridge, error = %e, "cannot write the bridge's checkpoint");
            Err(())
        }
    }
}

/// Waits for the checkpoint write in flight, if any; `false` when it failed.
async fn landed(pending: &mut Option<JoinHandle<Result<(), ()>>>) -> bool {
    match pending.take() {
        Some(task) => matches!(task.await, Ok(Ok(()))),
        None => true,
    }
}

/// Out-bridges' lag is counted up to this many events (a larger backlog shows as this).
const LAG_CAP: u64 = 1_000_000;
/// How often an idle out-bridge's owner counts its lag for the gauge.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// An out-bridge's lag: events matching `filter` after `checkpoint` (counted up to
/// [`LAG_CAP`]).
pub(crate) async fn out_lag(
    store: &dyn DurableStore,
    filter: &LogFilter,
    checkpoint: u64,
) -> bifrost_core::Result<u64> {
    let head = *store.head().borrow();
    if checkpoint >= head {
        return Ok(0);
    }
    if filter.is_empty() {
        return Ok(head - checkpoint);
    }
    let mut count = 0;
    let mut after = checkpoint;
    while count < LAG_CAP && after < head {
        let page = store.read_all(after, filter, 1000).await?;
        if page.events.is_empty() {
            break;
        }
        count += page.events.len() as u64;
        after = page.next_position.max(page.events.last().map_or(after, |e| e.position));
    }
    Ok(count)
}

/// Sleeps `pause` unless `stop` comes first.
pub(crate) async fn wait(stop: &CancellationToken, pause: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(pause) => {}
    }
}
