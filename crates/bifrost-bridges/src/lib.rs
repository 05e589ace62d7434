//! Bifrost's broker bridges: stored events out to the brokers a team already runs (NATS
//! JetStream, RabbitMQ, Redis Streams and Pub/Sub), at-least-once and in log order.
//!
//! A bridge reads the log from its checkpoint like a consumer group, turns each matching
//! event into a message ([`message`]: target, body in the content mode, CloudEvents
//! attributes), hands batches to its broker's [`Publisher`] and moves the checkpoint only
//! past what the broker confirmed. One node at a time runs a bridge, under a lease in the
//! store; a node that dies loses its lease and another resumes from the checkpoint.

pub mod kinds;
pub mod message;
pub mod publish;
mod runner;
mod service;
pub mod spec;

pub use message::{Outgoing, Target};
pub use publish::{PublishError, Publisher};
pub use runner::{BridgeState, Connector};
pub use service::{BridgeError, Bridges};
pub use spec::BridgeSpec;
