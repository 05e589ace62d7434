//! Real-time delivery over WebSocket (`GET /v1/ws`): channels of stored events, resumed
//! from the store itself with `since_position`, so a client that reconnects gets exactly
//! what it missed, in log order, with the positions SSE and consumer groups use.
//!
//! This is the first part of the real-time contract: the connection, its frames,
//! `stream:` and `type:` channels with recovery, the bounded per-connection queue and
//! heartbeats. JWT auth, rooms, presence, publishes and bridges come next.

pub(crate) mod auth;
mod channel;
mod config;
mod connection;

pub use config::{JwtKey, RealtimeConfig};
pub(crate) use connection::serve;
