//! `GET /v1/ws` with a real WebSocket client over a loopback socket: subscriptions to
//! stream and type channels, resume with `since_position` (no gap, no duplicate), the
//! recovery window, bad frames, binary frames and the slow-consumer close.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bifrost_core::{DurableStore, ExpectedVersion, InMemoryStore, NewEvent, StreamName};
use bifrost_server::{RealtimeConfig, ServerConfig};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use common::ws::{Node, Socket, WAIT, close_code, next_frame, send, subscribe};

async fn server(realtime: RealtimeConfig) -> Node {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    Node::start(store, ServerConfig { realtime, ..ServerConfig::default() }).await
}

async fn connect(server: &Node) -> Socket {
    server.connect("u-1").await
}

async fn append(store: &Arc<dyn DurableStore>, stream: &str, event_type: &str, n: usize) -> Vec<u64> {
    let events = (0..n).map(|i| NewEvent::json(event_type, &json!({"i": i})).unwrap()).collect();
    let r = store.append(StreamName::new(stream).unwrap(), ExpectedVersion::Any, events).await.unwrap();
    (r.first_position..=r.last_position).collect()
}

async fn positions(socket: &mut Socket, n: usize) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = next_frame(socket).await;
        assert_eq!(frame["op"], "event", "{frame}");
        assert_eq!(frame["position"], frame["event"]["position"]);
        got.push(frame["position"].as_u64().unwrap());
    }
    got
}

#[tokio::test]
async fn a_stream_channel_delivers_that_streams_events_in_order_live() {
    let server = server(RealtimeConfig::default()).await;
    let mut socket = connect(&server).await;
    let reply = subscribe(&mut socket, "stream:order-1", None).await;
    assert_eq!((reply["position"].as_u64(), reply["recovered"].as_bool()), (Some(0), Some(true)));
    append(&server.store, "order-2", "order.placed", 2).await;
    let mine = append(&server.store, "order-1", "order.placed", 3).await;
    let got = positions(&mut socket, 3).await;
    assert_eq!(got, mine, "only order-1's events, in order");
    let frame_event = {
        append(&server.store, "order-1", "order.paid", 1).await;
        next_frame(&mut socket).await
    };
    assert_eq!(frame_event["channel"], "stream:order-1");
    assert_eq!(frame_event["event"]["type"], "order.paid");
    assert_eq!(frame_event["event"]["data"], json!({"i": 0}));
}

