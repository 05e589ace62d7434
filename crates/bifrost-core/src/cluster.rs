//! Messages between the nodes that share one store: what must reach every node at once but
//! is never stored as an event (real-time presence and ephemeral messages, wake-ups).
//!
//! Delivery is best effort, in the spirit of PostgreSQL's `NOTIFY`: a message reaches every
//! node that listens when it is sent (the sender's own node included), a node that is down
//! or lags misses it. Whatever needs more keeps its truth elsewhere (the log, the state
//! space) and uses the bus only to tell the others sooner.

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::Result;

/// Largest payload a bus carries.
pub const MAX_BUS_PAYLOAD: usize = 1024 * 1024;

/// A publish/subscribe channel between every process that opens the same store.
#[async_trait]
pub trait ClusterBus: Send + Sync + 'static {
    /// Sends `payload` (at most [`MAX_BUS_PAYLOAD`] bytes, UTF-8 text such as JSON) to every
    /// subscriber of `topic` on every node, this one included. Returns once the message is
    /// on its way; an error means it was not sent.
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()>;

    /// Every message of `topic` published from now on, by any node. A receiver that falls
    /// behind loses the oldest messages (`RecvError::Lagged`) rather than holding others up.
    fn subscribe(&self, topic: &str) -> broadcast::Receiver<Bytes>;
}
