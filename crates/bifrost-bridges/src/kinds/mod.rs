//! One module per broker, each a [`Publisher`](crate::Publisher), and [`Brokers`], the
//! connector that opens the one a bridge's kind names.

pub mod nats;
pub mod rabbitmq;
pub mod redis;

use async_trait::async_trait;
use bifrost_api::BridgeKindBody;

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
