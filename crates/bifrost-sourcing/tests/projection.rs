//! Projections on a real store: keyed views built from the log, progress of a running
//! projection, resuming after a crash without applying an event twice, retries after a
//! failing batch, rebuilds, upcasting and live updates.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a failed test

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bifrost_core::{
    Category, EventType, ExpectedVersion, LogFilter, NewEvent, Position, RecordedEvent, StateChange,
    StreamName,
};
use bifrost_sourcing::event::encode;
use bifrost_sourcing::{
    DomainEvent, Error, Projection, ProjectionRunner, Repository, RunningProjection, Upcasters, View,
    ViewProjection,
};
use common::{Account, AccountEvent, TestStore, deposit, eventually, head, open, within};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// One account's balance and how many of its events the view has seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Balance {
    balance: i64,
    events: u64,
}

impl View for Balance {
    type Event = AccountEvent;

    fn key(_: &AccountEvent, recorded: &RecordedEvent) -> Option<String> {
        recorded.stream.as_str().strip_prefix("account-").map(str::to_owned)
    }

    fn evolve(view: Option<Self>, event: &AccountEvent, _: &RecordedEvent) -> Option<Self> {
        let mut view = view.unwrap_or_default();
        view.events += 1;
        match event {
            AccountEvent::Opened { .. } => {}
            AccountEvent::Deposited { amount } => view.balance += amount,
            AccountEvent::Withdrew { amount } => view.balance -= amount,
        }
        Some(view)
    }
}

fn accounts_only() -> LogFilter {
    LogFilter { category: Some(Category::new("account").unwrap()), ..LogFilter::default() }
}

fn balances(store: &TestStore, name: &str) -> Arc<ViewProjection<Balance>> {
    Arc::new(ViewProjection::new(name, store.state.clone(), accounts_only()))
}

/// Appends an event no account view reads.
async fn note(store: &TestStore, text: &str) -> Position {
    let event = NewEvent::json("audit.noted", &serde_json::json!({ "text": text })).unwrap();
    let stream = StreamName::new("audit-1").unwrap();
    store.events.append(stream, ExpectedVersion::Any, vec![event]).await.unwrap().last_position
}

/// Opens `accounts` accounts and deposits into each `rounds` times, `per_append` deposits
/// per append with the accounts taking turns; returns the views the events call for.
async fn fill(
    store: &TestStore,
    accounts: usize,
    rounds: usize,
    per_append: usize,
) -> BTreeMap<String, Balance> {
    let mut expected = BTreeMap::new();
    for a in 0..accounts {
        let id = format!("a{a}");
        Repository::<Account>::new(store.events.clone()).execute(&id, &open(&id)).await.unwrap();
        expected.insert(id, Balance { balance: 0, events: 1 });
    }
    for start in (0..rounds).step_by(per_append) {
        for a in 0..accounts {
            let id = format!("a{a}");
            let stream = StreamName::new(&format!("account-{id}")).unwrap();
            let view = expected.get_mut(&id).unwrap();
            let mut events = Vec::new();
            for round in start..(start + per_append).min(rounds) {
                let amount = (round % 7 + a) as i64 + 1;
                view.balance += amount;
                view.events += 1;
                events.push(encode(&AccountEvent::Deposited { amount }).unwrap());
            }
            store.events.append(stream, ExpectedVersion::Any, events).await.unwrap();
        }
    }
    expected
}

async fn all_views(projection: &ViewProjection<Balance>) -> BTreeMap<String, Balance> {
    projection.list(None, 1000).await.unwrap().into_iter().collect()
}

