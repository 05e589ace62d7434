//! The cluster bus (`bifrost_core::cluster`) on core NATS publish/subscribe, for
//! `--cluster-bus nats://…`.
//!
//! A topic is one subject token under `bifrost.bus.{namespace}.`, the namespace being the
//! store's schema, so that two clusters on one NATS server do not hear each other. The bus
//! subscribes once to the whole namespace (`…>`) when it connects (and waits until its own
//! probe comes back through that subscription), so a subscriber hears
//! everything published after [`ClusterBus::subscribe`] returns, and dispatches by topic;
//! NATS echoes a connection's own messages to it, so the sender's node hears itself. One
//! connection: one publisher's messages arrive in the order sent. Nothing is stored — a
//! node that is disconnected (async-nats reconnects by itself) misses what is sent
//! meanwhile, as the bus's contract allows.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bifrost_core::cluster::{ClusterBus, Topics, check_message};
use bifrost_core::{Error, Result};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::bus::ClusterBusError;

/// Messages the NATS client holds for the dispatcher before it drops some (a slow
/// consumer); the dispatcher never waits, so this only fills when it gets no CPU.
const INBOX_CAPACITY: usize = 16_384;
/// How long NATS may take to confirm the bus's subscription at connect.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The mark that starts an escaped byte of a topic in its subject token.
const ESCAPE: char = '~';

/// The bus on one NATS connection.
pub struct NatsBus {
    client: async_nats::Client,
    /// `bifrost.bus.{namespace}.`: every subject of this bus starts with it.
    prefix: String,
    topics: Arc<Topics>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

impl NatsBus {
    /// Connects to the NATS server(s) of `url` (credentials in it are used: `user:pass@` or
    /// a token), and subscribes to `namespace`'s subjects. An unreachable server is an error
    /// here, at start; later outages are bridged by the client's reconnects.
    pub async fn connect(url: &str, namespace: &str) -> std::result::Result<Arc<Self>, ClusterBusError> {
        let client = async_nats::ConnectOptions::new()
            .name("bifrost cluster bus")
            .subscription_capacity(INBOX_CAPACITY)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("cluster bus: connected to NATS"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("cluster bus: disconnected from NATS; reconnecting")
                    }
                    other => tracing::debug!(event = %other, "cluster bus: NATS event"),
                }
            })
            .connect(url)
            .await
            .map_err(|e| ClusterBusError(format!("cannot connect to NATS: {e}")))?;
        let prefix = format!("bifrost.bus.{}.", encode_token(namespace));
        let mut subscriber = client
            .subscribe(format!("{prefix}>"))
            .await
            .map_err(|e| ClusterBusError(format!("cannot subscribe on NATS: {e}")))?;
        // A flush only sends; the subscription is surely in place on the server once a
        // message published after it comes back through it.
        let probe = format!("{prefix}{ESCAPE}00{}", uuid::Uuid::new_v4().simple());
        client
            .publish(probe.clone(), Bytes::new())
            .await
            .map_err(|e| ClusterBusError(format!("cannot publish on NATS: {e}")))?;
        let echoed = async {
            while let Some(message) = subscriber.next().await {
                if message.subject.as_str() == probe {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(READY_TIMEOUT, echoed).await {
            Ok(true) => {}
            Ok(false) => return Err(ClusterBusError("NATS closed the connection".to_owned())),
            Err(_) => {
                return Err(ClusterBusError(format!(
                    "NATS did not confirm the subscription within {} s",
                    READY_TIMEOUT.as_secs()
                )));
            }
        }
        let topics = Arc::new(Topics::default());
        let dispatcher = tokio::spawn(dispatch(subscriber, prefix.clone(), topics.clone()));
        Ok(Arc::new(Self { client, prefix, topics, dispatcher: Mutex::new(Some(dispatcher)) }))
    }

    /// Ends every subscription and the connection; messages still on their way are lost.
    pub async fn close(&self) {
        let dispatcher = self.dispatcher.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(dispatcher) = dispatcher {
            dispatcher.abort();
            let _ = dispatcher.await;
        }
        self.topics.close();
        let _ = self.client.flush().await;
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        if let Some(dispatcher) = self.dispatcher.lock().unwrap_or_else(|p| p.into_inner()).take() {
            dispatcher.abort();
        }
    }
}

// `ClusterBus` is an `async_trait`; its `publish`, written out, so that this crate needs no
// macro for one method.
impl ClusterBus for NatsBus {
    fn publish<'a, 'b, 'f>(
        &'a self,
        topic: &'b str,
        payload: Bytes,
    ) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'f>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            check_message(topic, &payload)?;
            let subject = format!("{}{}", self.prefix, encode_token(topic));
            self.client
                .publish(subject, payload)
                .await
                .map_err(|e| Error::Unavailable(format!("cannot publish on the NATS cluster bus: {e}")))
        })
    }

    fn subscribe(&self, topic: &str) -> broadcast::Receiver<Bytes> {
        self.topics.subscribe(topic)
    }
}

/// `text` as one NATS subject token: letters, digits, `-` and `_` as they are, every other
/// byte as `~` and two hex digits (so `.`, `*`, `>` and spaces never reach the subject).
fn encode_token(text: &str) -> String {
    let mut token = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            token.push(char::from(byte));
        } else {
            let _ = write!(token, "{ESCAPE}{byte:02X}");
        }
    }
    token
}

/// The text of a token made by [`encode_token`]; `None` when it is not one.
fn decode_token(token: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == ESCAPE as u8 {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Hands every message of the namespace to its topic's subscribers, in the order NATS
/// delivers them, never waiting on a subscriber. Ends with the connection.
async fn dispatch(mut subscriber: async_nats::Subscriber, prefix: String, topics: Arc<Topics>) {
    while let Some(message) = subscriber.next().await {
        let topic = message.subject.as_str().strip_prefix(prefix.as_str()).and_then(decode_token);
        match topic {
            Some(topic) => topics.deliver(&topic, message.payload),
            None => {
                tracing::debug!(subject = %message.subject, "ignoring a message of another shape on the cluster bus")
            }
        }
    }
    topics.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_become_single_subject_tokens_and_come_back() {
        for topic in ["presence", "store.head", "a b*c>d~e", "room:lobby/1", "Z-9_x"] {
            let token = encode_token(topic);
            assert!(
                token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~')),
                "{token}"
            );
            assert_eq!(decode_token(&token).as_deref(), Some(topic));
        }
        assert_eq!(encode_token("store.head"), "store~2Ehead");
        assert_eq!(decode_token("bad~"), None);
        assert_eq!(decode_token("bad~G1"), None);
    }
}
