//! The in-process bus: pattern subscriptions, durable consumers, retry policies, dead
//! letters, isolation, batching and the transient path.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bifrost_bus::{
    Backoff, BatchOptions, Bus, ConsumerOptions, GroupFilter, HandlerError, ReplaySelection, RetryPolicy,
    StartFrom, TransientMessage,
};
use bifrost_core::testkit::{event, events, stream};
use bifrost_core::{EventStore, ExpectedVersion, InMemoryStore, RecordedEvent};

/// Polls `check` until it holds, or fails after 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`eventually`] for checks that must await.
async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::new(
        max_attempts,
        Backoff::exponential(Duration::from_millis(20), Duration::from_millis(200)),
    )
}

#[tokio::test]
async fn subscribe_gets_matching_events_from_now_on_until_unsubscribed() {
    let store = InMemoryStore::shared();
    store.append(stream("order-0"), ExpectedVersion::Any, vec![event("order.placed", "{}")]).await.unwrap();
    let bus = Bus::new(store.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sub = {
        let seen = seen.clone();
        bus.subscribe("order.*", move |e: RecordedEvent| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(e.event_type.to_string());
                Ok(())
            }
        })
        .await
        .unwrap()
    };
    for t in ["order.placed", "order.item.added", "user.created", "order.shipped"] {
        store.append(stream("order-1"), ExpectedVersion::Any, vec![event(t, "{}")]).await.unwrap();
    }
    eventually("two order events are handled", || seen.lock().unwrap().len() == 2).await;
    sub.unsubscribe().await.unwrap();
    store.append(stream("order-1"), ExpectedVersion::Any, vec![event("order.placed", "{}")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(*seen.lock().unwrap(), ["order.placed", "order.shipped"]);
}

#[tokio::test]
async fn retries_hit_max_attempts_then_the_event_is_parked_with_the_handler_and_reason() {
    let store = InMemoryStore::shared();
    store.append(stream("pay-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    let bus = Bus::new(store.clone());
    let calls = Arc::new(AtomicU32::new(0));
    let options =
        ConsumerOptions { retry: fast_retry(4), handler_name: "charge".into(), ..ConsumerOptions::default() };
    let sub = {
        let calls = calls.clone();
        bus.consumer("payments", GroupFilter::default(), options, move |_e: RecordedEvent| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(HandlerError::retryable("gateway timeout"))
            }
        })
        .await
        .unwrap()
    };
    let group = sub.group().clone();
    eventually_async("the event is parked", || async { group.status().await.unwrap().parked == 1 }).await;
    let dead = group.dead_letters(None, 10).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(dead[0].dead_letter.attempts, 4);
    assert_eq!(dead[0].dead_letter.reason, "charge: gateway timeout");
    sub.unsubscribe().await.unwrap();
}

#[tokio::test]
async fn a_permanent_error_or_a_refusing_predicate_parks_at_once() {
    let store = InMemoryStore::shared();
    store.append(stream("a-1"), ExpectedVersion::Any, events(2)).await.unwrap();
    let bus = Bus::new(store.clone());
    let calls = Arc::new(AtomicU32::new(0));
    // The predicate retries only errors that mention "busy".
    let retry = fast_retry(5).retry_if(|e| e.message().contains("busy"));
    let options = ConsumerOptions { retry, concurrency: 1, ..ConsumerOptions::default() };
    let sub = {
        let calls = calls.clone();
        bus.consumer("strict", GroupFilter::default(), options, move |e: RecordedEvent| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if e.version == 1 {
                    Err(HandlerError::retryable("invalid total"))
                } else {
                    Err("busy".into())
                }
            }
        })
        .await
        .unwrap()
    };
    let group = sub.group().clone();
    eventually_async("both are parked", || async { group.status().await.unwrap().parked == 2 }).await;
    // 1 call for the first (not retryable per the predicate), 5 for the second.
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    sub.unsubscribe().await.unwrap();
}

