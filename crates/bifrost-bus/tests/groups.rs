//! Consumer groups: leases, order per stream, retries, timeouts, dead letters, restarts.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bifrost_bus::{
    Backoff, ConsumerGroup, GroupConfig, GroupFilter, GroupName, Groups, NackAction, Put, ReplaySelection,
    StartFrom,
};
use bifrost_core::testkit::{event, events, stream};
use bifrost_core::{DurableStore, EventStore, ExpectedVersion, InMemoryStore, StateStore};

fn name(n: &str) -> GroupName {
    GroupName::new(n).unwrap()
}

fn quick(max_attempts: u32) -> GroupConfig {
    GroupConfig {
        ack_timeout: Duration::from_secs(30),
        max_attempts,
        backoff: Backoff::fixed(Duration::from_millis(20)),
        ..GroupConfig::default()
    }
}

async fn group(store: &Arc<InMemoryStore>, config: GroupConfig) -> ConsumerGroup {
    let groups = Groups::open(store.clone()).await.unwrap();
    groups.put(name("g"), config).await.unwrap().0
}

async fn append(store: &Arc<InMemoryStore>, s: &str, n: usize) {
    store.append(stream(s), ExpectedVersion::Any, events(n)).await.unwrap();
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn events_of_one_stream_are_leased_one_at_a_time_in_order() {
    let store = InMemoryStore::shared();
    append(&store, "order-1", 3).await;
    append(&store, "order-2", 1).await;
    let g = group(&store, quick(5)).await;

    let first = g.fetch("a", 10, WAIT).await.unwrap();
    let got: Vec<(String, u64)> =
        first.iter().map(|l| (l.event.stream.to_string(), l.event.version)).collect();
    assert_eq!(got, [("order-1".to_owned(), 1), ("order-2".to_owned(), 1)]);
    // Nothing more while order-1's first event is out, to any consumer.
    assert!(g.fetch("b", 10, Duration::from_millis(50)).await.unwrap().is_empty());

    g.ack(&[first[0].token.clone()]).await.unwrap();
    let next = g.fetch("b", 10, WAIT).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].event.stream.as_str(), next[0].event.version), ("order-1", 2));
}

#[tokio::test]
async fn ack_settles_and_advances_the_checkpoint_to_the_lowest_unfinished_event() {
    let store = InMemoryStore::shared();
    for i in 0..4 {
        append(&store, &format!("s-{i}"), 1).await;
    }
    let g = group(&store, quick(5)).await;
    let leases = g.fetch("a", 10, WAIT).await.unwrap();
    assert_eq!(leases.len(), 4);
    // Ack 2, 3, 4 but not 1: the checkpoint stays below 1.
    let later: Vec<String> = leases[1..].iter().map(|l| l.token.clone()).collect();
    let settled = g.ack(&later).await.unwrap();
    assert_eq!(settled.count, 3);
    let status = g.status().await.unwrap();
    assert_eq!(status.checkpoint, 0);
    assert_eq!(status.lag, 1);
    assert_eq!(status.in_flight, 1);
    g.ack(&[leases[0].token.clone()]).await.unwrap();
    let status = g.status().await.unwrap();
    assert_eq!(status.checkpoint, 4);
    assert_eq!(status.lag, 0);
    // Acking again: the lease is no longer held.
    let again = g.ack(&[leases[0].token.clone(), "garbage".to_owned()]).await.unwrap();
    assert_eq!(again.count, 0);
    assert_eq!(again.expired, [leases[0].token.clone(), "garbage".to_owned()]);
}