#[tokio::test]
async fn catch_up_builds_keyed_views_that_match_the_events_and_skips_other_events() {
    let store = TestStore::sqlite().await;
    let repo = Repository::<Account>::new(store.events.clone());
    for id in ["1", "2", "3"] {
        repo.execute(id, &open(id)).await.unwrap();
    }
    note(&store, "between").await;
    repo.execute("1", &deposit("1", 30)).await.unwrap();
    repo.execute("2", &deposit("2", 5)).await.unwrap();
    repo.execute("1", &common::AccountCommand::Withdraw { id: "1".into(), amount: 12 }).await.unwrap();
    // The log ends with events outside the filter: the checkpoint still moves past them.
    note(&store, "after 1").await;
    let end = note(&store, "after 2").await;

    let projection = balances(&store, "balances");
    let runner = ProjectionRunner::new(store.events.clone(), projection.clone()).with_batch_size(2);
    assert_eq!(runner.catch_up().await.unwrap(), end);
    assert_eq!(projection.checkpoint().await.unwrap(), end);

    assert_eq!(projection.get("1").await.unwrap(), Some(Balance { balance: 18, events: 3 }));
    assert_eq!(projection.get("2").await.unwrap(), Some(Balance { balance: 5, events: 2 }));
    assert_eq!(projection.get("3").await.unwrap(), Some(Balance { balance: 0, events: 1 }));
    assert_eq!(projection.get("4").await.unwrap(), None);
    let keys: Vec<_> = projection.list(None, 10).await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["1", "2", "3"]);
    let after_1: Vec<_> = projection.list(Some("1"), 1).await.unwrap();
    assert_eq!(after_1, [("2".to_owned(), Balance { balance: 5, events: 2 })]);

    // Nothing new: a second catch-up applies nothing twice.
    assert_eq!(runner.catch_up().await.unwrap(), end);
    assert_eq!(projection.get("1").await.unwrap(), Some(Balance { balance: 18, events: 3 }));
}

/// A projection whose batches wait for a permit, so a test can hold it mid-run.
struct Gated<P> {
    inner: Arc<P>,
    permits: Arc<Semaphore>,
}

#[async_trait]
impl<P: Projection> Projection for Gated<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn filter(&self) -> LogFilter {
        self.inner.filter()
    }

    async fn checkpoint(&self) -> bifrost_sourcing::Result<Position> {
        self.inner.checkpoint().await
    }

    async fn apply(
        &self,
        events: Vec<RecordedEvent>,
        from: Position,
        to: Position,
    ) -> bifrost_sourcing::Result<()> {
        self.permits.acquire().await.expect("the gate stays open").forget();
        self.inner.apply(events, from, to).await
    }

    async fn reset(&self) -> bifrost_sourcing::Result<()> {
        self.inner.reset().await
    }
}

#[tokio::test]
async fn a_started_runner_reports_its_checkpoint_and_lag_until_it_has_caught_up() {
    let store = TestStore::sqlite().await;
    let expected = fill(&store, 4, 25, 5).await;
    let end = head(&store.events);
    assert_eq!(end, 104);

    let views = balances(&store, "balances");
    let permits = Arc::new(Semaphore::new(3));
    let gated = Arc::new(Gated { inner: views.clone(), permits: permits.clone() });
    let running = ProjectionRunner::new(store.events.clone(), gated).with_batch_size(10).start();

    // Three batches of ten, then the gate holds it.
    let status = within("three batches", running.wait_for(30)).await;
    assert_eq!((status.checkpoint, status.head, status.lag()), (30, end, end - 30));
    assert_eq!(status.error, None);
    assert_eq!(views.checkpoint().await.unwrap(), 30);
    assert_eq!(running.status().lag(), end - 30, "the runner went past the gate");

    permits.add_permits(1000);
    let status = within("the end of the log", running.wait_for(end)).await;
    assert_eq!((status.checkpoint, status.lag()), (end, 0));
    assert_eq!(all_views(&views).await, expected);
    running.stop().await;
}

