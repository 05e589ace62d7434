//! The transactional outbox: an application's rows and its events commit together or not
//! at all, whatever else the writer's group holds.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bifrost_core::store::EventStoreExt;
use bifrost_core::testkit::{PagingReader, all_events, events, stream};
use bifrost_core::{
    AppendResult, Error, EventStore, ExpectedVersion, LogFilter, StreamAppend, StreamName, SubscribeFrom,
};
use bifrost_sqlite::rusqlite::{self, Connection, params};
use bifrost_sqlite::{OutboxError, SqliteOptions, SqliteStore};
use futures::StreamExt;

const ORDERS: &str = "CREATE TABLE IF NOT EXISTS app_orders (id TEXT PRIMARY KEY, total INTEGER NOT NULL)";

/// A store whose database also holds the application's `app_orders` table, created through
/// `transact` like an application would.
async fn store() -> (Arc<SqliteStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
    store
        .transact(|conn| {
            conn.execute_batch(ORDERS)?;
            Ok::<_, rusqlite::Error>((vec![], ()))
        })
        .await
        .unwrap();
    (Arc::new(store), dir)
}

fn placed(order: &str, expected: ExpectedVersion) -> StreamAppend {
    StreamAppend::new(stream(&format!("order-{order}")), expected, events(2))
}

/// Inserts the order row and returns the events to append with it.
fn insert_order(
    conn: &Connection,
    order: &str,
    append: StreamAppend,
) -> rusqlite::Result<(Vec<StreamAppend>, usize)> {
    let rows = conn.execute("INSERT INTO app_orders (id, total) VALUES (?1, 42)", params![order])?;
    Ok((vec![append], rows))
}

/// The application's rows, read on a connection of its own as the docs advise.
fn orders(store: &SqliteStore) -> Vec<String> {
    let conn = Connection::open(store.path()).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM app_orders ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
}

async fn stream_len(store: &SqliteStore, name: &str) -> Option<u64> {
    match store.stream_info(&stream(name)).await {
        Ok(info) => Some(info.version),
        Err(Error::StreamNotFound(_)) => None,
        Err(e) => panic!("{e}"),
    }
}

#[derive(Debug)]
struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}

impl From<rusqlite::Error> for Refused {
    fn from(_: rusqlite::Error) -> Self {
        Self
    }
}

#[tokio::test]
async fn a_committed_transaction_keeps_the_row_and_its_events() {
    let (store, _dir) = store().await;
    let (results, rows) = store
        .transact(|conn| insert_order(conn, "o-1", placed("o-1", ExpectedVersion::NoStream)))
        .await
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(results.len(), 1);
    assert_eq!((results[0].first_version, results[0].last_version), (1, 2));
    assert_eq!((results[0].first_position, results[0].last_position), (1, 2));
    assert_eq!(orders(&store), ["o-1"]);
    let log = all_events(store.as_ref()).await;
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|e| e.stream.as_str() == "order-o-1"));
}

#[tokio::test]
async fn work_that_returns_an_error_leaves_neither_row_nor_events() {
    let (store, _dir) = store().await;
    let err = store
        .transact(|conn| {
            insert_order(conn, "o-1", placed("o-1", ExpectedVersion::Any))?;
            Err::<(Vec<StreamAppend>, ()), _>(Refused)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, OutboxError::Work(Refused)), "{err:?}");
    assert!(orders(&store).is_empty());
    assert!(all_events(store.as_ref()).await.is_empty());
    assert_eq!(*store.head().borrow(), 0);
}

