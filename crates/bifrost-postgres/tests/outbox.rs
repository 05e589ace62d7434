//! The transactional outbox on PostgreSQL: the application's rows and its events commit in
//! one transaction, and outbox commits keep the exact global order that plain appends keep.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use bifrost_core::store::EventStoreExt;
use bifrost_core::testkit::{PagingReader, all_events, events, stream};
use bifrost_core::{AppendResult, Direction, Error, EventStore, ExpectedVersion, LogFilter, SubscribeFrom};
use bifrost_postgres::{OutboxTransaction, PostgresStore};
use futures::StreamExt;
use support::{SchemaGuard, fresh_schema, options, store_with};

/// A store on a fresh schema and the application's own schema beside it, holding `orders`.
struct App {
    store: Arc<PostgresStore>,
    /// `"<schema>".orders`, qualified: the application's tables are not in Bifrost's schema.
    orders: String,
    _guards: (SchemaGuard, SchemaGuard),
}

async fn app() -> Option<App> {
    let (store, guard) = store_with(options(&fresh_schema())).await?;
    let app_schema = fresh_schema();
    let app_guard = SchemaGuard { schema: app_schema.clone() };
    let orders = format!("\"{app_schema}\".orders");
    let mut tx = store.begin().await.unwrap();
    tx.client()
        .batch_execute(&format!(
            "CREATE SCHEMA \"{app_schema}\"; CREATE TABLE {orders} (id text PRIMARY KEY, total integer NOT NULL)"
        ))
        .await
        .unwrap();
    tx.append(stream("setup-1"), ExpectedVersion::NoStream, events(1)).unwrap();
    tx.commit().await.unwrap();
    Some(App { store: Arc::new(store), orders, _guards: (guard, app_guard) })
}

impl App {
    async fn insert(&self, tx: &OutboxTransaction, id: &str) {
        let insert = format!("INSERT INTO {} (id, total) VALUES ($1, 42)", self.orders);
        tx.client().execute(&insert, &[&id]).await.unwrap();
    }

