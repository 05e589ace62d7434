//! One module per broker and direction, each a [`Publisher`](crate::Publisher) (out) or a
//! [`Consumer`](crate::Consumer) (`*_in`), and [`Brokers`], the connector that opens the one
//! a bridge's kind names.

pub mod nats;
pub mod nats_in;
pub mod rabbitmq;
pub mod rabbitmq_in;
pub mod redis;
pub mod redis_in;

use async_trait::async_trait;
use bifrost_api::BridgeKindBody;

use crate::consume::{ConsumeError, Consumer};
use crate::intake::FETCH_WAIT;
use crate::publish::{PublishError, Publisher};
use crate::runner::Connector;
use crate::spec::BridgeSpec;

/// Opens a bridge's broker by its kind.
pub struct Brokers;

#[async_trait]
impl Connector for Brokers {
    async fn connect(&self, spec: &BridgeSpec) -> Result<Box<dyn Publisher>, PublishError> {
        Ok(match spec.kind {
            BridgeKindBody::Nats => Box::new(nats::NatsPublisher::connect(&spec.url).await?),
            BridgeKindBody::Rabbitmq => Box::new(rabbitmq::RabbitPublisher::connect(&spec.url).await?),
            BridgeKindBody::RedisStream => {
                Box::new(redis::RedisStreamPublisher::connect(&spec.url, spec.max_len).await?)
            }
            BridgeKindBody::RedisPubsub => Box::new(redis::RedisPubSubPublisher::connect(&spec.url).await?),
        })
    }
}

/// The consumer of in-bridge `name` for its kind, as node `node` runs it.
pub async fn consumer(name: &str, spec: &BridgeSpec, node: &str) -> Result<Box<dyn Consumer>, ConsumeError> {
    let source = spec.source.as_deref().unwrap_or_default();
    Ok(match spec.kind {
        BridgeKindBody::Nats => Box::new(nats_in::NatsConsumer::connect(&spec.url, name, source).await?),
        BridgeKindBody::Rabbitmq => {
            let prefetch = u16::try_from(spec.batch_size).unwrap_or(u16::MAX);
            Box::new(rabbitmq_in::RabbitConsumer::connect(&spec.url, name, source, prefetch).await?)
        }
        BridgeKindBody::RedisStream => {
            Box::new(redis_in::RedisStreamConsumer::connect(&spec.url, source, node, FETCH_WAIT).await?)
        }
        BridgeKindBody::RedisPubsub => {
            return Err(ConsumeError::Refused("redis-pubsub cannot be read by an in-bridge".into()));
        }
    })
}
