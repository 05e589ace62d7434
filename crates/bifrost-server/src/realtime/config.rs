//! The settings of real-time delivery (`[realtime]`, `--realtime-*`); tokens are checked
//! with the server's `[auth.jwt]` settings.

use std::time::Duration;

/// Limits and timings of WebSocket connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealtimeConfig {
    /// Frames waiting to be sent to one connection (1,000); full: close 4008.
    pub queue_size: usize,
    /// How far back `since_position` recovers (10,000 events); beyond: `recovered: false`.
    pub recovery_max_events: u64,
    /// Subscriptions of one connection (100).
    pub max_subscriptions: usize,
    /// WebSocket Ping interval (25 s).
    pub ping_interval: Duration,
    /// How long after a ping the connection may stay silent (10 s); then close 4002.
    pub pong_timeout: Duration,
    /// Largest frame a client may send (65,536 bytes); larger: close 1009.
    pub max_frame_bytes: usize,
    /// How long a catch-up replay may wait for room in a full queue before the client is
    /// closed as slow (5 s). Live frames never wait: a full queue closes at once.
    pub slow_consumer_timeout: Duration,
    /// How long a closed connection stays in its rooms' presence (5 s).
    pub presence_grace: Duration,
    /// Connections without a token are let in (user null, no publish, not in presence).
    pub allow_anonymous: bool,
    /// Channel patterns an anonymous connection may subscribe to (`["room:*"]`).
    pub anonymous_channels: Vec<String>,
    /// How long a connection may take to send `auth` when it came without a token (10 s).
    pub auth_timeout: Duration,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            queue_size: 1000,
            recovery_max_events: 10_000,
            max_subscriptions: 100,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            max_frame_bytes: 65_536,
            slow_consumer_timeout: Duration::from_secs(5),
            presence_grace: Duration::from_secs(5),
            allow_anonymous: false,
            anonymous_channels: vec!["room:*".to_owned()],
            auth_timeout: Duration::from_secs(10),
        }
    }
}