    /// The application's rows, read outside any outbox transaction.
    async fn rows(&self) -> Vec<String> {
        let tx = self.store.begin().await.unwrap();
        let rows =
            tx.client().query(&format!("SELECT id FROM {} ORDER BY id", self.orders), &[]).await.unwrap();
        tx.rollback().await.unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Events besides the one `app()` appended while creating the table.
    async fn events(&self) -> Vec<bifrost_core::RecordedEvent> {
        let mut log = all_events(self.store.as_ref()).await;
        log.retain(|e| e.stream.as_str() != "setup-1");
        log
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_transaction_keeps_the_row_and_its_events() {
    let Some(app) = app().await else { return };
    let mut tx = app.store.begin().await.unwrap();
    app.insert(&tx, "o-1").await;
    tx.append(stream("order-o-1"), ExpectedVersion::NoStream, events(2)).unwrap();
    tx.append(stream("audit-1"), ExpectedVersion::Any, events(1)).unwrap();
    let results = tx.commit().await.unwrap();

    assert_eq!(results.len(), 2);
    assert_eq!((results[0].first_version, results[0].last_version), (1, 2));
    assert_eq!((results[0].first_position, results[0].last_position), (2, 3));
    assert_eq!((results[1].stream.as_str(), results[1].first_position), ("audit-1", 4));
    assert_eq!(app.rows().await, ["o-1"]);
    let log = app.events().await;
    assert_eq!(log.iter().map(|e| e.position).collect::<Vec<_>>(), [2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_or_rolled_back_transaction_leaves_neither_row_nor_events() {
    let Some(app) = app().await else { return };
    {
        let mut tx = app.store.begin().await.unwrap();
        app.insert(&tx, "o-1").await;
        tx.append(stream("order-o-1"), ExpectedVersion::Any, events(2)).unwrap();
        // Dropped without commit.
    }
    let mut tx = app.store.begin().await.unwrap();
    app.insert(&tx, "o-2").await;
    tx.append(stream("order-o-2"), ExpectedVersion::Any, events(2)).unwrap();
    tx.rollback().await.unwrap();

    // The background rollback of the dropped one may still be on its way: the row is never
    // visible either way, since it was never committed.
    assert!(app.rows().await.is_empty());
    assert!(app.events().await.is_empty());
    // The store goes on numbering where it was: nothing was burnt.
    let r = app.store.append(stream("order-o-3"), ExpectedVersion::NoStream, events(1)).await.unwrap();
    assert_eq!(r.first_position, 2);

    // More dropped transactions than the pool has connections, then as many committed
    // ones: a connection handed back inside an open transaction would carry the dropped
    // rows into the next commit on it.
    for i in 0..12 {
        let tx = app.store.begin().await.unwrap();
        app.insert(&tx, &format!("dropped-{i:02}")).await;
    }
    for i in 0..12 {
        let mut tx = app.store.begin().await.unwrap();
        app.insert(&tx, &format!("kept-{i:02}")).await;
        tx.append(stream(&format!("order-kept-{i}")), ExpectedVersion::NoStream, events(1)).unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(app.rows().await, (0..12).map(|i| format!("kept-{i:02}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expected_version_rolls_the_row_back_too() {
    let Some(app) = app().await else { return };
    app.store.append(stream("order-o-1"), ExpectedVersion::NoStream, events(1)).await.unwrap();
    let mut tx = app.store.begin().await.unwrap();
    app.insert(&tx, "o-1").await;
    tx.append(stream("order-o-1"), ExpectedVersion::NoStream, events(2)).unwrap();
    match tx.commit().await {
        Err(Error::WrongExpectedVersion(c)) => assert_eq!(c[0].actual, Some(1)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(app.rows().await.is_empty(), "the row must be rolled back with the events");
    assert_eq!(app.store.stream_info(&stream("order-o-1")).await.unwrap().version, 1);
    assert_eq!(app.events().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_transaction_returns_the_original_result_and_stores_nothing_twice() {
    let Some(app) = app().await else { return };
    let sent = events(2);
    let upsert =
        format!("INSERT INTO {} (id, total) VALUES ('o-1', 42) ON CONFLICT (id) DO NOTHING", app.orders);
    let mut first = None;
    for _ in 0..2 {
        let mut tx = app.store.begin().await.unwrap();
        tx.client().execute(&upsert, &[]).await.unwrap();
        tx.append(stream("order-o-1"), ExpectedVersion::NoStream, sent.clone()).unwrap();
        let results = tx.commit().await.unwrap();
        match &first {
            None => first = Some(results),
            Some(original) => assert_eq!(&results, original, "a re-send answers with the original result"),
        }
        app.store.append(stream("other-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    }
    assert_eq!(app.events().await.len(), 4);
    assert_eq!(app.rows().await, ["o-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_watch_advances_when_an_outbox_commit_returns() {
    let Some(app) = app().await else { return };
    let mut head = app.store.head();
    let before = *head.borrow_and_update();
    let mut live = app.store.clone().subscribe(SubscribeFrom::After(before), LogFilter::default());
    let mut tx = app.store.begin().await.unwrap();
    app.insert(&tx, "o-1").await;
    tx.append(stream("order-o-1"), ExpectedVersion::NoStream, events(2)).unwrap();
    let results = tx.commit().await.unwrap();
    assert!(
        *head.borrow_and_update() >= results[0].last_position,
        "the head must move by the time commit returns"
    );
    for expected in results[0].first_position..=results[0].last_position {
        let event =
            tokio::time::timeout(Duration::from_secs(10), live.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(event.position, expected);
    }
}

/// The head lock is taken by `commit`, not before: while an outbox transaction has its
/// appends queued and its own row written, plain appends go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_outbox_transaction_does_not_hold_up_other_appends() {
    let Some(app) = app().await else { return };
    let mut tx = app.store.begin().await.unwrap();
    app.insert(&tx, "o-1").await;
    tx.append(stream("order-o-1"), ExpectedVersion::Any, events(1)).unwrap();
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        app.store.append(stream("plain-1"), ExpectedVersion::NoStream, events(1)),
    )
    .await
    .expect("a plain append must not wait for an open outbox transaction")
    .unwrap();
    let results = tx.commit().await.unwrap();
    assert!(results[0].first_position > plain.last_position);
}

/// Ending the transaction behind `commit`'s back (a COMMIT through the client), or leaving
/// READ COMMITTED, makes `commit` append nothing rather than append outside the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_ended_through_its_client_or_not_read_committed_appends_nothing() {
    let Some(app) = app().await else { return };
    let mut tx = app.store.begin().await.unwrap();
    tx.client().batch_execute("COMMIT").await.unwrap();
    tx.append(stream("order-o-1"), ExpectedVersion::Any, events(1)).unwrap();
    assert!(matches!(tx.commit().await, Err(Error::InvalidArgument(_))));

    let tx = app.store.begin().await.unwrap();
    tx.client().batch_execute("ROLLBACK").await.unwrap();
    assert!(matches!(tx.commit().await, Err(Error::InvalidArgument(_))), "even with nothing to append");

    let mut tx = app.store.begin().await.unwrap();
    tx.client().batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").await.unwrap();
    app.insert(&tx, "o-2").await;
    tx.append(stream("order-o-2"), ExpectedVersion::Any, events(1)).unwrap();
    assert!(matches!(tx.commit().await, Err(Error::InvalidArgument(_))));

    assert!(app.rows().await.is_empty());
    assert!(app.events().await.is_empty());
}

/// A failed statement of the application aborts the transaction: `commit` reports it and
/// keeps nothing; the connection goes back to the pool usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_statement_of_the_application_fails_the_commit() {
    let Some(app) = app().await else { return };
    let mut tx = app.store.begin().await.unwrap();
    app.insert(&tx, "o-1").await;
    let duplicate = format!("INSERT INTO {} (id, total) VALUES ('o-1', 1)", app.orders);
    assert!(tx.client().execute(&duplicate, &[]).await.is_err());
    tx.append(stream("order-o-1"), ExpectedVersion::Any, events(1)).unwrap();
    assert!(matches!(tx.commit().await, Err(Error::Storage { .. })));
    assert!(app.rows().await.is_empty());
    assert!(app.events().await.is_empty());
    // Every pooled connection still works (none was returned inside a transaction).
    for i in 0..12 {
        let mut tx = app.store.begin().await.unwrap();
        app.insert(&tx, &format!("after-{i:02}")).await;
        tx.append(stream(&format!("order-after-{i}")), ExpectedVersion::NoStream, events(1)).unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(app.rows().await.len(), 12);
}

/// Outbox transactions and plain appends on two nodes (separate pools), some outbox
/// transactions losing expected-version races and rolling back their rows, while a live
/// subscriber and a paging reader watch the log: both see every committed event exactly
/// once, in strictly increasing order; every committed outbox transaction has its row, and
/// no rolled-back one has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_transactions_and_plain_appends_on_two_nodes_keep_readers_gap_free() {
    let Some(app) = app().await else { return };
    let (b, _same_schema) = store_with(options(app.store.schema())).await.unwrap();
    std::mem::forget(_same_schema); // the first guard drops the schema
    let a = app.store.clone();
    let b = Arc::new(b);
    const WRITERS: usize = 12;
    const ROUNDS: usize = 80;

    let start = *a.head().borrow();
    let mut subscription = b.clone().subscribe(SubscribeFrom::After(start), LogFilter::default());
    let pager = PagingReader::spawn(a.clone(), start);

    let orders = Arc::new(app.orders.clone());
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = if w % 2 == 0 { a.clone() } else { b.clone() };
        let orders = orders.clone();
        writers.push(tokio::spawn(async move {
            let mut acked: Vec<AppendResult> = Vec::new();
            let mut rows = Vec::new();
            let mut conflicts = 0;
            for i in 0..ROUNDS {
                let name = stream(&format!("order-{}", (w * 7 + i) % 20));
                if w % 3 == 0 {
                    acked.push(store.append(name, ExpectedVersion::Any, events(1 + i % 3)).await.unwrap());
                    continue;
                }
                // Half of the outbox transactions race on a read version and often lose.
                let expected = match store.stream_info(&name).await {
                    Ok(info) if i % 2 == 0 => ExpectedVersion::Exact(info.version),
                    Err(Error::StreamNotFound(_)) if i % 2 == 0 => ExpectedVersion::NoStream,
                    _ => ExpectedVersion::Any,
                };
                let row = format!("w{w:02}-{i:03}");
                let mut tx = store.begin().await.unwrap();
                let insert = format!("INSERT INTO {orders} (id, total) VALUES ($1, $2)");
                tx.client().execute(&insert, &[&row, &(i as i32)]).await.unwrap();
                tx.append(name, expected, events(1 + i % 2)).unwrap();
                match tx.commit().await {
                    Ok(results) => {
                        acked.extend(results);
                        rows.push(row);
                    }
                    Err(Error::WrongExpectedVersion(_)) => conflicts += 1,
                    Err(e) => panic!("writer {w}: unexpected error {e}"),
                }
            }
            (acked, rows, conflicts)
        }));
    }
    let mut acked = Vec::new();
    let mut rows = Vec::new();
    let mut conflicts = 0;
    for w in writers {
        let (a, r, c) = w.await.unwrap();
        acked.extend(a);
        rows.extend(r);
        conflicts += c;
    }
    let paged = pager.finish().await;

    let log: Vec<_> = all_events(a.as_ref()).await.into_iter().filter(|e| e.position > start).collect();
    let total: u64 = acked.iter().map(|r| r.last_version - r.first_version + 1).sum();
    assert_eq!(log.len() as u64, total, "the log holds exactly the acknowledged events");
    assert!(conflicts > 0, "some outbox transactions must lose a race");
    let positions: Vec<u64> = log.iter().map(|e| e.position).collect();
    assert_eq!(positions, (start + 1..=start + total).collect::<Vec<_>>(), "positions must be contiguous");
    assert_eq!(paged, positions, "the paging reader skipped or repeated an event");
    let mut live = Vec::with_capacity(log.len());
    while live.len() < log.len() {
        match tokio::time::timeout(Duration::from_secs(30), subscription.next()).await {
            Ok(Some(Ok(e))) => live.push(e.position),
            other => panic!("subscription stalled after {} of {} events: {other:?}", live.len(), log.len()),
        }
    }
    assert_eq!(live, positions, "the live subscriber skipped or repeated an event");
    for r in &acked {
        for (i, p) in (r.first_position..=r.last_position).enumerate() {
            let e = &log[(p - start - 1) as usize];
            assert_eq!((&e.stream, e.version), (&r.stream, r.first_version + i as u64));
        }
    }
    rows.sort();
    assert_eq!(app.rows().await, rows, "every committed outbox transaction has its row, and only those");
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_the_application_leaves_never_reaches_the_stores_own_writes() {
    let Some(app) = app().await else { return };
    // More transactions than the pool has connections: had one gone back to the pool, the
    // store's writer would meet its read-only default and fail.
    for i in 0..12 {
        let mut tx = app.store.begin().await.unwrap();
        tx.client().batch_execute("SET default_transaction_read_only = on").await.unwrap();
        tx.append(stream(&format!("order-s{i}")), ExpectedVersion::NoStream, events(1)).unwrap();
        tx.commit().await.unwrap();
    }
    for i in 0..12 {
        app.store.append(stream(&format!("plain-{i}")), ExpectedVersion::NoStream, events(1)).await.unwrap();
        app.store.read_stream(&stream(&format!("order-s{i}")), 1, Direction::Forward, 1).await.unwrap();
    }
    assert_eq!(app.events().await.len(), 24);
}