#[tokio::test]
async fn a_wrong_expected_version_rolls_the_row_back_too() {
    let (store, _dir) = store().await;
    store.append(stream("order-o-1"), ExpectedVersion::NoStream, events(1)).await.unwrap();
    let err = store
        .transact(|conn| insert_order(conn, "o-1", placed("o-1", ExpectedVersion::NoStream)))
        .await
        .unwrap_err();
    match err {
        OutboxError::Store(Error::WrongExpectedVersion(c)) => assert_eq!(c[0].actual, Some(1)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(orders(&store).is_empty(), "the row must be rolled back with the events");
    assert_eq!(stream_len(&store, "order-o-1").await, Some(1));
}

#[tokio::test]
async fn invalid_appends_and_reused_ids_roll_the_row_back_too() {
    let (store, _dir) = store().await;
    let taken = events(1);
    store.append(stream("other-1"), ExpectedVersion::Any, taken.clone()).await.unwrap();
    let err = store
        .transact(move |conn| {
            let append = StreamAppend::new(stream("order-o-1"), ExpectedVersion::Any, taken);
            insert_order(conn, "o-1", append)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, OutboxError::Store(Error::DuplicateEventId { .. })), "{err:?}");
    let err = store
        .transact(|conn| {
            let append = StreamAppend::new(stream("order-o-2"), ExpectedVersion::Any, vec![]);
            insert_order(conn, "o-2", append)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, OutboxError::Store(Error::InvalidArgument(_))), "{err:?}");
    assert!(orders(&store).is_empty());
    assert_eq!(all_events(store.as_ref()).await.len(), 1);
}

#[tokio::test]
async fn a_resent_transaction_returns_the_original_result_and_stores_nothing_twice() {
    let (store, _dir) = store().await;
    let append = placed("o-1", ExpectedVersion::NoStream);
    let upsert = |append: StreamAppend| {
        move |conn: &Connection| {
            conn.execute(
                "INSERT INTO app_orders (id, total) VALUES ('o-1', 42) ON CONFLICT (id) DO NOTHING",
                [],
            )?;
            Ok::<_, rusqlite::Error>((vec![append], ()))
        }
    };
    let (first, ()) = store.transact(upsert(append.clone())).await.unwrap();
    store.append(stream("order-o-2"), ExpectedVersion::Any, events(1)).await.unwrap();
    // The expected version no longer holds, but the ids are the same: a replay.
    let (again, ()) = store.transact(upsert(append)).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(all_events(store.as_ref()).await.len(), 3);
    assert_eq!(orders(&store), ["o-1"]);
}

#[tokio::test]
async fn a_panic_in_work_is_an_error_and_the_store_keeps_working() {
    let (store, _dir) = store().await;
    let err = store
        .transact(|conn| -> rusqlite::Result<(Vec<StreamAppend>, ())> {
            insert_order(conn, "o-1", placed("o-1", ExpectedVersion::Any))?;
            panic!("work failed halfway");
        })
        .await
        .unwrap_err();
    match err {
        OutboxError::Panicked(message) => assert_eq!(message, "work failed halfway"),
        other => panic!("expected a panic report, got {other:?}"),
    }
    assert!(orders(&store).is_empty());
    // The writer lives on: appends, state writes and outbox work still commit.
    store.append(stream("after-1"), ExpectedVersion::NoStream, events(1)).await.unwrap();
    store.transact(|conn| insert_order(conn, "o-2", placed("o-2", ExpectedVersion::NoStream))).await.unwrap();
    assert_eq!(orders(&store), ["o-2"]);
    assert_eq!(all_events(store.as_ref()).await.len(), 3);
}

#[tokio::test]
async fn the_head_watch_advances_after_an_outbox_commit() {
    let (store, _dir) = store().await;
    let mut head = store.head();
    assert_eq!(*head.borrow_and_update(), 0);
    let (results, _) = store
        .transact(|conn| insert_order(conn, "o-1", placed("o-1", ExpectedVersion::NoStream)))
        .await
        .unwrap();
    assert!(head.has_changed().unwrap(), "the head watch must move by the time transact answers");
    assert_eq!(*head.borrow_and_update(), results[0].last_position);
    let mut live = store.clone().subscribe(SubscribeFrom::Start, LogFilter::default());
    for expected in 1..=2 {
        let event =
            tokio::time::timeout(Duration::from_secs(5), live.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(event.position, expected);
    }
}

/// A member of a group failing (its work, its appends, its panic) leaves the others of the
/// same group alone: plain appends and other outbox work queued at the same time commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_outbox_member_does_not_undo_the_rest_of_its_group() {
    let (store, _dir) = store().await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let order = format!("o-{i:02}");
            match i % 4 {
                0 => store
                    .append(stream(&format!("plain-{i}")), ExpectedVersion::NoStream, events(1))
                    .await
                    .is_ok(),
                1 => store
                    .transact(move |conn| {
                        insert_order(conn, &order, placed(&order, ExpectedVersion::NoStream))?;
                        Err::<(Vec<StreamAppend>, usize), _>(Refused)
                    })
                    .await
                    .is_ok(),
                2 => store
                    .transact(move |conn| {
                        insert_order(conn, &order, placed(&order, ExpectedVersion::Exact(7)))
                    })
                    .await
                    .is_ok(),
                _ => store
                    .transact(move |conn| {
                        insert_order(conn, &order, placed(&order, ExpectedVersion::NoStream))
                    })
                    .await
                    .is_ok(),
            }
        }));
    }
    let mut kept = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if task.await.unwrap() {
            kept.push(i);
        }
    }
    assert_eq!(kept, (0..60).filter(|i| i % 4 == 0 || i % 4 == 3).collect::<Vec<_>>());
    let expected_rows: Vec<String> = (0..60).filter(|i| i % 4 == 3).map(|i| format!("o-{i:02}")).collect();
    assert_eq!(orders(&store), expected_rows);
    let log = all_events(store.as_ref()).await;
    assert_eq!(log.len(), 15 + 15 * 2);
    assert!(log.windows(2).all(|w| w[1].position == w[0].position + 1), "positions must be contiguous");
}

