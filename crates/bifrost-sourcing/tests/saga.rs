//! Sagas on a real store: the checkout of `common::shop` placing orders, reserving stock
//! through a command bus, cancelling on a timeout or a refusal; restarts between steps,
//! cancelled timeouts and redelivery.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a failed test

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bifrost_core::{
    ExpectedVersion, LogFilter, NewEvent, Position, RecordedEvent, StateChange, StateEntry, StateStore,
    StreamName,
};
use bifrost_sourcing::saga::{Step, Trigger, step_of};
use bifrost_sourcing::{
    CommandBus, CommandContext, CommandHandler, Error, ManualClock, Reaction, Repository, RunningSaga, Saga,
    SagaManager, Timeout, Upcasters,
};
use bytes::Bytes;
use common::shop::{
    BACKORDER, Calls, Checkout, CheckoutState, Counted, EXPIRE, GIFT, OUT_OF_STOCK, Order, OrderCommand,
    OrderEvent, ReserveStock, Stock, StockError, StockEvent, place,
};
use common::{TestStore, eventually, head, stream_events, within};

/// A timeout no test waits for.
const NEVER: Duration = Duration::from_secs(3600);

fn start(store: &TestStore, calls: &Calls, expire_after: Duration) -> RunningSaga {
    let saga = Checkout { expire_after };
    SagaManager::new(saga, store.events.clone(), store.state.clone(), calls.bus(store)).unwrap().start()
}

/// [`start`] on a clock the test moves: timeouts fire when the test says, not after a wait.
fn start_clocked(
    store: &TestStore,
    calls: &Calls,
    expire_after: Duration,
    clock: &Arc<ManualClock>,
) -> RunningSaga {
    let saga = Checkout { expire_after };
    let manager =
        SagaManager::new(saga, store.events.clone(), store.state.clone(), calls.bus(store)).unwrap();
    manager.with_clock(clock.clone()).start()
}

/// Waits until every manager has reacted to and dispatched the whole log, and nothing they
/// did added to it: every step is stored and its commands handled.
async fn settle(running: &[&RunningSaga], store: &TestStore) {
    within("the saga to settle", async {
        loop {
            let at = head(&store.events);
            for saga in running {
                saga.wait_for(at).await;
            }
            if head(&store.events) == at {
                return;
            }
        }
    })
    .await;
    for saga in running {
        assert_eq!(saga.status().error, None);
    }
}

async fn steps(store: &TestStore, order: &str) -> Vec<Step<CheckoutState>> {
    let events = stream_events(&store.events, &format!("checkout-{order}")).await;
    events.iter().map(|e| step_of(e).unwrap()).collect()
}

async fn order_events(store: &TestStore, order: &str) -> Vec<OrderEvent> {
    let events = stream_events(&store.events, &format!("order-{order}")).await;
    events.iter().map(|e| bifrost_sourcing::event::decode(e).unwrap()).collect()
}

async fn stock_events(store: &TestStore, order: &str) -> Vec<StockEvent> {
    let events = stream_events(&store.events, &format!("stock-{order}")).await;
    events.iter().map(|e| bifrost_sourcing::event::decode(e).unwrap()).collect()
}

/// The timeouts the store holds for the checkout, due first.
async fn timeout_records(store: &TestStore) -> Vec<Timeout> {
    let entries = store.state.scan_state("sourcing/saga-timeouts/checkout", None, 1000).await.unwrap();
    entries.iter().map(|e| serde_json::from_slice(&e.value).unwrap()).collect()
}

fn placed(item: &str) -> OrderEvent {
    OrderEvent::Placed { item: item.to_owned() }
}

fn cancelled(reason: &str) -> OrderEvent {
    OrderEvent::Cancelled { reason: reason.to_owned() }
}

fn event_type(step: &Step<CheckoutState>) -> &str {
    match &step.trigger {
        Trigger::Event { event_type, .. } => event_type,
        other => panic!("the step was caused by {other:?}, not an event"),
    }
}

#[tokio::test]
async fn an_order_whose_stock_is_reserved_completes_the_checkout_with_one_command() {
    let store = TestStore::sqlite().await;
    let calls = Calls::default();
    let running = start(&store, &calls, NEVER);
    let position = place(&store, "o1", "book").await;
    settle(&[&running], &store).await;
    running.stop().await;

    assert_eq!((calls.reserve(), calls.order()), (1, 0));
    let steps = steps(&store, "o1").await;
    assert_eq!(steps.len(), 2);

    let first = &steps[0];
    assert!(
        matches!(&first.trigger, Trigger::Event { position: p, event_type, .. } if *p == position && event_type == "shop.order_placed"),
        "{:?}",
        first.trigger
    );
    assert_eq!(first.commands.len(), 1);
    let command = &first.commands[0];
    assert_eq!(command.command_type, "shop.reserve_stock");
    let sent: ReserveStock = serde_json::from_value(command.payload.clone()).unwrap();
    assert_eq!(sent, ReserveStock { order: "o1".into(), item: "book".into() });
    assert_eq!(command.metadata.correlation_id.as_deref(), Some("o1"));
    assert_eq!(first.scheduled.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), [EXPIRE]);
    assert_eq!(first.pending, first.scheduled);
    assert!(!first.done);

    let second = &steps[1];
    assert_eq!(event_type(second), "shop.stock_reserved");
    assert_eq!(second.dropped, first.scheduled, "the reservation cancels the timeout");
    assert!(second.pending.is_empty() && second.commands.is_empty() && second.done);
    assert_eq!(second.state, CheckoutState { order: Some("o1".into()), reserved: true, cancelled: false });

    // The reservation was stored by the command's handler, correlated to the instance.
    let reserved = stream_events(&store.events, "stock-o1").await;
    assert_eq!(reserved.len(), 1);
    let metadata = reserved[0].metadata().unwrap();
    assert_eq!(metadata.correlation_id.as_deref(), Some("o1"));
    assert_eq!(order_events(&store, "o1").await, [placed("book")]);
    assert!(timeout_records(&store).await.is_empty(), "the cancelled timeout's record stayed");
}

