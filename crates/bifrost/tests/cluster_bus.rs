//! Cross-node SSE and groups over each cluster bus: three `bifrost serve` processes on one
//! PostgreSQL schema with `--cluster-bus nats://…` and with `--cluster-bus redis://…`, and
//! three on one Redis store (its own Pub/Sub). The fallback poll is set far beyond the test's
//! patience, so everything that arrives in time was woken over the bus: an event appended on
//! A reaches B's SSE, a group's fetch on B gets A's appends and acks on C count, an
//! ephemeral WebSocket message crosses nodes, and after A is SIGKILLed the others go on.
//! Without PostgreSQL, NATS or Redis a test skips with a clear line, or fails when
//! `BIFROST_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bifrost_core::testkit::service_unavailable;
use bifrost_server::ClusterBusSpec;
use common::Server;
use common::pg::{Schema, block_on};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// How long a step may take; woken over NATS it takes milliseconds.
const WAIT: Duration = Duration::from_secs(10);
/// The fallback poll of the nodes: longer than any wait, so only the bus can be in time.
const POLL_MS: &str = "60000";

fn nats_url() -> String {
    std::env::var("BIFROST_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn redis_url() -> String {
    std::env::var("BIFROST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether the broker of `url` answers; `false` (skip) when it does not.
fn reachable(name: &str, url: &str) -> bool {
    let spec = ClusterBusSpec::parse(url).unwrap();
    match block_on(spec.connect("reachability_probe")) {
        Ok(_) => true,
        Err(e) => service_unavailable::<()>(name, e).is_some(),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn append(node: &Server, stream: &str, n: u64) -> Value {
    let body = json!({"appends": [{"stream": stream, "expected_version": "any",
                                   "events": [{"type": "bus.tested", "data": {"n": n}}]}]});
    let response = client().post(format!("{}/v1/append", node.url())).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    response.json().await.unwrap()
}

/// A live SSE subscription to the log, from now on.
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    async fn open(node: &Server) -> Sse {
        let url = format!("{}/v1/subscribe?type=bus.%23", node.url());
        let response = reqwest::Client::new().get(url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        Sse { response, buffer: String::new() }
    }

    /// Waits for an event whose data carries `"n": n`.
    async fn expect(&mut self, n: u64) {
        let needle = format!("\"n\":{n}");
        let found = tokio::time::timeout(WAIT, async {
            while !self.buffer.contains(&needle) {
                let chunk = self.response.chunk().await.unwrap().expect("the stream stays open");
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        });
        found.await.unwrap_or_else(|_| panic!("event {n} did not arrive in time; got {:?}", self.buffer));
    }
}

/// A long-poll fetch of group `g` at the node of `base`: its leases and their `n`.
async fn fetch_at(base: String) -> Vec<(String, u64)> {
    let url = format!("{base}/v1/groups/g/fetch?max=10&wait=20000&consumer=c");
    let answer: Value = client().post(url).send().await.unwrap().json().await.unwrap();
    answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["lease"].as_str().unwrap().to_owned(), m["event"]["data"]["n"].as_u64().unwrap()))
        .collect()
}

async fn fetch(node: &Server) -> Vec<(String, u64)> {
    tokio::time::timeout(WAIT, fetch_at(node.url())).await.expect("the fetch answers in time")
}

async fn ack(node: &Server, leases: &[(String, u64)]) {
    let body = json!({"leases": leases.iter().map(|l| &l.0).collect::<Vec<_>>()});
    let url = format!("{}/v1/groups/g/ack", node.url());
    let answer: Value = client().post(url).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["acked"], leases.len(), "{answer}");
}

/// Starts a long poll on `node` and gives it time to be waiting before the caller acts.
async fn waiting_fetch(node: &Server) -> tokio::task::JoinHandle<Vec<(String, u64)>> {
    let handle = tokio::spawn(fetch_at(node.url()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_op(socket: &mut Socket, op: &str) -> Value {
    loop {
        let frame =
            tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time").unwrap().unwrap();
        if let Message::Text(text) = frame {
            let frame: Value = serde_json::from_str(text.as_str()).unwrap();
            if frame["op"] == op {
                return frame;
            }
        }
    }
}

#[test]
fn cross_node_sse_and_groups_with_the_nats_cluster_bus() {
    let Some(schema) = Schema::fresh() else { return };
    if !reachable("NATS", &nats_url()) {
        return;
    }
    let mut args: Vec<String> = schema.serve_args().to_vec();
    args.extend(["--cluster-bus".into(), nats_url()]);
    three_nodes(&args, &nats_url());
    drop(schema);
}

#[test]
fn cross_node_sse_and_groups_with_the_redis_cluster_bus() {
    let Some(schema) = Schema::fresh() else { return };
    if !reachable("Redis", &redis_url()) {
        return;
    }
    let mut args: Vec<String> = schema.serve_args().to_vec();
    args.extend(["--cluster-bus".into(), redis_url()]);
    three_nodes(&args, &redis_url());
    drop(schema);
}

/// Removes a Redis store's keys when the test ends, also when it failed.
struct RedisPrefix(String);

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let _ = block_on(bifrost_redis::remove_prefix(&redis_url(), &self.0));
    }
}

#[test]
fn cross_node_sse_and_groups_on_the_redis_store() {
    if !reachable("Redis", &redis_url()) {
        return;
    }
    let prefix = RedisPrefix(format!("bifrost_test_{}", uuid::Uuid::new_v4().simple()));
    let args: Vec<String> = vec!["--store".into(), redis_url(), "--redis-prefix".into(), prefix.0.clone()];
    three_nodes(&args, "bus=redis");
}

/// The run every bus shares, with `args` for each node; `marker` is what the start line
/// says about the bus.
fn three_nodes(args: &[String], marker: &str) {
    let mut args = args.to_vec();
    args.extend(["--cluster-poll-ms".into(), POLL_MS.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Server::start(dirs[0].path(), "127.0.0.1:0", &args);
    let b = Server::start(dirs[1].path(), "127.0.0.1:0", &args);
    let c = Server::start(dirs[2].path(), "127.0.0.1:0", &args);
    let named = b.stderr_lines().iter().any(|line| line.contains("store open") && line.contains(marker));
    assert!(named, "the log names the bus: {:?}", b.stderr_lines());

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        // An event appended on A arrives on B's and C's SSE.
        let (mut on_b, mut on_c) = (Sse::open(&b).await, Sse::open(&c).await);
        append(&a, "bus-1", 1).await;
        on_b.expect(1).await;
        on_c.expect(1).await;

        // A group's fetch on B gets A's appends; acks through C count.
        let put = client()
            .put(format!("{}/v1/groups/g", a.url()))
            .json(&json!({"filter": {"types": ["bus.#"]}, "start": "beginning"}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status().as_u16(), 201);
        let first = fetch(&b).await;
        assert_eq!(first.iter().map(|l| l.1).collect::<Vec<_>>(), [1]);
        ack(&c, &first).await;
        let waiting = waiting_fetch(&b).await;
        append(&a, "bus-2", 2).await;
        let second = tokio::time::timeout(WAIT, waiting).await.expect("A's append wakes B's fetch").unwrap();
        assert_eq!(second.iter().map(|l| l.1).collect::<Vec<_>>(), [2]);
        ack(&c, &second).await;

        // An ephemeral WebSocket message published on C reaches a client on B.
        let (mut socket, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?user_id=u1", b.addr)).await.unwrap();
        next_op(&mut socket, "connected").await;
        let subscribe = json!({"op": "subscribe", "id": "s", "channel": "room:bus"});
        socket.send(Message::Text(subscribe.to_string().into())).await.unwrap();
        next_op(&mut socket, "subscribed").await;
        let published: Value = client()
            .post(format!("{}/v1/realtime/publish", c.url()))
            .json(&json!({"target": {"rooms": ["bus"]}, "type": "bus.ping", "data": {"n": 0}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(next_op(&mut socket, "message").await["message_id"], published["message_id"]);
    });

    // A dies without a word; B and C go on, still over NATS.
    a.kill();
    runtime.block_on(async {
        let mut on_c = Sse::open(&c).await;
        let waiting = waiting_fetch(&c).await;
        append(&b, "bus-3", 3).await;
        on_c.expect(3).await;
        let third = tokio::time::timeout(WAIT, waiting).await.expect("B's append wakes C's fetch").unwrap();
        assert_eq!(third.iter().map(|l| l.1).collect::<Vec<_>>(), [3]);
        ack(&b, &third).await;
        let status: Value =
            client().get(format!("{}/v1/groups/g", c.url())).send().await.unwrap().json().await.unwrap();
        assert_eq!((status["lag"].clone(), status["in_flight"].clone()), (json!(0), json!(0)), "{status}");
    });
    for node in [b, c] {
        let (status, _) = node.terminate();
        assert_eq!(status.code(), Some(0));
    }
}
