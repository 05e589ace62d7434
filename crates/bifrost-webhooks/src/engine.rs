//! Delivery on one node: a dispatcher that follows the stored endpoints, a worker per
//! active endpoint that leases messages from the endpoint's group and attempts them, a
//! runner for manual sends (resend, recover) and the pruning of the attempt log.
//!
//! A worker never waits on another endpoint: each has its own client, its own task and
//! at most [`CONCURRENCY`] attempts out; its backlog stays in the log (the group reads it
//! page by page), never in memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bifrost_core::group::{Fetch, GroupName, Lease, LeaseToken, MAX_DELAY, NackAction, Verdict, random};
use bifrost_core::{Error, NewEvent, RecordedEvent, StateChange, StreamName, Timestamp};
use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::deliver::{self, Outcome, OutcomeKind};
use crate::endpoint::{DisabledReason, Endpoint};
use crate::error::Result;
use crate::records::{
    AttemptRecord, ENDPOINTS, MessageRecord, MessageStatus, RESENDS, ResendEntry, Trigger, attempt_key,
    attempt_key_before, attempts_scope, decode, encode, message_key, messages_scope,
};
use crate::render::{self, Source};
use crate::{Inner, OPERATIONS_STREAM};

/// Attempts one endpoint has out at once on one node.
const CONCURRENCY: usize = 64;
/// Most finished messages settled together.
const SETTLE_BATCH: usize = 256;
/// How long a fetch waits for a message.
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// Time a manual send may take beyond its timeout before another node takes it over.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);
/// How often the backlog gauges and the attempt log's pruning run.
const GAUGE_EVERY: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// What to do with a message after an attempt.
enum Decision {
    Ack,
    Retry(Duration),
    Park(String),
    /// Not attempted, or refused with `410`: back to the group uncounted, to be sent when
    /// the endpoint is enabled (a disabled endpoint's worker stops, so it waits there).
    Release,
}

/// How soon a released message may be leased again: only a worker that has not yet seen
/// its endpoint disabled would take it, and hand it back again.
const RELEASE_DELAY: Duration = Duration::from_secs(1);

