//! The hard promises of the Redis backend under real concurrency, with two stores on one
//! prefix ("two nodes", each with its own connections and writer): an exact, gap-free
//! global order, consecutive versions per stream, one winner per expected version, and
//! every acknowledged append stored exactly once.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bifrost_core::store::EventStoreExt;
use bifrost_core::testkit::{PagingReader, all_events, events, stream};
use bifrost_core::{
    AppendResult, Error, EventId, EventStore, ExpectedVersion, LogFilter, RecordedEvent, StreamAppend,
    SubscribeFrom,
};
use bifrost_redis::RedisStore;
use futures::StreamExt;
use support::{PrefixGuard, fresh_prefix, options, store_with};

async fn two_nodes() -> Option<(Arc<RedisStore>, Arc<RedisStore>, PrefixGuard)> {
    let prefix = fresh_prefix();
    let (a, guard) = store_with(options(&prefix)).await?;
    let (b, same_prefix) = store_with(options(&prefix)).await?;
    std::mem::forget(same_prefix); // one guard removes the keys
    Some((Arc::new(a), Arc::new(b), guard))
}

/// 16 writers on two nodes, a third of them racing on a version they read (and often
/// losing), some appending to two streams at once, while a live subscriber on one node and
/// a paging reader on the other watch the log: the log is positions 1..=N without a gap,
/// holds every acknowledged event exactly once where its result said, each stream's
/// versions are 1..=n, and both readers saw every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_with_many_writers_keep_a_gap_free_log_and_every_acknowledged_append_once() {
    let Some((a, b, _guard)) = two_nodes().await else { return };
    const WRITERS: usize = 16;
    const APPENDS: usize = 250;

    let mut subscription = b.clone().subscribe(SubscribeFrom::Start, LogFilter::default());
    let pager = PagingReader::spawn(a.clone(), 0);

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        writers.push(tokio::spawn(async move {
            let mut acked: Vec<(AppendResult, Vec<EventId>)> = Vec::new();
            for i in 0..APPENDS {
                let name = stream(&format!("order-{}", (w * 7 + i) % 24));
                let expected = if i % 3 == 0 {
                    match store.stream_info(&name).await {
                        Ok(info) => ExpectedVersion::Exact(info.version),
                        Err(_) => ExpectedVersion::NoStream,
                    }
                } else {
                    ExpectedVersion::Any
                };
                let batch = events(1 + i % 3);
                let mut appends = vec![StreamAppend::new(name, expected, batch)];
                if i % 5 == 0 {
                    appends.push(StreamAppend::new(
                        stream(&format!("audit-{w}")),
                        ExpectedVersion::Any,
                        events(1),
                    ));
                }
                let sent: Vec<Vec<EventId>> =
                    appends.iter().map(|a| a.events.iter().map(|e| e.id).collect()).collect();
                match store.append_many(appends).await {
                    Ok(results) => acked.extend(results.into_iter().zip(sent)),
                    Err(Error::WrongExpectedVersion(_)) => {}
                    Err(e) => panic!("writer {w}: unexpected error {e}"),
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let paged = pager.finish().await;

    let log = all_events(b.as_ref()).await;
    let total: usize = acked.iter().map(|(_, ids)| ids.len()).sum();
    assert!(total > 3000, "the run must be long enough to hit the races");
    assert_eq!(log.len(), total, "the log holds exactly the acknowledged events");
    let log_positions: Vec<u64> = log.iter().map(|e| e.position).collect();
    assert_eq!(log_positions, (1..=total as u64).collect::<Vec<_>>(), "the global log has a gap");
    assert_eq!(*a.head().borrow(), total as u64);
    let ids: HashSet<EventId> = log.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), log.len(), "an event is stored twice");
    assert_eq!(paged, log_positions, "the paging reader skipped or repeated an event");

    let mut live = Vec::with_capacity(log.len());
    while live.len() < log.len() {
        let next = tokio::time::timeout(Duration::from_secs(30), subscription.next()).await;
        match next {
            Ok(Some(Ok(e))) => live.push(e.position),
            other => panic!("subscription stalled after {} of {} events: {other:?}", live.len(), log.len()),
        }
    }
    assert_eq!(live, log_positions, "the live subscriber skipped or repeated an event");

    let by_id: HashMap<EventId, &RecordedEvent> = log.iter().map(|e| (e.id, e)).collect();
    for (r, sent) in &acked {
        assert_eq!(r.last_position - r.first_position + 1, sent.len() as u64);
        for (i, id) in sent.iter().enumerate() {
            let e = by_id.get(id).unwrap_or_else(|| panic!("acknowledged event {id} is lost"));
            assert_eq!(
                (e.stream.as_str(), e.version, e.position),
                (r.stream.as_str(), r.first_version + i as u64, r.first_position + i as u64)
            );
        }
    }
    let mut versions: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in &log {
        versions.entry(e.stream.as_str()).or_default().push(e.version);
    }
    for (s, v) in versions {
        assert_eq!(v, (1..=v.len() as u64).collect::<Vec<_>>(), "stream {s} has a hole");
    }
}

/// 64 tasks on two nodes race to append at the same expected version: one wins each version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_64_racing_appends_on_two_nodes_wins_each_version() {
    let Some((a, b, _guard)) = two_nodes().await else { return };
    bifrost_core::testkit::node_cases::racing_appends_on_two_nodes(a, b).await;
}

/// The same append (same event ids) sent at once by many tasks on both nodes — a client
/// retrying through two nodes — is stored once, and every sender gets its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_append_resent_at_once_through_two_nodes_is_stored_once() {
    let Some((a, b, _guard)) = two_nodes().await else { return };
    for round in 0..10 {
        let appends = vec![
            StreamAppend::new(stream(&format!("pay-{round}")), ExpectedVersion::NoStream, events(3)),
            StreamAppend::new(stream(&format!("ledger-{round}")), ExpectedVersion::Any, events(2)),
        ];
        let mut tasks = Vec::new();
        for t in 0..16 {
            let store = if t % 2 == 0 { a.clone() } else { b.clone() };
            let appends = appends.clone();
            tasks.push(tokio::spawn(async move { store.append_many(appends).await }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap().unwrap());
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "every sender gets the one result");
    }
    let log = all_events(a.as_ref()).await;
    assert_eq!(log.len(), 50);
    assert_eq!(log.iter().map(|e| e.position).collect::<Vec<_>>(), (1..=50).collect::<Vec<_>>());
}
