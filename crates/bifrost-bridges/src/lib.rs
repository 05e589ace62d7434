//! Bifrost's broker bridges: stored events out to the brokers a team already runs (NATS
//! JetStream, RabbitMQ, Redis Streams and Pub/Sub), at-least-once and in log order.
//!
//! A bridge reads the log from its checkpoint like a consumer group, turns each matching
//! event into a message ([`message`]: target, body in the content mode, CloudEvents
//! attributes), hands batches to its broker's [`Publisher`] and moves the checkpoint only
//! past what the broker confirmed. One node at a time runs a bridge, under a lease in the
//! store; a node that dies loses its lease and another resumes from the checkpoint.
//!
//! An in-bridge goes the other way ([`inbound`], [`consume`]): it reads a NATS JetStream
//! durable consumer, a RabbitMQ queue or a Redis stream's consumer group, appends each
//! message as an event (idempotent by an id taken from the message) and acks it only once
//! the append committed; a message that is not an event is acked and kept as a dead letter.

pub mod consume;
pub mod dead_letters;
pub mod inbound;
mod intake;
pub mod kinds;
pub mod message;
pub mod publish;
mod runner;
mod service;
pub mod spec;

pub use consume::{ConsumeError, Consumer, Delivery};
pub use dead_letters::DeadLetter;
pub use inbound::Incoming;
pub use intake::IngestCheck;
pub use message::{Outgoing, Target};
pub use publish::{PublishError, Publisher};
pub use runner::{BridgeState, Connector};
pub use service::{BridgeError, Bridges};
pub use spec::{BridgeSpec, check_name, check_stored_name, local_name};