/// A running worker: its endpoint's latest settings, how to stop it, and its task (a
/// worker that ended on its own is started again).
struct Worker {
    endpoint: watch::Sender<Arc<Endpoint>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Follows the stored endpoints until `shutdown`: starts, updates and stops workers, and
/// announces disables that are not announced yet. The gauges and the pruning of the
/// attempt log run in a task of their own, so that slow bookkeeping never delays a change.
pub(crate) async fn run(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let resends = tokio::spawn(run_resends(Arc::clone(&inner), shutdown.clone()));
    let upkeep = tokio::spawn(run_upkeep(Arc::clone(&inner), shutdown.clone()));
    loop {
        let changed = inner.changed.notified();
        match load_endpoints(&inner).await {
            Ok(endpoints) => {
                let disabled = endpoints.values().filter(|e| !e.active()).count();
                metrics::gauge!("bifrost_webhook_endpoints_disabled").set(disabled as f64);
                workers.retain(|id, worker| {
                    let keep = endpoints.get(id).is_some_and(|e| e.active()) && !worker.task.is_finished();
                    if !keep {
                        worker.stop.cancel();
                    }
                    keep
                });
                for (id, endpoint) in &endpoints {
                    if !endpoint.announced
                        && let Err(e) = announce_disabled(&inner, endpoint).await
                    {
                        tracing::warn!(endpoint = %id, error = %e, "cannot announce a disabled endpoint yet");
                    }
                    if !endpoint.active() {
                        continue;
                    }
                    match workers.get(id) {
                        Some(worker) => {
                            if **worker.endpoint.borrow() != **endpoint {
                                worker.endpoint.send_replace(Arc::clone(endpoint));
                            }
                        }
                        None => {
                            let (tx, rx) = watch::channel(Arc::clone(endpoint));
                            let stop = shutdown.child_token();
                            let task = tokio::spawn(run_worker(Arc::clone(&inner), rx, stop.clone()));
                            workers.insert(id.clone(), Worker { endpoint: tx, stop, task });
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the webhook endpoints"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = changed => {}
            () = tokio::time::sleep(inner.settings.refresh) => {}
        }
    }
    for worker in workers.values() {
        worker.stop.cancel();
    }
    let _ = resends.await;
    let _ = upkeep.await;
}

/// The backlog gauges (every 5 s) and the attempt log's pruning (every 10 minutes).
async fn run_upkeep(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut last_prune = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(GAUGE_EVERY) => {}
        }
        let endpoints = match load_endpoints(&inner).await {
            Ok(endpoints) => endpoints,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the webhook endpoints");
                continue;
            }
        };
        for id in endpoints.keys() {
            let backlog = inner.backlog(id).await;
            metrics::gauge!("bifrost_webhook_backlog", "endpoint" => id.clone()).set(backlog as f64);
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            for id in endpoints.keys() {
                if let Err(e) = prune_attempts(&inner, id).await {
                    tracing::warn!(endpoint = %id, error = %e, "cannot prune the attempt log");
                }
                if let Err(e) = prune_messages(&inner, id).await {
                    tracing::warn!(endpoint = %id, error = %e, "cannot prune the message records");
                }
            }
        }
    }
}

/// Every endpoint; a record that does not decode is skipped (and logged), so that one
/// bad record does not stop the others.
async fn load_endpoints(inner: &Inner) -> Result<HashMap<String, Arc<Endpoint>>> {
    let mut endpoints = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let entries = inner.store.scan_state(ENDPOINTS, after.as_deref(), 500).await?;
        let Some(last) = entries.last() else { break };
        after = Some(last.key.clone());
        for entry in entries {
            match decode::<Endpoint>("endpoint", &entry.value) {
                Ok(endpoint) => {
                    endpoints.insert(entry.key, Arc::new(endpoint));
                }
                Err(e) => tracing::error!(endpoint = %entry.key, error = %e, "skipping a webhook endpoint"),
            }
        }
    }
    Ok(endpoints)
}

/// Spaces attempts out to the endpoint's rate limit: a start no sooner than `1/rate` after
/// the previous one. Waiting is not a failure.
struct Pacer {
    next: Mutex<Instant>,
}

impl Pacer {
    async fn wait(&self, rate_per_s: Option<u32>) {
        let Some(rate) = rate_per_s.filter(|&r| r > 0) else { return };
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Leases and attempts one endpoint's messages until stopped.
async fn run_worker(inner: Arc<Inner>, endpoint: watch::Receiver<Arc<Endpoint>>, stop: CancellationToken) {
    let id = endpoint.borrow().id.clone();
    let Ok(name) = GroupName::new(&id) else { return };
    let client = match deliver::client(&inner.policy) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(endpoint = %id, error = %e, "cannot start webhook delivery");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let pacer = Arc::new(Pacer { next: Mutex::new(Instant::now()) });
    let metrics = Arc::new(EndpointMetrics::new(&id));
    let (done, finished) = mpsc::unbounded_channel();
    tokio::spawn(settle_batches(Arc::clone(&inner), name.clone(), finished));
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            permit = Arc::clone(&slots).acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
        };
        let mut permits = vec![first];
        while let Ok(p) = Arc::clone(&slots).try_acquire_owned() {
            permits.push(p);
        }
        // Deferred leases: not written before the attempt; one that a crash cuts short is
        // still counted at its next attempt (the engine's careful restart).
        // A rate-limited endpoint leases no more than it may start in a second, so that no
        // lease runs out while it waits for its turn.
        if let Some(rate) = endpoint.borrow().spec.rate_limit_per_s {
            permits.truncate(usize::try_from(rate).unwrap_or(usize::MAX).max(1));
        }
        let fetch = Fetch {
            consumer: &inner.settings.node,
            max: permits.len(),
            per_stream: 1,
            wait: FETCH_WAIT,
            deferred: true,
        };
        let leases = tokio::select! {
            () = stop.cancelled() => return,
            leases = inner.groups.fetch(&name, fetch) => leases,
        };
        let leases = match leases {
            Ok(leases) => leases,
            Err(Error::GroupNotFound(_)) => return,
            Err(e) => {
                tracing::warn!(endpoint = %id, error = %e, "cannot fetch webhook messages");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for (lease, permit) in leases.into_iter().zip(permits) {
            let inner = Arc::clone(&inner);
            let endpoint = endpoint.clone();
            let client = client.clone();
            let pacer = Arc::clone(&pacer);
            let metrics = Arc::clone(&metrics);
            let done = done.clone();
            tokio::spawn(async move {
                let token = lease.token;
                let (decision, records) =
                    handle_lease(&inner, &endpoint, &client, &pacer, &metrics, lease).await;
                // The settler holds the slot until the message is settled.
                let _ = done.send(Done { token, decision, records, _slot: permit });
            });
        }
    }
}

/// An attempted message on its way to being settled.
struct Done {
    token: LeaseToken,
    decision: Decision,
    /// Its record and attempt-log entry, written before it is settled.
    records: Vec<StateChange>,
    _slot: OwnedSemaphorePermit,
}

/// Settles a worker's messages as their attempts finish, many at a time: one write for the
/// records of all that finished meanwhile, one settle for all their acks (nacks one by
/// one, each with its delay) — a transaction per batch rather than two per message.
async fn settle_batches(inner: Arc<Inner>, name: GroupName, mut finished: mpsc::UnboundedReceiver<Done>) {
    let mut batch = Vec::new();
    while finished.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        let records: Vec<StateChange> =
            batch.iter_mut().flat_map(|d| std::mem::take(&mut d.records)).collect();
        if !records.is_empty()
            && let Err(e) = inner.store.write_state_unflushed(records).await
        {
            tracing::warn!(endpoint = %name, error = %e, "cannot record webhook attempts");
        }
        let acks: Vec<LeaseToken> =
            batch.iter().filter(|d| matches!(d.decision, Decision::Ack)).map(|d| d.token).collect();
        // An ack lost in a crash only sends the message again (at-least-once, the same
        // webhook-id); a retry's schedule and count are written before going on.
        if !acks.is_empty() {
            settle(&inner, &name, &acks, Verdict::Ack, true).await;
        }
        for d in &batch {
            match &d.decision {
                Decision::Ack => {}
                Decision::Retry(delay) => {
                    let verdict = Verdict::Nack(NackAction::Retry(Some(*delay)), None);
                    settle(&inner, &name, &[d.token], verdict, false).await;
                }
                Decision::Park(reason) => {
                    let verdict = Verdict::Nack(NackAction::Park, Some(reason.as_str()));
                    settle(&inner, &name, &[d.token], verdict, false).await;
                }
                Decision::Release => {
                    let verdict = Verdict::Nack(NackAction::Release(RELEASE_DELAY), None);
                    settle(&inner, &name, &[d.token], verdict, false).await;
                }
            }
        }
        batch.clear();
    }
}

async fn settle(
    inner: &Inner,
    name: &GroupName,
    tokens: &[LeaseToken],
    verdict: Verdict<'_>,
    deferred: bool,
) {
    match inner.groups.settle(name, tokens, verdict, deferred).await {
        // Deleted meanwhile: nothing left to settle.
        Ok(_) | Err(Error::GroupNotFound(_)) => {}
        Err(e) => tracing::warn!(endpoint = %name, error = %e, "cannot settle webhook messages"),
    }
}

/// One leased message: filter by routing key, make the attempt, record it. The decision is
/// made whatever becomes of the bookkeeping, so the lease is always settled.
async fn handle_lease(
    inner: &Inner,
    endpoint: &watch::Receiver<Arc<Endpoint>>,
    client: &reqwest::Client,
    pacer: &Pacer,
    metrics: &EndpointMetrics,
    lease: Lease,
) -> (Decision, Vec<StateChange>) {
    let endpoint = Arc::clone(&endpoint.borrow());
    if !endpoint.active() {
        return (Decision::Release, Vec::new());
    }
    let local = endpoint.localize(&lease.event);
    let event: &RecordedEvent = &local;
    let src = Source::from_event(event);
    let transform = endpoint.spec.transform.as_ref();
    match render::routing_key(&src, transform) {
        Ok(key) if !endpoint.spec.matches_routing_key(&key) => return (Decision::Ack, Vec::new()),
        Ok(_) => {}
        Err(e) => {
            return (fail_unrenderable(inner, &endpoint, metrics, event, e.to_string()).await, Vec::new());
        }
    }
    let record = match inner.message_record(&endpoint.id, event.position).await {
        Ok(record) => record,
        Err(e) => {
            tracing::warn!(endpoint = %endpoint.id, error = %e, "cannot read a webhook message's record");
            None
        }
    };
    // Delivered already (a resend got it through, or an ack was lost in a crash): the
    // receiver has it.
    if record.as_ref().is_some_and(|r| r.status == MessageStatus::Succeeded) {
        return (Decision::Ack, Vec::new());
    }
    let (body, content_type) = match stored_body(record.as_ref()) {
        Some(found) => found,
        None => match render::render(&src, endpoint.spec.content_mode, transform) {
            Ok(rendered) => (rendered.body, rendered.content_type.to_owned()),
            Err(e) => {
                return (
                    fail_unrenderable(inner, &endpoint, metrics, event, e.to_string()).await,
                    Vec::new(),
                );
            }
        },
    };
    pacer.wait(endpoint.spec.rate_limit_per_s).await;
    let attempt = Attempt { event, attempt: lease.attempt, trigger: Trigger::Scheduled, body, content_type };
    let (after, records) = make_attempt(inner, &endpoint, client, metrics, &attempt).await;
    let decision = match after {
        AfterAttempt::Delivered => Decision::Ack,
        AfterAttempt::Retry(delay) => Decision::Retry(delay),
        AfterAttempt::Failed(reason) => Decision::Park(reason),
        AfterAttempt::Gone => Decision::Release,
    };
    (decision, records)
}

fn stored_body(record: Option<&MessageRecord>) -> Option<(Bytes, String)> {
    let record = record?;
    let body = record.body.as_ref()?;
    let content_type = record.content_type.clone()?;
    Some((Bytes::copy_from_slice(body.get().as_bytes()), content_type))
}

/// A message whose body cannot be made fails with no attempt.
async fn fail_unrenderable(
    inner: &Inner,
    endpoint: &Endpoint,
    metrics: &EndpointMetrics,
    event: &RecordedEvent,
    error: String,
) -> Decision {
    let record = MessageRecord {
        event_id: event.id,
        position: event.position,
        status: MessageStatus::Failed,
        attempts: 0,
        next_attempt_at: None,
        last_error: Some(error.clone()),
        failed_at: Some(Timestamp::now()),
        content_type: None,
        body: None,
    };
    let key = message_key(event.position);
    let written = match encode(&record) {
        Ok(value) => {
            inner.store.write_state(vec![StateChange::put(messages_scope(&endpoint.id), key, value)]).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        tracing::warn!(endpoint = %endpoint.id, error = %e, "cannot record a webhook message");
    }
    metrics.failed.increment(1);
    Decision::Park(error)
}

/// What an attempt sends, and which one it is.
struct Attempt<'a> {
    event: &'a RecordedEvent,
    attempt: u32,
    trigger: Trigger,
    body: Bytes,
    content_type: String,
}

/// Where a message stands after an attempt.
enum AfterAttempt {
    Delivered,
    Retry(Duration),
    Failed(String),
    /// `410 Gone`: the endpoint is disabled; the message waits for it.
    Gone,
}

/// Makes an attempt and updates the endpoint's failure state (disabling it when it has
/// failed for too long, or answered 410); returns where the message stands and the writes
/// that record the attempt and the message's new state, for the caller to make (in a batch).
/// The bookkeeping is best effort: a store that fails here is logged, never a reason to
/// leave the message unsettled.
async fn make_attempt(
    inner: &Inner,
    endpoint: &Endpoint,
    client: &reqwest::Client,
    metrics: &EndpointMetrics,
    attempt: &Attempt<'_>,
) -> (AfterAttempt, Vec<StateChange>) {
    let webhook_id = format!("{}:{}", attempt.event.id, endpoint.id);
    let at = Timestamp::now();
    let request = deliver::Request {
        webhook_id: &webhook_id,
        body: &attempt.body,
        content_type: &attempt.content_type,
    };
    let outcome = deliver::attempt(client, &inner.policy, endpoint, request).await;
    metrics.attempt(&outcome);

    let now = Timestamp::now();
    let (status, after) = if outcome.succeeded() {
        (MessageStatus::Succeeded, AfterAttempt::Delivered)
    } else if outcome.gone() {
        (MessageStatus::Pending, AfterAttempt::Gone)
    } else if attempt.attempt >= endpoint.spec.max_attempts() {
        let reason = outcome.error.clone().unwrap_or_else(|| "failed".into());
        (MessageStatus::Failed, AfterAttempt::Failed(reason))
    } else {
        (MessageStatus::Pending, AfterAttempt::Retry(retry_delay(inner, endpoint, attempt.attempt, &outcome)))
    };
    let next_attempt_at = match &after {
        AfterAttempt::Retry(delay) => Some(after_delay(now, *delay)),
        _ => None,
    };
    let record = MessageRecord {
        event_id: attempt.event.id,
        position: attempt.event.position,
        status,
        attempts: attempt.attempt,
        next_attempt_at,
        last_error: outcome.error.clone(),
        failed_at: (status == MessageStatus::Failed).then_some(now),
        content_type: Some(attempt.content_type.clone()),
        body: RawValue::from_string(String::from_utf8_lossy(&attempt.body).into_owned()).ok(),
    };
    let key = attempt_key(at);
    let log = AttemptRecord {
        id: key.clone(),
        at,
        event_id: attempt.event.id,
        attempt: attempt.attempt,
        trigger: attempt.trigger,
        succeeded: outcome.succeeded(),
        response_status: outcome.status,
        response_time_ms: u64::try_from(outcome.elapsed.as_millis()).unwrap_or(u64::MAX),
        response_body: outcome.response_body.clone(),
        error: outcome.error.clone(),
    };
    // Bookkeeping for people (the delivery's truth is the group): written unflushed, it
    // survives the process at once and the machine with the next flush.
    let records = match (encode(&record), encode(&log)) {
        (Ok(record), Ok(log)) => vec![
            StateChange::put(messages_scope(&endpoint.id), message_key(attempt.event.position), record),
            StateChange::put(attempts_scope(&endpoint.id), key, log),
        ],
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(endpoint = %endpoint.id, error = %e, "cannot encode a webhook attempt");
            Vec::new()
        }
    };
    match status {
        MessageStatus::Succeeded => metrics.delivered.increment(1),
        MessageStatus::Failed => metrics.failed.increment(1),
        MessageStatus::Pending => {}
    }
    if let Err(e) = note_outcome(inner, endpoint, &outcome).await {
        tracing::warn!(endpoint = %endpoint.id, error = %e, "cannot update a webhook endpoint's failure state");
    }
    (after, records)
}

/// An endpoint's metric handles, made once per worker (and per manual send) rather than
/// looked up, their labels allocated, for every attempt.
pub(crate) struct EndpointMetrics {
    attempts: [metrics::Counter; OutcomeKind::ALL.len()],
    duration: metrics::Histogram,
    delivered: metrics::Counter,
    failed: metrics::Counter,
}

impl EndpointMetrics {
    pub(crate) fn new(endpoint: &str) -> Self {
        let id = endpoint.to_owned();
        Self {
            attempts: OutcomeKind::ALL.map(|kind| {
                metrics::counter!("bifrost_webhook_attempts_total", "endpoint" => id.clone(), "outcome" => kind.as_str())
            }),
            duration: metrics::histogram!("bifrost_webhook_attempt_duration_seconds", "endpoint" => id.clone()),
            delivered: metrics::counter!("bifrost_webhook_deliveries_total", "endpoint" => id.clone(), "outcome" => "delivered"),
            failed: metrics::counter!("bifrost_webhook_deliveries_total", "endpoint" => id, "outcome" => "failed"),
        }
    }

