//! The cluster bus (`bifrost_core::cluster`) on Redis Pub/Sub: one channel per namespace,
//! `{namespace}:bus`, each message `{topic}\n{payload}`. Every bus listens on that
//! channel on a connection of its own (again after a lost connection), so the publishing
//! node hears its own messages like every other; a dispatcher hands each to the topic's
//! subscribers on this node. Redis delivers one connection's messages in the order they
//! were published, so one publisher's sequential messages keep their order.
//!
//! Best effort, like the trait says: a node that is not listening at that moment (down,
//! reconnecting) misses what is published meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bifrost_core::Result;
use bifrost_core::cluster::{ClusterBus, Topics, check_message};
use bytes::Bytes;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::codec::{closed, redis_error};
use crate::listener::listen;

/// Splits a message heard on the channel (`topic\npayload`) and delivers it.
fn deliver(topics: &Topics, message: &[u8]) {
    let Some(split) = message.iter().position(|b| *b == b'\n') else {
        tracing::debug!("ignoring a malformed cluster bus message");
        return;
    };
    let Ok(topic) = std::str::from_utf8(&message[..split]) else { return };
    topics.deliver(topic, Bytes::copy_from_slice(&message[split + 1..]));
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
        let listener = listen(client, channel.clone(), move |message| deliver(&heard, message), || {});
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
        check_message(topic, &payload)?;
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
    fn a_message_heard_goes_to_its_topic_only_and_a_malformed_one_nowhere() {
        let topics = Topics::default();
        let mut x = topics.subscribe("x");
        let mut y = topics.subscribe("y");
        deliver(&topics, b"x\n{\"a\":\"line\\nbreak\"}\nmore");
        deliver(&topics, b"malformed");
        assert_eq!(x.try_recv().unwrap(), Bytes::from_static(b"{\"a\":\"line\\nbreak\"}\nmore"));
        assert!(y.try_recv().is_err());
        topics.close();
        assert_eq!(x.try_recv(), Err(broadcast::error::TryRecvError::Closed));
        assert!(topics.subscribe("x").try_recv().is_err());
    }
}
