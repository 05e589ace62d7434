//! One function per rule of the store contract. Each takes a fresh, empty store.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::{all_events, event, events, stream};
use crate::error::Error;
use crate::event::{Metadata, NewEvent, RecordedEvent};
use crate::name::{Category, StreamName};
use crate::store::{
    DeleteMode, Direction, EventStore, ExpectedVersion, LogFilter, StreamAppend, StreamListQuery,
    SubscribeFrom,
};
use crate::subscription::subscribe;
use crate::timestamp::Timestamp;

type Store = Arc<dyn EventStore>;

async fn stream_events(store: &Store, name: &str) -> Vec<RecordedEvent> {
    store.read_stream(&stream(name), 1, Direction::Forward, 100_000).await.unwrap().events
}

fn conflict(err: Error) -> Vec<(String, ExpectedVersion, Option<u64>)> {
    match err {
        Error::WrongExpectedVersion(c) => {
            c.into_iter().map(|c| (c.stream.to_string(), c.expected, c.actual)).collect()
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
}

pub async fn append_to_a_new_stream_numbers_versions_from_one(store: Store) {
    let r = store.append(stream("order-1"), ExpectedVersion::NoStream, events(3)).await.unwrap();
    assert_eq!((r.first_version, r.last_version), (1, 3));
    assert_eq!(r.last_position - r.first_position, 2);
    let r2 = store.append(stream("order-1"), ExpectedVersion::Exact(3), events(2)).await.unwrap();
    assert_eq!((r2.first_version, r2.last_version), (4, 5));
    assert!(r2.first_position > r.last_position);
    let read = stream_events(&store, "order-1").await;
    assert_eq!(read.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(read[0].stream.as_str(), "order-1");
    assert_eq!(read[0].data, Bytes::from_static(b"{\"n\":0}"));
}

pub async fn positions_strictly_increase_across_streams(store: Store) {
    let mut last = 0;
    for i in 0..10 {
        let r = store.append(stream(&format!("s-{}", i % 3)), ExpectedVersion::Any, events(2)).await.unwrap();
        assert!(r.first_position > last, "position went backwards");
        assert_eq!(r.last_position, r.first_position + 1);
        last = r.last_position;
    }
    let all = all_events(store.as_ref()).await;
    assert_eq!(all.len(), 20);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
}

pub async fn expected_no_stream_holds_only_for_a_missing_stream(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::NoStream, events(2)).await.unwrap();
    let err = store.append(stream("a-1"), ExpectedVersion::NoStream, events(1)).await.unwrap_err();
    assert_eq!(conflict(err), vec![("a-1".into(), ExpectedVersion::NoStream, Some(2))]);
}

pub async fn expected_stream_exists_holds_only_for_an_existing_stream(store: Store) {
    let err = store.append(stream("a-1"), ExpectedVersion::StreamExists, events(1)).await.unwrap_err();
    assert_eq!(conflict(err), vec![("a-1".into(), ExpectedVersion::StreamExists, None)]);
    store.append(stream("a-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    let r = store.append(stream("a-1"), ExpectedVersion::StreamExists, events(1)).await.unwrap();
    assert_eq!(r.first_version, 2);
}

pub async fn append_with_stale_expected_version_is_rejected_with_actual_version(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::Any, events(3)).await.unwrap();
    for wrong in [1, 2, 4, 100] {
        let err = store.append(stream("a-1"), ExpectedVersion::Exact(wrong), events(1)).await.unwrap_err();
        assert_eq!(conflict(err), vec![("a-1".into(), ExpectedVersion::Exact(wrong), Some(3))]);
    }
    let err = store.append(stream("b-1"), ExpectedVersion::Exact(1), events(1)).await.unwrap_err();
    assert_eq!(conflict(err), vec![("b-1".into(), ExpectedVersion::Exact(1), None)]);
    assert_eq!(stream_events(&store, "a-1").await.len(), 3);
    assert!(matches!(
        store.read_stream(&stream("b-1"), 1, Direction::Forward, 10).await,
        Err(Error::StreamNotFound(_))
    ));
}

pub async fn expected_exact_zero_means_no_stream(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::Exact(0), events(1)).await.unwrap();
    let err = store.append(stream("a-1"), ExpectedVersion::Exact(0), events(1)).await.unwrap_err();
    assert_eq!(conflict(err), vec![("a-1".into(), ExpectedVersion::Exact(0), Some(1))]);
}

pub async fn expected_any_always_appends(store: Store) {
    for i in 1..=3 {
        let r = store.append(stream("a-1"), ExpectedVersion::Any, events(1)).await.unwrap();
        assert_eq!(r.first_version, i);
    }
}

pub async fn resending_an_append_returns_the_original_result_and_stores_nothing(store: Store) {
    let batch = events(3);
    let first = store.append(stream("a-1"), ExpectedVersion::NoStream, batch.clone()).await.unwrap();
    store.append(stream("b-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    // The retry carries the same expected version, which no longer holds: still the original.
    let again = store.append(stream("a-1"), ExpectedVersion::NoStream, batch.clone()).await.unwrap();
    assert_eq!(again, first);
    let again_any = store.append(stream("a-1"), ExpectedVersion::Any, batch).await.unwrap();
    assert_eq!(again_any, first);
    assert_eq!(all_events(store.as_ref()).await.len(), 4);
    assert_eq!(stream_events(&store, "a-1").await.len(), 3);
}

pub async fn resending_a_stored_id_with_different_content_is_a_duplicate(store: Store) {
    let original = event("a.b", "{\"x\":1}");
    store.append(stream("a-1"), ExpectedVersion::Any, vec![original.clone()]).await.unwrap();
    let changed = event("a.b", "{\"x\":2}").with_id(original.id);
    let err = store.append(stream("a-1"), ExpectedVersion::Any, vec![changed]).await.unwrap_err();
    assert!(matches!(err, Error::DuplicateEventId { id } if id == original.id), "{err:?}");
    let retyped = event("a.c", "{\"x\":1}").with_id(original.id);
    let err = store.append(stream("a-1"), ExpectedVersion::Any, vec![retyped]).await.unwrap_err();
    assert!(matches!(err, Error::DuplicateEventId { .. }), "{err:?}");
    assert_eq!(all_events(store.as_ref()).await.len(), 1);
}

pub async fn reusing_an_id_in_another_stream_is_a_duplicate(store: Store) {
    let original = event("a.b", "{}");
    store.append(stream("a-1"), ExpectedVersion::Any, vec![original.clone()]).await.unwrap();
    let err = store.append(stream("a-2"), ExpectedVersion::Any, vec![original]).await.unwrap_err();
    assert!(matches!(err, Error::DuplicateEventId { .. }), "{err:?}");
    assert!(matches!(store.stream_info(&stream("a-2")).await, Err(Error::StreamNotFound(_))));
}

pub async fn a_batch_with_one_stored_id_stores_nothing(store: Store) {
    let stored = event("a.b", "{}");
    store.append(stream("a-1"), ExpectedVersion::Any, vec![stored.clone()]).await.unwrap();
    // The stored id in second place: the first id is new, so the backend must catch it late.
    let batch = vec![event("a.b", "{\"new\":1}"), stored.clone(), event("a.b", "{\"new\":2}")];
    let err = store.append(stream("a-1"), ExpectedVersion::Any, batch).await.unwrap_err();
    assert!(matches!(err, Error::DuplicateEventId { id } if id == stored.id), "{err:?}");
    // A prefix that was stored followed by new events is not a retry either.
    let batch = vec![stored, event("a.b", "{\"new\":3}")];
    let err = store.append(stream("a-1"), ExpectedVersion::Any, batch).await.unwrap_err();
    assert!(matches!(err, Error::DuplicateEventId { .. }), "{err:?}");
    assert_eq!(all_events(store.as_ref()).await.len(), 1);
    assert_eq!(store.stream_info(&stream("a-1")).await.unwrap().version, 1);
}

pub async fn a_rejected_batch_stores_nothing(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::Any, events(2)).await.unwrap();
    let head_before = *store.head().borrow();
    let err = store.append(stream("a-1"), ExpectedVersion::Exact(1), events(50)).await.unwrap_err();
    assert!(matches!(err, Error::WrongExpectedVersion(_)));
    assert_eq!(all_events(store.as_ref()).await.len(), 2);
    assert_eq!(store.stream_info(&stream("a-1")).await.unwrap().version, 2);
    // The next successful append continues right after: no version was burnt.
    let r = store.append(stream("a-1"), ExpectedVersion::Exact(2), events(1)).await.unwrap();
    assert_eq!(r.first_version, 3);
    assert!(r.first_position > head_before);
}

pub async fn failing_appends_among_concurrent_ones_store_nothing(store: Store) {
    let stored = event("a.b", "{}");
    store.append(stream("dup-1"), ExpectedVersion::Any, vec![stored.clone()]).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        let stored = stored.clone();
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                // Fails on its second event, after the first was written.
                0 => store
                    .append(
                        stream(&format!("bad-{i}")),
                        ExpectedVersion::Any,
                        vec![event("a.b", "{}"), stored],
                    )
                    .await
                    .map(|_| 0),
                // Fails its expected version.
                1 => store.append(stream("dup-1"), ExpectedVersion::Exact(7), events(3)).await.map(|_| 0),
                _ => store
                    .append(stream(&format!("good-{i}")), ExpectedVersion::NoStream, events(2))
                    .await
                    .map(|_| 2),
            }
        }));
    }
    let mut stored_events = 1;
    for (i, t) in tasks.into_iter().enumerate() {
        match (i % 3, t.await.unwrap()) {
            (0, Err(Error::DuplicateEventId { .. })) | (1, Err(Error::WrongExpectedVersion(_))) => {}
            (2, Ok(n)) => stored_events += n,
            (kind, other) => panic!("append {i} (kind {kind}) ended with {other:?}"),
        }
    }
    let log = all_events(store.as_ref()).await;
    assert_eq!(log.len(), stored_events);
    assert!(log.iter().all(|e| !e.stream.starts_with("bad-")));
    assert_eq!(store.stream_info(&stream("dup-1")).await.unwrap().version, 1);
    let bad = StreamListQuery { prefix: Some("bad".into()), limit: 100, ..Default::default() };
    assert!(store.list_streams(&bad).await.unwrap().streams.is_empty());
}

