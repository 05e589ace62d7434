//! The store contract, run through the client against a live server.
//!
//! The whole suite runs here in its `json_values_only` form: the HTTP API carries an
//! event's `data` as a JSON value inside the request, so bytes around the value (a final
//! newline) cannot travel; what does travel is checked byte for byte below.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bifrost_core::testkit::{Harness, stream};
use bifrost_core::{Direction, ExpectedVersion, NewEvent};
use bifrost_server::ServerConfig;
use bytes::Bytes;

use common::TestServer;

/// Some cases write more than the API's default limits allow in one request (5,000 and
/// 1,200 events in one append; a payload of 1 MiB plus its JSON wrapping). The limits are
/// the server's configuration, not part of the store contract, so this server has room.
fn roomy() -> ServerConfig {
    ServerConfig {
        max_events_per_append: 10_000,
        max_event_bytes: 2 * 1024 * 1024,
        ..ServerConfig::default()
    }
}

async fn client_of_a_live_server() -> Harness {
    let server = TestServer::memory(roomy()).await;
    let client = server.client();
    Harness::with_guard(Arc::new(client), server)
}

bifrost_core::conformance_suite!(client_of_a_live_server, json_values_only);

/// Over HTTP the bytes around a payload's JSON value are lost, and only those: the value
/// itself comes back byte for byte (the suite's payload case checks large, unicode and
/// oddly spaced values).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_whitespace_around_a_payloads_json_value_is_lost() {
    let harness = client_of_a_live_server().await;
    let store = harness.store.clone();
    let raw = NewEvent::new("a.raw".parse().unwrap(), Bytes::from_static(b" \t{\"k\" : \"\\u0000\"}\n"));
    store.append(stream("p-1"), ExpectedVersion::Any, vec![raw]).await.unwrap();
    let read = store.read_stream(&stream("p-1"), 1, Direction::Forward, 10).await.unwrap().events;
    assert_eq!(read[0].data, Bytes::from_static(b"{\"k\" : \"\\u0000\"}"));
    let _ = tokio::time::timeout(Duration::from_secs(5), store.close()).await;
}
