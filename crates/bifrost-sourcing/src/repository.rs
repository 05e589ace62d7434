//! The repository: load an aggregate (snapshot + newer events), run a command, save with
//! the loaded version as the expected version, and on a conflict reload and try again.

use std::sync::Arc;

use bifrost_core::{
    AppendResult, Direction, EventStore, ExpectedVersion, Metadata, StreamAppend, StreamName, Version,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::error::{Error, Result};
use crate::event::{decode, encode};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::upcast::Upcasters;

/// How many times a command meets a concurrent writer before [`Error::Conflict`].
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
const PAGE: usize = 1000;

/// What a command carries besides itself: an id that makes re-sending it harmless, and the
/// metadata its events get (correlation, causation, user, tenant, …).
#[derive(Clone, Debug, Default)]
pub struct CommandContext {
    /// When set, the events' ids derive from it, so executing the same command twice (a
    /// retry after a timeout, a saga re-dispatching after a crash) stores its events once.
    pub command_id: Option<Uuid>,
    pub metadata: Metadata,
}

impl CommandContext {
    pub fn with_id(command_id: Uuid) -> Self {
        Self { command_id: Some(command_id), metadata: Metadata::default() }
    }

    pub fn correlated(mut self, correlation_id: impl Into<String>) -> Self {
        self.metadata.correlation_id = Some(correlation_id.into());
        self
    }

    pub fn caused_by(mut self, causation_id: impl Into<String>) -> Self {
        self.metadata.causation_id = Some(causation_id.into());
        self
    }

    /// The id of the `index`-th event a command produces.
    fn event_id(&self, index: usize) -> Uuid {
        match self.command_id {
            Some(command) => Uuid::new_v5(&command, &(index as u64).to_be_bytes()),
            None => Uuid::now_v7(),
        }
    }
}

/// An aggregate as loaded.
#[derive(Debug)]
pub struct Loaded<A> {
    pub stream: StreamName,
    pub state: A,
    /// The stream's version (`0`: no events yet).
    pub version: Version,
    /// The version of the snapshot the load started from, if one was used.
    pub snapshot_version: Option<Version>,
    /// How many events were folded after the snapshot (all of them without one).
    pub replayed: u64,
}

/// The outcome of a command.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    pub stream: StreamName,
    /// The state after the command.
    pub state: A,
    /// The stream version after the command.
    pub version: Version,
    /// What `decide` produced (empty: the command changed nothing).
    pub events: Vec<A::Event>,
    /// Where the events landed, when there were any.
    pub appended: Option<AppendResult>,
    /// `true` when the command id had already been executed: nothing new was stored and
    /// `state` is the current state.
    pub already_applied: bool,
    /// How many loads it took (1 unless concurrent writers got in first).
    pub attempts: u32,
}

/// A command decided but not yet stored, for saving inside an application's own database
/// transaction (the outbox): hand `append` to the backend's transaction API.
#[derive(Debug)]
pub struct Prepared<A: Aggregate> {
    /// `None` when there is nothing to store: the command changed nothing, or its id was
    /// already executed.
    pub append: Option<StreamAppend>,
    /// The state once `append` is stored.
    pub state: A,
    pub events: Vec<A::Event>,
    pub already_applied: bool,
}

struct SnapshotPolicy<A> {
    store: Arc<dyn SnapshotStore>,
    every: u64,
    schema_version: u32,
    encode: fn(&A) -> serde_json::Result<Vec<u8>>,
    decode: fn(&[u8]) -> serde_json::Result<A>,
}

pub struct Repository<A: Aggregate> {
    store: Arc<dyn EventStore>,
    upcasters: Upcasters,
    snapshots: Option<SnapshotPolicy<A>>,
    max_attempts: u32,
}