pub async fn multi_stream_append_is_atomic_and_names_every_conflict(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    store.append(stream("b-1"), ExpectedVersion::Any, events(2)).await.unwrap();
    let appends = vec![
        StreamAppend::new(stream("a-1"), ExpectedVersion::Exact(1), events(1)), // holds
        StreamAppend::new(stream("b-1"), ExpectedVersion::Exact(1), events(1)), // stale
        StreamAppend::new(stream("c-1"), ExpectedVersion::StreamExists, events(1)), // missing
        StreamAppend::new(stream("d-1"), ExpectedVersion::NoStream, events(1)), // holds
    ];
    let err = store.append_many(appends).await.unwrap_err();
    let mut conflicts = conflict(err);
    conflicts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        conflicts,
        vec![
            ("b-1".into(), ExpectedVersion::Exact(1), Some(2)),
            ("c-1".into(), ExpectedVersion::StreamExists, None),
        ]
    );
    assert_eq!(all_events(store.as_ref()).await.len(), 3);
    assert!(matches!(store.stream_info(&stream("d-1")).await, Err(Error::StreamNotFound(_))));
}

pub async fn multi_stream_append_returns_results_in_request_order(store: Store) {
    store.append(stream("z-1"), ExpectedVersion::Any, events(2)).await.unwrap();
    let appends = vec![
        StreamAppend::new(stream("z-1"), ExpectedVersion::Exact(2), events(2)),
        StreamAppend::new(stream("a-1"), ExpectedVersion::NoStream, events(3)),
    ];
    let results = store.append_many(appends).await.unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].stream.as_str(), "z-1");
    assert_eq!((results[0].first_version, results[0].last_version), (3, 4));
    assert_eq!(results[1].stream.as_str(), "a-1");
    assert_eq!((results[1].first_version, results[1].last_version), (1, 3));
    assert!(results[1].first_position > results[0].last_position);
    let all = all_events(store.as_ref()).await;
    assert_eq!(all.len(), 7);
    // One commit: every event of the append shares one recorded_at.
    assert!(all[2..].iter().all(|e| e.recorded_at == all[2].recorded_at));
}

