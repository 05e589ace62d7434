//! One WebSocket connection: authentication, its frames in, its queue out, its subscriptions.
//!
//! Two tasks per connection: this one reads and answers the client's frames; a writer sends
//! what the connection's bounded queue holds, and the pings. Subscriptions live in the
//! node's hub, which fills the queue; a full queue closes the connection (4008) and nobody
//! else ever waits for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bifrost_api::{PriorityBody, ProblemType, PublishSourceBody};
use bifrost_core::json_out::{write_str, write_u64};
use bifrost_core::{StreamName, json_out::write_uuid};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::task::JoinHandle;

use super::auth::Principal;
use super::channel::{Channel, check_room};
use super::frames::{self, reply};
use super::hub::{Conn, Hub, Sub};
use super::publish::Publish;
use super::route::Targets;
use crate::AppState;

/// Close codes of the contract.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_UNSUPPORTED: u16 = 1003;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_UNAUTHORIZED: u16 = 4001;
const CLOSE_NO_PONG: u16 = 4002;

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
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    persistent: Option<bool>,
    #[serde(default)]
    priority: Option<PriorityBody>,
    #[serde(default)]
    exclude_users: Option<Vec<String>>,
}

type Sink = SplitSink<WebSocket, Message>;
type Incoming = SplitStream<WebSocket>;

/// Serves one upgraded connection until it closes. `principal` is `None` when the client
/// came without a token and must send `auth` first.
pub(crate) async fn serve(socket: WebSocket, state: AppState, principal: Option<Principal>) {
    let hub = Arc::clone(&state.realtime);
    let (mut sink, mut incoming) = socket.split();
    let (principal, auth_id) = match principal {
        Some(principal) => (principal, None),
        None => match authenticate(&hub, &mut sink, &mut incoming).await {
            Some(authenticated) => authenticated,
            None => return,
        },
    };
    let _gauge = crate::metrics::WsConnectionGuard::connect();
    let in_presence = !principal.anonymous && principal.user_id.is_some();
    let conn = Arc::new(Conn::new(
        principal.user_id.clone(),
        principal.info.clone().unwrap_or(Value::Null),
        in_presence,
        hub.config.queue_size,
        state.shutdown.child_token(),
    ));
    let writer =
        tokio::spawn(write(Arc::clone(&conn), sink, hub.config.ping_interval, hub.config.pong_timeout));
    conn.send(connected(auth_id.as_ref(), &conn));

    let mut session = Session { hub, state, conn, principal, subscriptions: HashMap::new() };
    session.run(incoming).await;
    session.end();
    let _ = writer.await;
}

/// Waits for `auth {"token"}` (within the auth timeout) from a client that came without a
/// token; anything else before it is answered `unauthorized`.
async fn authenticate(
    hub: &Hub,
    sink: &mut Sink,
    incoming: &mut Incoming,
) -> Option<(Principal, Option<Value>)> {
    let deadline = tokio::time::Instant::now() + hub.config.auth_timeout;
    let close = |reason: &'static str| {
        Message::Close(Some(CloseFrame { code: CLOSE_UNAUTHORIZED, reason: reason.into() }))
    };
    loop {
        let next = tokio::time::timeout_at(deadline, incoming.next()).await;
        let text = match next {
            Err(_) => {
                let _ = sink.send(close("authentication timed out")).await;
                return None;
            }
            Ok(None | Some(Err(_))) => return None,
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Binary(_)))) => {
                let frame =
                    CloseFrame { code: CLOSE_UNSUPPORTED, reason: "binary frames are not supported".into() };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return None;
            }
            Ok(Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(_))) => continue,
        };
        let request: Option<Request> = serde_json::from_str(text.as_str()).ok();
        let id = request.as_ref().and_then(|r| r.id.clone());
        match request {
            Some(Request { op, token: Some(token), .. }) if op == "auth" => {
                let verified = hub.authenticate(&token).await.map_err(|e| e.message().to_owned());
                match verified {
                    // The `connected` frame goes out through the queue, with this id.
                    Ok(principal) => return Some((principal, id)),
                    Err(e) => {
                        let _ =
                            sink.send(Message::Text(frames::error(id.as_ref(), "unauthorized", &e))).await;
                        let _ = sink.send(close("unauthorized")).await;
                        return None;
                    }
                }
            }
            Some(Request { op, .. }) if op == "auth" => {
                let error = frames::error(id.as_ref(), "invalid-frame", "auth needs a \"token\"");
                let _ = sink.send(Message::Text(error)).await;
            }
            _ => {
                let error =
                    frames::error(id.as_ref(), "unauthorized", "authenticate first: auth {\"token\"}");
                let _ = sink.send(Message::Text(error)).await;
            }
        }
    }
}

