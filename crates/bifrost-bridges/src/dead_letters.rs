//! An in-bridge's dead letters: broker messages that are not valid events, acked so they do
//! not block the ones after them, and kept (at most [`MAX_DEAD_LETTERS`] a bridge, the
//! oldest dropped first) in a state scope of the bridge's own, `bridge-dead-letters/{name}`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Most dead letters kept for one bridge.
pub const MAX_DEAD_LETTERS: usize = 1000;
/// Most body bytes kept of a dead letter (the rest is cut).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// One dead letter, as stored and as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// A UUIDv7: dead letters sort by the time they came.
    pub id: String,
    /// Why the message is not an event.
    pub reason: String,
    /// RFC 3339.
    pub received_at: String,
    /// The message body, base64 (standard, padded), at most 64 KiB before encoding.
    pub body: String,
}

impl DeadLetter {
    pub fn new(reason: String, body: &[u8]) -> Self {
        let kept = &body[..body.len().min(MAX_BODY_BYTES)];
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            reason,
            received_at: bifrost_core::Timestamp::now().to_string(),
            body: base64::engine::general_purpose::STANDARD.encode(kept),
        }
    }
}

/// The state scope of bridge `name`'s dead letters.
pub(crate) fn scope(name: &str) -> String {
    format!("bridge-dead-letters/{name}")
}
