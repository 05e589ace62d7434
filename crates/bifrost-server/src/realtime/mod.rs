//! Real-time delivery over WebSocket (`GET /v1/ws`) and its HTTP side (`/v1/realtime`):
//! channels of stored events (`stream:`, `type:`), rooms and users fed by publishes and
//! bridging rules, presence, resumed from the store itself with `since_position`, so a
//! client that reconnects gets exactly what it missed, in log order, with the positions SSE
//! and consumer groups use.
//!
//! - `hub`: the node's subscriptions, its one live reader of the log, the cluster bus.
//! - `connection`: one WebSocket — auth, frames in, the writer, its subscriptions.
//! - `queue`: a connection's bounded outgoing frames in priority lanes.
//! - `route`: which channels a stored event goes to; `bridges`: the rules that add rooms
//!   and users; `publish`: HTTP and WebSocket publishes; `presence`: who is in which room.
//! - `auth`: JWT checks and what a connection may do; `channel`: channel names;
//!   `frames`: the JSON frames the server writes; `config`: the settings.

pub(crate) mod auth;
mod bridges;
mod channel;
mod config;
mod connection;
mod frames;
mod hub;
mod presence;
mod publish;
mod queue;
mod route;

pub(crate) use auth::Principal;
pub(crate) use channel::check_room;
pub use config::RealtimeConfig;
pub(crate) use connection::serve;
pub(crate) use hub::{Hub, Refusal, TENANTS_REFUSED, room_key};
pub(crate) use publish::Publish;
