//! Opening a Redis store: the durability it reports, the URLs and prefixes it refuses, and
//! what a closed store (and a closed group engine) answers.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bifrost_core::group::{Fetch, GroupConfig, GroupKind, GroupName};
use bifrost_core::testkit::{events, stream};
use bifrost_core::{Direction, Error, EventStore, ExpectedVersion, LogFilter, StateStore};
use bifrost_redis::{RedisBus, RedisOptions, RedisStore};
use support::{fresh_prefix, options, store_with};

/// The local Redis keeps nothing on disk (`appendonly no`): not durable. The store's answer
/// follows the server's settings, read here independently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_is_true_only_with_appendonly_and_appendfsync_always() {
    let Some((store, _guard)) = store_with(options(&fresh_prefix())).await else { return };
    let client = redis::Client::open(support::url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let config: HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .arg("appendfsync")
        .query_async(&mut conn)
        .await
        .unwrap();
    let expected = config["appendonly"] == "yes" && config["appendfsync"] == "always";
    assert_eq!(store.durable(), expected);
    if config["appendonly"] == "no" {
        assert!(!store.durable(), "a Redis that keeps nothing on disk is not durable");
    }
    store.close().await.unwrap();
}

#[tokio::test]
async fn tls_to_a_server_that_does_not_speak_it_is_a_clear_error_not_a_panic() {
    // The plain server refuses the handshake (or nothing listens on 1): unavailable.
    let options = RedisOptions { connect_timeout: Duration::from_secs(3), ..RedisOptions::default() };
    for url in ["rediss://127.0.0.1:1", "REDISS://user:pass@127.0.0.1:1/2"] {
        let err = RedisStore::connect(url, options.clone()).await.err().unwrap();
        assert!(matches!(&err, Error::Unavailable(_)), "{err:?}");
        assert!(!format!("{err}").contains("pass@"), "{err}");
    }
    let err = RedisBus::connect("rediss://127.0.0.1:1", "bifrost").await.err().unwrap();
    assert!(matches!(&err, Error::Unavailable(_)), "{err:?}");
    for url in ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis://"] {
        let err = RedisStore::connect(url, RedisOptions::default()).await.err().unwrap();
        assert!(matches!(err, Error::InvalidArgument(_)), "{url}: {err:?}");
    }
}

#[tokio::test]
async fn a_prefix_that_cannot_name_keys_safely_is_refused() {
    let long = "p".repeat(129);
    for prefix in ["", "has space", "glob*", "a?b", "[x]", "nested:prefix", long.as_str()] {
        let err = RedisStore::connect(&support::url(), options(prefix)).await.err().unwrap();
        assert!(matches!(err, Error::InvalidArgument(_)), "{prefix:?}: {err:?}");
    }
}

/// A database number in the URL is used: a store on db 1 does not see one on db 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_of_the_url_separates_stores() {
    let prefix = fresh_prefix();
    let Some((on_0, _guard)) = store_with(options(&prefix)).await else { return };
    let url_1 = format!("{}/1", support::url().trim_end_matches('/'));
    let on_1 = RedisStore::connect(&url_1, options(&prefix)).await.unwrap();
    on_0.append(stream("a-1"), ExpectedVersion::Any, events(2)).await.unwrap();
    assert!(on_1.read_all(0, &LogFilter::default(), 10).await.unwrap().events.is_empty());
    on_1.append(stream("a-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    assert_eq!(on_0.stream_info(&stream("a-1")).await.unwrap().version, 2);
    on_1.close().await.unwrap();
    bifrost_redis::remove_prefix(&url_1, &prefix).await.unwrap();
    on_0.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_answers_unavailable_to_reads_writes_and_state() {
    let Some((store, _guard)) = store_with(options(&fresh_prefix())).await else { return };
    store.append(stream("a-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    store.close().await.unwrap();
    store.close().await.unwrap();
    let unavailable = |r: Result<(), Error>| assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
    unavailable(store.append(stream("a-1"), ExpectedVersion::Any, events(1)).await.map(|_| ()));
    unavailable(store.read_stream(&stream("a-1"), 1, Direction::Forward, 10).await.map(|_| ()));
    unavailable(store.read_all(0, &LogFilter::default(), 10).await.map(|_| ()));
    unavailable(store.stream_info(&stream("a-1")).await.map(|_| ()));
    unavailable(store.read_state("s", "k").await.map(|_| ()));
    unavailable(store.write_state(vec![bifrost_core::StateChange::put("s", "k", "v")]).await);
    let groups = store.shared_groups(GroupKind::Group).unwrap();
    unavailable(groups.list().await.map(|_| ()));
}

/// A fetch waiting on a group ends when its engine closes, instead of waiting out its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_group_engine_ends_its_waiting_fetches() {
    let Some((store, _guard)) = store_with(options(&fresh_prefix())).await else { return };
    let groups = store.shared_groups(GroupKind::Group).unwrap();
    let g = GroupName::new("g").unwrap();
    groups.put(&g, GroupConfig::default()).await.unwrap();
    let waiting = {
        let (groups, g) = (groups.clone(), g.clone());
        tokio::spawn(async move { groups.fetch(&g, Fetch::new("c", 1, Duration::from_secs(60))).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    groups.close().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert!(matches!(ended, Err(Error::Unavailable(_))), "{ended:?}");
    store.close().await.unwrap();
}