#[tokio::test]
async fn a_timeout_scheduled_before_a_restart_fires_once_after_it() {
    let mut store = TestStore::sqlite().await;
    let calls = Calls::default();
    let clock = Arc::new(ManualClock::default());
    let expire = Duration::from_secs(3600);
    let running = start_clocked(&store, &calls, expire, &clock);
    place(&store, "o1", &format!("{BACKORDER}-chair")).await;
    settle(&[&running], &store).await;

    // The step that scheduled the timeout is stored and dispatched: its command was handled
    // (the chair is back-ordered, never reserved) and its timeout recorded.
    let before = steps(&store, "o1").await;
    assert_eq!(before.len(), 1);
    let scheduled = before[0].scheduled.clone();
    assert_eq!(scheduled.len(), 1);
    assert_eq!(timeout_records(&store).await, scheduled);
    assert_eq!((calls.reserve(), calls.order()), (1, 0));
    assert!(matches!(stock_events(&store, "o1").await[..], [StockEvent::Backordered { .. }]));

    running.abort();
    store = store.reopen().await;
    // The timeout had not fired when the process went down.
    assert_eq!(steps(&store, "o1").await.len(), 1);
    assert_eq!(timeout_records(&store).await, scheduled);

    let running = start_clocked(&store, &calls, expire, &clock);
    // The hour passes after the restart.
    settle(&[&running], &store).await;
    clock.advance(Duration::from_secs(3601));
    eventually("the timeout to fire after the restart", || {
        let store = &store;
        async move { (order_events(store, "o1").await.len() == 2).then_some(()) }
    })
    .await;
    settle(&[&running], &store).await;
    running.stop().await;

    assert_eq!(calls.order(), 1, "CancelOrder was handled more than once");
    assert_eq!(calls.reserve(), 1, "the restart sent the first step's command again");
    assert_eq!(order_events(&store, "o1").await, [placed("backorder-chair"), cancelled("expired")]);
    let after = steps(&store, "o1").await;
    assert_eq!(after.len(), 2);
    let fired = &after[1];
    assert_eq!(fired.trigger, Trigger::Timeout { id: scheduled[0].id, name: EXPIRE.into() });
    assert_eq!(fired.dropped, scheduled);
    assert!(fired.done && fired.pending.is_empty());
    let sent: Vec<OrderCommand> =
        fired.commands.iter().map(|c| serde_json::from_value(c.payload.clone()).unwrap()).collect();
    assert_eq!(sent, [OrderCommand::Cancel { order: "o1".into(), reason: "expired".into() }]);
    assert!(timeout_records(&store).await.is_empty(), "the fired timeout's record stayed");

    // Another restart finds nothing left to fire.
    store = store.reopen().await;
    let running = start(&store, &calls, expire);
    settle(&[&running], &store).await;
    running.stop().await;
    assert_eq!((calls.order(), steps(&store, "o1").await.len()), (1, 2));
}

#[tokio::test]
async fn a_timeout_cancelled_in_time_never_fires() {
    let store = TestStore::sqlite().await;
    let calls = Calls::default();
    let clock = Arc::new(ManualClock::default());
    let running = start_clocked(&store, &calls, Duration::from_secs(60), &clock);
    // "lamp" is reserved at once; the desk never is, and its timeout, due after the lamp's,
    // shows when the lamp's would have fired.
    place(&store, "lamp", "lamp").await;
    place(&store, "desk", &format!("{BACKORDER}-desk")).await;
    settle(&[&running], &store).await;
    clock.advance(Duration::from_secs(61));
    eventually("the desk's timeout to fire", || {
        let store = &store;
        async move { (order_events(store, "desk").await.len() == 2).then_some(()) }
    })
    .await;
    settle(&[&running], &store).await;
    running.stop().await;

    let lamp = steps(&store, "lamp").await;
    let desk = steps(&store, "desk").await;
    assert!(lamp[0].scheduled[0].due_at <= desk[0].scheduled[0].due_at);
    assert_eq!(lamp.len(), 2);
    assert_eq!(event_type(&lamp[1]), "shop.stock_reserved");
    assert_eq!(lamp[1].dropped, lamp[0].scheduled);
    assert_eq!(order_events(&store, "lamp").await, [placed("lamp")], "the lamp's order was cancelled");
    assert_eq!(calls.order(), 1, "only the desk's order is cancelled");
    assert!(matches!(desk[1].trigger, Trigger::Timeout { .. }));
    assert!(timeout_records(&store).await.is_empty());
}

