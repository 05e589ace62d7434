//! The broker side of an in-bridge: a [`Consumer`] hands out messages and acks them once
//! their events are stored. Until then the broker keeps them: a consumer that dies (or a node
//! that loses the bridge) leaves them to be delivered again.

use std::time::Duration;

use async_trait::async_trait;

use crate::inbound::Incoming;

/// Why messages could not be fetched or acked. The bridge reconnects after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The broker could not be reached, or the connection broke.
    #[error("cannot reach the broker: {0}")]
    Unreachable(String),
    /// The broker refused (no JetStream stream captures the subject, a missing queue or key,
    /// a refused consumer).
    #[error("the broker refused: {0}")]
    Refused(String),
}

/// One message and what acks it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message: Incoming,
    /// The consumer's handle for the ack: a JetStream ack subject, an AMQP delivery tag, a
    /// Redis entry id.
    pub receipt: String,
}

/// A subscription of one in-bridge to its broker's source.
#[async_trait]
pub trait Consumer: Send {
    /// Up to `max` messages, waiting at most about `wait` for the first one.
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, ConsumeError>;

    /// Acks delivered messages: the broker forgets them.
    async fn ack(&mut self, receipts: &[String]) -> Result<(), ConsumeError>;

    /// The messages the broker still holds for the bridge, when that is cheap to know.
    async fn pending(&mut self) -> Option<u64>;
}
