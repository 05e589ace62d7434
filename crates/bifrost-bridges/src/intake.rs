//! One in-bridge at work: while this node holds its lease, fetch a batch from the broker,
//! append its events, and ack the batch only once they are committed.
//!
//! A batch whose append fails for a reason that may pass (the store is down) is kept and
//! appended again after a backoff, never acked before and never skipped. A message that is
//! not a valid event (or whose id the store holds for a different event) is acked and kept
//! as a dead letter. Appends are idempotent by event id, so a message the broker delivers
//! again (an ack lost with a connection, a node that died before acking) is stored once.

use std::collections::VecDeque;
use std::time::Duration;

use bifrost_api::BridgeErrorBody;
use bifrost_core::{
    Error as CoreError, ExpectedVersion, NewEvent, StateChange, StreamAppend, StreamName, Timestamp,
};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::consume::{Consumer, Delivery};
use crate::dead_letters::{self, DeadLetter, MAX_DEAD_LETTERS};
use crate::inbound::to_event;
use crate::runner::{BACKOFF_MAX, BACKOFF_MIN, BridgeState, Runner, Stop, wait};

/// How long one fetch waits for a first message (the loop renews the lease in between).
pub(crate) const FETCH_WAIT: Duration = Duration::from_secs(1);
/// How often an idle bridge asks its broker for the pending count.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// A check of the events an in-bridge is about to append, beyond their form: the server's
/// schema registry. `Ok(Some(reason))`: not an event (kept as a dead letter); `Err`: the check
/// could not be made now (the batch is tried again later).
#[async_trait::async_trait]
pub trait IngestCheck: Send + Sync {
    async fn check(
        &self,
        tenant: Option<&str>,
        stream: &str,
        event: &NewEvent,
    ) -> Result<Option<String>, CoreError>;
}

/// What became of one fetched message.
enum Outcome {
    /// Stored: `true` when new, `false` when it was stored already (a replay).
    Appended(bool),
    Dead(DeadLetter),
}

