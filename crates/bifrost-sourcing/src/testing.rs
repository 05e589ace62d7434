//! Given / when / then for aggregates and sagas, without a store.
//!
//! Every event passes through its stored form (encode, then decode) on the way, so a test
//! also catches an event type that does not survive the store.
//!
//! ```ignore
//! AggregateTest::<Account>::given([AccountEvent::Opened { owner: "ada".into() }])
//!     .when(AccountCommand::Withdraw { amount: 10 })
//!     .then_error(|e| matches!(e, AccountError::InsufficientFunds { .. }));
//! ```

use std::fmt::Debug;
use std::time::Duration;

use bifrost_core::{Metadata, RecordedEvent, StreamName, Timestamp};
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::command::{Command, CommandEnvelope};
use crate::event::{DomainEvent, decode, encode};
use crate::saga::{Reaction, Saga, Timeout};

/// An event as the store would give it back: at `stream`, with the next version and position.
pub fn recorded<E: DomainEvent>(stream: &str, version: u64, position: u64, event: &E) -> RecordedEvent {
    recorded_with(stream, version, position, event, Metadata::default())
}

/// [`recorded`] with metadata (a correlation id, say).
pub fn recorded_with<E: DomainEvent>(
    stream: &str,
    version: u64,
    position: u64,
    event: &E,
    metadata: Metadata,
) -> RecordedEvent {
    let new = match encode(event) {
        Ok(new) => new,
        Err(e) => panic!("the event does not encode: {e}"),
    };
    let stream = match StreamName::new(stream) {
        Ok(stream) => stream,
        Err(e) => panic!("{e}"),
    };
    let now = Timestamp::now();
    RecordedEvent {
        id: new.id,
        aggregate_type: stream.category().to_owned(),
        stream,
        event_type: new.event_type,
        schema_version: new.schema_version,
        version,
        position,
        data: new.data,
        metadata: metadata.to_json_bytes(),
        occurred_at: now,
        recorded_at: now,
    }
}

fn round_trip<E: DomainEvent>(event: &E) -> E {
    let stored = recorded("test-1", 1, 1, event);
    match decode(&stored) {
        Ok(event) => event,
        Err(e) => panic!("the event does not survive the store: {e}"),
    }
}

/// A test of one aggregate command.
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// The aggregate after these events.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            state = state.evolve(&round_trip(&event));
        }
        Self { state }
    }

    pub fn when(self, command: A::Command) -> AggregateOutcome<A> {
        let decided = self.state.decide(&command).map(|events| events.iter().map(round_trip).collect());
        AggregateOutcome { state: self.state, decided }
    }
}

/// What a command decided.
pub struct AggregateOutcome<A: Aggregate> {
    state: A,
    decided: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> AggregateOutcome<A> {
    /// Asserts the command produced exactly `expected`; returns the state after them.
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq + Debug,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        match self.decided {
            Ok(events) => {
                assert_eq!(events, expected, "the command decided other events");
                events.iter().fold(self.state, |state, e| state.evolve(e))
            }
            Err(e) => panic!("expected events {expected:?}, the command was refused: {e}"),
        }
    }

    /// Asserts the command was refused with an error `check` accepts.
    pub fn then_error(self, check: impl FnOnce(&A::Error) -> bool)
    where
        A::Event: Debug,
    {
        match self.decided {
            Ok(events) => panic!("expected a refusal, the command decided {events:?}"),
            Err(e) => assert!(check(&e), "the command was refused with an unexpected error: {e}"),
        }
    }
}

/// A test of a saga's reactions, stepping the instance as the manager does: the state goes
/// through its stored form after every step, only a pending timeout can fire, and a
/// completed instance ignores what follows.
pub struct SagaTest<G: Saga> {
    saga: G,
    state: G::State,
    instance: String,
    position: u64,
    done: bool,
    /// The names of the timeouts scheduled and neither fired nor cancelled.
    pending: Vec<String>,
}

impl<G: Saga> SagaTest<G> {
    pub fn new(saga: G, instance: &str) -> Self {
        Self {
            saga,
            state: G::State::default(),
            instance: instance.to_owned(),
            position: 0,
            done: false,
            pending: Vec::new(),
        }
    }

    /// The instance after reacting to `event`, appended to `stream` with no metadata (its
    /// reaction is not checked).
    pub fn given<E: DomainEvent>(mut self, stream: &str, event: &E) -> Self {
        let _ = self.react(stream, event, Metadata::default());
        self
    }

    /// [`given`](Self::given) for an event produced by one of the instance's commands: it
    /// carries the instance id as its correlation id, as a repository stores it.
    pub fn given_from_command<E: DomainEvent>(mut self, stream: &str, event: &E) -> Self {
        let metadata = self.correlated();
        let _ = self.react(stream, event, metadata);
        self
    }

    pub fn when<E: DomainEvent>(mut self, stream: &str, event: &E) -> SagaOutcome<G> {
        let reaction = self.react(stream, event, Metadata::default());
        SagaOutcome { reaction, state: self.state }
    }

