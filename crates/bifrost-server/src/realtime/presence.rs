//! Who is in which room, over every node.
//!
//! A user is in a room while one of its connections subscribes to it. Each node is the
//! authority on its own connections and tells the others, per room and user, the full list
//! of its connections there (a state, not a delta, so a message that arrives twice or late
//! changes nothing: each carries the node's sequence number). A closed connection lingers
//! for the grace period, so a reconnect within it gives neither `leave` nor `join`. A node
//! that stops sending heartbeats is forgotten, and its users leave.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bifrost_api::{PresenceBody, PresenceConnectionBody, PresenceUserBody};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A user entering or leaving a room (as a whole: first connection in, last one out).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Change {
    Joined { room: String, user: String, info: Value },
    Left { room: String, user: String },
}

/// One node's connections of one user in one room, as sent between nodes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct UserState {
    pub(crate) room: String,
    pub(crate) user_id: String,
    pub(crate) info: Value,
    pub(crate) connections: Vec<ConnectionState>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ConnectionState {
    pub(crate) connection_id: String,
    pub(crate) joined_at: String,
}

#[derive(Clone, Debug)]
struct Connection {
    joined_at: String,
    /// Closed; stays until this instant (local connections only).
    lingering_until: Option<Instant>,
}

#[derive(Default)]
struct User {
    info: Value,
    /// By (node, connection id).
    connections: BTreeMap<(String, String), Connection>,
}

#[derive(Default)]
struct Room {
    users: BTreeMap<String, User>,
}

/// The presence of every room this node knows of.
pub(crate) struct Presence {
    node: String,
    rooms: HashMap<String, Room>,
    /// The last sequence number applied per (node, room, user).
    applied: HashMap<(String, String, String), u64>,
    /// When each other node was last heard from.
    heard: HashMap<String, Instant>,
}

impl Presence {
    pub(crate) fn new(node: String) -> Self {
        Self { node, rooms: HashMap::new(), applied: HashMap::new(), heard: HashMap::new() }
    }

    fn present(&self, room: &str, user: &str) -> bool {
        self.rooms.get(room).and_then(|r| r.users.get(user)).is_some_and(|u| !u.connections.is_empty())
    }

    /// Runs `change` on the room and tells what it did to the user's presence.
    fn changing(&mut self, room: &str, user: &str, change: impl FnOnce(&mut Self)) -> Option<Change> {
        let before = self.present(room, user);
        change(self);
        let after = self.present(room, user);
        // Drop what is empty.
        if let Some(r) = self.rooms.get_mut(room) {
            if r.users.get(user).is_some_and(|u| u.connections.is_empty()) {
                r.users.remove(user);
            }
            if r.users.is_empty() {
                self.rooms.remove(room);
            }
        }
        match (before, after) {
            (false, true) => {
                let info = self
                    .rooms
                    .get(room)
                    .and_then(|r| r.users.get(user))
                    .map_or(Value::Null, |u| u.info.clone());
                Some(Change::Joined { room: room.to_owned(), user: user.to_owned(), info })
            }
            (true, false) => Some(Change::Left { room: room.to_owned(), user: user.to_owned() }),
            _ => None,
        }
    }

    /// A local connection subscribed to `room`.
    pub(crate) fn enter(&mut self, room: &str, user: &str, info: &Value, connection: &str) -> Option<Change> {
        let key = (self.node.clone(), connection.to_owned());
        let joined_at = bifrost_core::Timestamp::now().to_string();
        self.changing(room, user, |p| {
            let entry = p.rooms.entry(room.to_owned()).or_default().users.entry(user.to_owned()).or_default();
            entry.info = info.clone();
            entry.connections.insert(key, Connection { joined_at, lingering_until: None });
        })
    }

    /// A local connection unsubscribed from `room`: it leaves at once.
    pub(crate) fn exit(&mut self, room: &str, user: &str, connection: &str) -> Option<Change> {
        let key = (self.node.clone(), connection.to_owned());
        self.changing(room, user, |p| {
            if let Some(u) = p.rooms.get_mut(room).and_then(|r| r.users.get_mut(user)) {
                u.connections.remove(&key);
            }
        })
    }