impl<A: Aggregate> Repository<A> {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store, upcasters: Upcasters::default(), snapshots: None, max_attempts: DEFAULT_MAX_ATTEMPTS }
    }

    /// Upcasters applied to every event before it is decoded.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// How many loads a command may take when concurrent writers keep winning (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Saves a snapshot whenever a command carries the stream past a multiple of `every`
    /// events. `schema_version` names the state's encoding: bump it when the state type
    /// changes incompatibly and older snapshots are ignored (the load replays instead).
    pub fn with_snapshots(mut self, store: Arc<dyn SnapshotStore>, every: u64, schema_version: u32) -> Self
    where
        A: Serialize + DeserializeOwned,
    {
        self.snapshots = Some(SnapshotPolicy {
            store,
            every: every.max(1),
            schema_version,
            encode: |state| serde_json::to_vec(state),
            decode: |bytes| serde_json::from_slice(bytes),
        });
        self
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Whether the aggregate has any events (a deleted stream does not exist).
    pub async fn exists(&self, id: &str) -> Result<bool> {
        let stream = A::stream(id)?;
        match self.store.stream_info(&stream).await {
            Ok(info) => Ok(!info.deleted && info.version > 0),
            Err(bifrost_core::Error::StreamNotFound(_) | bifrost_core::Error::StreamDeleted(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The aggregate's current state: from the newest usable snapshot plus the events after
    /// it, or from all events. An aggregate without events loads as `A::default()` at
    /// version 0.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        let stream = A::stream(id)?;
        if let Some((state, version)) = self.load_snapshot(&stream).await {
            match self.fold(&stream, state, version).await {
                Ok(loaded) => return Ok(Loaded { snapshot_version: Some(version), ..loaded }),
                // The snapshot no longer describes the stream: it is beyond the stream's end
                // (the snapshots and the events were restored from different times) or the
                // stream was deleted since. The full replay decides.
                Err(Error::Store(
                    bifrost_core::Error::OutOfRange(_) | bifrost_core::Error::StreamNotFound(_),
                )) => {
                    tracing::warn!(%stream, "snapshot does not match the stream; replaying instead");
                }
                Err(e) => return Err(e),
            }
        }
        self.fold(&stream, A::default(), 0).await
    }

    /// Runs `command` against the current state and stores the events it decides, with the
    /// loaded version as the expected version; a concurrent writer makes it reload and
    /// decide again, up to the configured number of attempts.
    pub async fn execute(&self, id: &str, command: &A::Command) -> Result<Executed<A>> {
        self.execute_with(id, command, &CommandContext::default()).await
    }

    pub async fn execute_with(
        &self,
        id: &str,
        command: &A::Command,
        context: &CommandContext,
    ) -> Result<Executed<A>> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let loaded = self.load(id).await?;
            let events = match loaded.state.decide(command) {
                Ok(events) => events,
                // A command re-sent after it succeeded may be refused by the state it
                // produced (a second "open"): it was applied, not refused.
                Err(refusal) => match context.command_id {
                    Some(_) if self.store.event(context.event_id(0)).await?.is_some() => {
                        return self.already_applied(id, attempts).await;
                    }
                    _ => return Err(Error::rejected(refusal)),
                },
            };
            if events.is_empty() {
                return Ok(Executed {
                    stream: loaded.stream,
                    state: loaded.state,
                    version: loaded.version,
                    events,
                    appended: None,
                    already_applied: false,
                    attempts,
                });
            }
            let append = self.append_for(&loaded, &events, context)?;
            match self.store.append(append.stream, append.expected, append.events).await {
                Ok(result) if result.first_version <= loaded.version => {
                    // The store answered a re-sent command with its original result.
                    return self.already_applied(id, attempts).await;
                }
                Ok(result) => {
                    let mut state = loaded.state;
                    for event in &events {
                        state = state.evolve(event);
                    }
                    // A soft-deleted stream keeps counting: its first new version is past
                    // the loaded (empty) one.
                    let version = result.last_version;
                    self.maybe_snapshot(&loaded.stream, &state, loaded.version, version).await;
                    return Ok(Executed {
                        stream: loaded.stream,
                        state,
                        version,
                        events,
                        appended: Some(result),
                        already_applied: false,
                        attempts,
                    });
                }
                Err(bifrost_core::Error::DuplicateEventId { .. }) if context.command_id.is_some() => {
                    return self.already_applied(id, attempts).await;
                }
                Err(bifrost_core::Error::WrongExpectedVersion(_)) if attempts < self.max_attempts => {
                    tokio::task::yield_now().await;
                }
                Err(bifrost_core::Error::WrongExpectedVersion(_)) => {
                    return Err(Error::Conflict { stream: loaded.stream, attempts });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Decides `command` without storing anything: the append to hand to a database
    /// transaction of the application's (see the backends' outbox APIs). The append expects
    /// the loaded version; on a conflict, prepare again.
    pub async fn prepare(
        &self,
        id: &str,
        command: &A::Command,
        context: &CommandContext,
    ) -> Result<Prepared<A>> {
        let loaded = self.load(id).await?;
        if context.command_id.is_some() && self.store.event(context.event_id(0)).await?.is_some() {
            return Ok(Prepared {
                append: None,
                state: loaded.state,
                events: Vec::new(),
                already_applied: true,
            });
        }
        let events = loaded.state.decide(command).map_err(Error::rejected)?;
        let append = if events.is_empty() { None } else { Some(self.append_for(&loaded, &events, context)?) };
        let mut state = loaded.state;
        for event in &events {
            state = state.evolve(event);
        }
        Ok(Prepared { append, state, events, already_applied: false })
    }

    /// Saves a snapshot of the aggregate now, whatever its version (no-op without a policy
    /// or without events).
    pub async fn snapshot(&self, id: &str) -> Result<()> {
        let Some(policy) = &self.snapshots else { return Ok(()) };
        let loaded = self.load(id).await?;
        if loaded.version == 0 {
            return Ok(());
        }
        let state = (policy.encode)(&loaded.state).map_err(|e| Error::encode("a snapshot", e))?;
        let snapshot = Snapshot {
            stream: loaded.stream,
            version: loaded.version,
            schema_version: policy.schema_version,
            state: state.into(),
        };
        policy.store.save(&snapshot).await
    }

    fn append_for(
        &self,
        loaded: &Loaded<A>,
        events: &[A::Event],
        context: &CommandContext,
    ) -> Result<StreamAppend> {
        let mut new_events = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            new_events
                .push(encode(event)?.with_id(context.event_id(index)).with_metadata(self.metadata(context)));
        }
        let expected = if loaded.version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(loaded.version)
        };
        Ok(StreamAppend::new(loaded.stream.clone(), expected, new_events))
    }

    fn metadata(&self, context: &CommandContext) -> Metadata {
        let mut metadata = context.metadata.clone();
        if metadata.causation_id.is_none() {
            metadata.causation_id = context.command_id.map(|id| id.to_string());
        }
        metadata
    }

    async fn already_applied(&self, id: &str, attempts: u32) -> Result<Executed<A>> {
        let current = self.load(id).await?;
        Ok(Executed {
            stream: current.stream,
            state: current.state,
            version: current.version,
            events: Vec::new(),
            appended: None,
            already_applied: true,
            attempts,
        })
    }

    /// Folds the events after `version` into `state`.
    async fn fold(&self, stream: &StreamName, mut state: A, mut version: Version) -> Result<Loaded<A>> {
        let mut replayed = 0;
        let mut from = version + 1;
        loop {
            let slice = match self.store.read_stream(stream, from, Direction::Forward, PAGE).await {
                Ok(slice) => slice,
                Err(bifrost_core::Error::StreamNotFound(_)) if version == 0 => break,
                Err(e) => return Err(e.into()),
            };
            for recorded in slice.events {
                let recorded = self.upcasters.upcast(recorded)?;
                version = recorded.version;
                state = state.evolve(&decode(&recorded)?);
                replayed += 1;
            }
            match slice.next {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(Loaded { stream: stream.clone(), state, version, snapshot_version: None, replayed })
    }

    /// The snapshot's state and version, when there is a usable one.
    async fn load_snapshot(&self, stream: &StreamName) -> Option<(A, Version)> {
        let policy = self.snapshots.as_ref()?;
        let snapshot = match policy.store.load(stream).await {
            Ok(snapshot) => snapshot?,
            Err(e) => {
                tracing::warn!(%stream, error = %e, "cannot read the snapshot; replaying instead");
                return None;
            }
        };
        if snapshot.schema_version != policy.schema_version {
            return None;
        }
        match (policy.decode)(&snapshot.state) {
            Ok(state) => Some((state, snapshot.version)),
            Err(e) => {
                tracing::warn!(%stream, error = %e, "snapshot does not decode; replaying instead");
                None
            }
        }
    }

    /// Saves a snapshot when the command carried the stream past a multiple of `every`. A
    /// failed save costs only speed (the next load replays more), so it is logged, not
    /// returned: the command's events are already stored.
    async fn maybe_snapshot(&self, stream: &StreamName, state: &A, before: Version, after: Version) {
        let Some(policy) = &self.snapshots else { return };
        if after / policy.every == before / policy.every {
            return;
        }
        let saved = match (policy.encode)(state) {
            Ok(bytes) => {
                let snapshot = Snapshot {
                    stream: stream.clone(),
                    version: after,
                    schema_version: policy.schema_version,
                    state: bytes.into(),
                };
                policy.store.save(&snapshot).await
            }
            Err(e) => Err(Error::encode("a snapshot", e)),
        };
        if let Err(e) = saved {
            tracing::warn!(%stream, error = %e, "cannot save a snapshot");
        }
    }
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            upcasters: self.upcasters.clone(),
            snapshots: self.snapshots.as_ref().map(|p| SnapshotPolicy {
                store: Arc::clone(&p.store),
                every: p.every,
                schema_version: p.schema_version,
                encode: p.encode,
                decode: p.decode,
            }),
            max_attempts: self.max_attempts,
        }
    }
}