/// The writer: queued frames and pings out, then the close frame.
async fn write(conn: Arc<Conn>, mut sink: Sink, ping_interval: Duration, pong_timeout: Duration) {
    let mut ping = tokio::time::interval(ping_interval);
    ping.tick().await;
    // A peer that stops reading blocks a send; past this it is given up on.
    let send_limit = ping_interval + pong_timeout;
    loop {
        let message = tokio::select! {
            biased;
            () = conn.closed.cancelled() => break,
            frame = conn.queue.pop() => match frame {
                Some(frame) => Message::Text(frame),
                None => break,
            },
            _ = ping.tick() => Message::Ping(Vec::new().into()),
        };
        if !matches!(tokio::time::timeout(send_limit, sink.send(message)).await, Ok(Ok(()))) {
            conn.closed.cancel();
            return;
        }
    }
    let (code, reason) = conn.close_reason().unwrap_or((CLOSE_NORMAL, "closing"));
    let close = Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    let _ = tokio::time::timeout(send_limit, sink.send(close)).await;
}

/// `connected {"connection_id", "user_id"}`.
fn connected(id: Option<&Value>, conn: &Conn) -> Utf8Bytes {
    reply("connected", id, |out| {
        out.extend_from_slice(b",\"connection_id\":");
        write_str(out, &conn.id);
        out.extend_from_slice(b",\"user_id\":");
        match &conn.user_id {
            Some(user) => write_str(out, user),
            None => out.extend_from_slice(b"null"),
        }
    })
}

/// A subscription of the session: the hub's record, its room (presence), its replay task.
type Subscribed = (Arc<Sub>, Option<String>, JoinHandle<()>);

struct Session {
    hub: Arc<Hub>,
    state: AppState,
    conn: Arc<Conn>,
    principal: Principal,
    /// By channel name.
    subscriptions: HashMap<String, Subscribed>,
}