    /// A local connection closed: it stays in `room` for `grace`.
    pub(crate) fn linger(&mut self, room: &str, user: &str, connection: &str, grace: Duration) {
        let key = (self.node.clone(), connection.to_owned());
        if let Some(c) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.users.get_mut(user))
            .and_then(|u| u.connections.get_mut(&key))
        {
            c.lingering_until = Some(Instant::now() + grace);
        }
    }

    /// Removes the local connections whose grace is over; returns what changed and the
    /// (room, user) pairs whose state others must hear of.
    pub(crate) fn expire(&mut self, now: Instant) -> (Vec<Change>, Vec<(String, String)>) {
        let mut due = Vec::new();
        for (room_name, room) in &self.rooms {
            for (user_name, user) in &room.users {
                for ((node, connection), c) in &user.connections {
                    if *node == self.node && c.lingering_until.is_some_and(|t| t <= now) {
                        due.push((room_name.clone(), user_name.clone(), connection.clone()));
                    }
                }
            }
        }
        let mut changes = Vec::new();
        let mut touched = Vec::new();
        for (room, user, connection) in due {
            let key = (self.node.clone(), connection);
            let change = self.changing(&room, &user, |p| {
                if let Some(u) = p.rooms.get_mut(&room).and_then(|r| r.users.get_mut(&user)) {
                    u.connections.remove(&key);
                }
            });
            changes.extend(change);
            if !touched.contains(&(room.clone(), user.clone())) {
                touched.push((room, user));
            }
        }
        (changes, touched)
    }

    /// This node's connections of `user` in `room`, as others are told.
    pub(crate) fn local_state(&self, room: &str, user: &str) -> UserState {
        let found = self.rooms.get(room).and_then(|r| r.users.get(user));
        UserState {
            room: room.to_owned(),
            user_id: user.to_owned(),
            info: found.map_or(Value::Null, |u| u.info.clone()),
            connections: found
                .map(|u| {
                    u.connections
                        .iter()
                        .filter(|((node, _), _)| *node == self.node)
                        .map(|((_, id), c)| ConnectionState {
                            connection_id: id.clone(),
                            joined_at: c.joined_at.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Every (room, user) where this node has connections.
    pub(crate) fn local_pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (room_name, room) in &self.rooms {
            for (user_name, user) in &room.users {
                if user.connections.keys().any(|(node, _)| *node == self.node) {
                    out.push((room_name.clone(), user_name.clone()));
                }
            }
        }
        out
    }

    /// Another node's state of one user in one room.
    pub(crate) fn apply_remote(&mut self, node: &str, seq: u64, state: UserState) -> Option<Change> {
        if node == self.node {
            return None;
        }
        self.heard.insert(node.to_owned(), Instant::now());
        let key = (node.to_owned(), state.room.clone(), state.user_id.clone());
        if self.applied.get(&key).is_some_and(|&last| last >= seq) {
            return None;
        }
        self.applied.insert(key, seq);
        let UserState { room, user_id, info, connections } = state;
        self.changing(&room.clone(), &user_id.clone(), |p| {
            let entry = p.rooms.entry(room.clone()).or_default().users.entry(user_id.clone()).or_default();
            entry.connections.retain(|(n, _), _| n != node);
            if !connections.is_empty() {
                entry.info = info;
            }
            for c in connections {
                entry.connections.insert(
                    (node.to_owned(), c.connection_id),
                    Connection { joined_at: c.joined_at, lingering_until: None },
                );
            }
        })
    }

    /// Another node is alive.
    pub(crate) fn heard_from(&mut self, node: &str) {
        if node != self.node {
            self.heard.insert(node.to_owned(), Instant::now());
        }
    }

    /// Forgets the nodes not heard from within `timeout`; their users leave.
    pub(crate) fn forget_silent(&mut self, timeout: Duration, now: Instant) -> Vec<Change> {
        let silent: Vec<String> = self
            .heard
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) > timeout)
            .map(|(node, _)| node.clone())
            .collect();
        let mut changes = Vec::new();
        for node in silent {
            self.heard.remove(&node);
            self.applied.retain(|(n, _, _), _| *n != node);
            let pairs: Vec<(String, String)> = self
                .rooms
                .iter()
                .flat_map(|(room_name, room)| {
                    room.users
                        .iter()
                        .filter(|(_, u)| u.connections.keys().any(|(n, _)| *n == node))
                        .map(|(user_name, _)| (room_name.clone(), user_name.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            for (room, user) in pairs {
                changes.extend(self.changing(&room, &user, |p| {
                    if let Some(u) = p.rooms.get_mut(&room).and_then(|r| r.users.get_mut(&user)) {
                        u.connections.retain(|(n, _), _| *n != node);
                    }
                }));
            }
        }
        changes
    }

    /// Who is in `room` now.
    pub(crate) fn snapshot(&self, room: &str) -> PresenceBody {
        let users: Vec<PresenceUserBody> = self
            .rooms
            .get(room)
            .map(|r| {
                r.users
                    .iter()
                    .map(|(user_id, u)| {
                        let mut connections: Vec<PresenceConnectionBody> = u
                            .connections
                            .iter()
                            .map(|((_, id), c)| PresenceConnectionBody {
                                connection_id: id.clone(),
                                joined_at: c.joined_at.clone(),
                            })
                            .collect();
                        connections.sort_by(|a, b| a.joined_at.cmp(&b.joined_at));
                        PresenceUserBody { user_id: user_id.clone(), info: u.info.clone(), connections }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let connection_count = users.iter().map(|u| u.connections.len()).sum();
        PresenceBody { room: room.to_owned(), user_count: users.len(), connection_count, users }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn joined(room: &str, user: &str) -> Option<Change> {
        Some(Change::Joined { room: room.into(), user: user.into(), info: json!({"n": user}) })
    }

    fn left(room: &str, user: &str) -> Option<Change> {
        Some(Change::Left { room: room.into(), user: user.into() })
    }

    #[test]
    fn the_first_connection_joins_and_the_last_leaves() {
        let mut p = Presence::new("a".into());
        let info = json!({"n": "u1"});
        assert_eq!(p.enter("r", "u1", &info, "c1"), joined("r", "u1"));
        assert_eq!(p.enter("r", "u1", &info, "c2"), None);
        assert_eq!(p.snapshot("r").connection_count, 2);
        assert_eq!(p.exit("r", "u1", "c1"), None);
        assert_eq!(p.exit("r", "u1", "c2"), left("r", "u1"));
        assert_eq!(p.snapshot("r").user_count, 0);
        assert!(p.rooms.is_empty(), "nothing is kept for an empty room");
    }

    #[test]
    fn a_closed_connection_lingers_for_the_grace_period() {
        let mut p = Presence::new("a".into());
        let info = json!({"n": "u1"});
        p.enter("r", "u1", &info, "c1");
        p.linger("r", "u1", "c1", Duration::from_secs(5));
        // Back within the grace: no join.
        assert_eq!(p.enter("r", "u1", &info, "c2"), None);
        let later = Instant::now() + Duration::from_secs(6);
        let (changes, touched) = p.expire(later);
        assert!(changes.is_empty(), "the user is still there through c2");
        assert_eq!(touched, [("r".to_owned(), "u1".to_owned())]);
        assert_eq!(p.snapshot("r").connection_count, 1);
        // Gone for good: leave once the grace is over, not before.
        p.linger("r", "u1", "c2", Duration::from_secs(5));
        assert!(p.expire(Instant::now()).0.is_empty());
        assert_eq!(p.expire(later).0, [left("r", "u1").unwrap()]);
    }

    #[test]
    fn other_nodes_states_merge_and_a_silent_node_is_forgotten() {
        let mut p = Presence::new("a".into());
        let state = |conns: &[&str]| UserState {
            room: "r".into(),
            user_id: "u2".into(),
            info: json!({"n": "u2"}),
            connections: conns
                .iter()
                .map(|c| ConnectionState { connection_id: (*c).into(), joined_at: "t".into() })
                .collect(),
        };
        assert_eq!(p.apply_remote("b", 1, state(&["x"])), joined("r", "u2"));
        // A late, older state changes nothing.
        assert_eq!(p.apply_remote("b", 0, state(&[])), None);
        assert_eq!(p.apply_remote("b", 2, state(&["x", "y"])), None);
        assert_eq!(p.snapshot("r").connection_count, 2);
        // Its own messages come back over the bus: ignored.
        assert_eq!(p.apply_remote("a", 9, state(&[])), None);
        let later = Instant::now() + Duration::from_secs(11);
        assert_eq!(p.forget_silent(Duration::from_secs(10), later), [left("r", "u2").unwrap()]);
        assert_eq!(p.snapshot("r").user_count, 0);
    }
}