pub async fn multi_stream_append_is_idempotent(store: Store) {
    let appends = vec![
        StreamAppend::new(stream("a-1"), ExpectedVersion::NoStream, events(2)),
        StreamAppend::new(stream("b-1"), ExpectedVersion::NoStream, events(1)),
    ];
    let first = store.append_many(appends.clone()).await.unwrap();
    let again = store.append_many(appends).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(all_events(store.as_ref()).await.len(), 3);
}

pub async fn malformed_appends_are_rejected(store: Store) {
    let err = store.append(stream("a-1"), ExpectedVersion::Any, vec![]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = store.append_many(vec![]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let e = event("a.b", "{}");
    let err = store.append(stream("a-1"), ExpectedVersion::Any, vec![e.clone(), e]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let twice = vec![
        StreamAppend::new(stream("a-1"), ExpectedVersion::Any, events(1)),
        StreamAppend::new(stream("a-1"), ExpectedVersion::Any, events(1)),
    ];
    let err = store.append_many(twice).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = store
        .append(stream("a-1"), ExpectedVersion::Any, vec![event("a.b", "{}").with_schema_version(0)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = store
        .append(stream("a-1"), ExpectedVersion::Any, vec![event("a.b", "{}").with_aggregate_type("bad type")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(all_events(store.as_ref()).await.is_empty());
}

pub async fn read_stream_forward_pages_with_next(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::Any, events(7)).await.unwrap();
    let mut from = 1;
    let mut seen = Vec::new();
    loop {
        let page = store.read_stream(&stream("a-1"), from, Direction::Forward, 3).await.unwrap();
        assert!(page.events.len() <= 3);
        seen.extend(page.events.iter().map(|e| e.version));
        match page.next {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(seen, (1..=7).collect::<Vec<_>>());
    let from_zero = store.read_stream(&stream("a-1"), 0, Direction::Forward, 2).await.unwrap();
    assert_eq!(from_zero.events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(from_zero.next, Some(3));
    let exact_end = store.read_stream(&stream("a-1"), 5, Direction::Forward, 3).await.unwrap();
    assert_eq!(exact_end.events.len(), 3);
    assert_eq!(exact_end.next, None);
}

pub async fn read_stream_backward_pages_with_next(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::Any, events(5)).await.unwrap();
    let page = store.read_stream(&stream("a-1"), u64::MAX, Direction::Backward, 2).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![5, 4]);
    assert_eq!(page.next, Some(3));
    let page = store.read_stream(&stream("a-1"), 3, Direction::Backward, 2).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![3, 2]);
    assert_eq!(page.next, Some(1));
    let page = store.read_stream(&stream("a-1"), 1, Direction::Backward, 2).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![1]);
    assert_eq!(page.next, None);
}

pub async fn read_stream_from_past_the_end(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::Any, events(3)).await.unwrap();
    let at_end = store.read_stream(&stream("a-1"), 4, Direction::Forward, 10).await.unwrap();
    assert!(at_end.events.is_empty());
    assert_eq!(at_end.next, None);
    let err = store.read_stream(&stream("a-1"), 5, Direction::Forward, 10).await.unwrap_err();
    assert!(matches!(err, Error::OutOfRange(_)), "{err:?}");
}

pub async fn read_of_an_unknown_stream_is_not_found(store: Store) {
    for direction in [Direction::Forward, Direction::Backward] {
        let err = store.read_stream(&stream("nope"), 1, direction, 10).await.unwrap_err();
        assert!(matches!(err, Error::StreamNotFound(ref s) if s.as_str() == "nope"), "{err:?}");
    }
    assert!(matches!(store.stream_info(&stream("nope")).await, Err(Error::StreamNotFound(_))));
}

pub async fn read_all_pages_from_an_exclusive_position(store: Store) {
    for i in 0..5 {
        store.append(stream(&format!("s-{i}")), ExpectedVersion::Any, events(2)).await.unwrap();
    }
    // Copy the head out first: a watch borrow held across an await blocks the store's
    // own head updates.
    let head = *store.head().borrow();
    let empty_log_page = store.read_all(head, &LogFilter::default(), 10).await.unwrap();
    assert!(empty_log_page.events.is_empty());
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = store.read_all(after, &LogFilter::default(), 3).await.unwrap();
        assert!(page.events.len() <= 3);
        if page.events.is_empty() {
            assert_eq!(page.next_position, after);
            break;
        }
        assert!(page.events.iter().all(|e| e.position > after));
        assert_eq!(page.next_position, page.events.last().unwrap().position);
        after = page.next_position;
        seen.extend(page.events);
    }
    assert_eq!(seen.len(), 10);
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
    let from_third = store.read_all(seen[2].position, &LogFilter::default(), 100).await.unwrap();
    assert_eq!(from_third.events[0].id, seen[3].id);
}

pub async fn read_all_from_beyond_the_head_is_out_of_range(store: Store) {
    assert!(store.read_all(0, &LogFilter::default(), 10).await.unwrap().events.is_empty());
    let err = store.read_all(1, &LogFilter::default(), 10).await.unwrap_err();
    assert!(matches!(err, Error::OutOfRange(_)), "{err:?}");
    let r = store.append(stream("a-1"), ExpectedVersion::Any, events(2)).await.unwrap();
    assert!(store.read_all(r.last_position, &LogFilter::default(), 10).await.unwrap().events.is_empty());
    let err = store.read_all(r.last_position + 1, &LogFilter::default(), 10).await.unwrap_err();
    assert!(matches!(err, Error::OutOfRange(_)), "{err:?}");
}

async fn seed_types(store: &Store) {
    for (s, t) in [
        ("order-1", "order.submitted"),
        ("order-1", "order.item.added"),
        ("order-2", "order"),
        ("payment-1", "payment.charged"),
        ("order-2", "order.failed"),
        ("task-1", "task.created"),
    ] {
        store.append(stream(s), ExpectedVersion::Any, vec![event(t, "{}")]).await.unwrap();
    }
}

async fn types_matching(store: &Store, filter: &LogFilter) -> Vec<String> {
    let page = store.read_all(0, filter, 1000).await.unwrap();
    page.events.iter().map(|e| e.event_type.to_string()).collect()
}

pub async fn read_all_filters_by_type_pattern(store: Store) {
    seed_types(&store).await;
    let f = |p: &[&str]| LogFilter::default().with_types(p).unwrap();
    assert_eq!(types_matching(&store, &f(&["order.*"])).await, ["order.submitted", "order.failed"]);
    assert_eq!(
        types_matching(&store, &f(&["order.#"])).await,
        ["order.submitted", "order.item.added", "order", "order.failed"]
    );
    assert_eq!(
        types_matching(&store, &f(&["payment.charged", "task.*"])).await,
        ["payment.charged", "task.created"]
    );
    assert_eq!(types_matching(&store, &f(&["*.failed"])).await, ["order.failed"]);
    assert!(types_matching(&store, &f(&["nothing.#"])).await.is_empty());
}

pub async fn read_all_filters_by_category(store: Store) {
    seed_types(&store).await;
    let filter = LogFilter { category: Some(Category::new("order").unwrap()), ..Default::default() };
    assert_eq!(
        types_matching(&store, &filter).await,
        ["order.submitted", "order.item.added", "order", "order.failed"]
    );
    let both = LogFilter { types: vec!["order.*".parse().unwrap()], ..filter };
    assert_eq!(types_matching(&store, &both).await, ["order.submitted", "order.failed"]);
}

/// Tenant-prefixed and `$` names are stored, read back and listed as they are, and their
/// categories stay per tenant: `order` does not match `acme/order-1`.
pub async fn tenant_and_system_names_keep_their_own_categories(store: Store) {
    let local = stream("order-1");
    let tenant = StreamName::in_tenant(Some("acme"), &local);
    let audit = StreamName::in_tenant(Some("acme"), &StreamName::system("bifrost-audit").unwrap());
    store.append(local.clone(), ExpectedVersion::NoStream, vec![event("order.placed", "{}")]).await.unwrap();
    store.append(tenant.clone(), ExpectedVersion::NoStream, vec![event("order.placed", "{}")]).await.unwrap();
    store
        .append(audit.clone(), ExpectedVersion::NoStream, vec![event("bifrost.audit.key.created", "{}")])
        .await
        .unwrap();
    // Same local name, two streams with their own versions.
    let read = store.read_stream(&tenant, 1, Direction::Forward, 10).await.unwrap().events;
    assert_eq!((read.len(), read[0].version, read[0].stream.as_str()), (1, 1, "acme/order-1"));
    assert_eq!(read[0].aggregate_type, "order", "the default aggregate type is the tenant's category");
    let streams_of = |category: Category| {
        let store = store.clone();
        async move {
            let filter = LogFilter { category: Some(category), ..Default::default() };
            let page = store.read_all(0, &filter, 100).await.unwrap();
            page.events.into_iter().map(|e| e.stream.to_string()).collect::<Vec<_>>()
        }
    };
    let order = Category::new("order").unwrap();
    assert_eq!(streams_of(order.clone()).await, ["order-1"]);
    assert_eq!(streams_of(Category::in_tenant(Some("acme"), &order)).await, ["acme/order-1"]);
    let system = Category::in_tenant(Some("acme"), &Category::new("$bifrost").unwrap());
    assert_eq!(streams_of(system).await, ["acme/$bifrost-audit"]);
    let listed = store
        .list_streams(&StreamListQuery {
            prefix: Some("acme/".into()),
            limit: 100,
            ..StreamListQuery::default()
        })
        .await
        .unwrap();
    let names: Vec<String> = listed.streams.iter().map(|s| s.stream.to_string()).collect();
    assert_eq!(names, ["acme/$bifrost-audit", "acme/order-1"]);
    let info = store.stream_info(&audit).await.unwrap();
    assert_eq!(info.version, 1);
}

pub async fn read_all_filters_by_correlation_id(store: Store) {
    let with = |c: &str| {
        event("a.b", "{}").with_metadata(Metadata { correlation_id: Some(c.into()), ..Default::default() })
    };
    store.append(stream("a-1"), ExpectedVersion::Any, vec![with("c-1"), with("c-2")]).await.unwrap();
    store.append(stream("b-1"), ExpectedVersion::Any, vec![event("a.b", "{}"), with("c-1")]).await.unwrap();
    let filter = LogFilter { correlation_id: Some("c-1".into()), ..Default::default() };
    let page = store.read_all(0, &filter, 100).await.unwrap();
    let places: Vec<_> = page.events.iter().map(|e| (e.stream.to_string(), e.version)).collect();
    assert_eq!(places, vec![("a-1".to_string(), 1), ("b-1".to_string(), 2)]);
    // Each event of a batch keeps its own metadata, not a neighbour's.
    let stored: Vec<_> =
        all_events(store.as_ref()).await.iter().map(|e| e.metadata().unwrap().correlation_id).collect();
    assert_eq!(stored, [Some("c-1".into()), Some("c-2".into()), None, Some("c-1".into())]);
}

pub async fn read_all_filters_by_time_range(store: Store) {
    let mut stamps = Vec::new();
    for i in 0..4 {
        let r = store.append(stream("t-1"), ExpectedVersion::Any, events(1)).await.unwrap();
        let e =
            store.read_all(r.first_position - 1, &LogFilter::default(), 1).await.unwrap().events.remove(0);
        stamps.push((i, e.recorded_at));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let filter = LogFilter { since: Some(stamps[1].1), until: Some(stamps[3].1), ..Default::default() };
    let page = store.read_all(0, &filter, 100).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.version).collect::<Vec<_>>(), vec![2, 3]);
    let since_only = LogFilter { since: Some(stamps[2].1), ..Default::default() };
    assert_eq!(store.read_all(0, &since_only, 100).await.unwrap().events.len(), 2);
    let until_only = LogFilter { until: Some(stamps[0].1), ..Default::default() };
    assert!(store.read_all(0, &until_only, 100).await.unwrap().events.is_empty());
}

pub async fn filtered_read_that_matches_nothing_advances_to_the_head(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::Any, events(5)).await.unwrap();
    let head = *store.head().borrow();
    assert!(head > 0);
    let filter = LogFilter::default().with_types(["nothing.here"]).unwrap();
    let page = store.read_all(0, &filter, 10).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.next_position, head);
}

