//! The node's hub: every subscription of every connection, by channel, and the one reader
//! of the log that fans each new event out to them.
//!
//! One live reader per node (not one per subscription) reads each committed event once,
//! works out its channels (`route`) and puts one shared frame per channel on the queues of
//! that channel's subscribers, without ever waiting: a full queue closes its connection as
//! a slow consumer. A new subscription first replays from the store what it missed, while
//! the live reader keeps what arrives meanwhile aside for it; the replay ends by handing
//! over at an exact position, so there is no gap and no duplicate.
//!
//! What is not in the log crosses nodes on the store's cluster bus: ephemeral messages and
//! presence (each node's own connections, with heartbeats so a dead node's users leave).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use bifrost_api::PriorityBody;
use bifrost_core::cluster::ClusterBus;
use bifrost_core::subscription::subscribe as subscribe_log;
use bifrost_core::{
    DurableStore, EventId, ExpectedVersion, LogFilter, Metadata, NewEvent, RecordedEvent, SubscribeFrom,
    TypePattern,
};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::auth::Principal;
use super::bridges::Bridges;
use super::channel::Channel;
use super::config::RealtimeConfig;
use super::frames;
use super::presence::{Change, Presence, UserState};
use super::publish::{Ephemeral, Publish};
use super::queue::{OutQueue, Refused};
use super::route::{Route, routes};
use crate::auth::{Auth, Scope, Scopes};

/// Why a tenant's credential cannot use realtime bridging rules: they are the default
/// tenant's.
pub(crate) const TENANTS_REFUSED: &str = "realtime bridging rules serve the default tenant only; \
     a tenant publishes, subscribes and sees presence in its own channels";

/// A room key (`acme/r` for a tenant's room; room names have no `/`).
pub(crate) fn room_key(tenant: Option<&str>, room: &str) -> String {
    match tenant {
        Some(tenant) => format!("{tenant}/{room}"),
        None => room.to_owned(),
    }
}

/// A room key as its tenant names the room.
fn local_room(room: &str) -> &str {
    room.split_once('/').map_or(room, |(_, local)| local)
}

/// The bus topic of real-time traffic.
const TOPIC: &str = "realtime";
/// Events read per replay page.
const REPLAY_PAGE: usize = 500;
/// How often other nodes' changes to the bridges are picked up.
const BRIDGE_RELOAD: Duration = Duration::from_secs(1);

pub(crate) const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// One WebSocket connection, as the hub sees it.
pub(crate) struct Conn {
    pub(crate) id: String,
    pub(crate) user_id: Option<String>,
    /// Shown in presence.
    pub(crate) info: Value,
    /// In presence of the rooms it subscribes to (not anonymous, has a user).
    pub(crate) in_presence: bool,
    pub(crate) queue: OutQueue,
    /// Why the connection closes (the first reason wins).
    closing: Mutex<Option<(u16, &'static str)>>,
    pub(crate) closed: CancellationToken,
}

impl Conn {
    pub(crate) fn new(
        user_id: Option<String>,
        info: Value,
        in_presence: bool,
        queue_size: usize,
        closed: CancellationToken,
    ) -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            user_id,
            info,
            in_presence,
            queue: OutQueue::new(queue_size),
            closing: Mutex::new(None),
            closed,
        }
    }

    /// Queues a reply or a push; a full queue closes the connection as a slow consumer.
    pub(crate) fn send(&self, frame: Utf8Bytes) {
        self.offer(frame, PriorityBody::Normal, None);
    }

    fn offer(&self, frame: Utf8Bytes, priority: PriorityBody, subscription: Option<u64>) {
        if let Err(Refused::Full) = self.queue.push(frame, priority, subscription) {
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer");
        }
    }

    pub(crate) fn close(&self, code: u16, reason: &'static str) {
        if let Ok(mut closing) = self.closing.lock() {
            closing.get_or_insert((code, reason));
        }
        self.closed.cancel();
        self.queue.close();
    }

    pub(crate) fn close_reason(&self) -> Option<(u16, &'static str)> {
        self.closing.lock().ok().and_then(|c| *c)
    }

    fn excluded(&self, exclude: &[String]) -> bool {
        self.user_id.as_ref().is_some_and(|user| exclude.contains(user))
    }
}

