//! Server-Sent Events and graceful shutdown, against a real server on an ephemeral port.
//! Timeouts only guard against hangs; they never decide a result.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bifrost_core::{Error, EventStore, EventType, ExpectedVersion, InMemoryStore, NewEvent, StreamName};
use bifrost_server::{ServerConfig, serve};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    store: Arc<dyn EventStore>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(heartbeat: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = InMemoryStore::shared();
    let groups = bifrost_bus::groups::open(store.clone()).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = ServerConfig { sse_heartbeat: heartbeat, ..ServerConfig::default() };
    let task = tokio::spawn(serve(listener, store.clone(), groups, None, config, None, async {
        let _ = stopped.await;
    }));
    Server { addr, store, stop: Some(stop), task }
}

impl Server {
    async fn append(&self, stream: &str, types: &[&str]) {
        let events = types.iter().map(|t| NewEvent::new(EventType::new(t).unwrap(), "{\"k\":1}")).collect();
        self.store.append(StreamName::new(stream).unwrap(), ExpectedVersion::Any, events).await.unwrap();
    }

    async fn subscribe(&self, query: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request = reqwest::Client::new().get(format!("http://{}/v1/subscribe{query}", self.addr));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let resp = timeout(GUARD, request.send()).await.expect("no answer").unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        SseClient { body: resp.bytes_stream().boxed(), buffer: String::new() }
    }
}

/// One SSE frame: its fields and comment lines.
#[derive(Debug, Default)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
    comments: Vec<String>,
}

struct SseClient {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseClient {
    /// The next frame, or `None` when the server ended the response.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                let mut frame = Frame::default();
                for line in raw.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        frame.comments.push(comment.trim().to_owned());
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                        match field {
                            "id" => frame.id = Some(value),
                            "event" => frame.event = Some(value),
                            "data" => frame.data.push(value),
                            _ => {}
                        }
                    }
                }
                return Some(frame);
            }
            match timeout(GUARD, self.body.next()).await.expect("no frame in time") {
                Some(Ok(chunk)) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next event frame, skipping heartbeats: (position, type, event JSON).
    async fn event(&mut self) -> (u64, String, Value) {
        loop {
            let frame = self.frame().await.expect("the stream ended");
            if let Some(id) = frame.id {
                assert_eq!(frame.data.len(), 1, "event JSON on one line");
                let json: Value = serde_json::from_str(&frame.data[0]).unwrap();
                return (id.parse().unwrap(), frame.event.unwrap(), json);
            }
        }
    }
}

#[tokio::test]
async fn subscribe_catches_up_from_a_position_then_goes_live() {
    let server = start(Duration::from_secs(15)).await;
    server.append("order-1", &["order.placed", "order.paid"]).await;
    let mut client = server.subscribe("?from_position=0", None).await;
    let (pos, ty, json) = client.event().await;
    assert_eq!((pos, ty.as_str()), (1, "order.placed"));
    assert_eq!(
        (json["position"].clone(), json["stream"].clone(), json["data"].clone()),
        (1.into(), "order-1".into(), serde_json::json!({"k": 1}))
    );
    assert_eq!(client.event().await.0, 2);
    server.append("order-2", &["order.placed"]).await;
    let (pos, _, json) = client.event().await;
    assert_eq!((pos, json["stream"].as_str()), (3, Some("order-2")));
}

#[tokio::test]
async fn subscribe_without_a_position_delivers_only_new_events() {
    let server = start(Duration::from_secs(15)).await;
    server.append("order-1", &["order.placed", "order.paid"]).await;
    let mut client = server.subscribe("", None).await;
    server.append("order-1", &["order.shipped"]).await;
    assert_eq!(client.event().await.0, 3);
}

#[tokio::test]
async fn last_event_id_resumes_without_gap_or_duplicate() {
    let server = start(Duration::from_secs(15)).await;
    server.append("order-1", &["a", "b", "c"]).await;
    let mut first = server.subscribe("?from_position=0", None).await;
    assert_eq!(first.event().await.0, 1);
    let (seen, _, _) = first.event().await;
    drop(first);
    server.append("order-1", &["d"]).await;
    // Last-Event-ID overrides from_position.
    let mut resumed = server.subscribe("?from_position=0", Some(&seen.to_string())).await;
    assert_eq!(resumed.event().await.0, 3);
    assert_eq!(resumed.event().await.0, 4);
    server.append("order-1", &["e"]).await;
    assert_eq!(resumed.event().await.0, 5);
}

#[tokio::test]
async fn subscribe_filters_by_type_pattern() {
    let server = start(Duration::from_secs(15)).await;
    server.append("mixed-1", &["order.placed", "user.created", "order.item.added", "order.paid"]).await;
    let mut client = server.subscribe("?from_position=0&type=order.*", None).await;
    let (pos, ty, _) = client.event().await;
    assert_eq!((pos, ty.as_str()), (1, "order.placed"));
    let (pos, ty, _) = client.event().await;
    assert_eq!((pos, ty.as_str()), (4, "order.paid"));
    server.append("mixed-1", &["user.deleted", "order.shipped"]).await;
    assert_eq!(client.event().await.0, 6);
}

#[tokio::test]
async fn an_idle_subscription_gets_heartbeat_comments() {
    let server = start(Duration::from_millis(200)).await;
    let mut client = server.subscribe("", None).await;
    let frame = client.frame().await.expect("a heartbeat");
    assert!(frame.id.is_none() && frame.data.is_empty(), "{frame:?}");
    assert_eq!(frame.comments, ["heartbeat"]);
}

#[tokio::test]
async fn a_subscription_past_the_end_of_the_log_is_rejected() {
    let server = start(Duration::from_secs(15)).await;
    let resp = reqwest::get(format!("http://{}/v1/subscribe?from_position=5", server.addr)).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "bifrost:out-of-range");
    let resp = reqwest::Client::new()
        .get(format!("http://{}/v1/subscribe", server.addr))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn shutdown_ends_open_subscriptions_returns_ok_and_closes_the_store() {
    let mut server = start(Duration::from_secs(15)).await;
    server.append("order-1", &["order.placed"]).await;
    let mut client = server.subscribe("?from_position=0", None).await;
    assert_eq!(client.event().await.0, 1);

    server.stop.take().unwrap().send(()).unwrap();
    let served = timeout(GUARD, server.task).await.expect("serve did not return").unwrap();
    assert!(served.is_ok(), "{served:?}");
    assert!(client.frame().await.is_none(), "the SSE response ended");

    let events = vec![NewEvent::new(EventType::new("late").unwrap(), "1")];
    let after = server.store.append(StreamName::new("order-1").unwrap(), ExpectedVersion::Any, events).await;
    assert!(matches!(after, Err(Error::Unavailable(_))), "{after:?}");
}
