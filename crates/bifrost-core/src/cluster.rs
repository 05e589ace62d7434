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

/// Longest topic, so that a topic never crowds the payload out of a message.
pub const MAX_BUS_TOPIC: usize = 200;
/// Messages a subscriber may fall behind by before it loses the oldest.
const SUBSCRIBER_CAPACITY: usize = 4096;

/// The rules every bus applies before it sends, so that what one bus takes the others take
/// too: a topic of 1–[`MAX_BUS_TOPIC`] printable ASCII characters (spaces allowed), a UTF-8
/// payload of at most [`MAX_BUS_PAYLOAD`] bytes. Returns the payload as text.
pub fn check_message<'a>(topic: &str, payload: &'a [u8]) -> Result<&'a str> {
    let valid_topic = !topic.is_empty()
        && topic.len() <= MAX_BUS_TOPIC
        && topic.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if !valid_topic {
        return Err(crate::Error::InvalidArgument(format!(
            "invalid bus topic {topic:?}: use 1-{MAX_BUS_TOPIC} printable ASCII characters"
        )));
    }
    if payload.len() > MAX_BUS_PAYLOAD {
        return Err(crate::Error::InvalidArgument(format!(
            "a bus payload holds at most {MAX_BUS_PAYLOAD} bytes, not {}",
            payload.len()
        )));
    }
    std::str::from_utf8(payload)
        .map_err(|e| crate::Error::InvalidArgument(format!("a bus payload must be UTF-8 text: {e}")))
}

/// One node's subscribers, by topic: a bus hands out receivers here and delivers what it
/// hears, never waiting on a subscriber (one that falls behind loses the oldest).
#[derive(Default)]
pub struct Topics {
    inner: std::sync::Mutex<TopicsInner>,
}

#[derive(Default)]
struct TopicsInner {
    senders: std::collections::HashMap<String, broadcast::Sender<Bytes>>,
    /// Set when the bus closes: subscribers see the end of their topic.
    closed: bool,
}

impl Topics {
    fn lock(&self) -> std::sync::MutexGuard<'_, TopicsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of `topic`'s messages from now on; after [`Topics::close`], one that has
    /// ended.
    pub fn subscribe(&self, topic: &str) -> broadcast::Receiver<Bytes> {
        let mut inner = self.lock();
        if inner.closed {
            // Its sender is gone at once: the receiver reports the end.
            return broadcast::channel(1).1;
        }
        inner
            .senders
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(SUBSCRIBER_CAPACITY).0)
            .subscribe()
    }

    /// Hands `payload` to the subscribers of `topic` on this node, if any.
    pub fn deliver(&self, topic: &str, payload: Bytes) {
        let mut inner = self.lock();
        if let Some(sender) = inner.senders.get(topic)
            && sender.send(payload).is_err()
        {
            // Its last subscriber is gone: forget the topic until someone subscribes again.
            inner.senders.remove(topic);
        }
    }

    /// Whether anyone on this node subscribes to `topic` (so a message is worth fetching).
    pub fn heard(&self, topic: &str) -> bool {
        self.lock().senders.get(topic).is_some_and(|s| s.receiver_count() > 0)
    }

    /// Ends every subscription; later ones end at once.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.senders.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_payloads_are_checked() {
        assert_eq!(check_message("a.b-c_d e", b"{}").ok(), Some("{}"));
        for topic in ["", "a\nb", "tab\t", "caf\u{e9}", &"x".repeat(MAX_BUS_TOPIC + 1)] {
            assert!(
                matches!(check_message(topic, b"{}"), Err(crate::Error::InvalidArgument(_))),
                "{topic:?}"
            );
        }
        assert!(matches!(check_message("t", b"\xff"), Err(crate::Error::InvalidArgument(_))));
        let too_long = vec![b'a'; MAX_BUS_PAYLOAD + 1];
        assert!(matches!(check_message("t", &too_long), Err(crate::Error::InvalidArgument(_))));
        assert!(check_message("t", &too_long[1..]).is_ok());
    }

    #[test]
    fn a_message_goes_to_its_topic_only_and_a_closed_bus_ends_subscriptions() {
        let topics = Topics::default();
        let (mut x, mut y) = (topics.subscribe("x"), topics.subscribe("y"));
        assert!(topics.heard("x") && !topics.heard("z"));
        topics.deliver("x", Bytes::from_static(b"{}"));
        assert_eq!(x.try_recv().ok(), Some(Bytes::from_static(b"{}")));
        assert!(y.try_recv().is_err());
        drop(y);
        topics.deliver("y", Bytes::from_static(b"{}"));
        assert!(!topics.heard("y"), "a topic nobody hears any more is forgotten");
        topics.close();
        assert_eq!(x.try_recv(), Err(broadcast::error::TryRecvError::Closed));
        assert!(topics.subscribe("x").try_recv().is_err());
    }
}