enum SubState {
    /// Replaying from the store; the live reader keeps new frames aside.
    CatchingUp { pending: Vec<(u64, Utf8Bytes, PriorityBody)>, overflowed: bool },
    /// Fed by the live reader, past `last`.
    Live { last: u64 },
}

/// One subscription of one connection.
pub(crate) struct Sub {
    pub(crate) id: u64,
    pub(crate) channel: String,
    pub(crate) conn: Arc<Conn>,
    state: Mutex<SubState>,
}

impl Sub {
    /// A live event at `position`.
    fn offer(&self, position: u64, frame: &Utf8Bytes, priority: PriorityBody, cap: usize) {
        let Ok(mut state) = self.state.lock() else { return };
        match &mut *state {
            SubState::CatchingUp { pending, overflowed } => {
                if pending.len() < cap {
                    pending.push((position, frame.clone(), priority));
                } else {
                    // The replay reads these from the store instead.
                    pending.clear();
                    *overflowed = true;
                }
            }
            SubState::Live { last } => {
                if position > *last {
                    *last = position;
                    self.conn.offer(frame.clone(), priority, Some(self.id));
                }
            }
        }
    }
}

#[derive(Default)]
struct Subscriptions {
    by_channel: HashMap<String, Vec<Arc<Sub>>>,
    /// The `type:` channels that have subscribers.
    types: HashMap<String, TypePattern>,
    /// How many `room:` and `user:` channels have subscribers: with none, bridging rules
    /// (which only name rooms and users) are not rendered at all.
    targeted: usize,
}

fn is_targeted(channel: &str) -> bool {
    channel.starts_with("room:") || channel.starts_with("user:")
}

/// Every this many heartbeats a node tells the others its whole local presence again.
const PRESENCE_REFRESH_HEARTBEATS: u64 = 5;

/// What nodes tell each other. Externally tagged: an internally tagged enum would buffer
/// its fields, and a buffered `RawValue` (a message's `data`) cannot be read back.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BusMessage {
    Message { node: String, message: Ephemeral },
    Presence { node: String, seq: u64, state: UserState },
    Alive { node: String },
    Hello { node: String },
}

/// Why a connection's credential was refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// No valid credential (401; close 4001).
    Unauthorized(String),
    /// A valid credential without the `subscribe` scope (403).
    Forbidden(String),
}

impl Refusal {
    pub(crate) fn message(&self) -> &str {
        match self {
            Self::Unauthorized(m) | Self::Forbidden(m) => m,
        }
    }
}

/// Real-time delivery of one node.
pub(crate) struct Hub {
    store: Arc<dyn DurableStore>,
    pub(crate) config: RealtimeConfig,
    pub(crate) max_event_bytes: usize,
    node: String,
    /// The server's credentials: tokens of connections are checked with them.
    pub(crate) auth: Arc<Auth>,
    /// Seconds of clock skew allowed on a token's `exp`.
    pub(crate) jwt_leeway_s: u64,
    subs: RwLock<Subscriptions>,
    next_id: AtomicU64,
    started: tokio::sync::OnceCell<()>,
    cluster_started: tokio::sync::OnceCell<()>,
    pub(crate) bridges: Bridges,
    presence: Mutex<Presence>,
    presence_seq: AtomicU64,
    bus: Option<Arc<dyn ClusterBus>>,
    /// How often this node tells the others it is alive.
    heartbeat: Duration,
    /// A node not heard from for this long is gone, and its users leave.
    node_timeout: Duration,
    shutdown: CancellationToken,
}