#[tokio::test]
async fn resuming_with_since_position_gives_exactly_what_was_missed() {
    let server = server(RealtimeConfig::default()).await;
    let mut first = connect(&server).await;
    subscribe(&mut first, "type:task.#", None).await;
    let before = append(&server.store, "task-1", "task.created", 3).await;
    assert_eq!(positions(&mut first, 3).await, before);
    let last_seen = before[2];
    drop(first);

    // Missed while away: task events and others.
    let missed: Vec<u64> = [
        append(&server.store, "task-2", "task.created", 2).await,
        append(&server.store, "user-1", "user.joined", 1).await,
        append(&server.store, "task-1", "task.done", 1).await,
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut again = connect(&server).await;
    let reply = subscribe(&mut again, "type:task.#", Some(last_seen)).await;
    assert_eq!((reply["position"].as_u64(), reply["recovered"].as_bool()), (Some(last_seen), Some(true)));
    let expected: Vec<u64> = missed.iter().copied().filter(|&p| p != missed[2]).collect();
    assert_eq!(positions(&mut again, 3).await, expected, "the task events missed, in order");
    // Then live, with no duplicate of what was replayed.
    let live = append(&server.store, "task-3", "task.created", 1).await;
    assert_eq!(positions(&mut again, 1).await, live);
}

#[tokio::test]
async fn beyond_the_recovery_window_the_subscription_starts_at_the_head_unrecovered() {
    let server = server(RealtimeConfig { recovery_max_events: 2, ..RealtimeConfig::default() }).await;
    append(&server.store, "s-1", "a.b", 5).await;
    let mut socket = connect(&server).await;
    let reply = subscribe(&mut socket, "stream:s-1", Some(1)).await;
    assert_eq!((reply["position"].as_u64(), reply["recovered"].as_bool()), (Some(5), Some(false)));
    let within = subscribe(&mut socket, "type:a.b", Some(3)).await;
    assert_eq!((within["position"].as_u64(), within["recovered"].as_bool()), (Some(3), Some(true)));
    assert_eq!(positions(&mut socket, 2).await, [4, 5]);
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_stays_usable() {
    let server = server(RealtimeConfig::default()).await;
    let mut socket = connect(&server).await;
    socket.send(Message::Text("not json".into())).await.unwrap();
    let error = next_frame(&mut socket).await;
    assert_eq!(
        (error["op"].as_str(), error["code"].as_str()),
        (Some("error"), Some("bifrost:invalid-frame"))
    );

    send(&mut socket, json!({"op": "dance", "id": 7})).await;
    let error = next_frame(&mut socket).await;
    assert_eq!((error["code"].as_str(), error["id"].as_i64()), (Some("bifrost:invalid-frame"), Some(7)));

    send(&mut socket, json!({"op": "subscribe", "id": "x"})).await;
    assert_eq!(next_frame(&mut socket).await["code"], "bifrost:invalid-frame", "a subscribe without channel");
    send(&mut socket, json!({"op": "subscribe", "id": "x", "channel": "nope"})).await;
    assert_eq!(next_frame(&mut socket).await["code"], "bifrost:invalid-channel");
    send(&mut socket, json!({"op": "unsubscribe", "id": "x", "channel": "stream:s-1"})).await;
    assert_eq!(next_frame(&mut socket).await["code"], "bifrost:not-subscribed");
    subscribe(&mut socket, "stream:s-1", None).await;
    send(&mut socket, json!({"op": "subscribe", "id": "x", "channel": "stream:s-1"})).await;
    assert_eq!(next_frame(&mut socket).await["code"], "bifrost:already-subscribed");

    send(&mut socket, json!({"op": "ping", "id": "p"})).await;
    let pong = next_frame(&mut socket).await;
    assert_eq!((pong["op"].as_str(), pong["id"].as_str()), (Some("pong"), Some("p")));
    send(&mut socket, json!({"op": "unsubscribe", "id": "u", "channel": "stream:s-1"})).await;
    assert_eq!(next_frame(&mut socket).await["op"], "ok");
    append(&server.store, "s-1", "a.b", 1).await;
    send(&mut socket, json!({"op": "ping", "id": "q"})).await;
    assert_eq!(next_frame(&mut socket).await["op"], "pong", "nothing more after unsubscribe");
}

#[tokio::test]
async fn a_binary_frame_closes_the_connection_with_1003() {
    let server = server(RealtimeConfig::default()).await;
    let mut socket = connect(&server).await;
    socket.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    let close = loop {
        match tokio::time::timeout(WAIT, socket.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1003));
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_as_slow_while_another_keeps_receiving() {
    let realtime = RealtimeConfig { queue_size: 100, ..RealtimeConfig::default() };
    let server = server(realtime).await;
    let mut stalled = connect_small_buffer(&server).await;
    subscribe_plain(&mut stalled, "type:big.#").await;
    let mut reader = connect(&server).await;
    subscribe(&mut reader, "type:big.#", None).await;

    // Far more than the socket buffers and the queue hold: the stalled client's queue fills.
    // Appended at a pace a reading client keeps up with (its queue never fills).
    const EVENTS: u64 = 1500;
    let payload = "x".repeat(8_000);
    let store = Arc::clone(&server.store);
    let writer = tokio::spawn(async move {
        for i in 0..EVENTS {
            let event = NewEvent::json("big.blob", &json!({"p": payload})).unwrap();
            store.append(StreamName::new("big-1").unwrap(), ExpectedVersion::Any, vec![event]).await.unwrap();
            if i % 25 == 24 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let received = positions(&mut reader, EVENTS as usize).await;
    assert_eq!(received, (1..=EVENTS).collect::<Vec<u64>>(), "the reading client got every event, in order");
    writer.await.unwrap();

    let mut drained = 0;
    let close = loop {
        match tokio::time::timeout(WAIT, stalled.next()).await.expect("a frame from the stalled connection") {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => drained += 1,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(4008), "closed as a slow consumer");
    assert!(drained < EVENTS, "the stalled client was closed before it got everything ({drained})");
}

type PlainSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A client whose receive buffer is small (and not grown by the kernel), so that not
/// reading backs up to the server quickly.
async fn connect_small_buffer(server: &Node) -> PlainSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let url = format!("ws://{}/v1/ws?user_id=u-2", server.addr);
    let (mut socket, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    let connected = tokio::time::timeout(WAIT, socket.next()).await.unwrap().unwrap().unwrap();
    assert!(connected.to_text().unwrap().contains("connected"));
    socket
}

async fn subscribe_plain(socket: &mut PlainSocket, channel: &str) {
    let frame = json!({"op": "subscribe", "id": "s", "channel": channel});
    socket.send(Message::Text(frame.to_string().into())).await.unwrap();
    let reply = tokio::time::timeout(WAIT, socket.next()).await.unwrap().unwrap().unwrap();
    assert!(reply.to_text().unwrap().contains("subscribed"), "{reply:?}");
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009() {
    let server = server(RealtimeConfig { max_frame_bytes: 1024, ..RealtimeConfig::default() }).await;
    let mut socket = connect(&server).await;
    send(&mut socket, json!({"op": "ping", "id": "x".repeat(2048)})).await;
    assert_eq!(close_code(&mut socket).await, Some(1009));
}

#[tokio::test]
async fn a_silent_client_is_closed_with_4002() {
    let realtime = RealtimeConfig {
        ping_interval: Duration::from_millis(200),
        pong_timeout: Duration::from_millis(200),
        ..RealtimeConfig::default()
    };
    let server = server(realtime).await;
    let socket = connect(&server).await;
    // Not polled, the client answers no ping: the server hears nothing. What the server
    // sent is read off the socket itself (the client library would first try to answer the
    // pings, on a connection the server has closed by then).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut tcp = socket.into_inner();
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut bytes))
        .await
        .expect("the server ends the connection")
        .unwrap();
    // An unmasked close frame: FIN + opcode 8, a payload length, then the code 4002.
    let closed_with_4002 =
        bytes.windows(4).any(|w| w[0] == 0x88 && w[1] >= 2 && w[2..] == 4002u16.to_be_bytes());
    assert!(closed_with_4002, "no close frame with 4002 in {bytes:?}");
}
