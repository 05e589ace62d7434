//! What only a durable backend can promise: the log and readers' state survive a reopen,
//! positions are never reused, and one data directory has one owner.

use bifrost_core::store::EventStoreExt;
use bifrost_core::testkit::{event, events, stream};
use bifrost_core::{
    DeleteMode, Direction, Error, EventStore, ExpectedVersion, LogFilter, StateChange, StateStore,
    SubscribeFrom,
};
use bifrost_sqlite::{SqliteOptions, SqliteStore};
use futures::StreamExt;
use std::sync::Arc;

fn open(dir: &std::path::Path) -> SqliteStore {
    SqliteStore::open(dir, SqliteOptions::default()).expect("open store")
}

#[tokio::test]
async fn the_log_survives_a_reopen_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let payload = "{\"name\":\"Bifröst\",  \"n\": [1, 2.50]}";
    let written = {
        let store = open(dir.path());
        let r = store
            .append(stream("order-1"), ExpectedVersion::NoStream, vec![event("order.placed", payload)])
            .await
            .unwrap();
        store.append(stream("order-1"), ExpectedVersion::Exact(1), events(2)).await.unwrap();
        store.close().await.unwrap();
        r
    };
    let store = open(dir.path());
    let read = store.read_stream(&stream("order-1"), 1, Direction::Forward, 10).await.unwrap().events;
    assert_eq!(read.len(), 3);
    assert_eq!(read[0].position, written.first_position);
    assert_eq!(read[0].data.as_ref(), payload.as_bytes());
    assert_eq!(*store.head().borrow(), read[2].position);
    let err = store.append(stream("order-1"), ExpectedVersion::Exact(1), events(1)).await.unwrap_err();
    assert!(matches!(err, Error::WrongExpectedVersion(ref c) if c[0].actual == Some(3)), "{err:?}");
}

#[tokio::test]
async fn positions_are_not_reused_after_the_newest_events_are_deleted_and_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let deleted_last = {
        let store = open(dir.path());
        store.append(stream("keep-1"), ExpectedVersion::Any, events(1)).await.unwrap();
        let r = store.append(stream("gone-1"), ExpectedVersion::Any, events(5)).await.unwrap();
        store.delete_stream(&stream("gone-1"), DeleteMode::Hard).await.unwrap();
        store.close().await.unwrap();
        r.last_position
    };
    let store = open(dir.path());
    let r = store.append(stream("keep-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    assert!(r.first_position > deleted_last, "{} reused a deleted position", r.first_position);
    assert!(matches!(
        store.append(stream("gone-1"), ExpectedVersion::Any, events(1)).await,
        Err(Error::StreamDeleted(_))
    ));
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let second = SqliteStore::open(dir.path(), SqliteOptions::default());
    assert!(matches!(second, Err(Error::Unavailable(_))), "second open must fail");
}

#[tokio::test]
async fn close_finishes_queued_appends_then_refuses_new_ones_and_ends_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let mut sub = store.clone().subscribe(SubscribeFrom::Start, LogFilter::default());
    let mut pending = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        pending.push(tokio::spawn(async move {
            store.append(stream(&format!("c-{i}")), ExpectedVersion::Any, events(1)).await
        }));
    }
    let mut acknowledged = 0;
    for p in pending {
        if p.await.unwrap().is_ok() {
            acknowledged += 1;
        }
    }
    store.close().await.unwrap();
    assert!(matches!(
        store.append(stream("late-1"), ExpectedVersion::Any, events(1)).await,
        Err(Error::Unavailable(_))
    ));
    let mut delivered = 0;
    while let Some(item) = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
        .await
        .expect("subscription must end")
    {
        if item.is_ok() {
            delivered += 1;
        }
    }
    assert!(delivered <= acknowledged);
    let reopened = open(dir.path());
    let log = reopened.read_all(0, &LogFilter::default(), 1000).await.unwrap().events;
    assert_eq!(log.len(), acknowledged);
}

#[tokio::test]
async fn state_written_before_close_is_read_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![0xa5u8; 3 << 20];
    {
        let store = open(dir.path());
        store
            .write_state(vec![
                StateChange::put("group/orders", "cursor", "41"),
                StateChange::put("group/orders", "config", "{}"),
                StateChange::put("dlq/orders", "00000000000000000007", big.clone()),
            ])
            .await
            .unwrap();
        store
            .write_state(vec![
                StateChange::put("group/orders", "cursor", "42"),
                StateChange::delete("group/orders", "config"),
            ])
            .await
            .unwrap();
        store.close().await.unwrap();
        assert!(matches!(
            store.write_state(vec![StateChange::put("group/orders", "cursor", "43")]).await,
            Err(Error::Unavailable(_))
        ));
    }
    let store = open(dir.path());
    assert_eq!(store.read_state("group/orders", "cursor").await.unwrap().as_deref(), Some(&b"42"[..]));
    assert_eq!(store.read_state("group/orders", "config").await.unwrap(), None);
    let dead = store.scan_state("dlq/orders", None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value.as_ref(), big.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_writes_and_appends_committed_together_all_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Arc::new(open(dir.path()));
        let mut tasks = Vec::new();
        for writer in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let appended =
                        store.append(stream(&format!("s-{writer}")), ExpectedVersion::Any, events(1));
                    let written = store.write_state(vec![StateChange::put(
                        format!("group/{writer}"),
                        "cursor",
                        i.to_string(),
                    )]);
                    let (appended, written) = tokio::join!(appended, written);
                    appended.unwrap();
                    written.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        store.close().await.unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.read_all(0, &LogFilter::default(), 1000).await.unwrap().events.len(), 8 * 25);
    for writer in 0..8 {
        let cursor = store.read_state(&format!("group/{writer}"), "cursor").await.unwrap();
        assert_eq!(cursor.as_deref(), Some(&b"24"[..]));
    }
}

#[tokio::test]
async fn rows_that_do_not_decode_are_reported_as_corrupt_not_as_a_failing_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.append(stream("order-1"), ExpectedVersion::Any, events(1)).await.unwrap();
        store.append(stream("order-2"), ExpectedVersion::Any, events(1)).await.unwrap();
        store.write_state(vec![StateChange::put("s", "k", "v")]).await.unwrap();
        store.close().await.unwrap();
    }
    // What no version of Bifrost writes: a 3-byte event id, an event type that is not
    // text, a state value that is not a blob.
    let conn = rusqlite::Connection::open(dir.path().join("bifrost.db")).unwrap();
    conn.execute_batch(
        "UPDATE events SET id = x'010203' WHERE stream = 'order-1';
         UPDATE events SET type = x'ff' WHERE stream = 'order-2';
         UPDATE state SET value = 7 WHERE scope = 's';",
    )
    .unwrap();
    drop(conn);

    let store = open(dir.path());
    let corrupt = |what: &str, result: Result<(), Error>| match result {
        Err(Error::Corrupt { .. }) => {}
        other => panic!("{what}: expected a corrupt-data error, got {other:?}"),
    };
    corrupt("id", store.read_stream(&stream("order-1"), 1, Direction::Forward, 10).await.map(drop));
    corrupt("type", store.read_stream(&stream("order-2"), 1, Direction::Forward, 10).await.map(drop));
    let typed = LogFilter::default().with_types(["order.#"]).unwrap();
    corrupt("filtered type", store.read_all(0, &typed, 10).await.map(drop));
    corrupt("state", store.read_state("s", "k").await.map(drop));
    corrupt("state scan", store.scan_state("s", None, 10).await.map(drop));
}