pub async fn event_by_id(store: Store) {
    let e = event("a.b", "{\"k\":\"v\"}");
    store.append(stream("a-1"), ExpectedVersion::Any, vec![e.clone()]).await.unwrap();
    let found = store.event(e.id).await.unwrap().unwrap();
    assert_eq!((found.id, found.version, found.stream.as_str()), (e.id, 1, "a-1"));
    assert_eq!(found.data, e.data);
    assert!(store.event(uuid::Uuid::now_v7()).await.unwrap().is_none());
}

pub async fn stream_info_reports_version_type_and_times(store: Store) {
    store.append(stream("order-9"), ExpectedVersion::Any, events(2)).await.unwrap();
    let info1 = store.stream_info(&stream("order-9")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    store.append(stream("order-9"), ExpectedVersion::Any, events(1)).await.unwrap();
    let info = store.stream_info(&stream("order-9")).await.unwrap();
    assert_eq!(info.version, 3);
    assert_eq!(info.aggregate_type, "order");
    assert!(!info.deleted);
    assert_eq!(info.created_at, info1.created_at);
    assert!(info.updated_at > info1.updated_at);
}

pub async fn aggregate_type_defaults_to_the_category(store: Store) {
    store.append(stream("order-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    store
        .append(
            stream("cart-1"),
            ExpectedVersion::Any,
            vec![event("a.b", "{}").with_aggregate_type("ShoppingCart")],
        )
        .await
        .unwrap();
    let order = stream_events(&store, "order-1").await.remove(0);
    assert_eq!(order.aggregate_type, "order");
    let cart = stream_events(&store, "cart-1").await.remove(0);
    assert_eq!(cart.aggregate_type, "ShoppingCart");
    assert_eq!(store.stream_info(&stream("cart-1")).await.unwrap().aggregate_type, "ShoppingCart");
    // Per event: one event's own aggregate type does not become the default of the next.
    let mixed = vec![event("a.b", "{}").with_aggregate_type("Special"), event("a.b", "{}")];
    store.append(stream("order-2"), ExpectedVersion::Any, mixed).await.unwrap();
    let read = stream_events(&store, "order-2").await;
    assert_eq!((read[0].aggregate_type.as_str(), read[1].aggregate_type.as_str()), ("Special", "order"));
}

pub async fn list_streams_filters_and_pages_in_name_order(store: Store) {
    for name in ["order-2", "order-1", "payment-1", "orderline-1", "order-3", "gone-1"] {
        store.append(stream(name), ExpectedVersion::Any, events(1)).await.unwrap();
    }
    store.delete_stream(&stream("order-3"), DeleteMode::Soft).await.unwrap();
    store.delete_stream(&stream("gone-1"), DeleteMode::Hard).await.unwrap();
    let names =
        |l: &crate::store::StreamListing| l.streams.iter().map(|s| s.stream.to_string()).collect::<Vec<_>>();
    let all = store.list_streams(&StreamListQuery { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(names(&all), ["order-1", "order-2", "orderline-1", "payment-1"]);
    assert_eq!(all.next, None);
    let prefix = store
        .list_streams(&StreamListQuery { prefix: Some("order".into()), limit: 100, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(names(&prefix), ["order-1", "order-2", "orderline-1"]);
    let category =
        StreamListQuery { category: Some(Category::new("order").unwrap()), limit: 1, ..Default::default() };
    let page1 = store.list_streams(&category).await.unwrap();
    assert_eq!(names(&page1), ["order-1"]);
    assert_eq!(page1.next.as_ref().map(|s| s.as_str()), Some("order-1"));
    let page2 = store
        .list_streams(&StreamListQuery { after: Some("order-1".into()), ..category.clone() })
        .await
        .unwrap();
    assert_eq!(names(&page2), ["order-2"]);
    let page3 =
        store.list_streams(&StreamListQuery { after: Some("order-2".into()), ..category }).await.unwrap();
    assert!(page3.streams.is_empty());
    assert_eq!(page3.next, None);
    assert_eq!(all.streams[0].version, 1);
    assert_eq!(all.streams[0].aggregate_type, "order");
}

pub async fn soft_delete_hides_the_stream_until_the_next_append(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::Any, events(3)).await.unwrap();
    store.delete_stream(&stream("a-1"), DeleteMode::Soft).await.unwrap();
    assert!(matches!(
        store.read_stream(&stream("a-1"), 1, Direction::Forward, 10).await,
        Err(Error::StreamNotFound(_))
    ));
    let info = store.stream_info(&stream("a-1")).await.unwrap();
    assert!(info.deleted);
    assert_eq!(info.version, 3);
    // Still part of history: the global log keeps the events.
    assert_eq!(all_events(store.as_ref()).await.len(), 3);
    assert!(matches!(
        store.delete_stream(&stream("a-1"), DeleteMode::Soft).await,
        Err(Error::StreamNotFound(_))
    ));
    // Absent for the expected-version check, but versions continue after the last one.
    let err = store.append(stream("a-1"), ExpectedVersion::Exact(3), events(1)).await.unwrap_err();
    assert_eq!(conflict(err), vec![("a-1".into(), ExpectedVersion::Exact(3), None)]);
    let r = store.append(stream("a-1"), ExpectedVersion::NoStream, events(1)).await.unwrap();
    assert_eq!(r.first_version, 4);
    let revived = store.read_stream(&stream("a-1"), 1, Direction::Forward, 10).await.unwrap();
    assert_eq!(revived.events.last().unwrap().version, 4);
    assert!(!store.stream_info(&stream("a-1")).await.unwrap().deleted);
}

pub async fn hard_delete_removes_the_events_and_forbids_the_name(store: Store) {
    let kept = store.append(stream("keep-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    let gone = vec![event("a.b", "{}"), event("a.b", "{}")];
    let gone_id = gone[0].id;
    let r = store.append(stream("gone-1"), ExpectedVersion::Any, gone).await.unwrap();
    store.delete_stream(&stream("gone-1"), DeleteMode::Hard).await.unwrap();
    assert!(matches!(
        store.read_stream(&stream("gone-1"), 1, Direction::Forward, 10).await,
        Err(Error::StreamDeleted(_))
    ));
    assert!(matches!(store.stream_info(&stream("gone-1")).await, Err(Error::StreamDeleted(_))));
    assert!(matches!(
        store.append(stream("gone-1"), ExpectedVersion::Any, events(1)).await,
        Err(Error::StreamDeleted(_))
    ));
    assert!(matches!(
        store.delete_stream(&stream("gone-1"), DeleteMode::Soft).await,
        Err(Error::StreamDeleted(_))
    ));
    assert!(store.event(gone_id).await.unwrap().is_none());
    let all = all_events(store.as_ref()).await;
    assert_eq!(all.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(), ["keep-1"]);
    assert_eq!(all[0].position, kept.first_position);
    // Positions are never reused, even when the deleted events were the newest.
    let next = store.append(stream("keep-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    assert!(next.first_position > r.last_position);
}

pub async fn deleting_an_unknown_stream_is_not_found(store: Store) {
    for mode in [DeleteMode::Soft, DeleteMode::Hard] {
        assert!(matches!(store.delete_stream(&stream("nope"), mode).await, Err(Error::StreamNotFound(_))));
    }
}

pub async fn large_and_unicode_payloads_round_trip_byte_for_byte(store: Store) {
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(1024 * 1024));
    let unicode = "{\"name\":\"Bifröst ᚱ 🌈\",\"nul\":\"a\\u0000b\",  \"spaces\" : [1,  2]}";
    let inner_lines = "{\r\n  \"k\": [1,\n 2]\r\n}";
    let batch = vec![event("a.big", &big), event("a.unicode", unicode), event("a.lines", inner_lines)];
    store.append(stream("p-1"), ExpectedVersion::Any, batch).await.unwrap();
    let read = stream_events(&store, "p-1").await;
    assert_eq!(read[0].data.len(), big.len());
    assert_eq!(read[0].data, Bytes::from(big));
    assert_eq!(read[1].data, Bytes::from(unicode));
    assert_eq!(read[2].data, Bytes::from(inner_lines));
    let by_id = store.event(read[2].id).await.unwrap().unwrap();
    assert_eq!(by_id.data, Bytes::from(inner_lines));
}

/// Bytes around the JSON value (whitespace, a final newline) are kept too — by every store
/// that keeps payloads as bytes; a store reached through the HTTP API carries `data` as a
/// JSON value and cannot (see `conformance_suite!(factory, json_values_only)`).
pub async fn payload_bytes_around_a_json_value_round_trip(store: Store) {
    let raw = Bytes::from_static(b" \t{\"k\":\"\\u0000\"}\n");
    store
        .append(
            stream("p-1"),
            ExpectedVersion::Any,
            vec![NewEvent::new("a.raw".parse().unwrap(), raw.clone())],
        )
        .await
        .unwrap();
    let read = stream_events(&store, "p-1").await;
    assert_eq!(read[0].data, raw);
}

pub async fn metadata_round_trips_with_free_keys(store: Store) {
    let mut extra = serde_json::Map::new();
    extra.insert("trace".into(), serde_json::json!({"span": "ab\u{0}c", "n": 7}));
    extra.insert("région".into(), serde_json::json!("ünïcode"));
    let metadata = Metadata {
        correlation_id: Some("c-1".into()),
        causation_id: Some("e-0".into()),
        source: Some("checkout".into()),
        user_id: Some("u-9".into()),
        tenant_id: None,
        extra,
    };
    store
        .append(stream("m-1"), ExpectedVersion::Any, vec![event("a.b", "{}").with_metadata(metadata.clone())])
        .await
        .unwrap();
    let read = stream_events(&store, "m-1").await.remove(0);
    assert_eq!(read.metadata().unwrap(), metadata);
    store.append(stream("m-2"), ExpectedVersion::Any, events(1)).await.unwrap();
    assert_eq!(stream_events(&store, "m-2").await[0].metadata().unwrap(), Metadata::default());
}

pub async fn occurred_at_is_kept_and_recorded_at_never_decreases(store: Store) {
    let then: Timestamp = "2020-02-29T12:34:56.789012Z".parse().unwrap();
    let before = Timestamp::now();
    store
        .append(stream("o-1"), ExpectedVersion::Any, vec![event("a.b", "{}").with_occurred_at(then)])
        .await
        .unwrap();
    store.append(stream("o-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    let read = stream_events(&store, "o-1").await;
    assert_eq!(read[0].occurred_at, then);
    assert!(read[0].recorded_at >= before);
    assert!(read[1].occurred_at >= before, "occurred_at defaults to the append time");
    for _ in 0..20 {
        store.append(stream("o-2"), ExpectedVersion::Any, events(2)).await.unwrap();
    }
    let all = all_events(store.as_ref()).await;
    assert!(all.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at));
}

async fn take(stream: &mut crate::subscription::EventStream, n: usize) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
        match next {
            Ok(Some(Ok(e))) => out.push(e),
            Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
            Ok(None) => panic!("subscription ended after {} of {n} events", out.len()),
            Err(_) => panic!("subscription stalled after {} of {n} events", out.len()),
        }
    }
    out
}

async fn assert_quiet(stream: &mut crate::subscription::EventStream) {
    let next = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
    assert!(next.is_err(), "unexpected extra event: {next:?}");
}

pub async fn subscription_catches_up_then_goes_live(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::Any, events(1200)).await.unwrap();
    let mut sub = subscribe(store.clone(), SubscribeFrom::Start, LogFilter::default());
    let caught_up = take(&mut sub, 1200).await;
    assert!(caught_up.windows(2).all(|w| w[0].position < w[1].position));
    assert_quiet(&mut sub).await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                store.append(stream("a-2"), ExpectedVersion::Any, events(2)).await.unwrap();
            }
        })
    };
    let live = take(&mut sub, 10).await;
    writer.await.unwrap();
    assert!(live.iter().all(|e| e.stream.as_str() == "a-2"));
    assert!(live[0].position > caught_up.last().unwrap().position);
    assert!(live.windows(2).all(|w| w[0].position < w[1].position));
    assert_quiet(&mut sub).await;
}

pub async fn subscription_from_end_sees_only_new_events(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::Any, events(3)).await.unwrap();
    let mut sub = subscribe(store.clone(), SubscribeFrom::End, LogFilter::default());
    store.append(stream("a-2"), ExpectedVersion::Any, events(2)).await.unwrap();
    let got = take(&mut sub, 2).await;
    assert!(got.iter().all(|e| e.stream.as_str() == "a-2"));
    assert_quiet(&mut sub).await;
}

pub async fn subscription_from_a_position_is_exclusive(store: Store) {
    let r = store.append(stream("a-1"), ExpectedVersion::Any, events(5)).await.unwrap();
    let mut sub = subscribe(store.clone(), SubscribeFrom::After(r.first_position + 1), LogFilter::default());
    let got = take(&mut sub, 3).await;
    assert_eq!(got.iter().map(|e| e.version).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_quiet(&mut sub).await;
}

pub async fn subscription_applies_its_filter(store: Store) {
    let filter = LogFilter::default().with_types(["order.#"]).unwrap();
    let mut sub = subscribe(store.clone(), SubscribeFrom::Start, filter);
    for t in ["order.submitted", "task.created", "order.item.added", "payment.done", "order"] {
        store.append(stream("x-1"), ExpectedVersion::Any, vec![event(t, "{}")]).await.unwrap();
    }
    let got = take(&mut sub, 3).await;
    assert_eq!(
        got.iter().map(|e| e.event_type.to_string()).collect::<Vec<_>>(),
        ["order.submitted", "order.item.added", "order"]
    );
    assert_quiet(&mut sub).await;
}

pub async fn subscriptions_under_concurrent_appends_see_every_event_once_in_order(store: Store) {
    const WRITERS: usize = 8;
    const APPENDS: usize = 60;
    const TOTAL: usize = WRITERS * APPENDS * 2;
    let early = subscribe(store.clone(), SubscribeFrom::Start, LogFilter::default());
    let early = tokio::spawn(async move {
        let mut s = early;
        take(&mut s, TOTAL).await
    });
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..APPENDS {
                let name = format!("w{w}-{}", i % 4);
                store.append(stream(&name), ExpectedVersion::Any, events(2)).await.unwrap();
                if i == APPENDS / 2 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    // A late subscriber joins mid-load: its catch-up must meet the live tail seamlessly.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut late = subscribe(store.clone(), SubscribeFrom::Start, LogFilter::default());
    let late_events = take(&mut late, TOTAL).await;
    for w in writers {
        w.await.unwrap();
    }
    let early_events = early.await.unwrap();
    let log = all_events(store.as_ref()).await;
    assert_eq!(log.len(), TOTAL);
    for got in [&early_events, &late_events] {
        assert_eq!(got.len(), TOTAL);
        assert!(got.windows(2).all(|w| w[0].position < w[1].position), "out of order");
        let ids: HashSet<_> = got.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), TOTAL, "duplicates");
        assert_eq!(
            got.iter().map(|e| e.id).collect::<Vec<_>>(),
            log.iter().map(|e| e.id).collect::<Vec<_>>()
        );
    }
    assert_quiet(&mut late).await;
}

pub async fn concurrent_appends_with_the_same_expected_version_have_one_winner(store: Store) {
    store.append(stream("race-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.append(stream("race-1"), ExpectedVersion::Exact(1), events(1)).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                wins += 1;
                assert_eq!(r.first_version, 2);
            }
            Err(e) => assert_eq!(conflict(e), vec![("race-1".into(), ExpectedVersion::Exact(1), Some(2))]),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(stream_events(&store, "race-1").await.len(), 2);
}

pub async fn concurrent_writers_keep_versions_contiguous_and_positions_increasing(store: Store) {
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..25 {
                let name = format!("c-{}", (w + i) % 5);
                results.push(
                    store.append(stream(&name), ExpectedVersion::Any, events(1 + i % 3)).await.unwrap(),
                );
            }
            results
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.unwrap());
    }
    let log = all_events(store.as_ref()).await;
    let expected_total: u64 = acknowledged.iter().map(|r| r.last_version - r.first_version + 1).sum();
    assert_eq!(log.len() as u64, expected_total);
    let by_position: HashMap<_, _> = log.iter().map(|e| (e.position, e)).collect();
    for r in &acknowledged {
        for (offset, p) in (r.first_position..=r.last_position).enumerate() {
            let e = by_position.get(&p).unwrap_or_else(|| panic!("acknowledged position {p} missing"));
            assert_eq!(e.stream, r.stream);
            assert_eq!(e.version, r.first_version + offset as u64);
        }
    }
    for s in 0..5 {
        let versions: Vec<_> =
            stream_events(&store, &format!("c-{s}")).await.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    }
}

pub async fn many_events_in_one_append(store: Store) {
    let r = store.append(stream("big-1"), ExpectedVersion::NoStream, events(5000)).await.unwrap();
    assert_eq!((r.first_version, r.last_version), (1, 5000));
    assert_eq!(r.last_position - r.first_position, 4999);
    let back = store.read_stream(&stream("big-1"), u64::MAX, Direction::Backward, 1).await.unwrap();
    assert_eq!(back.events[0].data, Bytes::from_static(b"{\"n\":4999}"));
}

pub async fn closing_the_store_ends_subscriptions_and_refuses_appends(store: Store) {
    store.append(stream("a-1"), ExpectedVersion::Any, events(2)).await.unwrap();
    let mut sub = subscribe(store.clone(), SubscribeFrom::Start, LogFilter::default());
    take(&mut sub, 2).await;
    store.close().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
    assert!(matches!(end, Ok(None)), "the subscription must end when the store closes, got {end:?}");
    let err = store.append(stream("a-1"), ExpectedVersion::Any, events(1)).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
}

pub async fn large_page_reads_match_small_page_reads_across_gaps(store: Store) {
    for i in 0..12 {
        store.append(stream(&format!("big-{}", i % 4)), ExpectedVersion::Any, events(500)).await.unwrap();
    }
    // Hard-deleting a stream leaves gaps in the positions that large reads must step over.
    store.delete_stream(&stream("big-2"), DeleteMode::Hard).await.unwrap();
    let head = *store.head().borrow();
    let paged = all_events(store.as_ref()).await;
    assert_eq!(paged.len(), 4500);
    let whole = store.read_all(0, &LogFilter::default(), 10_000).await.unwrap();
    assert_eq!(
        whole.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        paged.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert_eq!(whole.next_position, head);
    let from_middle = store.read_all(paged[1000].position, &LogFilter::default(), 5000).await.unwrap();
    assert!(from_middle.events.len() <= 5000);
    assert_eq!(from_middle.events[0].id, paged[1001].id);
    let mut after = from_middle.next_position;
    let mut rest: Vec<_> = from_middle.events.iter().map(|e| e.id).collect();
    loop {
        let page = store.read_all(after, &LogFilter::default(), 4096).await.unwrap();
        if page.events.is_empty() {
            break;
        }
        after = page.next_position;
        rest.extend(page.events.iter().map(|e| e.id));
    }
    assert_eq!(rest, paged[1001..].iter().map(|e| e.id).collect::<Vec<_>>());
}
