//! The broker side of an out-bridge: a [`Publisher`] sends a batch of messages and returns
//! once the broker confirmed every one of them.

use async_trait::async_trait;

use crate::message::Outgoing;

/// Why a batch was not confirmed. The bridge retries the whole batch after a backoff (the
/// broker may then see some messages twice; they carry the same dedupe id).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker could not be reached, or the connection broke.
    #[error("cannot reach the broker: {0}")]
    Unreachable(String),
    /// The broker refused or did not confirm a message (unroutable, no stream captures the
    /// subject, a negative ack).
    #[error("the broker refused a message: {0}")]
    Refused(String),
}

/// A connection to one broker for one bridge.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes every message of `batch`, pipelined, and returns once the broker confirmed
    /// them all: JetStream PubAck, a publisher confirm, the `XADD` or `PUBLISH` reply.
    /// An error means the batch does not count as published.
    async fn publish(&self, batch: &[Outgoing]) -> Result<(), PublishError>;
}