#[tokio::test]
async fn a_projection_killed_mid_run_resumes_from_its_checkpoint_without_applying_an_event_twice() {
    let mut store = TestStore::sqlite().await;
    let expected = fill(&store, 5, 600, 25).await;
    let end = head(&store.events);
    assert_eq!(end, 3005);

    let mut last = 0;
    for (round, threshold) in [250, 700, 1100, 1650, 2100, 2600].into_iter().enumerate() {
        if round == 3 {
            // A process restart between two crashes.
            store = store.reopen().await;
        }
        let views = balances(&store, "balances");
        let resumed_at = views.checkpoint().await.unwrap();
        assert!(resumed_at >= last, "the checkpoint went back from {last} to {resumed_at}");
        let running = ProjectionRunner::new(store.events.clone(), views).with_batch_size(7).start();
        let status = within("the threshold", running.wait_for(threshold)).await;
        assert!(status.checkpoint >= threshold);
        // Let it run on for a moment, so that it stops wherever it happens to be: reading
        // the log, reading its views or writing a batch.
        tokio::time::sleep(Duration::from_millis(1 + round as u64 % 3)).await;
        // A write the aborted runner handed to the store may still land now: the fenced
        // checkpoint makes the next runner's overlapping batch fail and reload instead of
        // applying those events again.
        running.abort();
        last = status.checkpoint;
    }

    let views = balances(&store, "balances");
    let resumed_at = views.checkpoint().await.unwrap();
    assert!((last..end).contains(&resumed_at), "resumed at {resumed_at}, after {last}");
    let runner = ProjectionRunner::new(store.events.clone(), views.clone()).with_batch_size(7);
    assert_eq!(runner.catch_up().await.unwrap(), end);
    let views = all_views(&views).await;
    assert_eq!(views.len(), 5);
    for (key, view) in &expected {
        assert_eq!(views.get(key), Some(view), "view {key}: an event was applied twice or missed");
    }
}

/// A read model in memory, updated together with its checkpoint under one lock (its
/// "transaction"), that fails the batch reaching past `fail_at` the first `failures` times.
/// Each attempt at that batch notes the error the runner's status showed at the time; the
/// retries wait until the test has handed over the runner's handle.
struct FlakyCounts {
    inner: Mutex<(HashMap<String, u64>, Position)>,
    fail_at: Position,
    failures: usize,
    attempts: Mutex<Vec<Option<String>>>,
    running: Mutex<Option<RunningProjection>>,
    handed_over: Semaphore,
}

impl FlakyCounts {
    fn new(fail_at: Position, failures: usize) -> Self {
        Self {
            inner: Mutex::new((HashMap::new(), 0)),
            fail_at,
            failures,
            attempts: Mutex::new(Vec::new()),
            running: Mutex::new(None),
            handed_over: Semaphore::new(0),
        }
    }
}

#[async_trait]
impl Projection for FlakyCounts {
    fn name(&self) -> &str {
        "flaky-counts"
    }

    fn filter(&self) -> LogFilter {
        accounts_only()
    }

    async fn checkpoint(&self) -> bifrost_sourcing::Result<Position> {
        Ok(self.inner.lock().unwrap().1)
    }

    async fn apply(
        &self,
        events: Vec<RecordedEvent>,
        _from: Position,
        checkpoint: Position,
    ) -> bifrost_sourcing::Result<()> {
        let at = self.inner.lock().unwrap().1;
        if at < self.fail_at && checkpoint >= self.fail_at {
            if !self.attempts.lock().unwrap().is_empty() {
                drop(self.handed_over.acquire().await.unwrap());
            }
            let seen = self.running.lock().unwrap().as_ref().and_then(|r| r.status().error);
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(seen);
            if attempts.len() <= self.failures {
                return Err(Error::Handler("the read model's database is down".into()));
            }
        }
        let mut inner = self.inner.lock().unwrap();
        for event in &events {
            *inner.0.entry(event.stream.as_str().to_owned()).or_default() += 1;
        }
        inner.1 = checkpoint;
        Ok(())
    }

    async fn reset(&self) -> bifrost_sourcing::Result<()> {
        *self.inner.lock().unwrap() = (HashMap::new(), 0);
        Ok(())
    }
}