#[tokio::test]
async fn retries_follow_the_backoff_and_stop_at_max_attempts() {
    let store = InMemoryStore::shared();
    append(&store, "order-1", 1).await;
    let config = GroupConfig {
        max_attempts: 4,
        backoff: Backoff::exponential(Duration::from_millis(40), Duration::from_millis(1000))
            .with_jitter(false),
        ..GroupConfig::default()
    };
    let g = group(&store, config).await;
    let mut attempts = Vec::new();
    let mut gaps = Vec::new();
    let mut last_nack = None;
    loop {
        let leases = g.fetch("a", 1, Duration::from_millis(800)).await.unwrap();
        let Some(lease) = leases.into_iter().next() else { break };
        if let Some(at) = last_nack {
            gaps.push(std::time::Instant::now().duration_since(at));
        }
        attempts.push(lease.attempt);
        g.nack(&[lease.token], NackAction::Retry(None), Some("flaky")).await.unwrap();
        last_nack = Some(std::time::Instant::now());
    }
    assert_eq!(attempts, [1, 2, 3, 4]);
    // 40, 80, 160 ms between attempts (never earlier; scheduling may add a little).
    for (gap, want) in gaps.iter().zip([40u64, 80, 160]) {
        assert!(*gap >= Duration::from_millis(want), "gap {gap:?} < {want} ms");
        assert!(*gap < Duration::from_millis(want + 400), "gap {gap:?} far above {want} ms");
    }
    let dead = g.dead_letters(None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].dead_letter.attempts, 4);
    assert_eq!(dead[0].dead_letter.reason, "flaky");
    let status = g.status().await.unwrap();
    assert_eq!((status.parked, status.lag, status.checkpoint), (1, 0, 1));
}

#[tokio::test]
async fn a_parked_event_is_replayed_with_fresh_attempts_and_can_be_discarded() {
    let store = InMemoryStore::shared();
    append(&store, "order-1", 2).await;
    let g = group(&store, quick(3)).await;
    let lease = g.fetch("a", 1, WAIT).await.unwrap().remove(0);
    g.nack(&[lease.token], NackAction::Park, Some("poison: bad total")).await.unwrap();
    // A parked event does not hold back the later events of its stream.
    let second = g.fetch("a", 5, WAIT).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].event.version, 2);
    g.ack(&[second[0].token.clone()]).await.unwrap();

    let dead = g.dead_letters(None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].dead_letter.reason, "poison: bad total");
    assert_eq!(dead[0].dead_letter.attempts, 1);
    assert_eq!(dead[0].event.as_ref().unwrap().version, 1);
    let id = dead[0].dead_letter.event_id;

    assert_eq!(g.replay(ReplaySelection::All).await.unwrap(), 1);
    assert!(g.dead_letters(None, 10).await.unwrap().is_empty());
    let again = g.fetch("b", 5, WAIT).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].event.id, again[0].attempt), (id, 1));
    g.nack(&[again[0].token.clone()], NackAction::Park, Some("still bad")).await.unwrap();
    assert_eq!(g.status().await.unwrap().parked, 1);

    assert!(g.discard(id).await.unwrap());
    assert!(!g.discard(id).await.unwrap());
    assert!(g.dead_letters(None, 10).await.unwrap().is_empty());
    assert_eq!(g.status().await.unwrap().parked, 0);
}

#[tokio::test]
async fn replay_selects_by_id_and_up_to_a_position() {
    let store = InMemoryStore::shared();
    for i in 0..5 {
        append(&store, &format!("s-{i}"), 1).await;
    }
    let g = group(&store, quick(1)).await;
    let leases = g.fetch("a", 10, WAIT).await.unwrap();
    let tokens: Vec<String> = leases.iter().map(|l| l.token.clone()).collect();
    g.nack(&tokens, NackAction::Retry(None), Some("boom")).await.unwrap(); // max_attempts 1: parked
    assert_eq!(g.status().await.unwrap().parked, 5);
    assert_eq!(g.replay(ReplaySelection::Ids(vec![leases[3].event.id])).await.unwrap(), 1);
    assert_eq!(g.replay(ReplaySelection::UpTo(2)).await.unwrap(), 2);
    let again = g.fetch("a", 10, WAIT).await.unwrap();
    let mut positions: Vec<u64> = again.iter().map(|l| l.event.position).collect();
    positions.sort_unstable();
    assert_eq!(positions, [1, 2, 4]);
    let left: Vec<u64> =
        g.dead_letters(None, 10).await.unwrap().iter().map(|d| d.dead_letter.position).collect();
    assert_eq!(left, [3, 5]);
}

