//! RabbitMQ: each message goes to the durable topic exchange `bifrost` with the target as its
//! routing key, persistent, `mandatory` and under publisher confirms. A batch counts only when
//! the broker acked every message and returned none: a message no queue takes is an error,
//! never a silent drop.

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};

use crate::message::Outgoing;
use crate::publish::{PublishError, Publisher};

/// The exchange every out-bridge publishes to.
pub const EXCHANGE: &str = "bifrost";

/// The prefix of the AMQP binding of CloudEvents for attributes in headers.
const HEADER_PREFIX: &str = "cloudEvents:";

/// AMQP `delivery_mode` 2: the broker writes the message to disk in a durable queue.
const PERSISTENT: u8 = 2;

/// One connection and one channel in confirm mode.
pub struct RabbitPublisher {
    /// Kept so the connection lives as long as the publisher; dropping both closes it.
    _connection: Connection,
    channel: Channel,
}

impl RabbitPublisher {
    /// Connects to `url` (`amqp://user:pass@host:port/vhost`), opens a channel in confirm
    /// mode and declares the durable topic exchange `bifrost`.
    pub async fn connect(url: &str) -> Result<Self, PublishError> {
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from("bifrost out-bridge"));
        let connection = Connection::connect(url, properties).await.map_err(cannot("connect"))?;
        let channel = connection.create_channel().await.map_err(cannot("open a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(cannot("turn on publisher confirms"))?;
        channel
            .exchange_declare(
                ShortString::from(EXCHANGE),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .map_err(cannot("declare the durable topic exchange bifrost"))?;
        Ok(Self { _connection: connection, channel })
    }
}

#[async_trait]
impl Publisher for RabbitPublisher {
    async fn publish(&self, batch: &[Outgoing]) -> Result<(), PublishError> {
        // Everything goes out before the first confirm is awaited: one round trip per batch.
        let mut pending = Vec::with_capacity(batch.len());
        for msg in batch {
            let routing_key = short(&msg.target, "routing key")?;
            let confirm = self
                .channel
                .basic_publish(
                    ShortString::from(EXCHANGE),
                    routing_key,
                    BasicPublishOptions { mandatory: true, immediate: false },
                    &msg.body,
                    properties(msg)?,
                )
                .await
                .map_err(cannot("publish"))?;
            pending.push((msg, confirm));
        }
        // Every confirm is awaited, even after a failure, so none is left behind on the
        // channel; the first failure is the answer. A closed channel fails them all at once.
        let mut first_error = None;
        for (msg, confirm) in pending {
            let outcome = match confirm.await {
                Ok(Confirmation::Ack(None)) => Ok(()),
                Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
                    Err(PublishError::Refused(format!(
                        "no queue takes routing key {:?} on exchange {EXCHANGE} (message {}: {} {})",
                        msg.target, msg.id, returned.reply_code, returned.reply_text
                    )))
                }
                Ok(Confirmation::Nack(None)) => Err(PublishError::Refused(format!(
                    "negative ack for message {} with routing key {:?}",
                    msg.id, msg.target
                ))),
                Ok(Confirmation::NotRequested) => Err(PublishError::Refused(format!(
                    "no publisher confirm for message {} with routing key {:?} (the channel is not in confirm mode)",
                    msg.id, msg.target
                ))),
                Err(e) => Err(PublishError::Unreachable(format!(
                    "no publisher confirm for message {} with routing key {:?}: {e}",
                    msg.id, msg.target
                ))),
            };
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The message's AMQP properties: the dedupe id as `message_id`, persistent, its content type
/// and event type, and in binary mode the CloudEvents attributes as `cloudEvents:` headers.
fn properties(msg: &Outgoing) -> Result<BasicProperties, PublishError> {
    let mut properties = BasicProperties::default()
        .with_message_id(ShortString::from(msg.id.to_string()))
        .with_delivery_mode(PERSISTENT)
        .with_content_type(short(&msg.content_type, "content type")?)
        .with_type(short(&msg.event_type, "type")?);
    if !msg.attributes.is_empty() {
        let mut headers = FieldTable::default();
        for (name, value) in &msg.attributes {
            headers.insert(
                short(&format!("{HEADER_PREFIX}{name}"), "header name")?,
                AMQPValue::LongString(LongString::from(value.as_str())),
            );
        }
        properties = properties.with_headers(headers);
    }
    Ok(properties)
}

/// An AMQP short string (at most 255 bytes); a longer value refuses the message.
fn short(value: &str, what: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(value)
        .map_err(|e| PublishError::Refused(format!("the {what} {value:?} does not fit AMQP: {e}")))
}

fn cannot(doing: &'static str) -> impl Fn(lapin::Error) -> PublishError {
    move |e| PublishError::Unreachable(format!("cannot {doing}: {e}"))
}
