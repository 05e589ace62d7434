//! The command bus: one handler per command type, validation, dispatch.
//!
//! Commands are typed (`bus.dispatch(ReserveInventory { .. })`) and also travel as data
//! ([`CommandEnvelope`]: type name + JSON payload), which is how a saga records the commands
//! it issues and how they are dispatched again after a restart.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use bifrost_core::Metadata;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::repository::{CommandContext, Repository};

pub trait Command: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The command's type name, the key of its handler (`inventory.reserve`).
    const TYPE: &'static str;
}

/// Handles one command type.
#[async_trait]
pub trait CommandHandler<C: Command>: Send + Sync + 'static {
    /// Checks the command before [`handle`](Self::handle) runs; a refusal comes back as
    /// [`Error::Invalid`] and the handler is not called.
    async fn validate(&self, command: &C) -> Result<(), String> {
        let _ = command;
        Ok(())
    }

    async fn handle(&self, command: C, context: CommandContext) -> Result<()>;
}

/// A command of an aggregate that names its aggregate: such commands can be handled by the
/// aggregate's [`Repository`] directly.
pub trait AggregateCommand: Command {
    fn aggregate_id(&self) -> &str;
}

#[async_trait]
impl<A> CommandHandler<A::Command> for Repository<A>
where
    A: Aggregate,
    A::Command: AggregateCommand,
{
    async fn handle(&self, command: A::Command, context: CommandContext) -> Result<()> {
        self.execute_with(command.aggregate_id(), &command, &context).await.map(|_| ())
    }
}

/// A command as data: what a saga stores and what crosses a process boundary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// Makes dispatching it twice harmless: the events it produces derive their ids from it.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub command_type: String,
    pub payload: serde_json::Value,
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
}

impl CommandEnvelope {
    /// Wraps `command` with a fresh id.
    pub fn new<C: Command>(command: &C) -> Result<Self> {
        Self::with_id(Uuid::now_v7(), command)
    }

    pub fn with_id<C: Command>(id: Uuid, command: &C) -> Result<Self> {
        let payload = serde_json::to_value(command).map_err(|e| Error::encode(C::TYPE, e))?;
        Ok(Self { id, command_type: C::TYPE.to_owned(), payload, metadata: Metadata::default() })
    }

    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    fn context(&self) -> CommandContext {
        CommandContext { command_id: Some(self.id), metadata: self.metadata.clone() }
    }
}

#[async_trait]
trait ErasedHandler: Send + Sync {
    async fn dispatch_any(&self, command: Box<dyn Any + Send>, context: CommandContext) -> Result<()>;
    async fn dispatch_json(&self, payload: &serde_json::Value, context: CommandContext) -> Result<()>;
}

struct Typed<C, H> {
    handler: H,
    _command: PhantomData<fn(C)>,
}

impl<C: Command, H: CommandHandler<C>> Typed<C, H> {
    async fn run(&self, command: C, context: CommandContext) -> Result<()> {
        if let Err(reason) = self.handler.validate(&command).await {
            return Err(Error::Invalid { command: C::TYPE.to_owned(), reason });
        }
        let outcome = self.handler.handle(command, context).await;
        let label = match &outcome {
            Ok(()) => "ok",
            Err(Error::Rejected(_)) => "rejected",
            Err(_) => "failed",
        };
        metrics::counter!("bifrost_commands_total", "type" => C::TYPE, "outcome" => label).increment(1);
        outcome
    }
}

#[async_trait]
impl<C: Command, H: CommandHandler<C>> ErasedHandler for Typed<C, H> {
    async fn dispatch_any(&self, command: Box<dyn Any + Send>, context: CommandContext) -> Result<()> {
        match command.downcast::<C>() {
            Ok(command) => self.run(*command, context).await,
            // Handlers are stored under C::TYPE, so only a second Rust type with the same
            // TYPE string can get here.
            Err(_) => Err(Error::UnknownCommand(C::TYPE.to_owned())),
        }
    }

    async fn dispatch_json(&self, payload: &serde_json::Value, context: CommandContext) -> Result<()> {
        let command = C::deserialize(payload)
            .map_err(|e| Error::Invalid { command: C::TYPE.to_owned(), reason: e.to_string() })?;
        self.run(command, context).await
    }
}

/// Routes each command to the one handler registered for its type.
#[derive(Default)]
pub struct CommandBus {
    handlers: HashMap<&'static str, Arc<dyn ErasedHandler>>,
}

impl CommandBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `C`; a second handler for the same type is refused.
    pub fn register<C: Command>(&mut self, handler: impl CommandHandler<C>) -> Result<()> {
        if self.handlers.contains_key(C::TYPE) {
            return Err(Error::DuplicateHandler(C::TYPE.to_owned()));
        }
        self.handlers.insert(C::TYPE, Arc::new(Typed { handler, _command: PhantomData }));
        Ok(())
    }

    /// The registered command types, sorted.
    pub fn command_types(&self) -> Vec<&'static str> {
        let mut types: Vec<_> = self.handlers.keys().copied().collect();
        types.sort_unstable();
        types
    }

    pub async fn dispatch<C: Command>(&self, command: C) -> Result<()> {
        self.dispatch_with(command, CommandContext::default()).await
    }

    /// Validates `command` and runs its handler.
    pub async fn dispatch_with<C: Command>(&self, command: C, context: CommandContext) -> Result<()> {
        let handler = self.handler(C::TYPE)?;
        handler.dispatch_any(Box::new(command), context).await
    }

    /// Dispatches a command given as data; its id makes a second dispatch harmless when the
    /// handler stores events through a [`Repository`].
    pub async fn dispatch_envelope(&self, envelope: &CommandEnvelope) -> Result<()> {
        let handler = self.handler(&envelope.command_type)?;
        handler.dispatch_json(&envelope.payload, envelope.context()).await
    }

    fn handler(&self, command_type: &str) -> Result<&Arc<dyn ErasedHandler>> {
        self.handlers.get(command_type).ok_or_else(|| Error::UnknownCommand(command_type.to_owned()))
    }
}