    fn attempt(&self, outcome: &Outcome) {
        self.attempts[outcome.kind as usize].increment(1);
        self.duration.record(outcome.elapsed.as_secs_f64());
    }
}

/// The delay before the attempt after `attempt`: the schedule's entry ±20 %, and at least
/// a `Retry-After` (capped).
fn retry_delay(inner: &Inner, endpoint: &Endpoint, attempt: u32, outcome: &Outcome) -> Duration {
    let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
    let base = endpoint.spec.retry_schedule_ms.get(index).copied().unwrap_or(0);
    let jittered = Duration::from_millis(base).mul_f64(0.8 + 0.4 * random::unit());
    let delay = match outcome.retry_after {
        Some(wait) => jittered.max(wait.min(inner.settings.retry_after_max)),
        None => jittered,
    };
    delay.min(MAX_DELAY)
}

fn after_delay(now: Timestamp, delay: Duration) -> Timestamp {
    let micros = i64::try_from(delay.as_micros()).unwrap_or(i64::MAX);
    Timestamp::from_micros(now.as_micros().saturating_add(micros))
}

/// Keeps `failing_since` and disables the endpoint when it answered 410 or has failed for
/// `disable_after_s`. Only the node whose write disables it appends the operational event.
async fn note_outcome(inner: &Inner, endpoint: &Endpoint, outcome: &Outcome) -> Result<()> {
    let now = Timestamp::now();
    if outcome.succeeded() {
        if endpoint.failing_since.is_some() {
            inner
                .update_endpoint(&endpoint.id, |e| {
                    let changed = e.failing_since.is_some();
                    e.failing_since = None;
                    changed
                })
                .await?;
        }
        return Ok(());
    }
    let disable_after =
        i64::try_from(endpoint.spec.disable_after_s).unwrap_or(i64::MAX).saturating_mul(1_000_000);
    let failing_long_enough =
        |since: Timestamp| now.as_micros().saturating_sub(since.as_micros()) >= disable_after;
    let might_change = endpoint.failing_since.is_none_or(failing_long_enough) || outcome.gone();
    if !might_change {
        return Ok(());
    }
    let mut disabled = None;
    let updated = inner
        .update_endpoint(&endpoint.id, |e| {
            disabled = None;
            if e.disabled_reason.is_some() {
                return false;
            }
            let first_failure = e.failing_since.is_none();
            let since = *e.failing_since.get_or_insert(now);
            if outcome.gone() {
                disabled = Some(DisabledReason::Gone);
            } else if failing_long_enough(since) {
                disabled = Some(DisabledReason::Failing);
            }
            // Only a change is written: a burst of failures on many nodes does not fight
            // over the record.
            if !first_failure && disabled.is_none() {
                return false;
            }
            e.last_status = outcome.status;
            e.last_error = outcome.error.clone();
            if disabled.is_some() {
                e.disabled_reason = disabled;
                e.announced = false;
                e.updated_at = now;
            }
            true
        })
        .await?;
    if let (Some(_), Some(endpoint)) = (disabled, updated) {
        announce_disabled(inner, &endpoint).await?;
    }
    Ok(())
}

/// Appends `bifrost.webhook.endpoint_disabled` to the operations stream for an endpoint
/// whose disable is not announced yet, then marks it announced. The event's id is derived
/// from the disable, so that nodes that both announce it (or a retry after a failure
/// between the two writes) store it once.
pub(crate) async fn announce_disabled(inner: &Inner, endpoint: &Endpoint) -> Result<()> {
    let Some(reason) = endpoint.disabled_reason.filter(|r| *r != DisabledReason::Manual) else {
        return Ok(());
    };
    if endpoint.announced {
        return Ok(());
    }
    tracing::warn!(endpoint = %endpoint.id, url = %endpoint.spec.url, reason = reason.as_str(), "webhook endpoint disabled");
    let data = serde_json::json!({
        "endpoint_id": endpoint.id,
        "url": endpoint.spec.url,
        "reason": reason.as_str(),
        "failing_since": endpoint.failing_since.map(|t| t.to_string()),
        "last_status": endpoint.last_status,
        "last_error": endpoint.last_error,
    });
    let name = format!("{}:disabled:{}", endpoint.id, endpoint.updated_at.as_micros());
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes());
    let event = NewEvent::json("bifrost.webhook.endpoint_disabled", &data)?.with_id(id);
    let stream = StreamName::new(OPERATIONS_STREAM)?;
    inner.store.append(stream, bifrost_core::ExpectedVersion::Any, vec![event]).await?;
    let disabled_at = endpoint.updated_at;
    inner
        .update_endpoint(&endpoint.id, |e| {
            let same_disable = e.updated_at == disabled_at && !e.announced;
            if same_disable {
                e.announced = true;
            }
            same_disable
        })
        .await?;
    Ok(())
}