#[tokio::test]
async fn a_failing_batch_is_reported_and_retried_from_the_checkpoint_until_it_succeeds() {
    let store = TestStore::sqlite().await;
    let expected = fill(&store, 3, 200, 20).await;
    note(&store, "not counted").await;
    let end = head(&store.events);

    let counts = Arc::new(FlakyCounts::new(300, 3));
    let running = ProjectionRunner::new(store.events.clone(), counts.clone()).with_batch_size(50).start();
    let error = eventually("the failure to be reported", || {
        let error = running.status().error;
        async move { error }
    })
    .await;
    assert!(error.contains("the read model's database is down"), "{error}");
    assert!(running.status().checkpoint < 300, "a failed batch moved the checkpoint");
    *counts.running.lock().unwrap() = Some(running);
    counts.handed_over.add_permits(1);

    eventually("the batch to succeed", || {
        let done = counts.inner.lock().unwrap().1 == end;
        async move { done.then_some(()) }
    })
    .await;
    let running = counts.running.lock().unwrap().take().unwrap();
    let status = within("the end of the log", running.wait_for(end)).await;
    assert_eq!((status.checkpoint, status.error), (end, None), "success clears the failure");
    running.stop().await;

    // Every retry ran while the status showed the failure: reloading the checkpoint before
    // it is not a successful batch.
    let attempts = counts.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 4, "three failures, then the batch went through: {attempts:?}");
    assert!(attempts[1..].iter().all(Option::is_some), "a retry hid the failure: {attempts:?}");

    let (counted, checkpoint) = counts.inner.lock().unwrap().clone();
    assert_eq!(checkpoint, end);
    let counted: BTreeMap<_, _> = counted.into_iter().collect();
    let expected: BTreeMap<_, _> =
        expected.into_iter().map(|(k, v)| (format!("account-{k}"), v.events)).collect();
    assert_eq!(counted, expected, "a retried batch was applied twice or lost");
}

#[tokio::test]
async fn rebuild_forgets_the_views_and_replays_the_log_to_the_same_views() {
    let store = TestStore::sqlite().await;
    let expected = fill(&store, 3, 40, 8).await;
    note(&store, "the end").await;
    let end = head(&store.events);
    let views = balances(&store, "balances");
    let runner = ProjectionRunner::new(store.events.clone(), views.clone()).with_batch_size(16);
    runner.catch_up().await.unwrap();
    let built = all_views(&views).await;
    assert_eq!(built, expected);

    // A view the log does not call for, and one gone wrong: a rebuild puts both right.
    let scope = "sourcing/views/balances";
    let wrong = serde_json::to_vec(&Balance { balance: -1, events: 999 }).unwrap();
    store
        .state
        .write_state(vec![
            StateChange::put(scope, "stray", wrong.clone()),
            StateChange::put(scope, "a1", wrong),
        ])
        .await
        .unwrap();
    assert_ne!(all_views(&views).await, built);

    assert_eq!(runner.rebuild().await.unwrap(), end);
    assert_eq!(all_views(&views).await, built);
    assert_eq!(views.checkpoint().await.unwrap(), end);
    // Reset alone leaves nothing behind.
    views.reset().await.unwrap();
    assert_eq!((all_views(&views).await.len(), views.checkpoint().await.unwrap()), (0, 0));
}

/// A meter's readings. Version 1 of `meter.read` held kilowatt-hours; version 2 holds
/// watt-hours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum MeterEvent {
    #[serde(rename = "meter.read")]
    Read { watt_hours: u64 },
}

