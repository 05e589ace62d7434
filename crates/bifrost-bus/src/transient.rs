//! Messages that are never stored: typing indicators, progress pings, test signals.
//!
//! Deliberately apart from the durable path: no position, no retry, no dead letter, no
//! replay. Each subscriber has a bounded queue of its own; a subscriber that falls behind
//! loses messages (counted in `bifrost_transient_dropped_total`) rather than slowing the
//! publisher or the other subscribers. Use the store for anything that must arrive.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bifrost_core::{Result, Timestamp, TypePattern};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::bus::HandlerError;

/// Messages a subscriber may have queued before new ones are dropped for it.
pub const TRANSIENT_QUEUE: usize = 1024;

/// A message of the transient path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransientMessage {
    /// Dotted, like an event type; subscribers match it with patterns.
    pub message_type: String,
    pub data: Bytes,
    pub published_at: Timestamp,
}

impl TransientMessage {
    pub fn new(message_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self { message_type: message_type.into(), data: data.into(), published_at: Timestamp::now() }
    }
}

struct Subscriber {
    id: u64,
    pattern: TypePattern,
    queue: mpsc::Sender<Arc<TransientMessage>>,
}

/// The transient path of a [`crate::Bus`] (or on its own).
#[derive(Clone, Default)]
pub struct TransientBus {
    subscribers: Arc<RwLock<Vec<Subscriber>>>,
    next_id: Arc<AtomicU64>,
}

/// A transient subscription; dropping it (or [`unsubscribe`](Self::unsubscribe)) ends it.
pub struct TransientSubscription {
    id: u64,
    subscribers: Arc<RwLock<Vec<Subscriber>>>,
    task: Option<JoinHandle<()>>,
}

impl TransientBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands `message` to every subscriber whose pattern matches, without waiting for any.
    /// Returns how many took it (a full queue drops it for that subscriber).
    pub fn publish(&self, message: TransientMessage) -> usize {
        let message = Arc::new(message);
        let subscribers = self.subscribers.read().unwrap_or_else(|p| p.into_inner());
        let mut delivered = 0;
        for subscriber in subscribers.iter().filter(|s| s.pattern.matches(&message.message_type)) {
            match subscriber.queue.try_send(message.clone()) {
                Ok(()) => delivered += 1,
                Err(_) => metrics::counter!("bifrost_transient_dropped_total").increment(1),
            }
        }
        delivered
    }

    /// Calls `handler` for each message whose type matches `pattern`, one at a time. A
    /// handler's error is logged; there is no retry on this path.
    pub fn subscribe<F, Fut>(&self, pattern: &str, handler: F) -> Result<TransientSubscription>
    where
        F: Fn(Arc<TransientMessage>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let pattern = TypePattern::new(pattern)?;
        let (queue, mut inbox) = mpsc::channel::<Arc<TransientMessage>>(TRANSIENT_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscribers.write().unwrap_or_else(|p| p.into_inner()).push(Subscriber { id, pattern, queue });
        let task = tokio::spawn(async move {
            while let Some(message) = inbox.recv().await {
                if let Err(e) = handler(message.clone()).await {
                    tracing::warn!(message_type = %message.message_type, error = %e, "a transient handler failed");
                }
            }
        });
        Ok(TransientSubscription { id, subscribers: self.subscribers.clone(), task: Some(task) })
    }
}

impl TransientSubscription {
    /// Ends the subscription after the messages already queued for it are handled.
    pub async fn unsubscribe(mut self) {
        self.remove();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn remove(&self) {
        self.subscribers.write().unwrap_or_else(|p| p.into_inner()).retain(|s| s.id != self.id);
    }
}

impl Drop for TransientSubscription {
    fn drop(&mut self) {
        self.remove();
    }
}