/// Outbox work and plain appends from many tasks at once, some outbox work losing
/// expected-version races: a live subscriber and a paging reader each see every committed
/// event exactly once, in strictly increasing order, and every committed outbox append has
/// its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_and_plain_appends_interleaved_keep_the_log_gap_free_for_live_readers() {
    let (store, _dir) = store().await;
    const WRITERS: usize = 12;
    const ROUNDS: usize = 60;
    let mut subscription = store.clone().subscribe(SubscribeFrom::Start, LogFilter::default());
    let pager = PagingReader::spawn(store.clone(), 0);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut acked: Vec<AppendResult> = Vec::new();
            let mut rows = Vec::new();
            for i in 0..ROUNDS {
                let name = stream(&format!("order-{}", (w * 5 + i) % 16));
                if w % 2 == 0 {
                    acked.push(store.append(name, ExpectedVersion::Any, events(1 + i % 3)).await.unwrap());
                    continue;
                }
                let expected = match store.stream_info(&name).await {
                    Ok(info) if i % 2 == 0 => ExpectedVersion::Exact(info.version),
                    Err(Error::StreamNotFound(_)) if i % 2 == 0 => ExpectedVersion::NoStream,
                    _ => ExpectedVersion::Any,
                };
                let row = format!("w{w}-{i}");
                let id = row.clone();
                let append = StreamAppend::new(name, expected, events(1 + i % 2));
                match store.transact(move |conn| insert_order(conn, &id, append)).await {
                    Ok((results, _)) => {
                        acked.extend(results);
                        rows.push(row);
                    }
                    Err(OutboxError::Store(Error::WrongExpectedVersion(_))) => {}
                    Err(e) => panic!("writer {w}: unexpected error {e:?}"),
                }
            }
            (acked, rows)
        }));
    }
    let mut acked = Vec::new();
    let mut rows = Vec::new();
    for w in writers {
        let (a, r) = w.await.unwrap();
        acked.extend(a);
        rows.extend(r);
    }
    let paged = pager.finish().await;

    let log = all_events(store.as_ref()).await;
    let total: u64 = acked.iter().map(|r| r.last_version - r.first_version + 1).sum();
    assert_eq!(log.len() as u64, total, "the log holds exactly the acknowledged events");
    let positions: Vec<u64> = log.iter().map(|e| e.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(paged, positions, "the paging reader skipped or repeated an event");
    let mut live = Vec::with_capacity(log.len());
    while live.len() < log.len() {
        match tokio::time::timeout(Duration::from_secs(30), subscription.next()).await {
            Ok(Some(Ok(e))) => live.push(e.position),
            other => panic!("subscription stalled after {} of {} events: {other:?}", live.len(), log.len()),
        }
    }
    assert_eq!(live, positions, "the live subscriber skipped or repeated an event");
    rows.sort();
    assert_eq!(orders(&store), rows, "every committed outbox transaction has its row, and only those");
    for r in &acked {
        for (i, p) in (r.first_position..=r.last_position).enumerate() {
            let e = &log[positions.binary_search(&p).unwrap()];
            assert_eq!((&e.stream, e.version), (&r.stream, r.first_version + i as u64));
        }
    }
}