impl Session {
    async fn run(&mut self, mut incoming: Incoming) {
        let silence = self.hub.config.ping_interval + self.hub.config.pong_timeout;
        loop {
            let expiry = self.expiry();
            let next = tokio::select! {
                () = self.conn.closed.cancelled() => return,
                () = sleep_until(expiry) => {
                    return self.conn.close(CLOSE_UNAUTHORIZED, "token expired");
                }
                next = tokio::time::timeout(silence, incoming.next()) => next,
            };
            let message = match next {
                Err(_) => return self.conn.close(CLOSE_NO_PONG, "no pong"),
                Ok(None) => return,
                Ok(Some(Err(e))) => {
                    let text = e.to_string();
                    if text.contains("too long") || text.contains("Space limit") || text.contains("size") {
                        self.conn.close(CLOSE_TOO_BIG, "frame too large");
                    }
                    return;
                }
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => self.handle(text.as_str()).await,
                Message::Binary(_) => {
                    return self
                        .conn
                        .close(CLOSE_UNSUPPORTED, "binary frames are not supported; send JSON text");
                }
                Message::Close(_) => return,
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    }

    /// When the token runs out.
    fn expiry(&self) -> Option<tokio::time::Instant> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let left = self.principal.remaining(now, self.hub.jwt_leeway_s)?;
        Some(tokio::time::Instant::now() + Duration::from_secs(left))
    }

    /// The connection closed: subscriptions end, presence lingers for the grace period.
    fn end(&mut self) {
        self.conn.closed.cancel();
        let mut rooms = Vec::new();
        for (_, (sub, room, replay)) in self.subscriptions.drain() {
            replay.abort();
            self.hub.unsubscribe(&sub);
            rooms.extend(room);
        }
        self.hub.linger(&self.conn, &rooms);
        self.conn.queue.close();
    }

    fn send(&self, frame: Utf8Bytes) {
        self.conn.send(frame);
    }

    fn error(&self, id: Option<&Value>, code: &str, message: &str) {
        self.send(frames::error(id, code, message));
    }

    /// One text frame.
    async fn handle(&mut self, text: &str) {
        let request: Request = match serde_json::from_str(text) {
            Ok(request) => request,
            Err(e) => {
                let id = serde_json::from_str::<Value>(text).ok().and_then(|v| v.get("id").cloned());
                return self.error(id.as_ref(), "invalid-frame", &format!("not a request frame: {e}"));
            }
        };
        let id = request.id.clone();
        let id = id.as_ref();
        match request.op.as_str() {
            "ping" => self.send(reply("pong", id, |_| {})),
            "auth" => self.reauthenticate(id, request.token).await,
            "subscribe" => self.subscribe(id, request.channel, request.since_position).await,
            "unsubscribe" => self.unsubscribe(id, request.channel).await,
            "presence" => self.presence(id, request.room),
            "publish" => self.publish(id, request).await,
            op => self.error(id, "invalid-frame", &format!("unknown op {op:?}")),
        }
    }

    /// A new token for the same user extends the session.
    async fn reauthenticate(&mut self, id: Option<&Value>, token: Option<String>) {
        let Some(token) = token else { return self.error(id, "invalid-frame", "auth needs a \"token\"") };
        if !self.hub.auth.is_on() {
            return self.send(connected(id, &self.conn));
        }
        match self.hub.authenticate(&token).await {
            Ok(principal) if principal.user_id == self.principal.user_id => {
                self.principal = principal;
                self.send(connected(id, &self.conn));
            }
            Ok(_) => self.error(id, "forbidden", "a new token must be for the same user (sub)"),
            Err(e) => {
                self.error(id, "unauthorized", e.message());
                self.conn.close(CLOSE_UNAUTHORIZED, "unauthorized");
            }
        }
    }

    async fn subscribe(&mut self, id: Option<&Value>, name: Option<String>, since: Option<u64>) {
        let Some(name) = name else {
            return self.error(id, "invalid-frame", "subscribe needs a \"channel\"");
        };
        let channel = match Channel::parse(&name) {
            Ok(channel) => channel,
            Err(e) => return self.error(id, "invalid-channel", &e.0),
        };
        if !self.principal.may_subscribe(&name) {
            return self.error(id, "forbidden", &format!("this connection may not subscribe to {name}"));
        }
        if self.subscriptions.contains_key(&name) {
            return self.error(id, "already-subscribed", &format!("already subscribed to {name}"));
        }
        let max = self.hub.config.max_subscriptions;
        if self.subscriptions.len() >= max {
            return self.error(id, "too-many-subscriptions", &format!("at most {max} subscriptions"));
        }
        let head = *self.state.store.head().borrow();
        let window = self.hub.config.recovery_max_events;
        let (position, recovered) = match since {
            None => (head, true),
            Some(since) if since <= head && head - since <= window => (since, true),
            Some(_) => (head, false),
        };
        let sub_id = self.hub.next_subscription_id();
        let subscribed = reply("subscribed", id, |out| {
            out.extend_from_slice(b",\"channel\":");
            write_str(out, &name);
            out.extend_from_slice(b",\"position\":");
            write_u64(out, position);
            out.extend_from_slice(if recovered { b",\"recovered\":true" } else { b",\"recovered\":false" });
        });
        // Queued before any event of the subscription, which cannot overtake it.
        if self.conn.queue.push(subscribed, PriorityBody::Normal, Some(sub_id)).is_err() {
            return self.conn.close(super::hub::CLOSE_SLOW_CONSUMER, "slow consumer");
        }
        // A tenant's channels are its own: the hub keys them `acme/stream:order-1`, and its
        // rooms' presence `acme/r`.
        let tenant = self.principal.tenant.as_deref();
        let key = tenant.map_or_else(|| name.clone(), |tenant| format!("{tenant}/{name}"));
        let room = channel.room().map(|room| super::hub::room_key(tenant, room));
        let (sub, replay) = self.hub.subscribe(&self.conn, sub_id, key, channel, position).await;
        self.subscriptions.insert(name, (sub, room.clone(), replay));
        if let Some(room) = room {
            self.hub.enter(&self.conn, &room).await;
        }
    }

    async fn unsubscribe(&mut self, id: Option<&Value>, name: Option<String>) {
        let Some(name) = name else {
            return self.error(id, "invalid-frame", "unsubscribe needs a \"channel\"");
        };
        let Some((sub, room, replay)) = self.subscriptions.remove(&name) else {
            return self.error(id, "not-subscribed", &format!("not subscribed to {name}"));
        };
        replay.abort();
        self.hub.unsubscribe(&sub);
        if let Some(room) = room {
            self.hub.exit(&self.conn, &room).await;
        }
        self.send(reply("ok", id, |_| {}));
    }

    fn presence(&self, id: Option<&Value>, room: Option<String>) {
        let Some(room) = room else { return self.error(id, "invalid-frame", "presence needs a \"room\"") };
        if let Err(e) = check_room(&room) {
            return self.error(id, "invalid-channel", &e);
        }
        if !self.principal.may_subscribe(&format!("room:{room}")) {
            return self.error(id, "forbidden", &format!("this connection may not see room:{room}"));
        }
        let snapshot = self.hub.snapshot(&super::hub::room_key(self.principal.tenant.as_deref(), &room));
        let Ok(Value::Object(fields)) = serde_json::to_value(&snapshot) else { return };
        self.send(reply("presence", id, |out| {
            for (key, value) in &fields {
                out.push(b',');
                write_str(out, key);
                out.push(b':');
                let _ = serde_json::to_writer(&mut *out, value);
            }
        }));
    }

    async fn publish(&self, id: Option<&Value>, request: Request) {
        let Some(name) = request.channel else {
            return self.error(id, "invalid-frame", "publish needs a \"channel\"");
        };
        let Some(event_type) = request.event_type else {
            return self.error(id, "invalid-frame", "publish needs a \"type\"");
        };
        let Some(data) = request.data else {
            return self.error(id, "invalid-frame", "publish needs \"data\"");
        };
        let channel = match Channel::parse(&name) {
            Ok(channel) => channel,
            Err(e) => return self.error(id, "invalid-channel", &e.0),
        };
        let persistent = request.persistent.unwrap_or(false);
        if !self.principal.may_publish(&name, persistent) {
            let what = if persistent { "a persistent publish to" } else { "a publish to" };
            return self.error(id, "forbidden", &format!("this connection may not send {what} {name}"));
        }
        let mut targets = Targets::default();
        let mut stream: Option<StreamName> = None;
        match channel {
            Channel::Room(room) => targets.rooms.push(room),
            Channel::User(user) => targets.users.push(user),
            Channel::Stream(name) => {
                targets.streams.push(name.as_str().to_owned());
                stream = Some(name);
            }
            Channel::Type(_) => return self.error(id, "forbidden", "nothing is published to type: channels"),
        }
        let source = PublishSourceBody { user_id: self.conn.user_id.clone(), workspace_id: None };
        let publish = Publish::new(
            targets,
            request.exclude_users.unwrap_or_default(),
            &event_type,
            data,
            source,
            request.priority.unwrap_or_default(),
            persistent,
            stream,
            self.hub.max_event_bytes,
        );
        let publish = match publish {
            Ok(publish) => publish.in_tenant(self.principal.tenant.clone()),
            Err(e) if e.kind() == ProblemType::PayloadTooLarge => {
                return self.error(id, "payload-too-large", e.detail());
            }
            Err(e) => return self.error(id, "invalid-frame", e.detail()),
        };
        if !persistent {
            let message_id = self.hub.publish_ephemeral(publish).await;
            return self.send(reply("ok", id, |out| {
                out.extend_from_slice(b",\"message_id\":");
                write_str(out, &message_id);
            }));
        }
        match self.hub.publish_persistent(publish).await {
            Ok((event_id, _, position)) => self.send(reply("ok", id, |out| {
                out.extend_from_slice(b",\"event_id\":");
                write_uuid(out, event_id);
                out.extend_from_slice(b",\"position\":");
                write_u64(out, position);
            })),
            Err(e) => {
                tracing::warn!(error = %e, "a persistent WebSocket publish failed");
                self.error(id, "internal", &format!("the publish was not stored: {e}"));
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
