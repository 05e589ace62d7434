//! The hard promises of the PostgreSQL backend, under real concurrency: exact global order
//! across nodes, one winner per expected version, and no acknowledged event lost when
//! connections drop mid-load.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bifrost_core::store::EventStoreExt;
use bifrost_core::testkit::{PagingReader, all_events, events, stream};
use bifrost_core::{
    AppendResult, Error, EventStore, ExpectedVersion, LogFilter, RecordedEvent, SubscribeFrom,
};
use bifrost_postgres::PostgresStore;
use futures::StreamExt;
use support::{fresh_schema, options, store_with};

async fn two_nodes() -> Option<(Arc<PostgresStore>, Arc<PostgresStore>, support::SchemaGuard)> {
    let schema = fresh_schema();
    let (a, guard) = store_with(options(&schema)).await?;
    let (b, _same_schema) = store_with(options(&schema)).await?;
    std::mem::forget(_same_schema); // one guard drops the schema
    Some((Arc::new(a), Arc::new(b), guard))
}

/// 16 writers on two nodes (separate pools), some of them losing expected-version races
/// whose groups are rolled back, while a live subscriber and a paging reader watch the
/// log: both see every committed event exactly once, in strictly increasing order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_skip_an_event_with_concurrent_writers_on_two_nodes() {
    let Some((a, b, _guard)) = two_nodes().await else { return };
    const WRITERS: usize = 16;
    const APPENDS: usize = 250;

    let mut subscription = b.clone().subscribe(SubscribeFrom::Start, LogFilter::default());
    let pager = PagingReader::spawn(a.clone(), 0);

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        writers.push(tokio::spawn(async move {
            let mut acked: Vec<AppendResult> = Vec::new();
            let mut conflicts = 0;
            for i in 0..APPENDS {
                let name = stream(&format!("order-{}", (w * 7 + i) % 24));
                // A third of the appends race on a read version and often lose.
                let expected = if i % 3 == 0 {
                    match store.stream_info(&name).await {
                        Ok(info) => ExpectedVersion::Exact(info.version),
                        Err(_) => ExpectedVersion::NoStream,
                    }
                } else {
                    ExpectedVersion::Any
                };
                match store.append(name, expected, events(1 + i % 3)).await {
                    Ok(r) => acked.push(r),
                    Err(Error::WrongExpectedVersion(_)) => conflicts += 1,
                    Err(e) => panic!("writer {w}: unexpected error {e}"),
                }
            }
            (acked, conflicts)
        }));
    }
    let mut acked = Vec::new();
    for w in writers {
        let (results, _conflicts) = w.await.unwrap();
        acked.extend(results);
    }
    let paged = pager.finish().await;

    let log = all_events(a.as_ref()).await;
    let total: u64 = acked.iter().map(|r| r.last_version - r.first_version + 1).sum();
    assert_eq!(log.len() as u64, total, "the log holds exactly the acknowledged events");
    assert!(total > 3000, "the run must be long enough to hit the race");
    assert!(log.windows(2).all(|w| w[0].position < w[1].position));
    let log_positions: Vec<u64> = log.iter().map(|e| e.position).collect();
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

    // Per stream: contiguous versions, and every acknowledged result where it was promised.
    let by_position: HashMap<u64, &RecordedEvent> = log.iter().map(|e| (e.position, e)).collect();
    for r in &acked {
        for (i, p) in (r.first_position..=r.last_position).enumerate() {
            let e = by_position[&p];
            assert_eq!((e.stream.as_str(), e.version), (r.stream.as_str(), r.first_version + i as u64));
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
async fn exactly_one_of_64_racing_appends_wins_each_version() {
    let Some((a, b, _guard)) = two_nodes().await else { return };
    bifrost_core::testkit::node_cases::racing_appends_on_two_nodes(a, b).await;
}

/// Connections are killed from the server side in the middle of a load: the failed appends
/// are reported as errors, the store recovers by itself, and every acknowledged event is
/// in the log exactly once (an append whose commit outcome was unknown may be there too,
/// but never twice and never out of place).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_connections_fail_appends_loudly_and_lose_nothing_acknowledged() {
    let schema = fresh_schema();
    let app = format!("bifrost_kill_{}", &schema[13..21]);
    let url = format!("{}?application_name={app}", support::url());
    let guard = support::SchemaGuard { schema: schema.clone() };
    let store = match PostgresStore::connect(&url, options(&schema)).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let _ = bifrost_core::testkit::service_unavailable::<()>("PostgreSQL", e);
            return;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Appends that failed so far: the killer goes on until the failure path was taken (a
    // kill that lands between appends only makes the pool replace the connection).
    let failures = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        let stop = stop.clone();
        let failures = failures.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = 0;
            let mut i = 0;
            while !stop.load(Ordering::Acquire) || i < 50 {
                let batch = events(1 + i % 2);
                let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
                match store.append(stream(&format!("load-{w}")), ExpectedVersion::Any, batch).await {
                    Ok(r) => acked.push((r, ids)),
                    Err(Error::Unavailable(_) | Error::Storage { .. }) => {
                        failed += 1;
                        failures.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
                i += 1;
                if i > 100_000 {
                    break;
                }
            }
            (acked, failed)
        }));
    }
    let seen_failures = failures.clone();
    let killer = tokio::spawn(async move {
        let (client, connection) =
            tokio_postgres::connect(&support::url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        for round in 0..30 {
            if round >= 3 && seen_failures.load(Ordering::Acquire) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                    &[&app],
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    killer.await.unwrap();
    stop.store(true, Ordering::Release);
    let mut acked = Vec::new();
    let mut failed = 0;
    for w in writers {
        let (a, f) = w.await.unwrap();
        acked.extend(a);
        failed += f;
    }
    assert!(failed > 0, "killing connections mid-load must fail some appends");
    // It recovered: a new append goes through.
    store.append(stream("after-1"), ExpectedVersion::NoStream, events(1)).await.unwrap();

    let log = all_events(store.as_ref()).await;
    let ids: HashSet<_> = log.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), log.len(), "an event is stored twice");
    assert!(log.windows(2).all(|w| w[0].position < w[1].position));
    let by_id: HashMap<_, _> = log.iter().map(|e| (e.id, e)).collect();
    for (r, sent) in &acked {
        for (i, id) in sent.iter().enumerate() {
            let e = by_id.get(id).unwrap_or_else(|| panic!("acknowledged event {id} is lost"));
            assert_eq!((e.stream.as_str(), e.version), (r.stream.as_str(), r.first_version + i as u64));
        }
    }
    store.close().await.unwrap();
    drop(guard);
}
