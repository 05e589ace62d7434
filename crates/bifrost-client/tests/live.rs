//! Live delivery over SSE against a live server: subscriptions and the head watch, across
//! dropped connections (a proxy in front of the server cuts them while the server runs).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bifrost_client::Client;
use bifrost_core::testkit::{all_events, event, events, stream};
use bifrost_core::{
    Category, EventStore, EventStream, ExpectedVersion, LogFilter, RecordedEvent, SubscribeFrom,
};
use bifrost_server::ServerConfig;
use futures::StreamExt;

use common::{CutProxy, TestServer};

/// A client that reconnects quickly, so the tests do not wait on the default delays.
fn quick_client(url: &str) -> Client {
    Client::builder(url)
        .reconnect_delay(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .unwrap()
}

async fn next(sub: &mut EventStream) -> RecordedEvent {
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn assert_quiet(sub: &mut EventStream) {
    let next = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(next.is_err(), "unexpected extra item: {next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_resumes_after_dropped_connections_without_gap_or_duplicate() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let proxy = CutProxy::start(server.addr).await;
    let writer = server.client();
    let reader = quick_client(&proxy.url());
    writer.append(stream("a-1"), ExpectedVersion::Any, events(300)).await.unwrap();

    let mut sub = reader.subscribe(SubscribeFrom::Start, LogFilter::default()).await.unwrap();
    let mut got = Vec::new();
    // During catch-up (what the client already buffered still comes first).
    while got.len() < 300 {
        got.push(next(&mut sub).await);
        if got.len() == 150 {
            proxy.cut().await;
        }
    }
    // Between catch-up and live: whatever comes next needs a new connection.
    proxy.cut().await;
    let live = {
        let writer = writer.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                writer
                    .append(stream(&format!("b-{}", i % 3)), ExpectedVersion::Any, events(5))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    // During live delivery, twice in a row.
    while got.len() < 500 {
        got.push(next(&mut sub).await);
        if [350, 351, 420].contains(&got.len()) {
            proxy.cut().await;
        }
    }
    live.await.unwrap();
    // After everything was delivered, with nothing in flight.
    proxy.cut().await;
    writer.append(stream("c-1"), ExpectedVersion::Any, events(10)).await.unwrap();
    while got.len() < 510 {
        got.push(next(&mut sub).await);
    }
    assert_quiet(&mut sub).await;
    assert!(proxy.accepted() >= 3, "only {} connections: the cuts did not take", proxy.accepted());

    let log = all_events(&writer).await;
    assert_eq!(log.len(), 510);
    assert_eq!(got.iter().map(|e| e.id).collect::<HashSet<_>>().len(), 510, "duplicates");
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), log.iter().map(|e| e.id).collect::<Vec<_>>());
    assert_eq!(got, log, "events come over SSE as the log holds them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filtered_subscription_resumes_after_the_last_match() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let proxy = CutProxy::start(server.addr).await;
    let writer = server.client();
    let reader = quick_client(&proxy.url());
    let filter = LogFilter {
        category: Some(Category::new("order").unwrap()),
        ..LogFilter::default().with_types(["order.#"]).unwrap()
    };
    let mut sub = reader.subscribe(SubscribeFrom::Start, filter).await.unwrap();
    let mut expected = Vec::new();
    for round in 0..6 {
        for (name, event_type) in [
            ("order-1", "order.placed"),
            ("task-1", "order.placed"),
            ("order-2", "task.done"),
            ("order-3", "order"),
        ] {
            let r = writer
                .append(stream(name), ExpectedVersion::Any, vec![event(event_type, "{}")])
                .await
                .unwrap();
            if name.starts_with("order-") && event_type.starts_with("order") {
                expected.push(r.first_position);
            }
        }
        let got = [next(&mut sub).await, next(&mut sub).await];
        assert_eq!(got.map(|e| e.position).to_vec(), expected[expected.len() - 2..], "round {round}");
        proxy.cut().await;
    }
    assert_quiet(&mut sub).await;
    assert!(proxy.accepted() >= 6, "only {} connections: the cuts did not take", proxy.accepted());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribing_from_the_end_skips_what_was_committed_before_the_call() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let proxy = CutProxy::start(server.addr).await;
    let writer = server.client();
    writer.append(stream("a-1"), ExpectedVersion::Any, events(3)).await.unwrap();
    let reader = quick_client(&proxy.url());
    let mut sub = reader.subscribe(SubscribeFrom::End, LogFilter::default()).await.unwrap();
    // Dropped before any event came: the resume point is the head at the call, not a later one.
    proxy.cut().await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let r = writer.append(stream("a-2"), ExpectedVersion::Any, events(2)).await.unwrap();
    assert_eq!(next(&mut sub).await.position, r.first_position);
    assert_eq!(next(&mut sub).await.position, r.last_position);
    assert_quiet(&mut sub).await;

    let mut from = reader.subscribe(SubscribeFrom::After(2), LogFilter::default()).await.unwrap();
    assert_eq!(next(&mut from).await.position, 3);
}

#[tokio::test]
async fn a_position_the_log_never_had_is_refused_at_once() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    let err = client.subscribe(SubscribeFrom::After(5), LogFilter::default()).await.err().unwrap();
    assert_eq!(err.problem().map(|p| p.problem_type.as_str()), Some("bifrost:out-of-range"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_with_a_reconnect_limit_gives_up_when_the_server_stays_away() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let writer = server.client();
    writer.append(stream("a-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    let reader = Client::builder(server.url())
        .reconnect_delay(Duration::from_millis(10), Duration::from_millis(20))
        .max_reconnects(3)
        .build()
        .unwrap();
    let mut sub = reader.subscribe(SubscribeFrom::Start, LogFilter::default()).await.unwrap();
    next(&mut sub).await;
    server.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
    let Ok(Some(Err(bifrost_core::Error::Unavailable(why)))) = end else { panic!("{end:?}") };
    assert!(why.contains("could not resume after 4 attempts"), "{why}");
    let after = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(matches!(after, Ok(None)), "the stream ends after the error: {after:?}");
}

#[tokio::test]
async fn an_answer_that_is_not_an_event_stream_is_refused() {
    // Something else listens on the address: it answers every request with a web page.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let answer = "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 2\r\n\r\nhi";
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    let client = Client::new(&format!("http://{addr}")).unwrap();
    let err = client.subscribe(SubscribeFrom::Start, LogFilter::default()).await.err().unwrap();
    assert!(err.to_string().contains("did not answer with an event stream"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_the_client_ends_its_subscriptions() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    client.append(stream("a-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    let mut sub = client.subscribe(SubscribeFrom::Start, LogFilter::default()).await.unwrap();
    next(&mut sub).await;
    client.clone().close().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert!(client.subscribe(SubscribeFrom::Start, LogFilter::default()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_head_watch_follows_other_writers_across_dropped_connections() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let proxy = CutProxy::start(server.addr).await;
    let writer = server.client();
    writer.append(stream("a-1"), ExpectedVersion::Any, events(4)).await.unwrap();
    let reader = quick_client(&proxy.url());

    let mut head = reader.head();
    // The follower learns the head the server had before it started.
    wait_for(&mut head, 4).await;
    for round in 1..=5u64 {
        proxy.cut().await;
        let r = writer.append(stream("a-2"), ExpectedVersion::Any, events(2)).await.unwrap();
        assert_eq!(r.last_position, 4 + 2 * round);
        wait_for(&mut head, r.last_position).await;
    }
    assert!(proxy.accepted() >= 6, "only {} connections: the cuts did not take", proxy.accepted());
    assert_eq!(reader.fetch_head().await.unwrap(), 14);
}

async fn wait_for(head: &mut tokio::sync::watch::Receiver<u64>, position: u64) {
    let reached = tokio::time::timeout(Duration::from_secs(10), head.wait_for(|h| *h >= position))
        .await
        .is_ok_and(|r| r.is_ok());
    let seen = *head.borrow();
    assert!(reached, "the head stayed at {seen}, short of {position}");
    assert_eq!(seen, position, "the head went past the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_head_watch_closes_when_the_last_clone_is_dropped_or_on_close() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    let mut head = client.head();
    let clone = client.clone();
    drop(client);
    let r = server.client().append(stream("a-1"), ExpectedVersion::Any, events(1)).await.unwrap();
    wait_for(&mut head, r.last_position).await;
    drop(clone);
    let closed = tokio::time::timeout(Duration::from_secs(5), head.changed()).await;
    assert!(matches!(closed, Ok(Err(_))), "the watch must close with the last clone: {closed:?}");

    let client = server.client();
    let mut head = client.head();
    // The new watch first catches up with the server's head; only then is a change a close.
    wait_for(&mut head, r.last_position).await;
    client.close().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), head.changed()).await;
    assert!(matches!(closed, Ok(Err(_))), "the watch must close with the client: {closed:?}");
    let err = client.append(stream("a-1"), ExpectedVersion::Any, events(1)).await.unwrap_err();
    assert!(matches!(err, bifrost_core::Error::Unavailable(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_subscription_of_the_core_works_over_the_head_watch() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let writer = server.client();
    let reader = std::sync::Arc::new(server.client());
    writer.append(stream("a-1"), ExpectedVersion::Any, events(2)).await.unwrap();
    reader.fetch_head().await.unwrap();
    let mut sub =
        bifrost_core::subscription::subscribe(reader.clone(), SubscribeFrom::End, LogFilter::default());
    // Written by another client: only the head follower can tell the reader.
    let r = writer.append(stream("a-2"), ExpectedVersion::Any, events(3)).await.unwrap();
    let got: Vec<_> = [next(&mut sub).await, next(&mut sub).await, next(&mut sub).await].into();
    assert_eq!(
        got.iter().map(|e| e.position).collect::<Vec<_>>(),
        (r.first_position..=r.last_position).collect::<Vec<_>>()
    );
    assert_quiet(&mut sub).await;
}

/// An SSE `data:` line cannot hold a line break, so the server sends the line breaks that
/// are whitespace between JSON tokens as spaces; everything else comes byte for byte, and
/// reads of the log keep the payload exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_sse_only_line_breaks_between_json_tokens_change() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    let payload = "{\r\n  \"text\": \"a\\nb ü\",\n  \"n\" : [1,\t2]\n}";
    client.append(stream("a-1"), ExpectedVersion::Any, vec![event("a.b", payload)]).await.unwrap();
    let mut sub = client.subscribe(SubscribeFrom::Start, LogFilter::default()).await.unwrap();
    let live = next(&mut sub).await;
    assert_eq!(live.data, payload.replace(['\r', '\n'], " ").into_bytes());
    let read = client.event(live.id).await.unwrap().unwrap();
    assert_eq!(read.data, payload.as_bytes());
}
