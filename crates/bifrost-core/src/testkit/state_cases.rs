//! The state contract ([`StateStore`]) as cases. Each takes a fresh, empty store.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use bytes::Bytes;

use super::{all_events, events, stream};
use crate::error::Error;
use crate::state::{MAX_STATE_NAME_LEN, StateChange, StateStore};
use crate::store::{EventStore, ExpectedVersion};

type Store = Arc<dyn EventStore>;
type State = Arc<dyn StateStore>;

fn keys(entries: &[crate::state::StateEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.key.as_str()).collect()
}

pub async fn state_put_then_read_round_trips_bytes(_store: Store, state: State) {
    let value = Bytes::from_static(b"\x00\xff{\"checkpoint\":42}\n\xe2\x82\xac");
    state.write_state(vec![StateChange::put("group/a", "cursor", value.clone())]).await.unwrap();
    assert_eq!(state.read_state("group/a", "cursor").await.unwrap(), Some(value));

    let big = Bytes::from(vec![7u8; 1 << 20]);
    state.write_state(vec![StateChange::put("group/a", "big", big.clone())]).await.unwrap();
    assert_eq!(state.read_state("group/a", "big").await.unwrap(), Some(big));

    let empty = Bytes::new();
    state.write_state(vec![StateChange::put("group/a", "empty", empty.clone())]).await.unwrap();
    assert_eq!(state.read_state("group/a", "empty").await.unwrap(), Some(empty));
}

