//! Redis in-bridges: the consumer group `bifrost` on the bridge's stream key (made, with the
//! key, when missing), read with `XREADGROUP` and acked with `XACK`.
//!
//! The node that runs the bridge reads as a consumer of its own name. When it takes the
//! bridge over it first claims every entry still pending in the group (`XAUTOCLAIM`: a dead
//! owner's unacked entries) and reads its own pending entries again before new ones, so a
//! node's death loses nothing.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Value};

use crate::consume::{ConsumeError, Consumer, Delivery};
use crate::inbound::{Incoming, attribute_name};

/// The consumer group every Redis in-bridge reads with.
pub const GROUP: &str = "bifrost";
/// How long a connection attempt may take; a reply may take this much longer than a read's
/// own wait.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The field prefix of a binary-mode entry's CloudEvents attributes (as the out-bridge
/// writes them).
const ATTRIBUTE_PREFIX: &str = "ce_";

pub struct RedisStreamConsumer {
    connection: ConnectionManager,
    key: String,
    consumer: String,
    /// Whether this consumer's pending entries were read again since it connected.
    history_read: bool,
    /// Where the read of pending entries stands.
    history_after: String,
}

impl RedisStreamConsumer {
    /// Connects, makes the group (and the key) if missing and claims the group's pending
    /// entries for `consumer`.
    pub async fn connect(
        url: &str,
        key: &str,
        consumer: &str,
        max_wait: Duration,
    ) -> Result<Self, ConsumeError> {
        let client =
            Client::open(url).map_err(|e| ConsumeError::Unreachable(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(max_wait + TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let mut connection = ConnectionManager::new_with_config(client, config).await.map_err(unreachable)?;
        let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                return Err(unreachable(e));
            }
            Err(e) => return Err(ConsumeError::Refused(format!("XGROUP CREATE {key:?}: {e}"))),
        }
        let mut this = Self {
            connection,
            key: key.to_owned(),
            consumer: consumer.to_owned(),
            history_read: false,
            history_after: "0".into(),
        };
        this.claim().await?;
        Ok(this)
    }

    /// Moves every pending entry of the group to this consumer.
    async fn claim(&mut self) -> Result<(), ConsumeError> {
        let mut cursor = "0-0".to_owned();
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.key)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(0)
                .arg(&cursor)
                .arg("COUNT")
                .arg(1000)
                .arg("JUSTID")
                .query_async(&mut self.connection)
                .await
                .map_err(|e| self.failed("XAUTOCLAIM", e))?;
            let next = match &reply {
                Value::Array(parts) => parts.first().and_then(text),
                _ => None,
            };
            match next {
                Some(next) if next != "0-0" => cursor = next,
                _ => return Ok(()),
            }
        }
    }

    async fn read(
        &mut self,
        id: &str,
        max: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Delivery>, ConsumeError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(&self.consumer).arg("COUNT").arg(max);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&self.key).arg(id);
        let reply: Value =
            cmd.query_async(&mut self.connection).await.map_err(|e| self.failed("XREADGROUP", e))?;
        Ok(entries(&self.key, reply))
    }

    fn failed(&self, command: &str, e: redis::RedisError) -> ConsumeError {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
            unreachable(e)
        } else {
            ConsumeError::Refused(format!("{command} {:?}: {e}", self.key))
        }
    }
}

#[async_trait]
impl Consumer for RedisStreamConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, ConsumeError> {
        if !self.history_read {
            let after = self.history_after.clone();
            let pending = self.read(&after, max, None).await?;
            match pending.last() {
                Some(last) => {
                    self.history_after = last.receipt.clone();
                    return Ok(pending);
                }
                None => self.history_read = true,
            }
        }
        self.read(">", max, Some(wait)).await
    }

    async fn ack(&mut self, receipts: &[String]) -> Result<(), ConsumeError> {
        if receipts.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.key).arg(GROUP).arg(receipts);
        let _: Value = cmd.query_async(&mut self.connection).await.map_err(|e| self.failed("XACK", e))?;
        Ok(())
    }

    async fn pending(&mut self) -> Option<u64> {
        let reply: Value =
            redis::cmd("XINFO").arg("GROUPS").arg(&self.key).query_async(&mut self.connection).await.ok()?;
        let Value::Array(groups) = reply else { return None };
        groups.iter().find_map(|group| {
            let fields = pairs(group);
            let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
            if field("name").and_then(text).as_deref() != Some(GROUP) {
                return None;
            }
            let number = |v: Option<&Value>| match v {
                Some(Value::Int(n)) => u64::try_from(*n).ok(),
                _ => None,
            };
            // `lag` is unknown (nil) after some trims and deletions: the pending count alone.
            Some(number(field("lag")).unwrap_or(0) + number(field("pending")).unwrap_or(0))
        })
    }
}

/// The entries of an `XREADGROUP` reply: `[[key, [[id, [field, value, …]], …]]]` (or a
/// map in RESP3). An entry deleted since it was delivered has no fields: its body is empty
/// (it becomes a dead letter, and is acked).
fn entries(key: &str, reply: Value) -> Vec<Delivery> {
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut parts) if parts.len() == 2 => parts.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(items) = stream else { continue };
        for item in items {
            let Value::Array(parts) = item else { continue };
            let Some(id) = parts.first().and_then(text) else { continue };
            let fields: Vec<(String, &Value)> =
                parts.get(1).map(pairs).unwrap_or_default().into_iter().collect();
            let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
            let message = Incoming {
                subject: key.to_owned(),
                message_id: field("id").and_then(text).filter(|s| !s.is_empty()),
                sequence: Some(id.clone()),
                attributes: fields
                    .iter()
                    .filter_map(|(name, value)| {
                        Some((attribute_name(name, &[ATTRIBUTE_PREFIX])?, text(value)?))
                    })
                    .collect(),
                body: match field("event") {
                    Some(Value::BulkString(bytes)) => bytes::Bytes::from(bytes.clone()),
                    Some(other) => text(other).map(bytes::Bytes::from).unwrap_or_default(),
                    None => bytes::Bytes::new(),
                },
            };
            out.push(Delivery { message, receipt: id });
        }
    }
    out
}

/// A flat `[name, value, …]` array (or a map) as pairs.
fn pairs(value: &Value) -> Vec<(String, &Value)> {
    match value {
        Value::Array(flat) => {
            flat.chunks_exact(2).filter_map(|pair| Some((text(&pair[0])?, &pair[1]))).collect()
        }
        Value::Map(map) => map.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
        _ => Vec::new(),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn unreachable(e: redis::RedisError) -> ConsumeError {
    ConsumeError::Unreachable(e.to_string())
}
