//! Real-time on several nodes: three `bifrost serve` processes on one PostgreSQL database,
//! WebSocket clients spread over them. Publishes, persistent events, presence and bridged
//! events cross nodes; a node killed with SIGKILL takes its users out of presence and loses
//! nobody else anything.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Server;
use common::pg::Schema;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(20);

async fn connect(node: &Server, user: &str) -> Socket {
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws?user_id={user}", node.addr)).await.unwrap();
    assert_eq!(next_frame(&mut socket).await["op"], "connected");
    socket
}

async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time").unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next frame whose `op` is `op` (others, e.g. joins in between, skipped).
async fn next_op(socket: &mut Socket, op: &str) -> Value {
    loop {
        let frame = next_frame(socket).await;
        if frame["op"] == op {
            return frame;
        }
    }
}

async fn subscribe(socket: &mut Socket, channel: &str, since: Option<u64>) -> Value {
    let mut frame = json!({"op": "subscribe", "id": channel, "channel": channel});
    if let Some(since) = since {
        frame["since_position"] = json!(since);
    }
    socket.send(Message::Text(frame.to_string().into())).await.unwrap();
    let reply = next_op(socket, "subscribed").await;
    assert_eq!(reply["channel"], channel);
    reply
}

async fn post(node: &Server, path: &str, body: Value) -> (u16, Value) {
    let response =
        reqwest::Client::new().post(format!("{}{path}", node.url())).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn put(node: &Server, path: &str, body: Value) -> u16 {
    reqwest::Client::new()
        .put(format!("{}{path}", node.url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn presence_users(node: &Server, room: &str) -> Vec<String> {
    let url = format!("{}/v1/realtime/rooms/{room}/presence", node.url());
    let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    body["users"].as_array().unwrap().iter().map(|u| u["user_id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn three_nodes_share_publishes_presence_and_bridged_events_and_survive_a_killed_node() {
    let Some(schema) = Schema::fresh() else { return };
    let args = schema.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Server::start(dirs[0].path(), "127.0.0.1:0", &args);
    let b = Server::start(dirs[1].path(), "127.0.0.1:0", &args);
    let c = Server::start(dirs[2].path(), "127.0.0.1:0", &args);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(scenario(a, &b, &c));
    drop((b, c, schema));
}

async fn scenario(a: Server, b: &Server, c: &Server) {
    let (b, c) = (b, c);

    // One user per node in the same room: each sees the others join, whatever node they are on.
    let mut alice = connect(&a, "alice").await;
    subscribe(&mut alice, "room:ops", None).await;
    let mut bob = connect(b, "bob").await;
    subscribe(&mut bob, "room:ops", None).await;
    assert_eq!(next_op(&mut alice, "join").await["user_id"], "bob");
    let mut carol = connect(c, "carol").await;
    subscribe(&mut carol, "room:ops", None).await;
    subscribe(&mut carol, "stream:job-1", None).await;
    assert_eq!(next_op(&mut alice, "join").await["user_id"], "carol");
    assert_eq!(next_op(&mut bob, "join").await["user_id"], "carol");
    for node in [&a, b, c] {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let users = presence_users(node, "ops").await;
            if users == ["alice", "bob", "carol"] {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "presence on {}: {users:?}", node.addr);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // An ephemeral publish on A reaches the clients of every node, once each.
    let (status, body) = post(
        &a,
        "/v1/realtime/publish",
        json!({"target": {"rooms": ["ops"]}, "exclude_users": ["bob"], "type": "ops.ping", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(status, 202);
    for socket in [&mut alice, &mut carol] {
        let message = next_op(socket, "message").await;
        assert_eq!(message["message_id"], body["message_id"]);
    }

    // A persistent publish on B: one stored event, delivered everywhere with its position.
    let (status, stored) = post(
        b,
        "/v1/realtime/publish",
        json!({"target": {"rooms": ["ops"]}, "type": "ops.note", "data": {"n": 2}, "persistent": true}),
    )
    .await;
    assert_eq!(status, 201, "{stored}");
    for socket in [&mut alice, &mut bob, &mut carol] {
        let event = next_op(socket, "event").await;
        assert_eq!(event["position"], stored["position"]);
    }

    // A bridge made on A works for events appended through C, for clients on B.
    assert_eq!(
        put(&a, "/v1/realtime/bridges/jobs", json!({"types": ["job.#"], "rooms": ["{data.room}"]})).await,
        201
    );
    tokio::time::sleep(Duration::from_millis(1500)).await; // every node reloads rules each second
    let (status, appended) = post(
        c,
        "/v1/streams/job-1/events",
        json!({"events": [{"type": "job.done", "data": {"room": "ops"}}]}),
    )
    .await;
    assert_eq!(status, 201, "{appended}");
    let bridged = next_op(&mut bob, "event").await;
    assert_eq!(
        (bridged["channel"].as_str(), bridged["position"].as_u64()),
        (Some("room:ops"), appended["first_position"].as_u64())
    );
    let mut channels = [next_op(&mut carol, "event").await, next_op(&mut carol, "event").await]
        .map(|frame| frame["channel"].as_str().unwrap().to_owned());
    channels.sort();
    assert_eq!(channels, ["room:ops", "stream:job-1"], "one copy per subscription");

    // A dies without a word: its user leaves everyone's presence once A goes silent, and
    // the others lose nothing.
    a.kill();
    drop(alice);
    let leave = next_op(&mut bob, "leave").await;
    assert_eq!(leave["user_id"], "alice");
    assert_eq!(next_op(&mut carol, "leave").await["user_id"], "alice");
    assert_eq!(presence_users(c, "ops").await, ["bob", "carol"]);
    let last = stored["position"].as_u64().unwrap();

    // Carol reconnects to B and resumes the room: exactly what she missed, in order.
    drop(carol);
    let (_, missed) = post(
        b,
        "/v1/realtime/publish",
        json!({"target": {"rooms": ["ops"]}, "type": "ops.note", "data": {"n": 3}, "persistent": true}),
    )
    .await;
    let mut carol = connect(b, "carol").await;
    subscribe(&mut carol, "room:ops", Some(last)).await;
    let first = next_op(&mut carol, "event").await;
    assert_eq!(first["position"], appended["first_position"], "the bridged event, then the missed note");
    let second = next_op(&mut carol, "event").await;
    assert_eq!(second["position"], missed["position"]);
}