pub async fn state_reads_of_missing_keys_are_none(_store: Store, state: State) {
    assert_eq!(state.read_state("nothing", "here").await.unwrap(), None);
    assert!(state.scan_state("nothing", None, 10).await.unwrap().is_empty());
    state.write_state(vec![StateChange::put("s", "k", "v")]).await.unwrap();
    assert_eq!(state.read_state("s", "other").await.unwrap(), None);
    assert_eq!(state.read_state("other", "k").await.unwrap(), None);
    // Deleting what is not there is fine.
    state
        .write_state(vec![StateChange::delete("s", "missing"), StateChange::delete_scope("missing")])
        .await
        .unwrap();
    assert_eq!(state.read_state("s", "k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

pub async fn state_put_replaces_and_delete_removes(_store: Store, state: State) {
    state.write_state(vec![StateChange::put("s", "k", "one")]).await.unwrap();
    state.write_state(vec![StateChange::put("s", "k", "two")]).await.unwrap();
    assert_eq!(state.read_state("s", "k").await.unwrap().as_deref(), Some(&b"two"[..]));
    state.write_state(vec![StateChange::delete("s", "k")]).await.unwrap();
    assert_eq!(state.read_state("s", "k").await.unwrap(), None);
    assert!(state.scan_state("s", None, 10).await.unwrap().is_empty());
}

pub async fn state_write_applies_changes_in_order(_store: Store, state: State) {
    state
        .write_state(vec![
            StateChange::put("s", "a", "1"),
            StateChange::put("s", "b", "1"),
            StateChange::delete_scope("s"),
            StateChange::put("s", "c", "1"),
            StateChange::put("s", "c", "2"),
            StateChange::put("s", "d", "1"),
            StateChange::delete("s", "d"),
        ])
        .await
        .unwrap();
    let entries = state.scan_state("s", None, 10).await.unwrap();
    assert_eq!(keys(&entries), ["c"]);
    assert_eq!(entries[0].value.as_ref(), b"2");
}

pub async fn state_write_with_an_invalid_change_applies_nothing(_store: Store, state: State) {
    state.write_state(vec![StateChange::put("s", "kept", "old")]).await.unwrap();
    for bad in [
        StateChange::put("s", "", "x"),
        StateChange::put("", "k", "x"),
        StateChange::put("s", "k\0", "x"),
        StateChange::put("s", "k".repeat(MAX_STATE_NAME_LEN + 1), "x"),
        StateChange::delete_scope(""),
    ] {
        let err = state
            .write_state(vec![StateChange::put("s", "kept", "new"), StateChange::put("s", "new", "x"), bad])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
    assert_eq!(state.read_state("s", "kept").await.unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(state.read_state("s", "new").await.unwrap(), None);
    // The longest allowed key is fine.
    let longest = "k".repeat(MAX_STATE_NAME_LEN);
    state.write_state(vec![StateChange::put("s", longest.clone(), "x")]).await.unwrap();
    assert!(state.read_state("s", &longest).await.unwrap().is_some());
}

pub async fn state_scan_pages_in_key_order_within_one_scope(_store: Store, state: State) {
    // Zero-padded positions sort as numbers; byte order, not a collation, decides.
    let mut changes: Vec<_> =
        (0..25u64).rev().map(|p| StateChange::put("dlq/g", format!("{p:020}"), p.to_string())).collect();
    changes.push(StateChange::put("dlq/g", "B", "x"));
    changes.push(StateChange::put("dlq/g", "a", "x"));
    changes.push(StateChange::put("dlq/g", "_", "x"));
    changes.push(StateChange::put("dlq/g2", "00000000000000000003", "other scope"));
    changes.push(StateChange::put("dlq", "00000000000000000003", "prefix scope"));
    state.write_state(changes).await.unwrap();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = state.scan_state("dlq/g", after.as_deref(), 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        after = Some(page.last().unwrap().key.clone());
        seen.extend(page);
    }
    let mut expected: Vec<String> = (0..25u64).map(|p| format!("{p:020}")).collect();
    expected.extend(["B".to_owned(), "_".to_owned(), "a".to_owned()]);
    assert_eq!(seen.iter().map(|e| e.key.clone()).collect::<Vec<_>>(), expected);
    assert_eq!(seen[3].value.as_ref(), b"3");

    let from_middle = state.scan_state("dlq/g", Some("00000000000000000023"), 100).await.unwrap();
    assert_eq!(keys(&from_middle), ["00000000000000000024", "B", "_", "a"]);
    // `after` need not be a stored key.
    let between = state.scan_state("dlq/g", Some("00000000000000000009x"), 2).await.unwrap();
    assert_eq!(keys(&between), ["00000000000000000010", "00000000000000000011"]);
    assert!(state.scan_state("dlq/g", Some("a"), 10).await.unwrap().is_empty());
}

pub async fn state_delete_scope_removes_only_that_scope(_store: Store, state: State) {
    state
        .write_state(vec![
            StateChange::put("group/a", "config", "a"),
            StateChange::put("group/a", "cursor", "a"),
            StateChange::put("group/ab", "config", "ab"),
            StateChange::put("group", "config", "g"),
        ])
        .await
        .unwrap();
    state.write_state(vec![StateChange::delete_scope("group/a")]).await.unwrap();
    assert!(state.scan_state("group/a", None, 10).await.unwrap().is_empty());
    assert_eq!(state.read_state("group/ab", "config").await.unwrap().as_deref(), Some(&b"ab"[..]));
    assert_eq!(state.read_state("group", "config").await.unwrap().as_deref(), Some(&b"g"[..]));
    // A deleted scope can be written again.
    state.write_state(vec![StateChange::put("group/a", "config", "again")]).await.unwrap();
    assert_eq!(state.read_state("group/a", "config").await.unwrap().as_deref(), Some(&b"again"[..]));
}

pub async fn state_concurrent_writers_lose_nothing(_store: Store, state: State) {
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                state
                    .write_state(vec![
                        StateChange::put("shared", format!("{writer:02}-{i:02}"), format!("{writer}")),
                        StateChange::put(format!("own/{writer}"), "last", format!("{i}")),
                    ])
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(state.scan_state("shared", None, 1000).await.unwrap().len(), 16 * 20);
    for writer in 0..16 {
        let last = state.read_state(&format!("own/{writer}"), "last").await.unwrap();
        assert_eq!(last.as_deref(), Some(&b"19"[..]));
    }
}

pub async fn state_is_separate_from_the_log(store: Store, state: State) {
    store.append(stream("order-1"), ExpectedVersion::Any, events(3)).await.unwrap();
    let head = *store.head().borrow();
    state.write_state(vec![StateChange::put("group/orders", "cursor", "3")]).await.unwrap();
    assert_eq!(*store.head().borrow(), head, "a state write is not an event");
    assert_eq!(all_events(store.as_ref()).await.len(), 3);
    // And appends keep working after state writes, at the next position.
    let next = store.append(stream("order-1"), ExpectedVersion::Exact(3), events(1)).await.unwrap();
    assert!(next.first_position > head);
    assert_eq!(state.read_state("group/orders", "cursor").await.unwrap().as_deref(), Some(&b"3"[..]));
}

pub async fn state_expectations_that_hold_let_the_write_apply(_store: Store, state: State) {
    // Absent, as expected: the first writer of a checkpoint.
    state
        .write_state(vec![
            StateChange::expect("p", "checkpoint", None),
            StateChange::put("p", "checkpoint", "1"),
        ])
        .await
        .unwrap();
    // Holding what the writer read.
    state
        .write_state(vec![
            StateChange::put("p", "view", "a"),
            StateChange::expect("p", "checkpoint", Some(Bytes::from_static(b"1"))),
            StateChange::put("p", "checkpoint", "2"),
        ])
        .await
        .unwrap();
    assert_eq!(state.read_state("p", "checkpoint").await.unwrap(), Some(Bytes::from_static(b"2")));
    assert_eq!(state.read_state("p", "view").await.unwrap(), Some(Bytes::from_static(b"a")));
    // An expectation alone is a check that writes nothing.
    state
        .write_state(vec![StateChange::expect("p", "checkpoint", Some(Bytes::from_static(b"2")))])
        .await
        .unwrap();
}

pub async fn state_an_expectation_that_fails_writes_nothing(_store: Store, state: State) {
    state.write_state(vec![StateChange::put("p", "checkpoint", "5")]).await.unwrap();
    let stale = state
        .write_state(vec![
            StateChange::put("p", "view", "lost"),
            StateChange::expect("p", "checkpoint", Some(Bytes::from_static(b"4"))),
            StateChange::put("p", "checkpoint", "6"),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(&stale, Error::StateConflict { scope, key } if scope == "p" && key == "checkpoint"),
        "{stale}"
    );
    // Expecting absence of a key that exists fails too.
    let present = state
        .write_state(vec![StateChange::expect("p", "checkpoint", None), StateChange::delete_scope("p")])
        .await
        .unwrap_err();
    assert!(matches!(present, Error::StateConflict { .. }), "{present}");
    // Expecting a value of a key that is absent fails.
    let absent = state
        .write_state(vec![
            StateChange::expect("q", "k", Some(Bytes::from_static(b"x"))),
            StateChange::put("q", "k", "y"),
        ])
        .await
        .unwrap_err();
    assert!(matches!(absent, Error::StateConflict { .. }), "{absent}");
    assert_eq!(state.read_state("p", "checkpoint").await.unwrap(), Some(Bytes::from_static(b"5")));
    assert_eq!(state.read_state("p", "view").await.unwrap(), None);
    assert_eq!(state.read_state("q", "k").await.unwrap(), None);
}

/// Writers racing to move one counter, each expecting the value it read and retrying on a
/// conflict: no increment is lost, and every success moved it by exactly one.
pub async fn state_expectations_fence_concurrent_writers(_store: Store, state: State) {
    const WRITERS: usize = 8;
    const EACH: usize = 10;
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < EACH {
                let read = state.read_state("fence", "counter").await.unwrap();
                let n: u64 = read.as_ref().map_or(0, |b| std::str::from_utf8(b).unwrap().parse().unwrap());
                let write = vec![
                    StateChange::expect("fence", "counter", read),
                    StateChange::put("fence", "counter", (n + 1).to_string()),
                ];
                match state.write_state(write).await {
                    Ok(()) => done += 1,
                    // Another writer moved it first: read again.
                    Err(Error::StateConflict { .. }) => {}
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let last = state.read_state("fence", "counter").await.unwrap().unwrap();
    assert_eq!(std::str::from_utf8(&last).unwrap(), (WRITERS * EACH).to_string(), "an increment was lost");
}