#[tokio::test]
async fn replaying_a_dead_letter_delivers_it_again() {
    let store = InMemoryStore::shared();
    store.append(stream("inv-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    let bus = Bus::new(store.clone());
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handled = Arc::new(AtomicU32::new(0));
    let options = ConsumerOptions { retry: RetryPolicy::none(), ..ConsumerOptions::default() };
    let sub = {
        let (healthy, handled) = (healthy.clone(), handled.clone());
        bus.consumer("inventory", GroupFilter::default(), options, move |_e: RecordedEvent| {
            let (healthy, handled) = (healthy.clone(), handled.clone());
            async move {
                if !healthy.load(Ordering::SeqCst) {
                    return Err(HandlerError::permanent("poison"));
                }
                handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap()
    };
    let group = sub.group().clone();
    eventually_async("the poisoned event is parked", || async { group.status().await.unwrap().parked == 1 })
        .await;
    healthy.store(true, Ordering::SeqCst);
    assert_eq!(group.replay(ReplaySelection::All).await.unwrap(), 1);
    eventually("the replayed event is handled", || handled.load(Ordering::SeqCst) == 1).await;
    assert_eq!(group.status().await.unwrap().parked, 0);
    sub.unsubscribe().await.unwrap();
}

#[tokio::test]
async fn one_failing_or_panicking_handler_does_not_hold_back_another() {
    let store = InMemoryStore::shared();
    let bus = Bus::new(store.clone());
    let good = Arc::new(AtomicUsize::new(0));
    let slow_options = ConsumerOptions {
        retry: RetryPolicy::new(1000, Backoff::fixed(Duration::from_millis(5))),
        start: StartFrom::End,
        ..ConsumerOptions::default()
    };
    let failing = bus
        .subscribe_with(GroupFilter::default(), slow_options, |e: RecordedEvent| async move {
            if e.version.is_multiple_of(2) {
                panic!("handler bug");
            }
            Err(HandlerError::retryable("always failing"))
        })
        .await
        .unwrap();
    let healthy = {
        let good = good.clone();
        bus.subscribe("#", move |_e: RecordedEvent| {
            let good = good.clone();
            async move {
                good.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap()
    };
    for i in 0..50 {
        store.append(stream(&format!("s-{}", i % 5)), ExpectedVersion::Any, events(1)).await.unwrap();
    }
    eventually("the healthy handler saw every event", || good.load(Ordering::SeqCst) == 50).await;
    let group = failing.group().clone();
    eventually_async("the failing handler got its events again", || {
        let group = group.clone();
        async move { group.status().await.unwrap().redeliveries > 0 }
    })
    .await;
    healthy.unsubscribe().await.unwrap();
    failing.unsubscribe().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_is_bounded_and_each_stream_is_handled_in_order() {
    let store = InMemoryStore::shared();
    for round in 0..4 {
        for s in 0..100 {
            store.append(stream(&format!("s-{s}")), ExpectedVersion::Any, events(1)).await.unwrap();
        }
        let _ = round;
    }
    let bus = Bus::new(store.clone());
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(Mutex::new(HashMap::<String, Vec<u64>>::new()));
    let options = ConsumerOptions { concurrency: 8, ..ConsumerOptions::default() };
    let sub = {
        let (running, peak, order) = (running.clone(), peak.clone(), order.clone());
        bus.consumer("ordered", GroupFilter::default(), options, move |e: RecordedEvent| {
            let (running, peak, order) = (running.clone(), peak.clone(), order.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                order.lock().unwrap().entry(e.stream.to_string()).or_default().push(e.version);
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap()
    };
    eventually("all 400 are handled", || order.lock().unwrap().values().map(Vec::len).sum::<usize>() == 400)
        .await;
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 8, "{peak} handlers ran at once");
    assert!(peak >= 2, "handlers of different streams should run in parallel");
    for versions in order.lock().unwrap().values() {
        assert_eq!(versions, &[1, 2, 3, 4]);
    }
    sub.unsubscribe().await.unwrap();
}

#[tokio::test]
async fn a_durable_consumer_resumes_where_it_stopped() {
    let store = InMemoryStore::shared();
    store.append(stream("t-1"), ExpectedVersion::Any, events(10)).await.unwrap();
    let bus = Bus::new(store.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = |seen: Arc<Mutex<Vec<u64>>>| {
        move |e: RecordedEvent| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(e.position);
                Ok(())
            }
        }
    };
    let sub = bus
        .consumer("tasks", GroupFilter::default(), ConsumerOptions::default(), handler(seen.clone()))
        .await
        .unwrap();
    eventually("ten handled", || seen.lock().unwrap().len() == 10).await;
    sub.unsubscribe().await.unwrap();

    store.append(stream("t-1"), ExpectedVersion::Any, events(5)).await.unwrap();
    let again = Arc::new(Mutex::new(Vec::new()));
    let sub = bus
        .consumer("tasks", GroupFilter::default(), ConsumerOptions::default(), handler(again.clone()))
        .await
        .unwrap();
    eventually("the five new ones handled", || again.lock().unwrap().len() == 5).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(*again.lock().unwrap(), [11, 12, 13, 14, 15]);
    assert_eq!(sub.group().status().await.unwrap().checkpoint, 15);
    sub.unsubscribe().await.unwrap();
}

#[tokio::test]
async fn batches_are_full_under_load_and_partial_after_the_wait() {
    let store = InMemoryStore::shared();
    // Under load: 120 events already there, batches of 50.
    for i in 0..120 {
        store.append(stream(&format!("s-{}", i % 30)), ExpectedVersion::Any, events(1)).await.unwrap();
    }
    let bus = Bus::new(store.clone());
    let sizes = Arc::new(Mutex::new(Vec::<(usize, Instant)>::new()));
    let batch = BatchOptions { max_size: 50, max_wait: Duration::from_millis(300), group_by_type: false };
    let options = ConsumerOptions { concurrency: 1, ..ConsumerOptions::default() };
    let sub = {
        let sizes = sizes.clone();
        bus.batch_consumer(
            "batches",
            GroupFilter::default(),
            options,
            batch,
            move |events: Vec<RecordedEvent>| {
                let sizes = sizes.clone();
                async move {
                    sizes.lock().unwrap().push((events.len(), Instant::now()));
                    Ok(())
                }
            },
        )
        .await
        .unwrap()
    };
    eventually("120 handled", || sizes.lock().unwrap().iter().map(|s| s.0).sum::<usize>() == 120).await;
    let got: Vec<usize> = sizes.lock().unwrap().iter().map(|s| s.0).collect();
    assert_eq!(got, [50, 50, 20], "full batches first, then the rest after the wait");

    // A trickle: 3 events, then nothing: one partial batch after max_wait.
    sizes.lock().unwrap().clear();
    let started = Instant::now();
    store.append(stream("late-1"), ExpectedVersion::Any, events(3)).await.unwrap();
    eventually("the partial batch", || !sizes.lock().unwrap().is_empty()).await;
    let (size, at) = sizes.lock().unwrap()[0];
    assert_eq!(size, 3, "one stream's consecutive events go together in one batch");
    assert!(at.duration_since(started) >= Duration::from_millis(250), "a partial batch waits for max_wait");
    sub.unsubscribe().await.unwrap();
}

#[tokio::test]
async fn batches_can_be_grouped_by_type() {
    let store = InMemoryStore::shared();
    for i in 0..6 {
        let t = if i % 2 == 0 { "a.one" } else { "b.two" };
        store.append(stream(&format!("s-{i}")), ExpectedVersion::Any, vec![event(t, "{}")]).await.unwrap();
    }
    let bus = Bus::new(store.clone());
    let calls = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let batch = BatchOptions { max_size: 6, max_wait: Duration::from_millis(100), group_by_type: true };
    let options = ConsumerOptions { concurrency: 1, ..ConsumerOptions::default() };
    let sub = {
        let calls = calls.clone();
        bus.batch_consumer(
            "typed",
            GroupFilter::default(),
            options,
            batch,
            move |events: Vec<RecordedEvent>| {
                let calls = calls.clone();
                async move {
                    calls.lock().unwrap().push(events.iter().map(|e| e.event_type.to_string()).collect());
                    Ok(())
                }
            },
        )
        .await
        .unwrap()
    };
    eventually("two calls", || calls.lock().unwrap().len() == 2).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls, [vec!["a.one"; 3], vec!["b.two"; 3]]);
    sub.unsubscribe().await.unwrap();
}

#[tokio::test]
async fn transient_messages_reach_matching_subscribers_and_are_never_stored() {
    let store = InMemoryStore::shared();
    let bus = Bus::new(store.clone());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sub = {
        let got = got.clone();
        bus.transient()
            .subscribe("typing.*", move |m| {
                let got = got.clone();
                async move {
                    got.lock().unwrap().push(m.message_type.clone());
                    Ok(())
                }
            })
            .unwrap()
    };
    assert_eq!(bus.transient().publish(TransientMessage::new("typing.started", "{}")), 1);
    assert_eq!(bus.transient().publish(TransientMessage::new("presence.joined", "{}")), 0);
    eventually("the typing message", || got.lock().unwrap().len() == 1).await;
    assert_eq!(*store.head().borrow(), 0, "nothing is stored");
    sub.unsubscribe().await;
    assert_eq!(bus.transient().publish(TransientMessage::new("typing.stopped", "{}")), 0);
}
