//! Real-time with a real WebSocket client over loopback: rooms and users, exclusions,
//! ephemeral and persistent publishes (HTTP and WebSocket), presence with its grace period,
//! bridging rules, and room replays after a reconnect.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bifrost_core::{DurableStore, ExpectedVersion, InMemoryStore, LogFilter, Metadata, NewEvent, StreamName};
use bifrost_server::{RealtimeConfig, ServerConfig};
use common::ws::{Node, assert_quiet, next_frame, request, subscribe};
use reqwest::Method;
use serde_json::{Value, json};

async fn node() -> Node {
    node_with(RealtimeConfig::default()).await
}

async fn node_with(realtime: RealtimeConfig) -> Node {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    Node::start(store, ServerConfig { realtime, ..ServerConfig::default() }).await
}

async fn log_len(store: &Arc<dyn DurableStore>) -> usize {
    store.read_all(0, &LogFilter::default(), 1000).await.unwrap().events.len()
}

#[tokio::test]
async fn a_room_publish_reaches_every_subscriber_but_the_excluded_users() {
    let node = node().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let mut carol = node.connect("carol").await;
    for socket in [&mut alice, &mut bob, &mut carol] {
        subscribe(socket, "room:project:101", None).await;
    }
    // Everyone's joins are out of the way.
    let _ = (next_frame(&mut alice).await, next_frame(&mut alice).await, next_frame(&mut bob).await);

    let (status, body) = node
        .publish(json!({
            "target": {"type": "project", "id": "101"},
            "exclude_users": ["bob"],
            "type": "task.moved",
            "data": {"task": 7, "to": "done"},
            "source": {"user_id": "carol", "workspace_id": "w-1"},
            "priority": "high",
        }))
        .await;
    assert_eq!(status, 202, "{body}");
    let message_id = body["message_id"].as_str().unwrap().to_owned();
    for socket in [&mut alice, &mut carol] {
        let frame = next_frame(socket).await;
        assert_eq!(frame["op"], "message", "{frame}");
        assert_eq!(frame["channel"], "room:project:101");
        assert_eq!(frame["message_id"], message_id.as_str());
        assert_eq!(frame["type"], "task.moved");
        assert_eq!(frame["data"], json!({"task": 7, "to": "done"}));
        assert_eq!(frame["source"], json!({"user_id": "carol", "workspace_id": "w-1"}));
        assert_eq!(frame["priority"], "high");
        assert!(frame["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    assert_quiet(&mut bob).await;
    assert_eq!(log_len(&node.store).await, 0, "an ephemeral publish is never stored");
}

#[tokio::test]
async fn a_user_target_reaches_only_that_users_connections() {
    let node = node().await;
    let mut alice_1 = node.connect("alice").await;
    let mut alice_2 = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    subscribe(&mut alice_1, "user:alice", None).await;
    subscribe(&mut alice_2, "user:alice", None).await;
    subscribe(&mut bob, "user:bob", None).await;
    // Only admins (here everyone: no JWT key) subscribe to someone else's user channel.
    subscribe(&mut bob, "user:alice", None).await;

    let (status, _) =
        node.publish(json!({"target": {"users": ["alice"]}, "type": "note.sent", "data": 1})).await;
    assert_eq!(status, 202);
    for socket in [&mut alice_1, &mut alice_2, &mut bob] {
        let frame = next_frame(socket).await;
        assert_eq!((frame["op"].as_str(), frame["channel"].as_str()), (Some("message"), Some("user:alice")));
    }
    let (status, _) = node
        .publish(
            json!({"target": {"users": ["alice"]}, "exclude_users": ["bob"], "type": "note.sent", "data": 2}),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(next_frame(&mut alice_1).await["data"], 2);
    assert_quiet(&mut bob).await;
}

#[tokio::test]
async fn a_persistent_publish_is_a_stored_event_delivered_with_its_position_and_replayed() {
    let node = node().await;
    let mut alice = node.connect("alice").await;
    let mut watcher = node.connect("watcher").await;
    subscribe(&mut alice, "room:design", None).await;
    subscribe(&mut watcher, "stream:realtime-design", None).await;

    let (status, body) = node
        .publish(json!({"target": {"rooms": ["design"]}, "type": "doc.saved", "data": {"v": 3}, "persistent": true}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["stream"], "realtime-design");
    let position = body["position"].as_u64().unwrap();
    let stored =
        node.store.event(body["event_id"].as_str().unwrap().parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.position, position);
    let metadata: Value = serde_json::from_slice(&stored.metadata).unwrap();
    assert_eq!(metadata["realtime"]["target"], json!({"rooms": ["design"]}));

    for (socket, channel) in [(&mut alice, "room:design"), (&mut watcher, "stream:realtime-design")] {
        let frame = next_frame(socket).await;
        assert_eq!(frame["op"], "event", "{frame}");
        assert_eq!(frame["channel"], channel);
        assert_eq!(frame["position"], position);
        assert_eq!(frame["event"]["id"], body["event_id"]);
        assert_eq!(frame["event"]["data"], json!({"v": 3}));
    }

    // A client that comes back gets the room's stored traffic it missed, never ephemeral.
    drop(alice);
    node.publish(json!({"target": {"rooms": ["design"]}, "type": "doc.typing", "data": {}})).await;
    let (_, second) = node
        .publish(json!({"target": {"rooms": ["design"]}, "type": "doc.saved", "data": {"v": 4}, "persistent": true}))
        .await;
    let mut back = node.connect("alice").await;
    let reply = subscribe(&mut back, "room:design", Some(position)).await;
    assert_eq!(reply["recovered"], true);
    let replayed = next_frame(&mut back).await;
    assert_eq!(
        (replayed["op"].as_str(), replayed["position"].as_u64()),
        (Some("event"), second["position"].as_u64())
    );
    assert_quiet(&mut back).await;
}

#[tokio::test]
async fn websocket_publishes_answer_ok_and_reach_the_sender_too() {
    let node = node().await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    subscribe(&mut alice, "room:chat", None).await;
    subscribe(&mut bob, "room:chat", None).await;
    let _join = next_frame(&mut alice).await;

    // The sender's own copy is queued before the reply.
    let publish = json!({"op": "publish", "id": "p1", "channel": "room:chat", "type": "chat.typing", "data": {"on": true}});
    common::ws::send(&mut alice, publish).await;
    let own = next_frame(&mut alice).await;
    let ok = next_frame(&mut alice).await;
    assert_eq!((ok["op"].as_str(), ok["id"].as_str()), (Some("ok"), Some("p1")), "{ok}");
    let message_id = ok["message_id"].as_str().unwrap().to_owned();
    for frame in [own, next_frame(&mut bob).await] {
        assert_eq!(
            (frame["op"].as_str(), frame["message_id"].as_str()),
            (Some("message"), Some(message_id.as_str()))
        );
        assert_eq!(frame["source"]["user_id"], "alice");
    }

    let ok = request(
        &mut bob,
        json!({"op": "publish", "channel": "room:chat", "type": "chat.message", "data": {"text": "hi"},
               "persistent": true, "exclude_users": ["alice"]}),
    )
    .await;
    assert_eq!(ok["op"], "ok", "{ok}");
    let position = ok["position"].as_u64().unwrap();
    let frame = next_frame(&mut bob).await;
    assert_eq!((frame["op"].as_str(), frame["position"].as_u64()), (Some("event"), Some(position)));
    assert_eq!(frame["event"]["id"], ok["event_id"]);
    assert_eq!(log_len(&node.store).await, 1, "only the persistent publish is stored");

    // Bad publishes: an error frame, the connection stays usable.
    let cases = [
        (json!({"op": "publish", "channel": "type:chat.#", "type": "x", "data": 1}), "bifrost:forbidden"),
        (
            json!({"op": "publish", "channel": "room:chat", "type": "a..b", "data": 1}),
            "bifrost:invalid-frame",
        ),
        (json!({"op": "publish", "channel": "room:chat", "data": 1}), "bifrost:invalid-frame"),
        (json!({"op": "publish", "channel": "lobby", "type": "x", "data": 1}), "bifrost:invalid-channel"),
        (
            json!({"op": "publish", "channel": "room:chat", "type": "x", "data": 1, "priority": "urgent"}),
            "bifrost:invalid-frame",
        ),
    ];
    for (frame, code) in cases {
        let reply = request(&mut alice, frame.clone()).await;
        assert_eq!(
            (reply["op"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(code)),
            "{frame}: {reply}"
        );
    }
    assert_quiet(&mut alice).await;
}

#[tokio::test]
async fn presence_shows_who_is_in_a_room_with_join_leave_and_a_grace_period() {
    let grace = Duration::from_millis(400);
    let node = node_with(RealtimeConfig { presence_grace: grace, ..RealtimeConfig::default() }).await;
    let mut alice = node.connect("alice").await;
    subscribe(&mut alice, "room:standup", None).await;
    let mut bob = node.connect("bob").await;
    subscribe(&mut bob, "room:standup", None).await;

    let join = next_frame(&mut alice).await;
    assert_eq!(join, json!({"op": "join", "room": "standup", "user_id": "bob", "info": null}));
    assert_quiet(&mut bob).await; // no join of its own

    let (status, snapshot) = node.call(Method::GET, "/v1/realtime/rooms/standup/presence", None).await;
    assert_eq!(status, 200);
    assert_eq!((snapshot["user_count"].as_u64(), snapshot["connection_count"].as_u64()), (Some(2), Some(2)));
    let users: Vec<&str> =
        snapshot["users"].as_array().unwrap().iter().map(|u| u["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, ["alice", "bob"]);
    let over_ws = request(&mut alice, json!({"op": "presence", "room": "standup"})).await;
    assert_eq!(over_ws["op"], "presence");
    assert_eq!(over_ws["users"], snapshot["users"]);

    // Bob drops and is back within the grace period: neither leave nor join.
    drop(bob);
    tokio::time::sleep(grace / 4).await;
    let mut bob = node.connect("bob").await;
    subscribe(&mut bob, "room:standup", None).await;
    tokio::time::sleep(grace * 2).await;
    assert_quiet(&mut alice).await;
    let (_, snapshot) = node.call(Method::GET, "/v1/realtime/rooms/standup/presence", None).await;
    assert_eq!(snapshot["connection_count"], 2, "the old connection is gone after the grace: {snapshot}");

    // Unsubscribing leaves at once; closing leaves after the grace.
    request(&mut bob, json!({"op": "unsubscribe", "channel": "room:standup"})).await;
    assert_eq!(next_frame(&mut alice).await, json!({"op": "leave", "room": "standup", "user_id": "bob"}));
    subscribe(&mut bob, "room:standup", None).await;
    assert_eq!(next_frame(&mut alice).await["op"], "join");
    drop(bob);
    let started = std::time::Instant::now();
    assert_eq!(next_frame(&mut alice).await, json!({"op": "leave", "room": "standup", "user_id": "bob"}));
    assert!(started.elapsed() >= grace / 2, "the leave waited for the grace period");

    let (status, problem) = node.call(Method::GET, "/v1/realtime/rooms/bad%20room/presence", None).await;
    assert_eq!(status, 400, "{problem}");
}

#[tokio::test]
async fn a_bridge_rule_routes_task_created_to_the_project_room_of_its_data() {
    let node = node().await;
    let rule = json!({"types": ["task.#"], "rooms": ["project:{data.project_id}"],
                      "exclude_users": ["{metadata.user_id}"], "priority": "high",
                      "transform": {"type": "tasks.{type}", "data": "/title"}});
    let (status, body) = node.call(Method::PUT, "/v1/realtime/bridges/tasks", Some(rule.clone())).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["rooms"], json!(["project:{data.project_id}"]));
    assert_eq!(node.call(Method::PUT, "/v1/realtime/bridges/tasks", Some(rule)).await.0, 200);

    let mut in_7 = node.connect("alice").await;
    let mut in_8 = node.connect("bob").await;
    let mut author = node.connect("carol").await;
    subscribe(&mut in_7, "room:project:7", None).await;
    subscribe(&mut in_8, "room:project:8", None).await;
    subscribe(&mut author, "room:project:7", None).await;
    let _join = next_frame(&mut in_7).await;

    let by_carol = Metadata { user_id: Some("carol".into()), ..Metadata::default() };
    let events = vec![
        NewEvent::json("task.created", &json!({"project_id": 7, "title": "write tests"}))
            .unwrap()
            .with_metadata(by_carol),
        NewEvent::json("note.created", &json!({"project_id": 7})).unwrap(),
        NewEvent::json("task.created", &json!({"project_id": 8, "title": "ship"})).unwrap(),
    ];
    let appended =
        node.store.append(StreamName::new("task-1").unwrap(), ExpectedVersion::Any, events).await.unwrap();

    let frame = next_frame(&mut in_7).await;
    assert_eq!(frame["op"], "event", "{frame}");
    assert_eq!(
        (frame["channel"].as_str(), frame["priority"].as_str()),
        (Some("room:project:7"), Some("high"))
    );
    assert_eq!(frame["position"], appended.first_position);
    assert_eq!(frame["event"]["type"], "task.created");
    assert_eq!(frame["integration"]["type"], "tasks.task.created");
    assert_eq!(frame["integration"]["data"], "write tests");
    let frame = next_frame(&mut in_8).await;
    assert_eq!(
        (frame["channel"].as_str(), frame["position"].as_u64()),
        (Some("room:project:8"), Some(appended.last_position))
    );
    // The author is excluded; note.created matches no rule.
    assert_quiet(&mut author).await;
    assert_quiet(&mut in_7).await;

    let (status, list) = node.call(Method::GET, "/v1/realtime/bridges", None).await;
    assert_eq!((status, list["bridges"].as_array().unwrap().len()), (200, 1));
    assert_eq!(node.call(Method::DELETE, "/v1/realtime/bridges/tasks", None).await.0, 204);
    let (status, problem) = node.call(Method::GET, "/v1/realtime/bridges/tasks", None).await;
    assert_eq!((status, problem["type"].as_str()), (404, Some("bifrost:bridge-not-found")));
    assert_eq!(node.call(Method::DELETE, "/v1/realtime/bridges/tasks", None).await.0, 404);
    let (status, problem) =
        node.call(Method::PUT, "/v1/realtime/bridges/bad", Some(json!({"rooms": ["p:{nope}"]}))).await;
    assert_eq!(status, 400, "{problem}");
    let (status, _) =
        node.call(Method::PUT, "/v1/realtime/bridges/empty", Some(json!({"types": ["#"]}))).await;
    assert_eq!(status, 400, "a rule with no room and no user");
}

#[tokio::test]
async fn http_publishes_are_checked() {
    let node = node().await;
    let cases = [
        (json!({"target": {}, "type": "a.b", "data": 1}), 400),
        (json!({"type": "a.b", "data": 1}), 400),
        (json!({"target": {"rooms": ["bad room"]}, "type": "a.b", "data": 1}), 400),
        (json!({"target": {"type": "project"}, "type": "a.b", "data": 1}), 400),
        (json!({"target": {"rooms": ["r"]}, "type": "a..b", "data": 1}), 400),
        (
            json!({"target": {"rooms": ["r"]}, "type": "a.b", "data": 1, "persistent": true, "stream": "bad name"}),
            400,
        ),
        (json!({"target": {"rooms": ["r"]}, "type": "a.b", "data": 1, "priority": "urgent"}), 400),
        (json!({"target": {"rooms": ["r"]}, "type": "a.b", "data": "x".repeat(2 * 1024 * 1024)}), 413),
    ];
    for (body, status) in cases {
        let (got, problem) = node.publish(body.clone()).await;
        assert_eq!(got, status, "{body}: {problem}");
    }
    assert_eq!(log_len(&node.store).await, 0);
    let (status, body) = node
        .publish(json!({"target": {"rooms": ["a", "b"]}, "type": "a.b", "data": 1, "persistent": true}))
        .await;
    assert_eq!((status, body["stream"].as_str()), (201, Some("realtime")), "several rooms go to `realtime`");
}