impl Runner {
    /// Appends the broker's messages while this node holds the lease.
    pub(crate) async fn take_in(&self, lease: &str, stop: &CancellationToken) -> Stop {
        let (mut state, mut stored) = match self.read_state().await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(bridge = %self.name, error = %e, "cannot read the bridge's state");
                return Stop::Fenced;
            }
        };
        let mut letters = match self.dead_letter_ids().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(bridge = %self.name, error = %e, "cannot read the bridge's dead letters");
                return Stop::Fenced;
            }
        };
        let timeout = Duration::from_millis(self.spec.batch_timeout_ms);
        let mut consumer: Option<Box<dyn Consumer>> = None;
        let mut batch: Vec<Delivery> = Vec::new();
        let mut backoff = BACKOFF_MIN;
        let mut renewed = tokio::time::Instant::now();
        let mut lag_read: Option<tokio::time::Instant> = None;
        state.node = Some(self.leases.node().to_owned());
        state.running = true;
        loop {
            if stop.is_cancelled() {
                state.running = false;
                let _ = self.write_state(&state, &mut stored, Vec::new()).await;
                return Stop::Asked;
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
            if consumer.is_none() {
                let connecting = self.connector.consume(&self.name, &self.spec, self.leases.node());
                match tokio::time::timeout(timeout, connecting).await {
                    Ok(Ok(c)) => consumer = Some(c),
                    Ok(Err(e)) => {
                        if self
                            .failed(&mut state, &mut stored, e.to_string(), stop, &mut backoff)
                            .await
                            .is_err()
                        {
                            return Stop::Fenced;
                        }
                        continue;
                    }
                    Err(_) => {
                        let message =
                            format!("no connection to the broker within {} ms", timeout.as_millis());
                        if self.failed(&mut state, &mut stored, message, stop, &mut backoff).await.is_err() {
                            return Stop::Fenced;
                        }
                        continue;
                    }
                }
            }
            let Some(source) = consumer.as_mut() else { continue };
            if batch.is_empty() {
                let wait = FETCH_WAIT.min(self.heartbeat);
                let fetched = tokio::select! {
                    () = stop.cancelled() => continue,
                    fetched = source.fetch(self.spec.batch_size as usize, wait) => fetched,
                };
                match fetched {
                    Ok(fetched) => batch = fetched,
                    Err(e) => {
                        consumer = None;
                        if self
                            .failed(&mut state, &mut stored, e.to_string(), stop, &mut backoff)
                            .await
                            .is_err()
                        {
                            return Stop::Fenced;
                        }
                        continue;
                    }
                }
                let idle = batch.is_empty();
                if !idle || lag_read.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
                    lag_read = Some(tokio::time::Instant::now());
                    if let Some(lag) = source.pending().await {
                        metrics::gauge!("bifrost_bridge_lag", "bridge" => self.name.clone(), "direction" => "in")
                            .set(lag as f64);
                        if state.lag != Some(lag) {
                            state.lag = Some(lag);
                            if idle && self.write_state(&state, &mut stored, Vec::new()).await.is_err() {
                                return Stop::Fenced;
                            }
                        }
                    }
                }
                if idle {
                    if state.failing {
                        // Connected and reading again: the broker side is healthy.
                        state.failing = false;
                        if self.write_state(&state, &mut stored, Vec::new()).await.is_err() {
                            return Stop::Fenced;
                        }
                    }
                    continue;
                }
            }
            let outcomes = match self.append(&batch).await {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    let message = format!("the store did not take the batch: {e}");
                    if self.failed(&mut state, &mut stored, message, stop, &mut backoff).await.is_err() {
                        return Stop::Fenced;
                    }
                    continue;
                }
            };
            // Dead letters, the counts and the status in one fenced write, before the ack.
            let mut extra = Vec::new();
            let mut appended = 0_u64;
            let scope = dead_letters::scope(&self.name);
            for (outcome, delivery) in outcomes.into_iter().zip(&batch) {
                match outcome {
                    Outcome::Appended(new) => appended += u64::from(new),
                    Outcome::Dead(letter) => {
                        tracing::info!(bridge = %self.name, reason = %letter.reason, receipt = %delivery.receipt, "a message is not an event: dead-lettered");
                        let Ok(value) = serde_json::to_vec(&letter) else { continue };
                        extra.push(StateChange::put(scope.clone(), letter.id.clone(), value));
                        letters.push_back(letter.id);
                        while letters.len() > MAX_DEAD_LETTERS {
                            if let Some(oldest) = letters.pop_front() {
                                extra.push(StateChange::delete(scope.clone(), oldest));
                            }
                        }
                    }
                }
            }
            state.checkpoint += batch.len() as u64;
            state.published += appended;
            state.failing = false;
            backoff = BACKOFF_MIN;
            if self.write_state(&state, &mut stored, extra).await.is_err() {
                return Stop::Fenced;
            }
            metrics::counter!("bifrost_bridge_published_total", "bridge" => self.name.clone())
                .increment(appended);
            let receipts: Vec<String> = batch.drain(..).map(|d| d.receipt).collect();
            if let Err(e) = source.ack(&receipts).await {
                // The broker delivers them again; their events are stored once.
                consumer = None;
                let message = format!("the broker did not take the acks: {e}");
                if self.failed(&mut state, &mut stored, message, stop, &mut backoff).await.is_err() {
                    return Stop::Fenced;
                }
            }
        }
    }

    /// Appends the batch's events: one call when all are fine, else one by one to tell the
    /// messages that are not events from the rest. `Err` when the store may take them later.
    async fn append(&self, batch: &[Delivery]) -> Result<Vec<Outcome>, CoreError> {
        let mut events: Vec<Result<(StreamName, NewEvent), String>> =
            batch.iter().map(|d| to_event(&self.name, &self.spec, &d.message).map_err(|e| e.0)).collect();
        if let Some(check) = &self.check {
            for event in &mut events {
                let Ok((stream, new)) = event else { continue };
                if let Some(reason) = check.check(self.spec.tenant.tenant(), stream.local(), new).await? {
                    *event = Err(reason);
                }
            }
        }
        let all: Vec<StreamAppend> = events
            .iter()
            .filter_map(|e| e.as_ref().ok())
            .map(|(stream, event)| {
                StreamAppend::new(stream.clone(), ExpectedVersion::Any, vec![event.clone()])
            })
            .collect();
        // A replay's result is the original one: at or before the head as it was before.
        let head = *self.store.head().borrow();
        let together = if all.is_empty() { Ok(Vec::new()) } else { self.store.append_many(all).await };
        let mut results = match together {
            Ok(results) => results.into_iter(),
            Err(e) if retryable(&e) => return Err(e),
            Err(_) => return self.append_one_by_one(batch, events, head).await,
        };
        Ok(batch
            .iter()
            .zip(events)
            .map(|(delivery, event)| match event {
                Ok(_) => Outcome::Appended(results.next().is_some_and(|r| r.first_position > head)),
                Err(reason) => Outcome::Dead(DeadLetter::new(reason, &delivery.message.body)),
            })
            .collect())
    }

    async fn append_one_by_one(
        &self,
        batch: &[Delivery],
        events: Vec<Result<(StreamName, NewEvent), String>>,
        mut head: u64,
    ) -> Result<Vec<Outcome>, CoreError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for (delivery, event) in batch.iter().zip(events) {
            let outcome = match event {
                Err(reason) => Outcome::Dead(DeadLetter::new(reason, &delivery.message.body)),
                Ok((stream, event)) => {
                    match self.store.append(stream, ExpectedVersion::Any, vec![event]).await {
                        Ok(result) => {
                            let new = result.first_position > head;
                            head = head.max(result.last_position);
                            Outcome::Appended(new)
                        }
                        Err(e) if retryable(&e) => return Err(e),
                        Err(e) => Outcome::Dead(DeadLetter::new(e.to_string(), &delivery.message.body)),
                    }
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Records a failure (status, metric), then waits out the backoff. `Err`: fenced.
    async fn failed(
        &self,
        state: &mut BridgeState,
        stored: &mut Option<Bytes>,
        message: String,
        stop: &CancellationToken,
        backoff: &mut Duration,
    ) -> Result<(), ()> {
        tracing::warn!(bridge = %self.name, error = %message, "an in-bridge failed; retrying");
        metrics::counter!("bifrost_bridge_errors_total", "bridge" => self.name.clone(), "direction" => "in")
            .increment(1);
        state.failing = true;
        state.last_error = Some(BridgeErrorBody { message, at: Timestamp::now().to_string() });
        self.write_state(state, stored, Vec::new()).await?;
        wait(stop, *backoff).await;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        Ok(())
    }

    /// The ids of the bridge's dead letters, oldest first.
    async fn dead_letter_ids(&self) -> bifrost_core::Result<VecDeque<String>> {
        let entries =
            bifrost_core::state::scan_all(self.store.as_ref(), &dead_letters::scope(&self.name)).await?;
        Ok(entries.into_iter().map(|e| e.key).collect())
    }
}

/// Whether trying the same append again later may succeed (the store is down or busy),
/// rather than the events being refused.
fn retryable(e: &CoreError) -> bool {
    match e {
        CoreError::Unavailable(_) | CoreError::Storage { .. } | CoreError::Internal(_) => true,
        CoreError::InvalidStreamName { .. }
        | CoreError::InvalidEventType { .. }
        | CoreError::InvalidArgument(_)
        | CoreError::WrongExpectedVersion(_)
        | CoreError::DuplicateEventId { .. }
        | CoreError::StreamNotFound(_)
        | CoreError::StreamDeleted(_)
        | CoreError::GroupNotFound(_)
        | CoreError::OutOfRange(_)
        | CoreError::StateConflict { .. }
        | CoreError::Corrupt { .. } => false,
    }
}