/// The one attempt of a test send, logged with trigger `test`.
pub(crate) async fn test_attempt(
    inner: &Inner,
    endpoint: &Endpoint,
    src: &Source<'_>,
) -> Result<AttemptRecord> {
    let at = Timestamp::now();
    let webhook_id = format!("{}:{}", src.id, endpoint.id);
    let key = attempt_key(at);
    let mut record = AttemptRecord {
        id: key.clone(),
        at,
        event_id: src.id,
        attempt: 1,
        trigger: Trigger::Test,
        succeeded: false,
        response_status: None,
        response_time_ms: 0,
        response_body: None,
        error: None,
    };
    match render::render(src, endpoint.spec.content_mode, endpoint.spec.transform.as_ref()) {
        Ok(rendered) => {
            let client = deliver::client(&inner.policy).map_err(Error::Internal)?;
            let request = deliver::Request {
                webhook_id: &webhook_id,
                body: &rendered.body,
                content_type: rendered.content_type,
            };
            let outcome = deliver::attempt(&client, &inner.policy, endpoint, request).await;
            EndpointMetrics::new(&endpoint.id).attempt(&outcome);
            record.succeeded = outcome.succeeded();
            record.response_status = outcome.status;
            record.response_time_ms = u64::try_from(outcome.elapsed.as_millis()).unwrap_or(u64::MAX);
            record.response_body = outcome.response_body;
            record.error = outcome.error;
        }
        // Nothing was sent: the attempt is logged with the reason, and no request counted.
        Err(e) => record.error = Some(e.to_string()),
    }
    inner
        .store
        .write_state(vec![StateChange::put(attempts_scope(&endpoint.id), key, encode(&record)?)])
        .await?;
    Ok(record)
}