#[tokio::test]
async fn a_refused_or_unknown_command_is_compensated() {
    let store = TestStore::sqlite().await;
    let calls = Calls::default();
    let running = start(&store, &calls, NEVER);
    place(&store, "refused", OUT_OF_STOCK).await;
    place(&store, "unknown", &format!("{GIFT}-card")).await;
    settle(&[&running], &store).await;
    running.stop().await;

    // The warehouse refused the reservation: the order is cancelled instead.
    let refused = steps(&store, "refused").await;
    assert_eq!(refused.len(), 2);
    let reserve = &refused[0].commands[0];
    let Trigger::CommandFailed { command_id, command_type, error } = &refused[1].trigger else {
        panic!("{:?}", refused[1].trigger)
    };
    assert_eq!((command_id, command_type.as_str()), (&reserve.id, "shop.reserve_stock"));
    assert_eq!(error, "command rejected: unobtainium is out of stock");
    let reason = format!("shop.reserve_stock failed: {error}");
    let sent: Vec<OrderCommand> =
        refused[1].commands.iter().map(|c| serde_json::from_value(c.payload.clone()).unwrap()).collect();
    assert_eq!(sent, [OrderCommand::Cancel { order: "refused".into(), reason: reason.clone() }]);
    assert!(refused[1].done && refused[1].pending.is_empty());
    assert_eq!(refused[1].dropped, refused[0].scheduled);
    assert_eq!(order_events(&store, "refused").await, [placed(OUT_OF_STOCK), cancelled(&reason)]);
    assert!(stock_events(&store, "refused").await.is_empty());

    // Nobody wraps gifts: the command after the unknown one is not sent.
    let unknown = steps(&store, "unknown").await;
    assert_eq!(unknown.len(), 2);
    let types: Vec<_> = unknown[0].commands.iter().map(|c| c.command_type.as_str()).collect();
    assert_eq!(types, ["shop.wrap_gift", "shop.reserve_stock"]);
    let Trigger::CommandFailed { command_type, error, .. } = &unknown[1].trigger else {
        panic!("{:?}", unknown[1].trigger)
    };
    assert_eq!(command_type, "shop.wrap_gift");
    assert!(error.contains("no handler is registered"), "{error}");
    assert!(unknown[1].done);
    let events = order_events(&store, "unknown").await;
    assert!(
        matches!(&events[..], [_, OrderEvent::Cancelled { reason }] if reason.starts_with("shop.wrap_gift failed")),
        "{events:?}"
    );
    assert!(stock_events(&store, "unknown").await.is_empty(), "a command after the failed one was sent");

    assert_eq!((calls.reserve(), calls.order()), (1, 2));
    assert!(timeout_records(&store).await.is_empty());
}