    /// [`when`](Self::when) for an event produced by one of the instance's commands.
    pub fn when_from_command<E: DomainEvent>(mut self, stream: &str, event: &E) -> SagaOutcome<G> {
        let metadata = self.correlated();
        let reaction = self.react(stream, event, metadata);
        SagaOutcome { reaction, state: self.state }
    }

    /// The timeout `name` comes due. As with the manager, only a pending one fires: one never
    /// scheduled, cancelled, already fired, or of a completed instance changes nothing.
    pub fn when_timeout(mut self, name: &str, data: serde_json::Value) -> SagaOutcome<G> {
        let timeout = Timeout {
            id: Uuid::now_v7(),
            instance: self.instance.clone(),
            name: name.to_owned(),
            due_at: Timestamp::now(),
            data,
        };
        let pending = self.pending.iter().position(|n| n == name);
        let reaction = match pending {
            Some(index) if !self.done => {
                self.pending.remove(index);
                let reaction = self
                    .saga
                    .on_timeout(&mut self.state, &timeout)
                    .unwrap_or_else(|e| panic!("on_timeout failed: {e}"));
                self.stepped(reaction)
            }
            _ => Reaction::none(),
        };
        SagaOutcome { reaction, state: self.state }
    }

    pub fn when_command_fails<C: Command>(mut self, command: &C, error: &str) -> SagaOutcome<G> {
        let envelope = CommandEnvelope::new(command).unwrap_or_else(|e| panic!("{e}"));
        let reaction = if self.done {
            Reaction::none()
        } else {
            let reaction = self
                .saga
                .on_command_failed(&mut self.state, &envelope, error)
                .unwrap_or_else(|e| panic!("on_command_failed failed: {e}"));
            self.stepped(reaction)
        };
        SagaOutcome { reaction, state: self.state }
    }

    fn correlated(&self) -> Metadata {
        Metadata { correlation_id: Some(self.instance.clone()), ..Metadata::default() }
    }

    fn react<E: DomainEvent>(&mut self, stream: &str, event: &E, metadata: Metadata) -> Reaction {
        self.position += 1;
        let recorded = recorded_with(stream, self.position, self.position, event, metadata);
        match self.saga.correlate(&recorded) {
            Some(id) if id == self.instance => {}
            other => panic!("the event correlates to {other:?}, not to instance {:?}", self.instance),
        }
        if self.done {
            return Reaction::none();
        }
        let reaction =
            self.saga.handle(&mut self.state, &recorded).unwrap_or_else(|e| panic!("handle failed: {e}"));
        self.stepped(reaction)
    }

    /// The state through its stored form (as the next step loads it), and completion noted.
    fn stepped(&mut self, reaction: Reaction) -> Reaction {
        let stored =
            serde_json::to_vec(&self.state).unwrap_or_else(|e| panic!("the state does not encode: {e}"));
        self.state = serde_json::from_slice(&stored)
            .unwrap_or_else(|e| panic!("the state does not survive the store: {e}"));
        self.done |= reaction.complete;
        if self.done {
            self.pending.clear();
        } else {
            self.pending.retain(|name| !reaction.cancel.contains(name));
            self.pending.extend(reaction.schedule.iter().map(|(name, _, _)| name.clone()));
        }
        reaction
    }
}

/// What a saga did in one step.
pub struct SagaOutcome<G: Saga> {
    pub reaction: Reaction,
    pub state: G::State,
}

impl<G: Saga> SagaOutcome<G> {
    /// Asserts the step sent exactly these commands, in order.
    pub fn then_sends<C: Command + PartialEq + Debug>(self, expected: &[C]) -> Self {
        let sent: Vec<C> = self
            .reaction
            .commands
            .iter()
            .map(|c| {
                assert_eq!(c.command_type, C::TYPE, "the step sent a {} command", c.command_type);
                serde_json::from_value(c.payload.clone())
                    .unwrap_or_else(|e| panic!("{} does not decode: {e}", C::TYPE))
            })
            .collect();
        assert_eq!(sent, expected, "the step sent other commands");
        self
    }

    /// Asserts the step sent no command.
    pub fn then_sends_nothing(self) -> Self {
        let types: Vec<_> = self.reaction.commands.iter().map(|c| c.command_type.as_str()).collect();
        assert!(types.is_empty(), "the step sent {types:?}");
        self
    }

    /// Asserts the step scheduled the timeout `name` after `after`.
    pub fn then_schedules(self, name: &str, after: Duration) -> Self {
        assert!(
            self.reaction.schedule.iter().any(|(n, a, _)| n == name && *a == after),
            "the step did not schedule {name:?} after {after:?}: {:?}",
            self.reaction.schedule
        );
        self
    }

    pub fn then_cancels(self, name: &str) -> Self {
        assert!(self.reaction.cancel.iter().any(|n| n == name), "the step did not cancel {name:?}");
        self
    }

    pub fn then_completes(self) -> Self {
        assert!(self.reaction.complete, "the step did not complete the saga");
        self
    }
}