/// The oldest time the attempt log (and a finished message's record) is kept from.
fn retention_cutoff(inner: &Inner) -> Timestamp {
    let retention = i64::try_from(inner.settings.attempt_retention.as_micros()).unwrap_or(i64::MAX);
    Timestamp::from_micros(Timestamp::now().as_micros().saturating_sub(retention))
}

/// Deletes attempts older than the retention, a page at a time.
async fn prune_attempts(inner: &Inner, id: &str) -> Result<()> {
    let cutoff = retention_cutoff(inner);
    let scope = attempts_scope(id);
    let from = attempt_key_before(cutoff);
    loop {
        let old = inner.store.scan_state(&scope, Some(&from), 500).await?;
        if old.is_empty() {
            return Ok(());
        }
        let changes = old.iter().map(|e| StateChange::delete(&scope, &e.key)).collect();
        inner.store.write_state(changes).await?;
    }
}

/// Most message records one pass looks at, so a long history is pruned over several passes.
const PRUNE_MESSAGES_PER_PASS: usize = 10_000;

/// Deletes the records of delivered or failed messages whose event is older than the
/// retention (pending ones stay, however old). Message keys are positions, so the records to
/// look at are those below the first position recorded inside the retention.
async fn prune_messages(inner: &Inner, id: &str) -> Result<()> {
    let first_kept = first_position_since(inner, retention_cutoff(inner)).await?;
    let scope = messages_scope(id);
    // Keys after this one are positions below `first_kept` (keys sort newest first).
    let mut after = message_key(first_kept);
    let mut looked = 0;
    while looked < PRUNE_MESSAGES_PER_PASS {
        let page = inner.store.scan_state(&scope, Some(&after), 500).await?;
        let Some(last) = page.last() else { return Ok(()) };
        after = last.key.clone();
        looked += page.len();
        let mut changes = Vec::new();
        for entry in &page {
            let record: MessageRecord = decode("message", &entry.value)?;
            if record.status != MessageStatus::Pending {
                changes.push(StateChange::delete(&scope, &entry.key));
            }
        }
        if !changes.is_empty() {
            inner.store.write_state(changes).await?;
        }
    }
    Ok(())
}

