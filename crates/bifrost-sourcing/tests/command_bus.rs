//! The command bus: routing by command type, validation, commands as data, and a
//! repository as the handler of its aggregate's commands.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bifrost_core::{Metadata, StreamName};
use bifrost_sourcing::{
    Command, CommandBus, CommandContext, CommandEnvelope, CommandHandler, Error, Repository,
};
use common::{Account, AccountCommand, AccountError, AccountEvent, TestStore, deposit, open, stream_events};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Greet {
    name: String,
}

impl Command for Greet {
    const TYPE: &'static str = "test.greet";
}

/// Greets anyone with a name, and keeps what it was handed.
#[derive(Default)]
struct Greeter {
    handled: Arc<Mutex<Vec<(Greet, CommandContext)>>>,
}

impl Greeter {
    fn handled(&self) -> Arc<Mutex<Vec<(Greet, CommandContext)>>> {
        self.handled.clone()
    }
}

#[async_trait]
impl CommandHandler<Greet> for Greeter {
    async fn validate(&self, command: &Greet) -> Result<(), String> {
        if command.name.is_empty() {
            return Err("a greeting needs a name".into());
        }
        Ok(())
    }

    async fn handle(&self, command: Greet, context: CommandContext) -> bifrost_sourcing::Result<()> {
        self.handled.lock().expect("not poisoned").push((command, context));
        Ok(())
    }
}

fn greet(name: &str) -> Greet {
    Greet { name: name.into() }
}

#[tokio::test]
async fn a_command_without_a_handler_is_refused_as_unknown() {
    let mut bus = CommandBus::new();
    let err = bus.dispatch(greet("ada")).await.unwrap_err();
    assert!(matches!(&err, Error::UnknownCommand(t) if t == "test.greet"), "{err}");
    assert!(!err.is_transient());

    bus.register::<Greet>(Greeter::default()).unwrap();
    let mut envelope = CommandEnvelope::new(&greet("ada")).unwrap();
    envelope.command_type = "test.shout".into();
    let err = bus.dispatch_envelope(&envelope).await.unwrap_err();
    assert!(matches!(&err, Error::UnknownCommand(t) if t == "test.shout"), "{err}");
}

