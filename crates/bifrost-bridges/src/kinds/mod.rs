//! One module per broker, each a [`Publisher`](crate::Publisher).
pub mod rabbitmq;