impl Hub {
    pub(crate) fn new(
        store: Arc<dyn DurableStore>,
        server: &crate::ServerConfig,
        auth: Arc<Auth>,
        shutdown: CancellationToken,
    ) -> Self {
        let config = server.realtime.clone();
        let max_event_bytes = server.max_event_bytes;
        let node = server.cluster.node_id.clone();
        let heartbeat = server.cluster.heartbeat;
        let node_timeout = server.cluster.lease_timeout;
        Self {
            bus: store.cluster_bus(),
            bridges: Bridges::new(Arc::clone(&store)),
            store,
            config,
            max_event_bytes,
            presence: Mutex::new(Presence::new(node.clone())),
            node,
            auth,
            jwt_leeway_s: server.auth.jwt.leeway_s,
            subs: RwLock::default(),
            next_id: AtomicU64::new(1),
            started: tokio::sync::OnceCell::new(),
            cluster_started: tokio::sync::OnceCell::new(),
            presence_seq: AtomicU64::new(1),
            heartbeat,
            node_timeout,
            shutdown,
        }
    }

    /// The rights of a connection that presents `token`: a JWT's claims (`sub` required,
    /// `channels`, `scope`, `info`), or an API key's or the admin key's scopes (`subscribe`
    /// lets it subscribe to every channel its read restriction allows). Auth off: admin.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Principal, Refusal> {
        if !self.auth.is_on() {
            return Ok(Principal::dev(None));
        }
        let authenticated =
            self.auth.authenticate(token, false).await.map_err(|e| Refusal::Unauthorized(e.0))?;
        let caller = authenticated.principal;
        if let Some(claims) = &authenticated.claims {
            // A connection token of the WebSocket contract (`sub`, `channels`, maybe `append`
            // or `admin`) connects; a token whose scopes are all for other routes does not.
            let scopes = caller.scopes;
            if scopes != Scopes::default()
                && ![Scope::Subscribe, Scope::Append].iter().any(|s| scopes.allows(*s))
            {
                return Err(Refusal::Forbidden("this token has no subscribe scope".to_owned()));
            }
            return Principal::from_claims(&claims.map, claims.expires_at)
                .map(|p| Principal { tenant: caller.tenant.clone(), ..p })
                .map_err(|e| Refusal::Unauthorized(e.0));
        }
        if !caller.scopes.allows(Scope::Subscribe) {
            return Err(Refusal::Forbidden("this credential has no subscribe scope".to_owned()));
        }
        let channels = match &caller.restrict.read {
            // type: channels would carry events of streams it may not read.
            Some(rule) => {
                let mut channels = vec!["room:*".to_owned()];
                channels.extend(rule.channel_grants());
                channels
            }
            None => vec!["room:*".to_owned(), "stream:*".to_owned(), "type:*".to_owned()],
        };
        Ok(Principal {
            user_id: Some(caller.actor.id.clone().unwrap_or_else(|| "admin".to_owned())),
            admin: caller.scopes.is_admin(),
            append: caller.scopes.allows(Scope::Append),
            channels,
            info: None,
            expires_at: None,
            anonymous: false,
            tenant: caller.tenant.clone(),
        })
    }

    /// Starts the node's presence work once: the bus receiver, which asks the other nodes
    /// for their presence, and the ticker (presence grace, heartbeats, bridge reloads). The
    /// server starts it with the node, so presence is whole before the first client comes.
    pub(crate) async fn start_cluster(self: &Arc<Self>) {
        self.cluster_started
            .get_or_init(|| async {
                if let Err(e) = self.bridges.reload().await {
                    tracing::warn!(error = %e, "cannot load the realtime bridges; retrying in the background");
                }
                if let Some(bus) = &self.bus {
                    let received = bus.subscribe(TOPIC);
                    tokio::spawn(Arc::clone(self).receive(received));
                    self.tell(&BusMessage::Hello { node: self.node.clone() }).await;
                }
                tokio::spawn(Arc::clone(self).tick());
            })
            .await;
    }

    /// Starts the live reader of the log once, at the first subscription (a node without
    /// WebSocket clients does not read its log for them).
    pub(crate) async fn start(self: &Arc<Self>) {
        self.start_cluster().await;
        self.started
            .get_or_init(|| async {
                let head = *self.store.head().borrow();
                tokio::spawn(Arc::clone(self).live(head));
            })
            .await;
    }

    // -----------------------------------------------------------------------------------
    // Subscriptions

    /// Registers a subscription to `channel` that starts after `from`: it replays what it
    /// missed (in a task it returns) and then goes live.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        id: u64,
        name: String,
        channel: Channel,
        from: u64,
    ) -> (Arc<Sub>, tokio::task::JoinHandle<()>) {
        self.start().await;
        let sub = Arc::new(Sub {
            id,
            channel: name.clone(),
            conn: Arc::clone(conn),
            state: Mutex::new(SubState::CatchingUp { pending: Vec::new(), overflowed: false }),
        });
        if let Ok(mut subs) = self.subs.write() {
            if let Channel::Type(pattern) = &channel {
                subs.types.insert(name.clone(), pattern.clone());
            }
            let list = subs.by_channel.entry(name).or_default();
            let new_channel = list.is_empty();
            list.push(Arc::clone(&sub));
            if new_channel && is_targeted(&sub.channel) {
                subs.targeted += 1;
            }
        }
        let replay = tokio::spawn(Arc::clone(self).replay(Arc::clone(&sub), channel, from));
        (sub, replay)
    }

    /// A fresh subscription id (frames of one subscription keep their order in a queue).
    pub(crate) fn next_subscription_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn unsubscribe(&self, sub: &Arc<Sub>) {
        let Ok(mut subs) = self.subs.write() else { return };
        let emptied = match subs.by_channel.get_mut(&sub.channel) {
            Some(list) => {
                list.retain(|s| !Arc::ptr_eq(s, sub));
                list.is_empty()
            }
            None => false,
        };
        if emptied {
            subs.by_channel.remove(&sub.channel);
            subs.types.remove(&sub.channel);
            if is_targeted(&sub.channel) {
                subs.targeted -= 1;
            }
        }
    }

    /// The subscription's events after `from` from the store, then the hand-over to live.
    async fn replay(self: Arc<Self>, sub: Arc<Sub>, channel: Channel, from: u64) {
        let conn = &sub.conn;
        let filter = match &channel {
            Channel::Type(pattern) => LogFilter { types: vec![pattern.clone()], ..LogFilter::default() },
            _ => LogFilter::default(),
        };
        let type_channel = match &channel {
            Channel::Type(pattern) => Some((sub.channel.as_str(), pattern)),
            _ => None,
        };
        let patience = self.config.slow_consumer_timeout;
        let mut cursor = from;
        loop {
            let read = tokio::select! {
                () = conn.closed.cancelled() => return,
                read = self.store.read_all(cursor, &filter, REPLAY_PAGE) => read,
            };
            let slice = match read {
                Ok(slice) => slice,
                Err(e) => {
                    tracing::warn!(channel = %sub.channel, error = %e, "a WebSocket replay failed");
                    conn.send(frames::error(None, "internal", "the subscription failed; subscribe again"));
                    return;
                }
            };
            if slice.events.is_empty() {
                // At the end of the log: hand over to the live reader.
                let Ok(mut state) = sub.state.lock() else { return };
                match std::mem::replace(&mut *state, SubState::Live { last: cursor }) {
                    SubState::CatchingUp { overflowed: true, .. } => {
                        *state = SubState::CatchingUp { pending: Vec::new(), overflowed: false };
                        continue;
                    }
                    SubState::CatchingUp { pending, overflowed: false } => {
                        for (position, frame, priority) in pending {
                            if position > cursor {
                                cursor = position;
                                conn.offer(frame, priority, Some(sub.id));
                            }
                        }
                        *state = SubState::Live { last: cursor };
                    }
                    SubState::Live { last } => *state = SubState::Live { last },
                }
                return;
            }
            let bridges = self.bridges.current();
            for event in &slice.events {
                let wanted = |c: &str| c == sub.channel;
                for route in routes(event, type_channel, &bridges, &wanted) {
                    if conn.excluded(&route.exclude) {
                        continue;
                    }
                    let frame =
                        frames::event(&route.channel, event, route.priority, route.integration.as_deref());
                    match conn.queue.push_waiting(frame, route.priority, Some(sub.id), patience).await {
                        Ok(()) => {}
                        Err(Refused::Full) => return conn.close(CLOSE_SLOW_CONSUMER, "slow consumer"),
                        Err(Refused::Closed) => return,
                    }
                }
                cursor = cursor.max(event.position);
            }
            cursor = cursor.max(slice.next_position);
        }
    }

    /// The live reader: every event committed after `from`, once, to every subscriber.
    async fn live(self: Arc<Self>, from: u64) {
        let mut last = from;
        loop {
            let mut events =
                subscribe_log(Arc::clone(&self.store), SubscribeFrom::After(last), LogFilter::default());
            loop {
                let next = tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    next = events.next() => next,
                };
                match next {
                    Some(Ok(event)) => {
                        last = event.position;
                        self.dispatch_event(&event);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the WebSocket live reader failed; resuming");
                        break;
                    }
                    None => return,
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// One committed event to its channels' subscribers.
    fn dispatch_event(&self, event: &RecordedEvent) {
        let Ok(subs) = self.subs.read() else { return };
        if subs.by_channel.is_empty() {
            return;
        }
        let bridges = if subs.targeted > 0 { self.bridges.current() } else { Arc::default() };
        let types = subs.types.iter().map(|(name, pattern)| (name.as_str(), pattern));
        let wanted = |c: &str| subs.by_channel.contains_key(c);
        let cap = self.config.queue_size;
        let mut delivered = false;
        for Route { channel, priority, exclude, integration } in routes(event, types, &bridges, &wanted) {
            let Some(list) = subs.by_channel.get(&channel) else { continue };
            let frame = frames::event(&channel, event, priority, integration.as_deref());
            for sub in list {
                if !sub.conn.excluded(&exclude) {
                    sub.offer(event.position, &frame, priority, cap);
                    delivered = true;
                }
            }
        }
        if delivered {
            crate::metrics::delivered_ws(event.recorded_at);
        }
    }

    /// An ephemeral message to this node's subscribers of its channels.
    fn dispatch_message(&self, message: &Ephemeral) {
        let Ok(subs) = self.subs.read() else { return };
        for channel in &message.channels {
            let Some(list) = subs.by_channel.get(channel) else { continue };
            let frame = message.frame(channel);
            for sub in list {
                if !sub.conn.excluded(&message.exclude_users) {
                    sub.conn.offer(frame.clone(), message.priority, Some(sub.id));
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Publishes

    /// Sends an ephemeral message to every node's subscribers; returns its id.
    pub(crate) async fn publish_ephemeral(self: &Arc<Self>, publish: Publish) -> String {
        self.start_cluster().await;
        let message = publish.into_ephemeral();
        let id = message.message_id.clone();
        self.dispatch_message(&message);
        self.tell(&BusMessage::Message { node: self.node.clone(), message }).await;
        crate::metrics::realtime_published(false);
        id
    }

    /// Stores a persistent publish as one event; the live readers of every node deliver it.
    pub(crate) async fn publish_persistent(
        &self,
        publish: Publish,
    ) -> bifrost_core::Result<(EventId, bifrost_core::StreamName, u64)> {
        let meta = serde_json::to_value(publish.meta())
            .map_err(|e| bifrost_core::Error::Internal(format!("realtime metadata: {e}")))?;
        let tenant = publish.tenant.as_deref();
        let mut metadata = Metadata {
            user_id: publish.source.user_id.clone(),
            tenant_id: publish.tenant.clone(),
            ..Metadata::default()
        };
        metadata.extra.insert("realtime".to_owned(), meta);
        let data = Bytes::copy_from_slice(publish.data.get().as_bytes());
        let event = NewEvent::new(publish.event_type.clone(), data).with_metadata(metadata);
        // A tenant's publish is its tenant's event: in its stream, its id as it sees it.
        let id = tenant.map_or(event.id, |t| bifrost_core::tenant::mask_id(t, event.id));
        let stored = bifrost_core::StreamName::in_tenant(tenant, &publish.stream);
        let result = self.store.append(stored, ExpectedVersion::Any, vec![event]).await?;
        crate::metrics::realtime_published(true);
        Ok((id, publish.stream.clone(), result.first_position))
    }

    // -----------------------------------------------------------------------------------
    // Presence

    /// `conn` subscribed to `room`.
    pub(crate) async fn enter(&self, conn: &Conn, room: &str) {
        let Some(user) = conn.user_id.as_deref().filter(|_| conn.in_presence) else { return };
        let change = self.presence.lock().ok().and_then(|mut p| p.enter(room, user, &conn.info, &conn.id));
        if let Some(change) = change {
            self.announce(&change, Some(&conn.id));
        }
        self.tell_presence(room, user).await;
    }

    /// `conn` unsubscribed from `room`: it leaves at once.
    pub(crate) async fn exit(&self, conn: &Conn, room: &str) {
        let Some(user) = conn.user_id.as_deref().filter(|_| conn.in_presence) else { return };
        let change = self.presence.lock().ok().and_then(|mut p| p.exit(room, user, &conn.id));
        if let Some(change) = change {
            self.announce(&change, Some(&conn.id));
        }
        self.tell_presence(room, user).await;
    }

    /// `conn` closed: it stays in its rooms for the grace period.
    pub(crate) fn linger(&self, conn: &Conn, rooms: &[String]) {
        let Some(user) = conn.user_id.as_deref().filter(|_| conn.in_presence) else { return };
        if let Ok(mut presence) = self.presence.lock() {
            for room in rooms {
                presence.linger(room, user, &conn.id, self.config.presence_grace);
            }
        }
    }

    /// Who is in `room` (a tenant's room keyed `acme/r`), the room named as its tenant does.
    pub(crate) fn snapshot(&self, room: &str) -> bifrost_api::PresenceBody {
        let mut body = self.snapshot_of(room);
        body.room = local_room(room).to_owned();
        body
    }

    fn snapshot_of(&self, room: &str) -> bifrost_api::PresenceBody {
        self.presence.lock().map(|p| p.snapshot(room)).unwrap_or_else(|_| bifrost_api::PresenceBody {
            room: room.to_owned(),
            users: Vec::new(),
            user_count: 0,
            connection_count: 0,
        })
    }

    /// `join`/`leave` to this node's subscribers of the room, but `except` the connection
    /// that caused it.
    fn announce(&self, change: &Change, except: Option<&str>) {
        // A tenant's room is keyed `acme/r` (room names have no `/`): its channel is
        // `acme/room:r`, and its frames name the room as the tenant does.
        let (room, frame) = match change {
            Change::Joined { room, user, info } => (room, frames::join(local_room(room), user, info)),
            Change::Left { room, user } => (room, frames::leave(local_room(room), user)),
        };
        let Ok(subs) = self.subs.read() else { return };
        let channel = match room.split_once('/') {
            Some((tenant, local)) => format!("{tenant}/room:{local}"),
            None => format!("room:{room}"),
        };
        let Some(list) = subs.by_channel.get(&channel) else { return };
        for sub in list {
            if except != Some(sub.conn.id.as_str()) {
                sub.conn.offer(frame.clone(), PriorityBody::Normal, Some(sub.id));
            }
        }
    }

    /// Tells the other nodes this node's connections of `user` in `room`.
    async fn tell_presence(&self, room: &str, user: &str) {
        if self.bus.is_none() {
            return;
        }
        let Ok(state) = self.presence.lock().map(|p| p.local_state(room, user)) else { return };
        let seq = self.presence_seq.fetch_add(1, Ordering::Relaxed);
        self.tell(&BusMessage::Presence { node: self.node.clone(), seq, state }).await;
    }

    // -----------------------------------------------------------------------------------
    // The cluster bus

    async fn tell(&self, message: &BusMessage) {
        let Some(bus) = &self.bus else { return };
        let payload = match serde_json::to_vec(message) {
            Ok(payload) => Bytes::from(payload),
            Err(e) => return tracing::warn!(error = %e, "cannot encode a realtime bus message"),
        };
        if let Err(e) = bus.publish(TOPIC, payload).await {
            tracing::warn!(error = %e, "cannot reach the other nodes on the cluster bus");
        }
    }

    async fn receive(self: Arc<Self>, mut received: tokio::sync::broadcast::Receiver<Bytes>) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let payload = tokio::select! {
                () = self.shutdown.cancelled() => return,
                payload = received.recv() => match payload {
                    Ok(payload) => payload,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the realtime bus receiver fell behind");
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            let message: BusMessage = match serde_json::from_slice(&payload) {
                Ok(message) => message,
                Err(e) => {
                    tracing::debug!(error = %e, "an unreadable realtime bus message");
                    continue;
                }
            };
            match message {
                BusMessage::Message { node, message } if node != self.node => self.dispatch_message(&message),
                BusMessage::Presence { node, seq, state } if node != self.node => {
                    let change =
                        self.presence.lock().ok().and_then(|mut p| p.apply_remote(&node, seq, state));
                    if let Some(change) = change {
                        self.announce(&change, None);
                    }
                }
                BusMessage::Alive { node } if node != self.node => {
                    if let Ok(mut p) = self.presence.lock() {
                        p.heard_from(&node);
                    }
                }
                BusMessage::Hello { node } if node != self.node => {
                    // A node (re)started: it needs everyone's presence.
                    if let Ok(mut p) = self.presence.lock() {
                        p.heard_from(&node);
                    }
                    let pairs = self.presence.lock().map(|p| p.local_pairs()).unwrap_or_default();
                    for (room, user) in pairs {
                        self.tell_presence(&room, &user).await;
                    }
                }
                _ => {}
            }
        }
    }

    /// Presence grace, heartbeats, silent nodes and bridge reloads.
    async fn tick(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heartbeat = Instant::now();
        let mut last_reload = Instant::now();
        let mut heartbeats: u64 = 0;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let (changes, touched) = self.presence.lock().map(|mut p| p.expire(now)).unwrap_or_default();
            for change in &changes {
                self.announce(change, None);
            }
            for (room, user) in touched {
                self.tell_presence(&room, &user).await;
            }
            if self.bus.is_none() {
                continue;
            }
            if now.duration_since(last_heartbeat) >= self.heartbeat {
                last_heartbeat = now;
                heartbeats += 1;
                self.tell(&BusMessage::Alive { node: self.node.clone() }).await;
                // Anti-entropy: a presence message another node missed (it was starting, or
                // the bus dropped it) is repaired by the next refresh, not left for ever.
                if heartbeats.is_multiple_of(PRESENCE_REFRESH_HEARTBEATS) {
                    let pairs = self.presence.lock().map(|p| p.local_pairs()).unwrap_or_default();
                    for (room, user) in pairs {
                        self.tell_presence(&room, &user).await;
                    }
                }
                let gone = self
                    .presence
                    .lock()
                    .map(|mut p| p.forget_silent(self.node_timeout, now))
                    .unwrap_or_default();
                for change in &gone {
                    self.announce(change, None);
                }
            }
            if now.duration_since(last_reload) >= BRIDGE_RELOAD {
                last_reload = now;
                if let Err(e) = self.bridges.reload().await {
                    tracing::warn!(error = %e, "cannot reload the realtime bridges");
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bifrost_api::PublishSourceBody;
    use serde_json::json;

    use super::*;

    #[test]
    fn bus_messages_come_back_as_they_were_sent() {
        let message = Ephemeral {
            channels: vec!["room:r".into()],
            exclude_users: vec!["u-2".into()],
            message_id: "m-1".into(),
            event_type: "chat.typing".into(),
            data: serde_json::value::RawValue::from_string(r#"{"on": true}"#.into()).unwrap(),
            source: PublishSourceBody { user_id: Some("u-1".into()), workspace_id: None },
            priority: PriorityBody::High,
            timestamp: "2026-12-03T10:00:00Z".into(),
        };
        let sent = serde_json::to_vec(&BusMessage::Message { node: "n1".into(), message }).unwrap();
        let BusMessage::Message { node, message } = serde_json::from_slice(&sent).unwrap() else {
            panic!("not a message")
        };
        assert_eq!(node, "n1");
        assert_eq!(message.data.get(), r#"{"on": true}"#, "data byte for byte");
        assert_eq!((message.priority, message.exclude_users), (PriorityBody::High, vec!["u-2".to_owned()]));
        let hello = serde_json::to_value(BusMessage::Hello { node: "n2".into() }).unwrap();
        assert_eq!(hello, json!({"hello": {"node": "n2"}}));
    }
}
