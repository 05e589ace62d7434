//! One WebSocket connection: its frames in, its bounded queue out, its subscriptions.
//!
//! Each subscription is a task that reads the log from its position (catch-up, then live:
//! the store's subscription, so no gap and no duplicate) and puts `event` frames on the
//! connection's queue in position order. The queue is bounded and a subscription waits
//! for room (it pulls from the store, so waiting costs no memory); a queue that stays full
//! for `slow_consumer_timeout` means a client that does not read, closed with 4008 ("slow
//! consumer"). Nobody else ever waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bifrost_core::json_out::{write_str, write_u64};
use bifrost_core::subscription::subscribe as subscribe_log;
use bifrost_core::{RecordedEvent, SubscribeFrom};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::channel::Channel;
use crate::AppState;
use crate::wire;

/// Close codes of the contract.
const CLOSE_UNSUPPORTED: u16 = 1003;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_NO_PONG: u16 = 4002;
const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// What the connection's writer sends.
enum Out {
    Frame(Utf8Bytes),
    Ping,
}

/// The sending side of a connection, shared by its reader and its subscriptions.
#[derive(Clone)]
struct Outbox {
    queue: mpsc::Sender<Out>,
    slow_after: Duration,
    /// Set once: why the connection closes (the first reason wins).
    closing: Arc<Mutex<Option<(u16, &'static str)>>>,
    closed: CancellationToken,
}

impl Outbox {
    /// Queues a frame, waiting for room; a queue that stays full closes the connection as
    /// a slow consumer.
    async fn send(&self, frame: Vec<u8>) {
        let Ok(text) = String::from_utf8(frame) else { return };
        let sent = tokio::select! {
            () = self.closed.cancelled() => return,
            sent = self.queue.send_timeout(Out::Frame(text.into()), self.slow_after) => sent,
        };
        if let Err(mpsc::error::SendTimeoutError::Timeout(_)) = sent {
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer");
        }
    }