#[tokio::test]
async fn a_crashed_consumers_leases_are_redelivered_to_another_consumer() {
    let store = InMemoryStore::shared();
    append(&store, "order-1", 2).await;
    let config = GroupConfig {
        ack_timeout: Duration::from_millis(150),
        backoff: Backoff::fixed(Duration::from_millis(10)),
        ..GroupConfig::default()
    };
    let g = group(&store, config).await;
    let lost = g.fetch("crashed", 10, WAIT).await.unwrap();
    assert_eq!(lost.len(), 1);
    // The crashed consumer never acks; another one gets the event with its attempt count.
    let again = g.fetch("survivor", 10, Duration::from_secs(3)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].event.id, again[0].attempt), (lost[0].event.id, 2));
    // The late ack of the crashed consumer is refused: the lease is gone.
    let late = g.ack(&[lost[0].token.clone()]).await.unwrap();
    assert_eq!((late.count, late.expired.len()), (0, 1));
    g.ack(&[again[0].token.clone()]).await.unwrap();
    let status = g.status().await.unwrap();
    assert_eq!(status.timeouts, 1);
    assert_eq!(status.redeliveries, 1);
    let consumers: Vec<&str> = status.consumers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(consumers, ["crashed", "survivor"]);
}

#[tokio::test]
async fn timed_out_leases_are_parked_after_max_attempts_with_the_reason() {
    let store = InMemoryStore::shared();
    append(&store, "order-1", 1).await;
    let config = GroupConfig {
        ack_timeout: Duration::from_millis(50),
        max_attempts: 2,
        backoff: Backoff::fixed(Duration::from_millis(10)),
        ..GroupConfig::default()
    };
    let g = group(&store, config).await;
    assert_eq!(g.fetch("a", 1, WAIT).await.unwrap()[0].attempt, 1);
    assert_eq!(g.fetch("a", 1, WAIT).await.unwrap()[0].attempt, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dead = g.dead_letters(None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].dead_letter.reason.contains("timed out"), "{}", dead[0].dead_letter.reason);
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_an_event_arrives() {
    let store = InMemoryStore::shared();
    let g = group(&store, quick(5)).await;
    let waiter = {
        let g = g.clone();
        tokio::spawn(async move { g.fetch("a", 10, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    append(&store, "order-9", 1).await;
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    // And an empty wait returns empty.
    assert!(g.fetch("a", 10, Duration::from_millis(20)).await.unwrap().is_empty());
}

#[tokio::test]
async fn filters_and_start_points_choose_the_events() {
    let store = InMemoryStore::shared();
    store.append(stream("order-1"), ExpectedVersion::Any, vec![event("order.placed", "{}")]).await.unwrap();
    store.append(stream("user-1"), ExpectedVersion::Any, vec![event("user.created", "{}")]).await.unwrap();
    let groups = Groups::open(store.clone()).await.unwrap();
    let orders = GroupConfig { filter: GroupFilter::types(["order.#"]), ..quick(5) };
    let (g, put) = groups.put(name("orders"), orders).await.unwrap();
    assert_eq!(put, Put::Created);
    let from_end = GroupConfig { start: StartFrom::End, ..quick(5) };
    let (tail, _) = groups.put(name("tail"), from_end).await.unwrap();
    let users = GroupConfig { filter: GroupFilter::default().with_category("user"), ..quick(5) };
    let (u, _) = groups.put(name("users"), users).await.unwrap();
    let after = GroupConfig { start: StartFrom::Position(1), ..quick(5) };
    let (a, _) = groups.put(name("after"), after).await.unwrap();
    store
        .append(stream("order-2"), ExpectedVersion::Any, vec![event("order.item.added", "{}")])
        .await
        .unwrap();

    let types = |leases: Vec<bifrost_bus::Lease>| -> Vec<String> {
        leases.into_iter().map(|l| l.event.event_type.to_string()).collect()
    };
    let short = Duration::from_millis(300);
    assert_eq!(types(g.fetch("c", 10, short).await.unwrap()), ["order.placed", "order.item.added"]);
    assert_eq!(types(tail.fetch("c", 10, short).await.unwrap()), ["order.item.added"]);
    assert_eq!(types(u.fetch("c", 10, short).await.unwrap()), ["user.created"]);
    assert_eq!(types(a.fetch("c", 10, short).await.unwrap()), ["user.created", "order.item.added"]);

    let beyond = GroupConfig { start: StartFrom::Position(99), ..quick(5) };
    assert!(groups.put(name("beyond"), beyond).await.is_err());
    // Updating keeps the start point; listing is in name order.
    let (_, put) = groups.put(name("tail"), GroupConfig { max_attempts: 9, ..quick(5) }).await.unwrap();
    assert_eq!(put, Put::Updated);
    let names: Vec<String> = groups.list().await.iter().map(|g| g.name().to_string()).collect();
    assert_eq!(names, ["after", "orders", "tail", "users"]);
    assert_eq!(groups.get(&name("tail")).await.unwrap().config().max_attempts, 9);
    assert!(groups.delete(&name("tail")).await.unwrap());
    assert!(!groups.delete(&name("tail")).await.unwrap());
    assert!(store.scan_state("group/tail", None, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_per_stream_holds_with_8_competing_consumers_over_1000_streams() {
    let store = InMemoryStore::shared();
    let config = GroupConfig {
        ack_timeout: Duration::from_secs(30),
        backoff: Backoff::fixed(Duration::from_millis(5)),
        max_attempts: 100,
        ..GroupConfig::default()
    };
    let g = group(&store, config).await;
    // Appends keep arriving while the consumers run.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..5 {
                for s in 0..1000 {
                    store.append(stream(&format!("s-{s}")), ExpectedVersion::Any, events(1)).await.unwrap();
                }
                let _ = round;
            }
        })
    };
    let handled = Arc::new(std::sync::Mutex::new(HashMap::<String, Vec<u64>>::new()));
    let mut consumers = Vec::new();
    for c in 0..8 {
        let g = g.clone();
        let handled = handled.clone();
        consumers.push(tokio::spawn(async move {
            let mut idle = 0;
            while idle < 10 {
                let leases = g.fetch(&format!("c{c}"), 20, Duration::from_millis(100)).await.unwrap();
                if leases.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                let mut acks = Vec::new();
                for lease in leases {
                    // Some deliveries fail once and come back: order must survive retries too.
                    if lease.event.version % 7 == 3 && lease.attempt == 1 {
                        g.nack(&[lease.token], NackAction::Retry(None), None).await.unwrap();
                        continue;
                    }
                    handled
                        .lock()
                        .unwrap()
                        .entry(lease.event.stream.to_string())
                        .or_default()
                        .push(lease.event.version);
                    acks.push(lease.token);
                }
                let settled = g.ack(&acks).await.unwrap();
                assert!(settled.expired.is_empty());
            }
        }));
    }
    writer.await.unwrap();
    for c in consumers {
        c.await.unwrap();
    }
    {
        let handled = handled.lock().unwrap();
        assert_eq!(handled.len(), 1000);
        for (s, versions) in handled.iter() {
            assert_eq!(versions, &[1, 2, 3, 4, 5], "stream {s} handled out of order or twice");
        }
    }
    let status = g.status().await.unwrap();
    assert_eq!((status.lag, status.in_flight, status.checkpoint), (0, 0, 5000));
}

#[tokio::test]
async fn max_in_flight_bounds_the_leases_out() {
    let store = InMemoryStore::shared();
    for i in 0..10 {
        append(&store, &format!("s-{i}"), 1).await;
    }
    let g = group(&store, GroupConfig { max_in_flight: 3, ..quick(5) }).await;
    let first = g.fetch("a", 10, WAIT).await.unwrap();
    assert_eq!(first.len(), 3);
    assert!(g.fetch("b", 10, Duration::from_millis(30)).await.unwrap().is_empty());
    g.ack(&[first[0].token.clone()]).await.unwrap();
    assert_eq!(g.fetch("b", 10, WAIT).await.unwrap().len(), 1);
}

#[tokio::test]
async fn lag_counts_unread_matching_events_without_parked_ones() {
    let store = InMemoryStore::shared();
    for i in 0..30 {
        let kind = if i % 3 == 0 { "order.placed" } else { "user.seen" };
        store.append(stream(&format!("s-{i}")), ExpectedVersion::Any, vec![event(kind, "{}")]).await.unwrap();
    }
    let config = GroupConfig { filter: GroupFilter::types(["order.*"]), max_in_flight: 1, ..quick(1) };
    let g = group(&store, config).await;
    let status = g.status().await.unwrap();
    assert_eq!(status.lag, 10);
    let lease = g.fetch("a", 1, WAIT).await.unwrap().remove(0);
    g.nack(&[lease.token], NackAction::Park, None).await.unwrap();
    assert_eq!(g.status().await.unwrap().lag, 9);
    for i in 30..36 {
        store
            .append(stream(&format!("s-{i}")), ExpectedVersion::Any, vec![event("order.placed", "{}")])
            .await
            .unwrap();
    }
    assert_eq!(g.status().await.unwrap().lag, 15);
    let lease = g.fetch("a", 1, WAIT).await.unwrap().remove(0);
    g.ack(&[lease.token]).await.unwrap();
    assert_eq!(g.status().await.unwrap().lag, 14);
}

/// Restart: the group is closed (or simply dropped, as in a crash) and opened again on
/// the same state. Acked events never come back; unacked ones do, with their attempts.
async fn restart_keeps_acks_and_attempts(store: Arc<dyn DurableStore>, graceful: bool) {
    for i in 0..50 {
        store.append(stream(&format!("s-{}", i % 10)), ExpectedVersion::Any, events(1)).await.unwrap();
    }
    let groups = Groups::open(store.clone()).await.unwrap();
    let (g, _) = groups.put(name("g"), quick(5)).await.unwrap();
    let mut acked = HashSet::new();
    let leases = g.fetch("a", 10, WAIT).await.unwrap();
    assert_eq!(leases.len(), 10);
    // Ack half, nack two with a long delay, leave the rest in flight.
    let tokens: Vec<String> = leases[..5].iter().map(|l| l.token.clone()).collect();
    g.ack(&tokens).await.unwrap();
    acked.extend(leases[..5].iter().map(|l| l.event.id));
    let nacked: Vec<String> = leases[5..7].iter().map(|l| l.token.clone()).collect();
    g.nack(&nacked, NackAction::Retry(Some(Duration::from_millis(300))), Some("later")).await.unwrap();
    if graceful {
        groups.close().await.unwrap();
    }
    drop(g);
    drop(groups);

    let groups = Groups::open(store.clone()).await.unwrap();
    let g = groups.get(&name("g")).await.unwrap();
    let mut attempts = HashMap::new();
    loop {
        let leases = g.fetch("b", 50, Duration::from_millis(800)).await.unwrap();
        if leases.is_empty() {
            break;
        }
        for lease in &leases {
            assert!(!acked.contains(&lease.event.id), "an acked event came back after a restart");
            attempts.insert(lease.event.id, lease.attempt);
        }
        let tokens: Vec<String> = leases.iter().map(|l| l.token.clone()).collect();
        g.ack(&tokens).await.unwrap();
        acked.extend(leases.iter().map(|l| l.event.id));
    }
    assert_eq!(acked.len(), 50);
    for lease in &leases[5..7] {
        assert_eq!(attempts[&lease.event.id], 2, "a nacked event keeps its attempt count");
    }
    assert_eq!(g.status().await.unwrap().checkpoint, 50);
    groups.close().await.unwrap();
}

#[tokio::test]
async fn a_group_resumes_after_a_graceful_restart() {
    restart_keeps_acks_and_attempts(InMemoryStore::shared(), true).await;
}

#[tokio::test]
async fn a_group_resumes_after_a_crash() {
    restart_keeps_acks_and_attempts(InMemoryStore::shared(), false).await;
}

#[tokio::test]
async fn a_group_resumes_on_sqlite_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open =
        || bifrost_sqlite::SqliteStore::open(dir.path(), bifrost_sqlite::SqliteOptions::default()).unwrap();
    let store = Arc::new(open());
    for i in 0..20 {
        store.append(stream(&format!("s-{i}")), ExpectedVersion::Any, events(1)).await.unwrap();
    }
    let groups = Groups::open(store.clone()).await.unwrap();
    let (g, _) = groups.put(name("g"), quick(5)).await.unwrap();
    let leases = g.fetch("a", 8, WAIT).await.unwrap();
    let acked: HashSet<_> = leases[..6].iter().map(|l| l.event.id).collect();
    g.ack(&leases[..6].iter().map(|l| l.token.clone()).collect::<Vec<_>>()).await.unwrap();
    g.nack(&[leases[6].token.clone()], NackAction::Park, Some("bad")).await.unwrap();
    // A crash: nothing is closed, the store is dropped as it is.
    drop((g, groups));
    store.close().await.unwrap();
    drop(store);

    let store = Arc::new(open());
    let groups = Groups::open(store.clone()).await.unwrap();
    let g = groups.get(&name("g")).await.unwrap();
    let mut seen = HashSet::new();
    loop {
        let leases = g.fetch("b", 50, Duration::from_millis(500)).await.unwrap();
        if leases.is_empty() {
            break;
        }
        for lease in &leases {
            assert!(!acked.contains(&lease.event.id));
            assert!(seen.insert(lease.event.id));
        }
        g.ack(&leases.iter().map(|l| l.token.clone()).collect::<Vec<_>>()).await.unwrap();
    }
    assert_eq!(seen.len(), 13);
    let dead = g.dead_letters(None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].dead_letter.event_id, leases[6].event.id);
    groups.close().await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_fetch_without_wait_sees_events_appended_before_it() {
    let store = InMemoryStore::shared();
    let g = group(&store, quick(5)).await;
    for round in 0..20 {
        append(&store, &format!("s-{round}"), 1).await;
        let got = g.fetch("a", 10, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1, "round {round}");
        g.ack(&[got[0].token.clone()]).await.unwrap();
    }
}

#[tokio::test]
async fn lag_right_after_a_restart_does_not_count_what_was_acked() {
    let store = InMemoryStore::shared();
    for i in 0..6 {
        append(&store, &format!("s-{i}"), 1).await;
    }
    let groups = Groups::open(store.clone()).await.unwrap();
    let (g, _) = groups.put(name("g"), GroupConfig { max_in_flight: 6, ..quick(5) }).await.unwrap();
    let leases = g.fetch("a", 6, WAIT).await.unwrap();
    // Everything but the first acked: the checkpoint stays at 0, five settled above it.
    g.ack(&leases[1..].iter().map(|l| l.token.clone()).collect::<Vec<_>>()).await.unwrap();
    groups.close().await.unwrap();
    drop((g, groups));
    let groups = Groups::open(store.clone()).await.unwrap();
    let g = groups.get(&name("g")).await.unwrap();
    assert_eq!(g.status().await.unwrap().lag, 1);
}

#[tokio::test]
async fn a_dead_letter_whose_event_was_deleted_is_found_by_id_and_dropped_on_replay() {
    let store = InMemoryStore::shared();
    append(&store, "gone-1", 1).await;
    append(&store, "kept-1", 1).await;
    let g = group(&store, quick(1)).await;
    let leases = g.fetch("a", 10, WAIT).await.unwrap();
    let tokens: Vec<String> = leases.iter().map(|l| l.token.clone()).collect();
    g.nack(&tokens, NackAction::Park, Some("bad")).await.unwrap();
    let gone = leases.iter().find(|l| l.event.stream.as_str() == "gone-1").unwrap().event.id;
    store.delete_stream(&stream("gone-1"), bifrost_core::DeleteMode::Hard).await.unwrap();

    let dead = g.dead_letters(None, 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().any(|d| d.dead_letter.event_id == gone && d.event.is_none()));
    // Found by id although its event is gone (so not by position): replay drops it.
    assert_eq!(g.replay(ReplaySelection::Ids(vec![gone])).await.unwrap(), 0);
    assert!(g.dead_letters(None, 10).await.unwrap().iter().all(|d| d.dead_letter.event_id != gone));
    assert_eq!(g.status().await.unwrap().parked, 1);
    let kept = g.dead_letters(None, 10).await.unwrap()[0].dead_letter.event_id;
    assert!(g.discard(kept).await.unwrap());
    assert_eq!(g.status().await.unwrap().parked, 0);
}
