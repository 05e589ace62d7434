//! RabbitMQ in-bridges: the bridge's queue consumed with manual acks, at most about a batch
//! unacked (prefetch). A queue that does not exist yet is declared durable.

use std::time::Duration;

use async_trait::async_trait;
use lapin::message::{Delivery as AmqpDelivery, DeliveryResult};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::mpsc;

use crate::consume::{ConsumeError, Consumer, Delivery};
use crate::inbound::{Incoming, attribute_name};

/// The AMQP binding of CloudEvents names attributes `cloudEvents:<name>` (older senders
/// `cloudEvents_<name>`).
const ATTRIBUTE_PREFIXES: [&str; 2] = ["cloudEvents:", "cloudEvents_"];

pub struct RabbitConsumer {
    /// Kept so the connection lives as long as the consumer; dropping both closes it.
    _connection: Connection,
    channel: Channel,
    queue: String,
    deliveries: mpsc::UnboundedReceiver<Result<AmqpDelivery, String>>,
}

impl RabbitConsumer {
    /// Connects to `url` and consumes `queue` as `bifrost-{name}`, `prefetch` unacked at most.
    pub async fn connect(url: &str, name: &str, queue: &str, prefetch: u16) -> Result<Self, ConsumeError> {
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from("bifrost in-bridge"));
        let connection = Connection::connect(url, properties).await.map_err(unreachable("connect"))?;
        let mut channel = connection.create_channel().await.map_err(unreachable("open a channel"))?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        if channel.queue_declare(ShortString::from(queue), passive, FieldTable::default()).await.is_err() {
            // A passive declare of a missing queue closes the channel: declare it on a new one.
            channel = connection.create_channel().await.map_err(unreachable("open a channel"))?;
            let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
            channel
                .queue_declare(ShortString::from(queue), durable, FieldTable::default())
                .await
                .map_err(|e| ConsumeError::Refused(format!("declare queue {queue:?}: {e}")))?;
        }
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(unreachable("set the prefetch"))?;
        let consumer = channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(format!("bifrost-{name}")),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| ConsumeError::Refused(format!("consume queue {queue:?}: {e}")))?;
        let (tx, deliveries) = mpsc::unbounded_channel();
        consumer.set_delegate(move |delivery: DeliveryResult| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(match delivery {
                    Ok(Some(delivery)) => Ok(delivery),
                    Ok(None) => Err("the broker cancelled the consumer".to_owned()),
                    Err(e) => Err(e.to_string()),
                });
            }
        });
        Ok(Self { _connection: connection, channel, queue: queue.to_owned(), deliveries })
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, ConsumeError> {
        let mut out = Vec::new();
        let first = match tokio::time::timeout(wait, self.deliveries.recv()).await {
            Err(_) => return Ok(out),
            Ok(None) => return Err(ConsumeError::Unreachable("the consumer stopped".into())),
            Ok(Some(delivery)) => delivery,
        };
        out.push(delivery(first.map_err(ConsumeError::Unreachable)?));
        while out.len() < max {
            match self.deliveries.try_recv() {
                Ok(next) => out.push(delivery(next.map_err(ConsumeError::Unreachable)?)),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    async fn ack(&mut self, receipts: &[String]) -> Result<(), ConsumeError> {
        for tag in receipts {
            let tag =
                tag.parse::<u64>().map_err(|_| ConsumeError::Refused(format!("delivery tag {tag:?}")))?;
            self.channel.basic_ack(tag, BasicAckOptions::default()).await.map_err(unreachable("ack"))?;
        }
        Ok(())
    }

    async fn pending(&mut self) -> Option<u64> {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let queue = self
            .channel
            .queue_declare(ShortString::from(self.queue.as_str()), passive, FieldTable::default())
            .await;
        queue.ok().map(|q| u64::from(q.message_count()))
    }
}

fn delivery(d: AmqpDelivery) -> Delivery {
    let properties = &d.properties;
    let attributes = properties
        .headers()
        .as_ref()
        .map(|headers| {
            headers
                .inner()
                .iter()
                .filter_map(|(name, value)| {
                    let attribute = attribute_name(name.as_str(), &ATTRIBUTE_PREFIXES)?;
                    Some((attribute, text(value)?))
                })
                .collect()
        })
        .unwrap_or_default();
    let message = Incoming {
        subject: d.routing_key.as_str().to_owned(),
        message_id: properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .filter(|id| !id.is_empty()),
        sequence: None,
        attributes,
        body: bytes::Bytes::from(d.data),
    };
    Delivery { message, receipt: d.delivery_tag.to_string() }
}

/// A header's value as text (strings as they are, numbers and booleans as written).
fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        _ => return None,
    })
}

fn unreachable(what: &'static str) -> impl Fn(lapin::Error) -> ConsumeError {
    move |e| ConsumeError::Unreachable(format!("RabbitMQ {what}: {e}"))
}
