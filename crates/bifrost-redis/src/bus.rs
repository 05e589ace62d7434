//! The cluster bus (`bifrost_core::cluster`) on Redis Pub/Sub: one channel per namespace,
//! `{namespace}:bus`, each message `{topic}\n{payload}`. Every bus listens on that
//! channel on a connection of its own (again after a lost connection), so the publishing
//! node hears its own messages like every other; a dispatcher hands each to the topic's
//! subscribers on this node. Redis delivers one connection's messages in the order they
//! were published, so one publisher's sequential messages keep their order.
//!
//! Best effort, like the trait says: a node that is not listening at that moment (down,
//! reconnecting) misses what is published meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bifrost_core::cluster::{ClusterBus, MAX_BUS_PAYLOAD};
use bifrost_core::{Error, Result};
use bytes::Bytes;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::codec::{closed, redis_error};
use crate::listener::listen;

/// Longest topic, the same as the other buses'.
const MAX_TOPIC: usize = 200;
/// Messages a subscriber may fall behind by before it loses the oldest.
const SUBSCRIBER_CAPACITY: usize = 4096;

/// Checks a message before it is sent.
fn checked(topic: &str, payload: &[u8]) -> Result<()> {
    let valid_topic = !topic.is_empty()
        && topic.len() <= MAX_TOPIC
        && topic.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if !valid_topic {
        return Err(Error::InvalidArgument(format!(
            "invalid bus topic {topic:?}: use 1-{MAX_TOPIC} printable ASCII characters"
        )));
    }
    if payload.len() > MAX_BUS_PAYLOAD {
        return Err(Error::InvalidArgument(format!(
            "a bus payload holds at most {MAX_BUS_PAYLOAD} bytes, not {}",
            payload.len()
        )));
    }
    std::str::from_utf8(payload)
        .map_err(|e| Error::InvalidArgument(format!("a bus payload must be UTF-8 text: {e}")))?;
    Ok(())
}

/// This node's subscribed topics: the bus adds them, the listener delivers to them.
#[derive(Default)]
struct Topics {
    inner: Mutex<TopicsInner>,
}

#[derive(Default)]
struct TopicsInner {
    senders: HashMap<String, broadcast::Sender<Bytes>>,
    /// Set when the bus closes: subscribers see the end of their topic.
    closed: bool,
}

impl Topics {
    fn lock(&self) -> std::sync::MutexGuard<'_, TopicsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscribe(&self, topic: &str) -> broadcast::Receiver<Bytes> {
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

    /// Delivers one message as heard on the channel.
    fn deliver(&self, message: &[u8]) {
        let Some(split) = message.iter().position(|b| *b == b'\n') else {
            tracing::debug!("ignoring a malformed cluster bus message");
            return;
        };
        let Ok(topic) = std::str::from_utf8(&message[..split]) else { return };
        let mut inner = self.lock();
        if let Some(sender) = inner.senders.get(topic)
            && sender.send(Bytes::copy_from_slice(&message[split + 1..])).is_err()
        {
            // Its last subscriber is gone: forget the topic until someone subscribes again.
            inner.senders.remove(topic);
        }
    }

    fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.senders.clear();
    }
}

/// A cluster bus on Redis Pub/Sub. A Redis store gives one on its prefix
/// ([`StateStore::cluster_bus`](bifrost_core::StateStore::cluster_bus)); other stores'
/// nodes (PostgreSQL) can use one on their own through [`RedisBus::connect`].
pub struct RedisBus {
    conn: ConnectionManager,
    channel: String,
    topics: Arc<Topics>,
    listener: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl RedisBus {
    /// A bus on `{namespace}:bus` of the Redis at `url` (`redis://[user:pass@]host:port[/db]`),
    /// listening at once (in the background: until the listening connection is up, this
    /// node misses messages). It reconnects on its own.
    pub async fn connect(url: &str, namespace: &str) -> Result<Arc<RedisBus>> {
        crate::check_prefix(namespace)?;
        let client = crate::client(url)?;
        let conn = crate::manager(&client, &crate::RedisOptions::default()).await?;
        Ok(Self::start(client, conn, namespace))
    }

    pub(crate) fn start(client: redis::Client, conn: ConnectionManager, namespace: &str) -> Arc<Self> {
        let channel = format!("{namespace}:bus");
        let topics = Arc::new(Topics::default());
        let heard = topics.clone();
        let listener = listen(client, channel.clone(), move |message| heard.deliver(message), || {});
        Arc::new(Self {
            conn,
            channel,
            topics,
            listener: Mutex::new(Some(listener)),
            closed: AtomicBool::new(false),
        })
    }

    /// Stops listening and ends every subscription; publishing fails from now on.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let listener = self.listener.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(listener) = listener {
            listener.abort();
            let _ = listener.await;
        }
        self.topics.close();
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.lock().unwrap_or_else(|p| p.into_inner()).take() {
            listener.abort();
        }
    }
}

#[async_trait]
impl ClusterBus for RedisBus {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        checked(topic, &payload)?;
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let mut message = Vec::with_capacity(topic.len() + 1 + payload.len());
        message.extend_from_slice(topic.as_bytes());
        message.push(b'\n');
        message.extend_from_slice(&payload);
        let mut conn = self.conn.clone();
        let _receivers: i64 = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(message)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    fn subscribe(&self, topic: &str) -> broadcast::Receiver<Bytes> {
        self.topics.subscribe(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_payloads_are_checked() {
        assert!(checked("a.b-c_d e", b"{}").is_ok());
        for topic in ["", "a\nb", "tab\t", "caf\u{e9}", &"x".repeat(MAX_TOPIC + 1)] {
            assert!(matches!(checked(topic, b"{}"), Err(Error::InvalidArgument(_))), "{topic:?}");
        }
        assert!(matches!(checked("t", b"\xff"), Err(Error::InvalidArgument(_))));
        assert!(matches!(checked("t", &vec![b'a'; MAX_BUS_PAYLOAD + 1]), Err(Error::InvalidArgument(_))));
        assert!(checked("t", &vec![b'a'; MAX_BUS_PAYLOAD]).is_ok());
    }

    #[test]
    fn a_message_goes_to_its_topic_only_and_a_closed_bus_ends_subscriptions() {
        let topics = Topics::default();
        let mut x = topics.subscribe("x");
        let mut y = topics.subscribe("y");
        topics.deliver(b"x\n{\"a\":\"line\\nbreak\"}\nmore");
        topics.deliver(b"malformed");
        assert_eq!(x.try_recv().unwrap(), Bytes::from_static(b"{\"a\":\"line\\nbreak\"}\nmore"));
        assert!(y.try_recv().is_err());
        topics.close();
        assert_eq!(x.try_recv(), Err(broadcast::error::TryRecvError::Closed));
        assert!(topics.subscribe("x").try_recv().is_err());
    }
}