#[tokio::test]
async fn a_command_that_fails_validation_never_reaches_its_handler() {
    let greeter = Greeter::default();
    let handled = greeter.handled();
    let mut bus = CommandBus::new();
    bus.register::<Greet>(greeter).unwrap();

    let err = bus.dispatch(greet("")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { command, reason } if command == "test.greet" && reason == "a greeting needs a name"),
        "{err}"
    );
    let err = bus.dispatch_envelope(&CommandEnvelope::new(&greet("")).unwrap()).await.unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(handled.lock().unwrap().is_empty(), "an invalid command was handled");

    bus.dispatch(greet("ada")).await.unwrap();
    assert_eq!(handled.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_second_handler_for_a_command_type_is_refused_and_the_first_stays() {
    let first = Greeter::default();
    let handled = first.handled();
    let second = Greeter::default();
    let second_handled = second.handled();
    let mut bus = CommandBus::new();
    bus.register::<Greet>(first).unwrap();
    let err = bus.register::<Greet>(second).unwrap_err();
    assert!(matches!(&err, Error::DuplicateHandler(t) if t == "test.greet"), "{err}");
    bus.register::<AccountCommand>(Repository::<Account>::new(TestStore::memory().events)).unwrap();
    assert_eq!(bus.command_types(), ["account", "test.greet"]);

    bus.dispatch(greet("ada")).await.unwrap();
    assert_eq!(handled.lock().unwrap().len(), 1);
    assert!(second_handled.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_envelope_whose_payload_does_not_decode_is_invalid() {
    let greeter = Greeter::default();
    let handled = greeter.handled();
    let mut bus = CommandBus::new();
    bus.register::<Greet>(greeter).unwrap();
    let mut envelope = CommandEnvelope::new(&greet("ada")).unwrap();
    envelope.payload = serde_json::json!({ "nom": 3 });
    let err = bus.dispatch_envelope(&envelope).await.unwrap_err();
    assert!(matches!(&err, Error::Invalid { command, .. } if command == "test.greet"), "{err}");
    assert!(handled.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_envelope_hands_its_id_and_metadata_to_the_handler() {
    let greeter = Greeter::default();
    let handled = greeter.handled();
    let mut bus = CommandBus::new();
    bus.register::<Greet>(greeter).unwrap();
    let metadata = Metadata { correlation_id: Some("visit-7".into()), ..Metadata::default() };
    let envelope = CommandEnvelope::new(&greet("ada")).unwrap().with_metadata(metadata.clone());
    // As data, the way a saga stores it and a remote caller sends it.
    let envelope: CommandEnvelope = serde_json::from_str(&serde_json::to_string(&envelope).unwrap()).unwrap();
    bus.dispatch_envelope(&envelope).await.unwrap();
    let handled = handled.lock().unwrap();
    let (command, context) = &handled[0];
    assert_eq!(command, &greet("ada"));
    assert_eq!((context.command_id, &context.metadata), (Some(envelope.id), &metadata));
}

#[tokio::test]
async fn a_repository_registered_as_handler_executes_its_aggregates_commands() {
    for store in [TestStore::memory(), TestStore::sqlite().await] {
        let mut bus = CommandBus::new();
        bus.register::<AccountCommand>(Repository::<Account>::new(store.events.clone())).unwrap();
        bus.dispatch(open("1")).await.unwrap();
        bus.dispatch(deposit("1", 30)).await.unwrap();
        let err = bus.dispatch(AccountCommand::Withdraw { id: "1".into(), amount: 50 }).await.unwrap_err();
        assert_eq!(err.rejection::<AccountError>(), Some(&AccountError::InsufficientFunds { balance: 30 }));
        // Typed and as data alike.
        bus.dispatch_envelope(&CommandEnvelope::new(&deposit("1", 12)).unwrap()).await.unwrap();

        let loaded = Repository::<Account>::new(store.events.clone()).load("1").await.unwrap();
        assert_eq!((loaded.state.balance, loaded.version), (42, 3));
    }
}

#[tokio::test]
async fn dispatching_the_same_command_twice_stores_its_events_once() {
    for store in [TestStore::memory(), TestStore::sqlite().await] {
        let repo = Repository::<Account>::new(store.events.clone());
        let mut bus = CommandBus::new();
        bus.register::<AccountCommand>(repo.clone()).unwrap();
        bus.dispatch(open("1")).await.unwrap();

        let metadata = Metadata { correlation_id: Some("payday".into()), ..Metadata::default() };
        let envelope = CommandEnvelope::new(&deposit("1", 10)).unwrap().with_metadata(metadata);
        bus.dispatch_envelope(&envelope).await.unwrap();
        bus.dispatch_envelope(&envelope).await.unwrap();
        bus.dispatch(deposit("1", 5)).await.unwrap();
        // Again after the stream moved on.
        bus.dispatch_envelope(&envelope).await.unwrap();

        // A typed dispatch with a command id is as safe.
        let context = CommandContext::with_id(Uuid::now_v7());
        bus.dispatch_with(deposit("1", 100), context.clone()).await.unwrap();
        bus.dispatch_with(deposit("1", 100), context).await.unwrap();

        let loaded = repo.load("1").await.unwrap();
        assert_eq!((loaded.state.balance, loaded.version), (115, 4));
        let events = stream_events(&store.events, "account-1").await;
        let deposits: Vec<AccountEvent> =
            events.iter().map(|e| bifrost_sourcing::event::decode(e).unwrap()).skip(1).collect();
        assert_eq!(
            deposits,
            [10, 5, 100].map(|amount| AccountEvent::Deposited { amount }),
            "a command was stored twice"
        );
        let metadata = events[1].metadata().unwrap();
        assert_eq!(metadata.correlation_id.as_deref(), Some("payday"));
        assert_eq!(metadata.causation_id, Some(envelope.id.to_string()));
        assert_eq!(events[1].stream, StreamName::new("account-1").unwrap());
    }
}