/// Every order reacted to once per event and every command's effect stored once.
async fn assert_each_order_checked_out_once(store: &TestStore, orders: usize) {
    for i in 0..orders {
        let order = format!("o{i}");
        let steps = steps(store, &order).await;
        let types: Vec<_> = steps.iter().map(event_type).collect();
        assert_eq!(types, ["shop.order_placed", "shop.stock_reserved"], "order {order}");
        assert!(steps[1].done);
        assert_eq!(stock_events(store, &order).await.len(), 1, "order {order} reserved twice");
        assert_eq!(order_events(store, &order).await.len(), 1, "order {order} was cancelled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_managers_of_one_saga_react_once_per_event_and_store_each_effect_once() {
    let store = TestStore::sqlite().await;
    let calls = Calls::default();
    let first = start(&store, &calls, NEVER);
    let second = start(&store, &calls, NEVER);
    // Placed while both run, so that they meet on the same instances.
    for i in 0..50 {
        place(&store, &format!("o{i}"), "book").await;
    }
    settle(&[&first, &second], &store).await;
    first.stop().await;
    second.stop().await;

    assert_each_order_checked_out_once(&store, 50).await;
    // Both dispatchers sent every reservation; each was stored once.
    assert_eq!(calls.reserve(), 100);
    assert_eq!(calls.order(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manager_aborted_mid_run_and_restarted_stores_each_effect_once() {
    let mut store = TestStore::sqlite().await;
    let calls = Calls::default();
    for i in 0..50 {
        place(&store, &format!("o{i}"), "book").await;
    }
    // 50 placements, then a step, a reservation and a step per order.
    for (round, threshold) in [60, 110, 150, 190].into_iter().enumerate() {
        if round == 2 {
            store = store.reopen().await;
        }
        let running = start(&store, &calls, NEVER);
        within("the threshold", running.wait_for(threshold)).await;
        tokio::time::sleep(Duration::from_millis(1 + round as u64)).await;
        running.abort();
    }
    let running = start(&store, &calls, NEVER);
    settle(&[&running], &store).await;
    running.stop().await;

    assert_eq!(head(&store.events), 200, "the log holds more than one step and effect per order");
    assert_each_order_checked_out_once(&store, 50).await;
    assert!(calls.reserve() >= 50);
    assert_eq!(calls.order(), 0);
}

/// Counts each sender's pings (`test.pinged` v2, `{"from": ..}`). A ping that says
/// `"poison": true` makes its code fail (parked), `"flaky": true` fails as if the store were
/// unavailable (retried); `"remind": name, "after_ms": ..` schedules a timeout,
/// `"forget": name` cancels it (neither completes the instance).
struct Pings {
    failures: Arc<AtomicUsize>,
}

impl Saga for Pings {
    const NAME: &'static str = "pings";
    type State = u32;

    fn filter(&self) -> LogFilter {
        LogFilter::default().with_types(["test.pinged"]).unwrap()
    }

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        let data: serde_json::Value = event.data_as().ok()?;
        data.get("from")?.as_str().map(str::to_owned)
    }

    fn handle(&self, count: &mut u32, event: &RecordedEvent) -> bifrost_sourcing::Result<Reaction> {
        let data: serde_json::Value = event.data_as().unwrap();
        if data.get("poison").is_some() {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Handler("a poisoned ping".into()));
        }
        if data.get("flaky").is_some() {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Store(bifrost_core::Error::Unavailable("a flaky ping".into())));
        }
        *count += 1;
        let mut reaction = Reaction::none();
        if let Some(name) = data.get("remind").and_then(|n| n.as_str()) {
            let after = Duration::from_millis(data["after_ms"].as_u64().unwrap());
            reaction = reaction.schedule(name, after, serde_json::Value::Null);
        }
        if let Some(name) = data.get("forget").and_then(|n| n.as_str()) {
            reaction = reaction.cancel(name);
        }
        Ok(reaction)
    }
}

async fn ping(store: &TestStore, data: serde_json::Value) -> Position {
    let event = NewEvent::json("test.pinged", &data).unwrap().with_schema_version(2);
    append(store, "pinger-1", event).await
}

async fn append(store: &TestStore, stream: &str, event: NewEvent) -> Position {
    let stream = StreamName::new(stream).unwrap();
    store.events.append(stream, ExpectedVersion::Any, vec![event]).await.unwrap().last_position
}

fn start_pings(store: &TestStore, state: Arc<dyn StateStore>) -> (RunningSaga, Arc<AtomicUsize>) {
    let failures = Arc::new(AtomicUsize::new(0));
    let saga = Pings { failures: failures.clone() };
    let manager = SagaManager::new(saga, store.events.clone(), state, Arc::new(CommandBus::new())).unwrap();
    (manager.start(), failures)
}

#[tokio::test]
async fn a_reaction_that_keeps_failing_transiently_stays_in_the_status_while_the_other_loops_run_on() {
    let store = TestStore::sqlite().await;
    let (running, failures) = start_pings(&store, store.state.clone());
    let poisoned = ping(&store, serde_json::json!({ "from": "ada", "flaky": true })).await;
    eventually("a few failed attempts", || {
        let failed = failures.load(Ordering::SeqCst);
        async move { (failed >= 4).then_some(()) }
    })
    .await;
    let status = running.status();
    assert!(status.error.as_deref().is_some_and(|e| e.contains("a flaky ping")), "{status:?}");
    assert!(status.reacted < poisoned);
    assert_eq!(status.parked, 0, "a transient failure is retried, not parked");

    // Unrelated events keep the dispatcher going; its progress is no success of the reactor.
    let other =
        append(&store, "other-1", NewEvent::json("test.other", &serde_json::json!({})).unwrap()).await;
    let status = eventually("the dispatcher to pass the new event", || {
        let status = running.status();
        async move { (status.dispatched >= other).then_some(status) }
    })
    .await;
    assert!(status.error.is_some(), "the dispatcher's progress hid the reactor's failure: {status:?}");
    assert!(status.reacted < poisoned);
    running.abort();
}

#[tokio::test]
async fn an_event_the_sagas_code_fails_on_is_parked_and_the_saga_goes_on() {
    let store = TestStore::sqlite().await;
    let (running, failures) = start_pings(&store, store.state.clone());
    let poisoned = ping(&store, serde_json::json!({ "from": "ada", "poison": true })).await;
    let after = ping(&store, serde_json::json!({ "from": "ada" })).await;
    let status = eventually("the reactor to pass the poisoned ping", || {
        let status = running.status();
        async move { (status.reacted >= after).then_some(status) }
    })
    .await;
    assert_eq!((status.parked, failures.load(Ordering::SeqCst)), (1, 1), "{status:?}");
    let parked = running.parked(10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].item, format!("event/{poisoned}"));
    assert!(parked[0].error.contains("a poisoned ping"), "{:?}", parked[0]);
    running.stop().await;
    let steps: Vec<Step<u32>> =
        stream_events(&store.events, "pings-ada").await.iter().map(|e| step_of(e).unwrap()).collect();
    assert_eq!(steps.iter().map(|s| s.state).collect::<Vec<_>>(), [1], "only the later ping was counted");
}

#[tokio::test]
async fn sagas_correlate_old_events_after_upcasting_them() {
    let store = TestStore::sqlite().await;
    // Version 1 of test.pinged named the sender "sender".
    let v1 = NewEvent::json("test.pinged", &serde_json::json!({ "sender": "bob" }))
        .unwrap()
        .with_schema_version(1);
    append(&store, "pinger-1", v1).await;
    ping(&store, serde_json::json!({ "from": "bob" })).await;
    let upcasters = Upcasters::new().register("test.pinged", 1, |v| {
        let sender = v.get("sender").cloned().ok_or("no sender")?;
        Ok(serde_json::json!({ "from": sender }))
    });
    let saga = Pings { failures: Arc::default() };
    let manager =
        SagaManager::new(saga, store.events.clone(), store.state.clone(), Arc::new(CommandBus::new()))
            .unwrap()
            .with_upcasters(upcasters);
    let running = manager.start();
    settle(&[&running], &store).await;
    running.stop().await;
    let steps: Vec<Step<u32>> =
        stream_events(&store.events, "pings-bob").await.iter().map(|e| step_of(e).unwrap()).collect();
    assert_eq!(steps.iter().map(|s| s.state).collect::<Vec<_>>(), [1, 2], "the old ping was not counted");
}

/// A state store that counts scans (the saga's timer scans its timeouts).
struct CountingState {
    inner: Arc<dyn StateStore>,
    scans: AtomicUsize,
}

#[async_trait]
impl StateStore for CountingState {
    async fn write_state(&self, changes: Vec<StateChange>) -> bifrost_core::Result<()> {
        self.inner.write_state(changes).await
    }

    async fn read_state(&self, scope: &str, key: &str) -> bifrost_core::Result<Option<Bytes>> {
        self.inner.read_state(scope, key).await
    }

    async fn scan_state(
        &self,
        scope: &str,
        after: Option<&str>,
        limit: usize,
    ) -> bifrost_core::Result<Vec<StateEntry>> {
        self.scans.fetch_add(1, Ordering::SeqCst);
        self.inner.scan_state(scope, after, limit).await
    }
}

#[tokio::test]
async fn a_saga_whose_handle_is_dropped_runs_on_without_spinning() {
    let store = TestStore::sqlite().await;
    let state = Arc::new(CountingState { inner: store.state.clone(), scans: AtomicUsize::new(0) });
    let (running, _) = start_pings(&store, state.clone());
    ping(&store, serde_json::json!({ "from": "cy" })).await;
    settle(&[&running], &store).await;
    drop(running);

    // With no timeout pending the timer has nothing to look at until one is scheduled.
    let scans = state.scans.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = state.scans.load(Ordering::SeqCst) - scans;
    assert!(idle < 20, "the timer scanned {idle} times while idle");

    // Still running: a new ping is reacted to.
    ping(&store, serde_json::json!({ "from": "cy" })).await;
    eventually("the second ping to be counted", || {
        let store = &store;
        async move { (stream_events(&store.events, "pings-cy").await.len() == 2).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_timeout_cancelled_by_a_step_that_does_not_complete_never_fires() {
    let store = TestStore::sqlite().await;
    let (running, _) = start_pings(&store, store.state.clone());
    ping(&store, serde_json::json!({ "from": "di", "remind": "first", "after_ms": 300 })).await;
    ping(&store, serde_json::json!({ "from": "di", "forget": "first" })).await;
    // Due after the first: once it has fired, the first would have too.
    ping(&store, serde_json::json!({ "from": "di", "remind": "second", "after_ms": 600 })).await;
    let fired = |steps: &[Step<u32>]| -> Vec<String> {
        let names = steps.iter().filter_map(|s| match &s.trigger {
            Trigger::Timeout { name, .. } => Some(name.clone()),
            _ => None,
        });
        names.collect()
    };
    eventually("the second reminder", || {
        let store = &store;
        async move {
            let events = stream_events(&store.events, "pings-di").await;
            let steps: Vec<Step<u32>> = events.iter().map(|e| step_of(e).unwrap()).collect();
            (!fired(&steps).is_empty()).then_some(())
        }
    })
    .await;
    settle(&[&running], &store).await;
    running.stop().await;

    let events = stream_events(&store.events, "pings-di").await;
    let steps: Vec<Step<u32>> = events.iter().map(|e| step_of(e).unwrap()).collect();
    assert_eq!(fired(&steps), ["second"], "the cancelled reminder fired");
    assert_eq!(steps[1].dropped, steps[0].scheduled);
    assert!(steps[1].pending.is_empty() && !steps[1].done);
    assert!(steps[0].scheduled[0].due_at <= steps[2].scheduled[0].due_at);
    let records = store.state.scan_state("sourcing/saga-timeouts/pings", None, 10).await.unwrap();
    assert!(records.is_empty(), "{records:?}");
}

/// A saga whose name would not be a stream category.
struct Dashed;

impl Saga for Dashed {
    const NAME: &'static str = "order-saga";
    type State = u32;

    fn filter(&self) -> LogFilter {
        LogFilter::default()
    }

    fn correlate(&self, _: &RecordedEvent) -> Option<String> {
        None
    }

    fn handle(&self, _: &mut u32, _: &RecordedEvent) -> bifrost_sourcing::Result<Reaction> {
        Ok(Reaction::none())
    }
}

#[tokio::test]
async fn a_saga_name_with_a_dash_is_refused() {
    let store = TestStore::memory();
    let refused =
        SagaManager::new(Dashed, store.events.clone(), store.state.clone(), Arc::new(CommandBus::new()));
    let err = refused.err().expect("a dashed name must be refused");
    assert!(err.to_string().contains("order-saga"), "{err}");
}

/// How the scripted warehouse answers a reservation of one item.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    /// Reserves the item through the stock's repository.
    Accept,
    /// Refuses it as out of stock this once, then accepts it: the item was restocked.
    RefuseOnce,
    /// Fails as if the store were unavailable: transient.
    Unavailable,
    /// Fails with a handler error (an outage): neither transient nor a refusal.
    Outage,
}

const UNREACHABLE: &str = "the warehouse is unreachable";
const CLOSED: &str = "the warehouse is closed";

/// A warehouse whose answer to each item the test sets (an item not set is accepted). It
/// outlives restarts: each start builds a new bus on it.
#[derive(Default)]
struct Warehouse {
    answers: Mutex<HashMap<String, Answer>>,
    /// Every answer given, in order.
    given: Mutex<Vec<(String, Answer)>>,
}

impl Warehouse {
    fn set(&self, item: &str, answer: Answer) {
        self.answers.lock().unwrap().insert(item.to_owned(), answer);
    }

    fn answer(&self, item: &str) -> Answer {
        let mut answers = self.answers.lock().unwrap();
        let answer = answers.get(item).copied().unwrap_or(Answer::Accept);
        if answer == Answer::RefuseOnce {
            answers.insert(item.to_owned(), Answer::Accept);
        }
        self.given.lock().unwrap().push((item.to_owned(), answer));
        answer
    }

    /// The answers given for `item`, in order.
    fn given(&self, item: &str) -> Vec<Answer> {
        let given = self.given.lock().unwrap();
        given.iter().filter(|(i, _)| i == item).map(|(_, a)| *a).collect()
    }

    fn count(&self, item: &str, answer: Answer) -> usize {
        self.given(item).into_iter().filter(|a| *a == answer).count()
    }
}

struct Reservations {
    warehouse: Arc<Warehouse>,
    stock: Repository<Stock>,
}

#[async_trait]
impl CommandHandler<ReserveStock> for Reservations {
    async fn handle(&self, command: ReserveStock, context: CommandContext) -> bifrost_sourcing::Result<()> {
        match self.warehouse.answer(&command.item) {
            Answer::Accept => self.stock.execute_with(&command.order, &command, &context).await.map(|_| ()),
            Answer::RefuseOnce => Err(Error::rejected(StockError::OutOfStock { item: command.item })),
            Answer::Unavailable => Err(Error::Store(bifrost_core::Error::Unavailable(UNREACHABLE.into()))),
            Answer::Outage => Err(Error::Handler(CLOSED.into())),
        }
    }
}

/// The checkout reserving through `warehouse`, its order commands counted in `orders`.
fn start_with(store: &TestStore, warehouse: &Arc<Warehouse>, orders: &Arc<AtomicUsize>) -> RunningSaga {
    let mut bus = CommandBus::new();
    let stock = Repository::<Stock>::new(store.events.clone());
    bus.register::<ReserveStock>(Reservations { warehouse: warehouse.clone(), stock }).unwrap();
    let inner = Repository::<Order>::new(store.events.clone());
    bus.register::<OrderCommand>(Counted { inner, calls: orders.clone() }).unwrap();
    let saga = Checkout { expire_after: NEVER };
    SagaManager::new(saga, store.events.clone(), store.state.clone(), Arc::new(bus)).unwrap().start()
}

/// The types of the commands whose refusal a step of `steps` records.
fn refused_commands(steps: &[Step<CheckoutState>]) -> Vec<&str> {
    let refused = steps.iter().filter_map(|s| match &s.trigger {
        Trigger::CommandFailed { command_type, .. } => Some(command_type.as_str()),
        _ => None,
    });
    refused.collect()
}

const LAMP_REFUSED: &str = "shop.reserve_stock failed: command rejected: lamp is out of stock";

#[tokio::test]
async fn a_refused_command_is_not_sent_again_when_its_step_is_read_again_after_a_restart() {
    let mut store = TestStore::sqlite().await;
    let warehouse = Arc::new(Warehouse::default());
    let orders = Arc::new(AtomicUsize::new(0));
    warehouse.set("lamp", Answer::RefuseOnce);
    let running = start_with(&store, &warehouse, &orders);
    place(&store, "o1", "lamp").await;
    settle(&[&running], &store).await;
    running.stop().await;
    assert_eq!(order_events(&store, "o1").await, [placed("lamp"), cancelled(LAMP_REFUSED)]);
    assert_eq!(orders.load(Ordering::SeqCst), 1);

    // The lamp is back in stock, and the dispatcher's checkpoint is lost, as when the process
    // goes down after storing the compensation and before checkpointing the batch: the
    // restarted dispatcher reads both steps again.
    let lost = StateChange::delete("sourcing/checkpoints", "saga/checkout/dispatcher");
    store.state.write_state(vec![lost]).await.unwrap();
    store = store.reopen().await;
    let running = start_with(&store, &warehouse, &orders);
    settle(&[&running], &store).await;
    running.stop().await;

    assert_eq!(orders.load(Ordering::SeqCst), 2, "the dispatcher did not read the steps again");
    assert_eq!(warehouse.given("lamp"), [Answer::RefuseOnce], "the refused reservation was sent again");
    assert!(stock_events(&store, "o1").await.is_empty(), "the lamp was reserved after the saga gave up");
    let steps = steps(&store, "o1").await;
    assert_eq!(steps.len(), 2);
    assert_eq!(refused_commands(&steps), ["shop.reserve_stock"]);
    assert_eq!(order_events(&store, "o1").await, [placed("lamp"), cancelled(LAMP_REFUSED)]);
}

#[tokio::test]
async fn a_refused_command_is_not_sent_again_when_a_later_step_of_its_batch_fails_transiently() {
    let store = TestStore::sqlite().await;
    let warehouse = Arc::new(Warehouse::default());
    let orders = Arc::new(AtomicUsize::new(0));
    // While the warehouse is unreachable both orders' steps are stored and neither is
    // dispatched: the lamp's, first in the log, fails every batch.
    warehouse.set("lamp", Answer::Unavailable);
    warehouse.set("desk", Answer::Unavailable);
    let running = start_with(&store, &warehouse, &orders);
    place(&store, "o1", "lamp").await;
    let desk = place(&store, "o2", "desk").await;
    eventually("both orders' steps", || {
        let status = running.status();
        async move { (status.reacted >= desk).then_some(()) }
    })
    .await;
    running.stop().await;
    assert!(warehouse.given("desk").is_empty());

    // Restarted, the dispatcher reads both steps in one batch: the lamp is refused and
    // compensated, then the desk fails the batch, which is read again with the lamp restocked.
    warehouse.set("lamp", Answer::RefuseOnce);
    let running = start_with(&store, &warehouse, &orders);
    eventually("the batch to be read again after the refusal", || {
        let failed = warehouse.count("desk", Answer::Unavailable);
        async move { (failed >= 2).then_some(()) }
    })
    .await;
    warehouse.set("desk", Answer::Accept);
    settle(&[&running], &store).await;
    running.stop().await;

    let lamp = warehouse.given("lamp");
    assert_eq!(lamp.last(), Some(&Answer::RefuseOnce), "the refused reservation was sent again: {lamp:?}");
    assert_eq!(warehouse.count("lamp", Answer::RefuseOnce), 1);
    assert!(stock_events(&store, "o1").await.is_empty(), "the lamp was reserved after the saga gave up");
    let lamp_steps = steps(&store, "o1").await;
    assert_eq!(lamp_steps.len(), 2);
    assert_eq!(refused_commands(&lamp_steps), ["shop.reserve_stock"]);
    assert_eq!(order_events(&store, "o1").await, [placed("lamp"), cancelled(LAMP_REFUSED)]);

    // The desk's transient failure was retried, not compensated.
    let desk_steps = steps(&store, "o2").await;
    let types: Vec<_> = desk_steps.iter().map(event_type).collect();
    assert_eq!(types, ["shop.order_placed", "shop.stock_reserved"]);
    assert!(desk_steps[1].done);
    assert_eq!(stock_events(&store, "o2").await.len(), 1);
    assert_eq!(order_events(&store, "o2").await, [placed("desk")]);
}

/// The desk's reservation fails with `failure` until the warehouse recovers: the status
/// reports it (`message`) meanwhile, nothing is compensated or parked, and the reservation
/// is stored once when it goes through.
async fn check_failing_reservation_is_retried_not_compensated(failure: Answer, message: &str) {
    let store = TestStore::sqlite().await;
    let warehouse = Arc::new(Warehouse::default());
    let orders = Arc::new(AtomicUsize::new(0));
    warehouse.set("desk", failure);
    let running = start_with(&store, &warehouse, &orders);
    place(&store, "o1", "desk").await;
    let status = eventually("a few failed attempts", || {
        let failed = warehouse.count("desk", failure);
        let status = running.status();
        async move { (failed >= 3 && status.error.is_some()).then_some(status) }
    })
    .await;
    assert!(status.error.as_deref().is_some_and(|e| e.contains(message)), "{status:?}");
    assert_eq!(status.parked, 0, "a failed command was parked");
    assert_eq!(steps(&store, "o1").await.len(), 1, "the failure was compensated");
    assert_eq!(orders.load(Ordering::SeqCst), 0);

    warehouse.set("desk", Answer::Accept);
    settle(&[&running], &store).await;
    assert_eq!(running.status().parked, 0);
    running.stop().await;

    let steps = steps(&store, "o1").await;
    let types: Vec<_> = steps.iter().map(event_type).collect();
    assert_eq!(types, ["shop.order_placed", "shop.stock_reserved"]);
    assert!(steps[1].done);
    assert!(warehouse.count("desk", Answer::Accept) >= 1);
    assert_eq!(stock_events(&store, "o1").await.len(), 1, "the reservation was stored twice");
    assert_eq!(order_events(&store, "o1").await, [placed("desk")]);
    assert_eq!(orders.load(Ordering::SeqCst), 0, "the order was cancelled");
}

#[tokio::test]
async fn a_command_failing_transiently_is_retried_and_not_compensated() {
    check_failing_reservation_is_retried_not_compensated(Answer::Unavailable, UNREACHABLE).await;
}

#[tokio::test]
async fn a_command_whose_handler_fails_without_refusing_is_retried_and_not_compensated() {
    check_failing_reservation_is_retried_not_compensated(Answer::Outage, CLOSED).await;
}

/// An alarm the saga's code fails on (not transiently) when it rings.
const BROKEN: &str = "broken";

/// Sets the alarms of a `test.alarm_set` event, `{"from": .., "alarms": [[name, after_ms], ..]}`;
/// the state is the names of the alarms that rang.
struct Alarms;

impl Saga for Alarms {
    const NAME: &'static str = "alarms";
    type State = Vec<String>;

    fn filter(&self) -> LogFilter {
        LogFilter::default().with_types(["test.alarm_set"]).unwrap()
    }

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        let data: serde_json::Value = event.data_as().ok()?;
        data.get("from")?.as_str().map(str::to_owned)
    }

    fn handle(&self, _: &mut Vec<String>, event: &RecordedEvent) -> bifrost_sourcing::Result<Reaction> {
        let data: serde_json::Value = event.data_as().unwrap();
        let mut reaction = Reaction::none();
        for alarm in data["alarms"].as_array().unwrap() {
            let after = Duration::from_millis(alarm[1].as_u64().unwrap());
            reaction = reaction.schedule(alarm[0].as_str().unwrap(), after, serde_json::Value::Null);
        }
        Ok(reaction)
    }

    fn on_timeout(&self, rang: &mut Vec<String>, timeout: &Timeout) -> bifrost_sourcing::Result<Reaction> {
        if timeout.name == BROKEN {
            return Err(Error::Handler(format!("alarm {} is broken", timeout.id).into()));
        }
        rang.push(timeout.name.clone());
        Ok(Reaction::none())
    }
}

async fn alarm_steps(store: &TestStore, from: &str) -> Vec<Step<Vec<String>>> {
    let events = stream_events(&store.events, &format!("alarms-{from}")).await;
    events.iter().map(|e| step_of(e).unwrap()).collect()
}

#[tokio::test]
async fn a_timeout_the_sagas_code_fails_on_is_parked_and_later_timeouts_still_fire() {
    let store = TestStore::sqlite().await;
    let manager =
        SagaManager::new(Alarms, store.events.clone(), store.state.clone(), Arc::new(CommandBus::new()))
            .unwrap();
    let running = manager.start();
    let alarms = serde_json::json!({ "from": "eve", "alarms": [[BROKEN, 100], ["wake", 300]] });
    append(&store, "clock-1", NewEvent::json("test.alarm_set", &alarms).unwrap()).await;
    eventually("the later alarm to ring", || {
        let store = &store;
        async move {
            let steps = alarm_steps(store, "eve").await;
            steps
                .iter()
                .any(|s| matches!(&s.trigger, Trigger::Timeout { name, .. } if name == "wake"))
                .then_some(())
        }
    })
    .await;
    settle(&[&running], &store).await;
    let status = running.status();
    let parked = running.parked(10).await.unwrap();
    running.stop().await;

    let steps = alarm_steps(&store, "eve").await;
    assert_eq!(steps.len(), 2, "the broken alarm made a step");
    let [broken, wake] = &steps[0].scheduled[..] else { panic!("{:?}", steps[0].scheduled) };
    assert_eq!((broken.name.as_str(), wake.name.as_str()), (BROKEN, "wake"));
    assert!(broken.due_at <= wake.due_at);
    assert_eq!(steps[1].trigger, Trigger::Timeout { id: wake.id, name: "wake".into() });
    assert_eq!(steps[1].state, ["wake"]);

    assert_eq!(status.parked, 1, "{status:?}");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].item, format!("timeout/{}", broken.id));
    assert!(parked[0].error.contains(&format!("alarm {} is broken", broken.id)), "{:?}", parked[0]);
    // The parked timeout's record went with it: it is not tried again.
    let records = store.state.scan_state("sourcing/saga-timeouts/alarms", None, 10).await.unwrap();
    assert!(records.is_empty(), "{records:?}");
}