    fn close(&self, code: u16, reason: &'static str) {
        if let Ok(mut closing) = self.closing.lock() {
            closing.get_or_insert((code, reason));
        }
        self.closed.cancel();
    }
}

/// A frame from the client: `{"op", "id"?, ...}`.
#[derive(Deserialize)]
struct Request {
    op: String,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    since_position: Option<u64>,
}

/// Serves one upgraded connection until it closes.
pub(crate) async fn serve(socket: WebSocket, state: AppState, user_id: Option<String>) {
    let config = state.config.realtime.clone();
    let (mut sink, mut incoming) = socket.split();
    let (queue, mut queued) = mpsc::channel(config.queue_size.max(1));
    let outbox = Outbox {
        queue,
        slow_after: config.slow_consumer_timeout,
        closing: Arc::default(),
        closed: state.shutdown.child_token(),
    };
    let connection_id = uuid::Uuid::new_v4().simple().to_string();

    // The writer: queued frames and pings out, then the close frame.
    let writer_outbox = outbox.clone();
    let ping_interval = config.ping_interval;
    // A peer that stops reading blocks a send; past this it is given up on.
    let send_limit = config.ping_interval + config.pong_timeout;
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(ping_interval);
        ping.tick().await;
        loop {
            let out = tokio::select! {
                () = writer_outbox.closed.cancelled() => break,
                _ = ping.tick() => Out::Ping,
                out = queued.recv() => match out { Some(out) => out, None => break },
            };
            let message = match out {
                Out::Frame(text) => Message::Text(text),
                Out::Ping => Message::Ping(Vec::new().into()),
            };
            if !matches!(tokio::time::timeout(send_limit, sink.send(message)).await, Ok(Ok(()))) {
                return;
            }
        }
        let (code, reason) = writer_outbox.closing.lock().ok().and_then(|c| *c).unwrap_or((1000, "closing"));
        let close = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
        let _ = tokio::time::timeout(send_limit, sink.send(close)).await;
    });

    let mut frame = Vec::new();
    frame.extend_from_slice(b"{\"op\":\"connected\",\"connection_id\":");
    write_str(&mut frame, &connection_id);
    frame.extend_from_slice(b",\"user_id\":");
    match &user_id {
        Some(user) => write_str(&mut frame, user),
        None => frame.extend_from_slice(b"null"),
    }
    frame.push(b'}');
    outbox.send(frame).await;

    let mut subscriptions: HashMap<String, JoinHandle<()>> = HashMap::new();
    let silence = config.ping_interval + config.pong_timeout;
    loop {
        let next = tokio::select! {
            () = outbox.closed.cancelled() => break,
            next = tokio::time::timeout(silence, incoming.next()) => next,
        };
        let message = match next {
            Err(_) => {
                outbox.close(CLOSE_NO_PONG, "no pong");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let text = e.to_string();
                if text.contains("too long") || text.contains("Space limit") || text.contains("size") {
                    outbox.close(CLOSE_TOO_BIG, "frame too large");
                } else {
                    outbox.closed.cancel();
                }
                break;
            }
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Text(text) => handle(&state, &outbox, &mut subscriptions, text.as_str()).await,
            Message::Binary(_) => {
                outbox.close(CLOSE_UNSUPPORTED, "binary frames are not supported; send JSON text");
                break;
            }
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
    outbox.closed.cancel();
    for task in subscriptions.into_values() {
        task.abort();
    }
    let _ = writer.await;
}

/// One text frame.
async fn handle(
    state: &AppState,
    outbox: &Outbox,
    subscriptions: &mut HashMap<String, JoinHandle<()>>,
    text: &str,
) {
    let request: Request = match serde_json::from_str(text) {
        Ok(request) => request,
        Err(e) => {
            let id = serde_json::from_str::<Value>(text).ok().and_then(|v| v.get("id").cloned());
            return error(outbox, id.as_ref(), "invalid-frame", &format!("not a request frame: {e}")).await;
        }
    };
    let id = request.id.as_ref();
    match request.op.as_str() {
        "ping" => outbox.send(reply("pong", id, |_| {})).await,
        "subscribe" => {
            let Some(name) = request.channel else {
                return error(outbox, id, "invalid-frame", "subscribe needs a \"channel\"").await;
            };
            let channel = match Channel::parse(&name) {
                Ok(channel) => channel,
                Err(e) => return error(outbox, id, "invalid-channel", &e.0).await,
            };
            if subscriptions.get(&name).is_some_and(|task| !task.is_finished()) {
                return error(outbox, id, "already-subscribed", &format!("already subscribed to {name}"))
                    .await;
            }
            subscriptions.retain(|_, task| !task.is_finished());
            if subscriptions.len() >= state.config.realtime.max_subscriptions {
                let max = state.config.realtime.max_subscriptions;
                return error(outbox, id, "too-many-subscriptions", &format!("at most {max} subscriptions"))
                    .await;
            }
            let head = *state.store.head().borrow();
            let window = state.config.realtime.recovery_max_events;
            let (position, recovered) = match request.since_position {
                None => (head, true),
                Some(since) if since <= head && head - since <= window => (since, true),
                Some(_) => (head, false),
            };
            outbox
                .send(reply("subscribed", id, |out| {
                    out.extend_from_slice(b",\"channel\":");
                    write_str(out, &name);
                    out.extend_from_slice(b",\"position\":");
                    write_u64(out, position);
                    out.extend_from_slice(if recovered {
                        b",\"recovered\":true"
                    } else {
                        b",\"recovered\":false"
                    });
                }))
                .await;
            let task = tokio::spawn(deliver(state.clone(), outbox.clone(), name.clone(), channel, position));
            subscriptions.insert(name, task);
        }
        "unsubscribe" => {
            let Some(name) = request.channel else {
                return error(outbox, id, "invalid-frame", "unsubscribe needs a \"channel\"").await;
            };
            match subscriptions.remove(&name) {
                Some(task) => {
                    task.abort();
                    outbox.send(reply("ok", id, |_| {})).await;
                }
                None => error(outbox, id, "not-subscribed", &format!("not subscribed to {name}")).await,
            }
        }
        op => error(outbox, id, "invalid-frame", &format!("unknown op {op:?}")).await,
    }
}

/// A subscription: the channel's events after `position`, in order, catch-up then live.
async fn deliver(state: AppState, outbox: Outbox, name: String, channel: Channel, position: u64) {
    let mut events = subscribe_log(state.store.clone(), SubscribeFrom::After(position), channel.log_filter());
    loop {
        let next = tokio::select! {
            () = outbox.closed.cancelled() => return,
            next = events.next() => next,
        };
        match next {
            Some(Ok(event)) if channel.matches(&event) => outbox.send(event_frame(&name, &event)).await,
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(channel = %name, error = %e, "a WebSocket subscription failed");
                return error(&outbox, None, "internal", "the subscription failed; subscribe again").await;
            }
            None => return,
        }
    }
}

fn event_frame(channel: &str, event: &RecordedEvent) -> Vec<u8> {
    let json = wire::event_json(event);
    let mut out = Vec::with_capacity(json.len() + 96);
    out.extend_from_slice(b"{\"op\":\"event\",\"channel\":");
    write_str(&mut out, channel);
    out.extend_from_slice(b",\"position\":");
    write_u64(&mut out, event.position);
    out.extend_from_slice(b",\"priority\":\"normal\",\"event\":");
    out.extend_from_slice(&json);
    out.push(b'}');
    out
}

/// `{"op": op, "id"?: <the request's>, ...fields}`.
fn reply(op: &str, id: Option<&Value>, fields: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"op\":");
    write_str(&mut out, op);
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        let _ = serde_json::to_writer(&mut out, id);
    }
    fields(&mut out);
    out.push(b'}');
    out
}

async fn error(outbox: &Outbox, id: Option<&Value>, code: &str, message: &str) {
    outbox
        .send(reply("error", id, |out| {
            out.extend_from_slice(b",\"code\":");
            write_str(out, &format!("bifrost:{code}"));
            out.extend_from_slice(b",\"message\":");
            write_str(out, message);
        }))
        .await;
}
