//! Redis out-bridges: entries appended to a stream (`redis-stream`) or messages published on
//! a channel (`redis-pubsub`).
//!
//! A batch is one pipeline; the replies are the confirmation: an entry id per `XADD`, a
//! receiver count per `PUBLISH`. Pub/Sub keeps nothing for absent readers, so a `PUBLISH`
//! that reached nobody is still confirmed.
//!
//! Both run on a [`ConnectionManager`]: a multiplexed connection that is replaced after an
//! I/O error, so a broken connection fails the batch in flight (the bridge retries it) and
//! the next batch goes out on a new connection.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Pipeline, RedisError, Value};

use crate::message::Outgoing;
use crate::publish::{PublishError, Publisher};

/// How long one connection attempt, and then one pipeline's replies, may take: past it the
/// batch is `Unreachable` instead of hanging the bridge.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The prefix a binary-mode entry gives each CloudEvents attribute's field.
const ATTRIBUTE_PREFIX: &str = "ce_";

/// Entries appended with `XADD <target> MAXLEN ~ <max_len> * id … type … position … event …
/// content_type … [ce_<attribute> …]`.
#[derive(Clone)]
pub struct RedisStreamPublisher {
    connection: ConnectionManager,
    max_len: u64,
}

impl RedisStreamPublisher {
    /// Connects to `url` (`redis://…`, `rediss://…`); each stream is trimmed to about
    /// `max_len` entries as it is appended to.
    pub async fn connect(url: &str, max_len: u64) -> Result<Self, PublishError> {
        Ok(Self { connection: connect(url).await?, max_len })
    }
}

impl std::fmt::Debug for RedisStreamPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamPublisher").field("max_len", &self.max_len).finish_non_exhaustive()
    }
}

#[async_trait]
impl Publisher for RedisStreamPublisher {
    async fn publish(&self, batch: &[Outgoing]) -> Result<(), PublishError> {
        let mut pipe = redis::pipe();
        for msg in batch {
            let xadd = pipe
                .cmd("XADD")
                .arg(&msg.target)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.max_len)
                .arg("*")
                .arg("id")
                .arg(msg.id.to_string())
                .arg("type")
                .arg(&msg.event_type)
                .arg("position")
                .arg(msg.position)
                .arg("event")
                .arg(msg.body.as_ref())
                .arg("content_type")
                .arg(&msg.content_type);
            for (name, value) in &msg.attributes {
                xadd.arg(format!("{ATTRIBUTE_PREFIX}{name}")).arg(value);
            }
        }
        let replies = run(&self.connection, pipe, batch).await?;
        confirm(batch, replies, "XADD", |reply| {
            matches!(reply, Value::BulkString(_) | Value::SimpleString(_))
        })
    }
}

/// Messages published with `PUBLISH <target> <body>`.
#[derive(Clone)]
pub struct RedisPubSubPublisher {
    connection: ConnectionManager,
}

impl RedisPubSubPublisher {
    /// Connects to `url` (`redis://…`, `rediss://…`).
    pub async fn connect(url: &str) -> Result<Self, PublishError> {
        Ok(Self { connection: connect(url).await? })
    }
}

impl std::fmt::Debug for RedisPubSubPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPubSubPublisher").finish_non_exhaustive()
    }
}

#[async_trait]
impl Publisher for RedisPubSubPublisher {
    async fn publish(&self, batch: &[Outgoing]) -> Result<(), PublishError> {
        let mut pipe = redis::pipe();
        for msg in batch {
            pipe.cmd("PUBLISH").arg(&msg.target).arg(msg.body.as_ref());
        }
        let replies = run(&self.connection, pipe, batch).await?;
        confirm(batch, replies, "PUBLISH", |reply| matches!(reply, Value::Int(_)))
    }
}

async fn connect(url: &str) -> Result<ConnectionManager, PublishError> {
    if url.starts_with("rediss://") {
        // The redis client's TLS takes rustls's process-wide provider; the build holds two.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    // The URL may carry a password: errors name the problem, never the URL.
    let client =
        Client::open(url).map_err(|e| PublishError::Unreachable(format!("invalid Redis URL: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        // The bridge retries with its own backoff; one quick retry here covers a blip
        // without making `connect` (or a reconnect) wait long on a dead server.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, config).await.map_err(unreachable)
}

/// Sends the pipeline and returns one reply per message, errors included as values.
async fn run(
    connection: &ConnectionManager,
    mut pipe: Pipeline,
    batch: &[Outgoing],
) -> Result<Vec<Value>, PublishError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    // A command's error reply comes back as a value, so it can name the key it concerns.
    pipe.ignore_errors();
    // The manager is a handle onto a shared multiplexed connection: cloning it is cheap and
    // lets concurrent batches share the connection.
    let mut connection = connection.clone();
    pipe.query_async::<Vec<Value>>(&mut connection).await.map_err(unreachable)
}

/// Ok when every message got a reply that `confirms`; a command error is `Refused` naming
/// the key (or channel).
fn confirm(
    batch: &[Outgoing],
    replies: Vec<Value>,
    command: &str,
    confirms: impl Fn(&Value) -> bool,
) -> Result<(), PublishError> {
    if replies.len() != batch.len() {
        return Err(PublishError::Unreachable(format!(
            "{command}: {} replies for {} messages",
            replies.len(),
            batch.len()
        )));
    }
    for (msg, reply) in batch.iter().zip(&replies) {
        match reply {
            Value::ServerError(error) => {
                return Err(PublishError::Refused(format!("{command} {:?}: {error}", msg.target)));
            }
            reply if confirms(reply) => {}
            other => {
                return Err(PublishError::Refused(format!(
                    "{command} {:?}: unexpected reply {other:?}",
                    msg.target
                )));
            }
        }
    }
    Ok(())
}

fn unreachable(error: RedisError) -> PublishError {
    PublishError::Unreachable(error.to_string())
}