/// The lowest position whose event was recorded at or after `cutoff` (one past the head
/// when none was): a binary search over the log, positions being recorded in time order.
async fn first_position_since(inner: &Inner, cutoff: Timestamp) -> Result<u64> {
    let head = *inner.store.head().borrow();
    let (mut lo, mut hi) = (1u64, head.saturating_add(1));
    let every = bifrost_core::LogFilter::default();
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let page = inner.store.read_all(mid - 1, &every, 1).await?;
        let recent = page.events.first().is_none_or(|e| e.recorded_at >= cutoff);
        if recent {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// Runs the manual sends of every endpoint until `shutdown`: claims what is due, attempts
/// it, reschedules or finishes it. Each endpoint's sends go in position order, one at a
/// time, in a task of their own.
async fn run_resends(inner: Arc<Inner>, shutdown: CancellationToken) {
    let busy: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
    let mut clients: HashMap<String, reqwest::Client> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let changed = inner.changed.notified();
        // One client per endpoint with resends; deleted endpoints' go now and then.
        if clients.len() > 1000 {
            clients.clear();
        }
        match due_resends(&inner, &mut cursor).await {
            Ok(due) => {
                for (endpoint_id, entries) in due {
                    let claimed = busy.lock().map(|mut b| b.insert(endpoint_id.clone())).unwrap_or(false);
                    if !claimed {
                        continue;
                    }
                    let client = match clients.get(&endpoint_id) {
                        Some(c) => c.clone(),
                        None => match deliver::client(&inner.policy) {
                            Ok(c) => {
                                clients.insert(endpoint_id.clone(), c.clone());
                                c
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot make a webhook client");
                                continue;
                            }
                        },
                    };
                    let inner = Arc::clone(&inner);
                    let busy = Arc::clone(&busy);
                    tokio::spawn(async move {
                        // A disabled endpoint's sends wait, without a look at each of them.
                        let inactive = matches!(inner.endpoint(&endpoint_id).await, Ok((endpoint, _)) if !endpoint.active());
                        let entries = if inactive { Vec::new() } else { entries };
                        for (key, entry, stored) in entries {
                            if let Err(e) =
                                run_resend(&inner, &client, &endpoint_id, &key, entry, stored).await
                            {
                                tracing::warn!(endpoint = %endpoint_id, error = %e, "a webhook resend failed");
                            }
                        }
                        if let Ok(mut b) = busy.lock() {
                            b.remove(&endpoint_id);
                        }
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the webhook resends"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = changed => {}
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// A claimable resend: its key, its entry and the stored bytes a claim expects.
type Claimable = (String, ResendEntry, Bytes);
/// Claimable resends by endpoint, in key (position) order.
type DueResends = Vec<(String, Vec<Claimable>)>;

/// Keys of the resend queue one pass looks at: a pass's work and memory stay bounded
/// however long the queue (a large recover); the next pass goes on from there.
const RESENDS_PER_PASS: usize = 2000;

/// The due, unclaimed (or abandoned) resends, by endpoint, in key (position) order, among
/// the next [`RESENDS_PER_PASS`] keys after `cursor` (which moves on, and back to the start
/// at the end of the queue).
async fn due_resends(inner: &Inner, cursor: &mut Option<String>) -> Result<DueResends> {
    let now = Timestamp::now();
    let mut by_endpoint: DueResends = Vec::new();
    let mut looked = 0;
    while looked < RESENDS_PER_PASS {
        let entries = inner.store.scan_state(RESENDS, cursor.as_deref(), 500).await?;
        let Some(last) = entries.last() else {
            *cursor = None;
            break;
        };
        *cursor = Some(last.key.clone());
        looked += entries.len();
        for e in entries {
            let entry: ResendEntry = decode("resend", &e.value)?;
            if entry.due > now || entry.claimed_until.is_some_and(|c| c > now) {
                continue;
            }
            let Some((endpoint, _)) = e.key.split_once('/') else { continue };
            match by_endpoint.last_mut() {
                Some((id, list)) if id == endpoint => list.push((e.key.clone(), entry, e.value)),
                _ => by_endpoint.push((endpoint.to_owned(), vec![(e.key.clone(), entry, e.value)])),
            }
        }
    }
    Ok(by_endpoint)
}

/// Claims one manual send and makes its attempt.
async fn run_resend(
    inner: &Inner,
    client: &reqwest::Client,
    endpoint_id: &str,
    key: &str,
    mut entry: ResendEntry,
    stored: Bytes,
) -> Result<()> {
    let endpoint = match inner.endpoint(endpoint_id).await {
        Ok((endpoint, _)) => endpoint,
        Err(crate::WebhookError::NotFound(_)) => {
            inner.store.write_state(vec![StateChange::delete(RESENDS, key)]).await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if !endpoint.active() {
        return Ok(());
    }
    let now = Timestamp::now();
    entry.attempts += 1;
    entry.claimed_until = Some(after_delay(now, endpoint.spec.timeout() + CLAIM_MARGIN));
    let claimed = encode(&entry)?;
    let claim = inner
        .store
        .write_state(vec![
            StateChange::expect(RESENDS, key, Some(stored)),
            StateChange::put(RESENDS, key, claimed.clone()),
        ])
        .await;
    match claim {
        Ok(()) => {}
        Err(Error::StateConflict { .. }) => return Ok(()), // another node has it
        Err(e) => return Err(e.into()),
    }
    let Some(event) = inner.store.event(entry.event_id).await? else {
        inner.store.write_state(vec![StateChange::delete(RESENDS, key)]).await?;
        return Ok(());
    };
    let local = endpoint.localize(&event);
    let src = Source::from_event(&local);
    let rendered = match inner
        .message_record(endpoint_id, event.position)
        .await?
        .as_ref()
        .and_then(|r| stored_body(Some(r)))
    {
        Some(found) => Ok(found),
        None => render::render(&src, endpoint.spec.content_mode, endpoint.spec.transform.as_ref())
            .map(|r| (r.body, r.content_type.to_owned())),
    };
    let (body, content_type) = match rendered {
        Ok(found) => found,
        Err(e) => {
            fail_unrenderable(inner, &endpoint, &EndpointMetrics::new(endpoint_id), &local, e.to_string())
                .await;
            inner.store.write_state(vec![StateChange::delete(RESENDS, key)]).await?;
            return Ok(());
        }
    };
    let attempt =
        Attempt { event: &local, attempt: entry.attempts, trigger: entry.trigger, body, content_type };
    let metrics = EndpointMetrics::new(endpoint_id);
    let (after, records) = make_attempt(inner, &endpoint, client, &metrics, &attempt).await;
    if let Err(e) = inner.store.write_state_unflushed(records).await {
        tracing::warn!(endpoint = %endpoint_id, error = %e, "cannot record a webhook attempt");
    }
    let next = match after {
        AfterAttempt::Delivered | AfterAttempt::Failed(_) => vec![StateChange::delete(RESENDS, key)],
        AfterAttempt::Retry(delay) => {
            entry.due = after_delay(Timestamp::now(), delay);
            entry.claimed_until = None;
            vec![StateChange::put(RESENDS, key, encode(&entry)?)]
        }
        // Disabled by this answer: the send waits for the endpoint, its attempt uncounted.
        AfterAttempt::Gone => {
            entry.attempts = entry.attempts.saturating_sub(1);
            entry.due = Timestamp::now();
            entry.claimed_until = None;
            vec![StateChange::put(RESENDS, key, encode(&entry)?)]
        }
    };
    let mut changes = vec![StateChange::expect(RESENDS, key, Some(claimed))];
    changes.extend(next);
    match inner.store.write_state(changes).await {
        Ok(()) | Err(Error::StateConflict { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if matches!(after, AfterAttempt::Delivered) {
        // A message that had failed for good leaves the delivery group's dead letters.
        if let Ok(name) = GroupName::new(endpoint_id) {
            let _ = inner.groups.discard(&name, event.id).await;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bifrost_core::{DurableStore, EventStore, ExpectedVersion, InMemoryStore, StateStore};

    use super::*;
    use crate::{WebhookSettings, Webhooks};

    async fn append(store: &InMemoryStore) -> RecordedEvent {
        let event = NewEvent::json("t.x", &serde_json::json!({})).unwrap();
        let stream = StreamName::new("s-1").unwrap();
        let result = store.append(stream, ExpectedVersion::Any, vec![event]).await.unwrap();
        store
            .read_all(result.first_position - 1, &bifrost_core::LogFilter::default(), 1)
            .await
            .unwrap()
            .events[0]
            .clone()
    }

    fn record(event: &RecordedEvent, status: MessageStatus) -> StateChange {
        let record = MessageRecord {
            event_id: event.id,
            position: event.position,
            status,
            attempts: 1,
            next_attempt_at: None,
            last_error: None,
            failed_at: None,
            content_type: None,
            body: None,
        };
        StateChange::put(messages_scope("ep"), message_key(event.position), encode(&record).unwrap())
    }

    #[tokio::test]
    async fn finished_message_records_older_than_the_retention_are_pruned() {
        let store = InMemoryStore::shared();
        let old: Vec<RecordedEvent> =
            [append(&store).await, append(&store).await, append(&store).await].into();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let recent = append(&store).await;
        let settings =
            WebhookSettings { attempt_retention: Duration::from_millis(150), ..WebhookSettings::default() };
        let webhooks = Webhooks::open(Arc::clone(&store) as Arc<dyn DurableStore>, settings).await.unwrap();
        store
            .write_state(vec![
                record(&old[0], MessageStatus::Succeeded),
                record(&old[1], MessageStatus::Pending),
                record(&old[2], MessageStatus::Failed),
                record(&recent, MessageStatus::Succeeded),
            ])
            .await
            .unwrap();

        assert_eq!(
            first_position_since(&webhooks.inner, retention_cutoff(&webhooks.inner)).await.unwrap(),
            4
        );
        prune_messages(&webhooks.inner, "ep").await.unwrap();
        let left: Vec<u64> = store
            .scan_state(&messages_scope("ep"), None, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| decode::<MessageRecord>("message", &e.value).unwrap().position)
            .collect();
        assert_eq!(left, [4, 2], "the recent one and the old pending one stay");
    }
}