impl DomainEvent for MeterEvent {
    fn schema_version(_: &str) -> u32 {
        2
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Consumption {
    watt_hours: u64,
}

impl View for Consumption {
    type Event = MeterEvent;

    fn key(_: &MeterEvent, recorded: &RecordedEvent) -> Option<String> {
        Some(recorded.stream.as_str().to_owned())
    }

    fn evolve(view: Option<Self>, event: &MeterEvent, _: &RecordedEvent) -> Option<Self> {
        let MeterEvent::Read { watt_hours } = event;
        Some(Consumption { watt_hours: view.unwrap_or_default().watt_hours + watt_hours })
    }
}

#[tokio::test]
async fn projections_read_old_events_through_the_upcasters() {
    let store = TestStore::sqlite().await;
    let stream = StreamName::new("meter-7").unwrap();
    let v1 =
        NewEvent::new(EventType::new("meter.read").unwrap(), br#"{"kwh":3}"#.to_vec()).with_schema_version(1);
    let v2 = encode(&MeterEvent::Read { watt_hours: 250 }).unwrap();
    assert_eq!(v2.schema_version, 2);
    store.events.append(stream, ExpectedVersion::NoStream, vec![v1, v2]).await.unwrap();
    let filter = LogFilter::default().with_types(["meter.read"]).unwrap();

    let without =
        Arc::new(ViewProjection::<Consumption>::new("without", store.state.clone(), filter.clone()));
    let err = ProjectionRunner::new(store.events.clone(), without).catch_up().await.unwrap_err();
    assert!(matches!(err, Error::Decode { schema_version: 1, .. }), "{err}");

    let upcasters = Upcasters::new().register("meter.read", 1, |v| {
        let kwh = v.get("kwh").and_then(serde_json::Value::as_u64).ok_or("no kwh")?;
        Ok(serde_json::json!({ "watt_hours": kwh * 1000 }))
    });
    let views = Arc::new(ViewProjection::<Consumption>::new("consumption", store.state.clone(), filter));
    ProjectionRunner::new(store.events.clone(), views.clone())
        .with_upcasters(upcasters)
        .catch_up()
        .await
        .unwrap();
    assert_eq!(views.get("meter-7").await.unwrap(), Some(Consumption { watt_hours: 3250 }));
}

#[tokio::test]
async fn a_started_runner_applies_events_appended_after_it_caught_up() {
    let store = TestStore::sqlite().await;
    let repo = Repository::<Account>::new(store.events.clone());
    repo.execute("1", &open("1")).await.unwrap();
    let views = balances(&store, "balances");
    let running = ProjectionRunner::new(store.events.clone(), views.clone()).start();
    within("catch-up", running.wait_for(head(&store.events))).await;
    assert_eq!(views.get("1").await.unwrap(), Some(Balance { balance: 0, events: 1 }));

    repo.execute("1", &deposit("1", 40)).await.unwrap();
    repo.execute("2", &open("2")).await.unwrap();
    let status = within("the new events", running.wait_for(head(&store.events))).await;
    assert_eq!(status.lag(), 0);
    assert_eq!(views.get("1").await.unwrap(), Some(Balance { balance: 40, events: 2 }));
    assert_eq!(views.get("2").await.unwrap(), Some(Balance { balance: 0, events: 1 }));

    // Events outside the filter move it on too.
    let noted = note(&store, "live").await;
    assert_eq!(within("the note", running.wait_for(noted)).await.checkpoint, noted);
    running.stop().await;
    assert_eq!(views.checkpoint().await.unwrap(), noted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runners_of_one_projection_at_once_apply_every_event_exactly_once() {
    for store in [TestStore::memory(), TestStore::sqlite().await] {
        let expected = fill(&store, 5, 400, 25).await;
        let end = head(&store.events);
        // Two processes of a rolling deploy: each has its own projection object over the
        // same state, and both run the projection at once, in small batches.
        let first = balances(&store, "balances");
        let second = balances(&store, "balances");
        let a = ProjectionRunner::new(store.events.clone(), first.clone()).with_batch_size(5).start();
        let b = ProjectionRunner::new(store.events.clone(), second.clone()).with_batch_size(5).start();
        for running in [&a, &b] {
            let reached = tokio::time::timeout(Duration::from_secs(30), running.wait_for(end)).await;
            assert!(reached.is_ok(), "a runner did not reach the head: {:?}", running.status());
        }
        a.stop().await;
        b.stop().await;
        let views = all_views(&first).await;
        for (key, view) in &expected {
            assert_eq!(views.get(key), Some(view), "view {key}: an event was applied twice or missed");
        }
    }
}

#[tokio::test]
async fn a_corrupt_checkpoint_halts_the_runner_and_is_reported_instead_of_retried_forever() {
    let store = TestStore::sqlite().await;
    fill(&store, 2, 3, 1).await;
    let end = head(&store.events);
    let garbage = StateChange::put("sourcing/checkpoints", "projection/balances", &b"not a position"[..]);
    store.state.write_state(vec![garbage]).await.unwrap();

    let projection = balances(&store, "balances");
    let running = ProjectionRunner::new(store.events.clone(), projection.clone()).start();
    // The runner ends on the fault, so the wait ends without reaching the head.
    let status = within("the runner to halt", running.wait_for(end)).await;
    assert!(status.halted, "{status:?}");
    let error = status.error.clone().unwrap_or_default();
    assert!(error.contains("checkpoint projection/balances"), "names what is corrupt: {error}");
    assert_eq!(status.checkpoint, 0);
    assert!(all_views(&projection).await.is_empty(), "nothing was applied past the fault");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(running.status(), status, "the runner stays halted");
}