#[tokio::test]
async fn work_cannot_end_the_stores_transaction_or_write_its_tables() {
    let (store, _dir) = store().await;
    store.append(stream("order-o-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    let attempts = [
        "COMMIT",
        "ROLLBACK",
        "BEGIN",
        "RELEASE bifrost_outbox",
        "ROLLBACK TO bifrost_outbox",
        "SAVEPOINT bifrost_outbox",
        "DELETE FROM events",
        "UPDATE meta SET value = 0",
        "INSERT INTO state (scope, key, value) VALUES ('s', 'k', x'00')",
        "DROP TABLE streams",
        "CREATE TRIGGER sneaky AFTER INSERT ON events BEGIN SELECT 1; END",
        "PRAGMA synchronous = OFF",
    ];
    for statement in attempts {
        let err = store
            .transact(move |conn| {
                conn.execute("INSERT INTO app_orders (id, total) VALUES ('o-1', 1)", [])?;
                conn.execute_batch(statement)?;
                Ok::<_, rusqlite::Error>((vec![placed("o-1", ExpectedVersion::Any)], ()))
            })
            .await
            .unwrap_err();
        match err {
            OutboxError::Work(e) => assert!(e.to_string().contains("not authorized"), "{statement}: {e}"),
            other => panic!("{statement}: {other:?}"),
        }
    }
    // What is the application's own stays allowed: reads of the store's tables, its own
    // savepoints, its own DDL, describing pragmas.
    let (results, count) = store
        .transact(|conn| {
            conn.execute_batch(
                "SAVEPOINT mine; CREATE TABLE app_lines (order_id TEXT, n INTEGER); \
                 CREATE INDEX app_lines_order ON app_lines (order_id); RELEASE mine;",
            )?;
            let columns = conn.prepare("PRAGMA table_info(app_lines)")?.query_map([], |_| Ok(()))?.count();
            assert_eq!(columns, 2);
            conn.execute("INSERT INTO app_orders (id, total) VALUES ('o-1', 1)", [])?;
            let count: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
            Ok::<_, rusqlite::Error>((vec![placed("o-1", ExpectedVersion::Exact(1))], count))
        })
        .await
        .unwrap();
    assert_eq!((count, results[0].last_version), (1, 3));
    assert_eq!(orders(&store), ["o-1"]);
    assert_eq!(all_events(store.as_ref()).await.len(), 3);
}

#[tokio::test]
async fn outbox_commits_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written = {
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let (results, _) = store
            .transact(|conn| {
                conn.execute_batch(ORDERS)?;
                insert_order(conn, "o-1", placed("o-1", ExpectedVersion::NoStream))
            })
            .await
            .unwrap();
        store.close().await.unwrap();
        results
    };
    let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
    assert_eq!(orders(&store), ["o-1"]);
    let name = StreamName::new("order-o-1").unwrap();
    assert_eq!(store.stream_info(&name).await.unwrap().version, written[0].last_version);
    // Positions go on after the outbox's, not over them.
    let next = store.append(name, ExpectedVersion::Exact(2), events(1)).await.unwrap();
    assert_eq!(next.first_position, written[0].last_position + 1);
}

#[tokio::test]
async fn transact_after_close_is_refused() {
    let (store, _dir) = store().await;
    store.close().await.unwrap();
    let err = store.transact(|_| Ok::<_, rusqlite::Error>((vec![], ()))).await.unwrap_err();
    assert!(matches!(err, OutboxError::Store(Error::Unavailable(_))), "{err:?}");
}

/// A value whose `Drop` panics.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("a panicking drop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_drop_of_an_abandoned_answer_does_not_end_the_writer() {
    let (store, _dir) = store().await;
    let (started, started_rx) = std::sync::mpsc::channel::<()>();
    let caller = {
        let store = store.clone();
        tokio::spawn(async move {
            let answer = store
                .transact(move |_conn| {
                    let _ = started.send(());
                    // The caller goes away meanwhile: the answer is dropped on the writer.
                    std::thread::sleep(Duration::from_millis(300));
                    Ok::<_, rusqlite::Error>((vec![], Bomb))
                })
                .await;
            std::mem::forget(answer);
        })
    };
    tokio::task::spawn_blocking(move || started_rx.recv()).await.unwrap().unwrap();
    caller.abort();
    let _ = caller.await;
    // The writer survived the panic in the application's Drop.
    let appended = tokio::time::timeout(
        Duration::from_secs(10),
        store.append(stream("after-1"), ExpectedVersion::NoStream, events(1)),
    )
    .await
    .expect("the writer must still answer");
    assert_eq!(appended.unwrap().first_version, 1);
}
