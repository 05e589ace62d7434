//! Planning a group of appends before writing any of it.
//!
//! Backends that commit many appends in one transaction (group commit) decide each
//! append's fate in memory first — replay, conflict, duplicate, or where its events go —
//! against what is stored *and* what earlier appends of the same group will store. Then
//! they write the successful ones in bulk. A failed append never touches storage, so no
//! savepoints or rollbacks are needed to isolate it.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::event::EventId;
use crate::name::StreamName;
use crate::store::{
    AppendResult, Position, StoredEventRef, StreamAppend, StreamState, Version, check_expected, check_replay,
};

/// What a backend can look up in its committed state while planning.
pub trait PlanLookup {
    fn event(&mut self, id: &EventId) -> Result<Option<StoredEventRef>>;
    fn stream(&mut self, stream: &StreamName) -> Result<Option<(Version, StreamState)>>;
}

/// Where one stream's part of an append goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Planned {
    /// Already stored by an earlier append with the same ids: answer with its result.
    Replay(AppendResult),
    /// New events: versions after `after`, positions from `first_position`.
    Write { after: Version, first_position: Position },
}

impl Planned {
    /// The append's result, once its group committed.
    pub fn result(&self, append: &StreamAppend) -> AppendResult {
        match self {
            Self::Replay(original) => original.clone(),
            Self::Write { after, first_position } => {
                let count = append.events.len() as u64;
                AppendResult {
                    stream: append.stream.clone(),
                    first_version: after + 1,
                    last_version: after + count,
                    first_position: *first_position,
                    last_position: first_position + count - 1,
                }
            }
        }
    }
}

/// Plans the appends of one group in order, each against the state the ones before it
/// leave behind.
pub struct GroupPlanner<L> {
    lookup: L,
    planned_events: HashMap<EventId, StoredEventRef>,
    planned_streams: HashMap<StreamName, (Version, StreamState)>,
    last_position: Position,
}

impl<L: PlanLookup> GroupPlanner<L> {
    /// `last_position`: the committed head the group's positions follow.
    pub fn new(lookup: L, last_position: Position) -> Self {
        Self { lookup, planned_events: HashMap::new(), planned_streams: HashMap::new(), last_position }
    }

    /// The last position the group will have written.
    pub fn last_position(&self) -> Position {
        self.last_position
    }

    /// The backend's lookup, e.g. to change how it looks things up between requests.
    pub fn lookup_mut(&mut self) -> &mut L {
        &mut self.lookup
    }

    /// The head of every stream the group writes, once it commits.
    pub fn into_planned_streams(self) -> HashMap<StreamName, (Version, StreamState)> {
        self.planned_streams
    }

    fn event(&mut self, id: &EventId) -> Result<Option<StoredEventRef>> {
        match self.planned_events.get(id) {
            Some(e) => Ok(Some(e.clone())),
            None => self.lookup.event(id),
        }
    }

    fn stream(&mut self, stream: &StreamName) -> Result<Option<(Version, StreamState)>> {
        match self.planned_streams.get(stream) {
            Some(s) => Ok(Some(*s)),
            None => self.lookup.stream(stream),
        }
    }

    /// Plans one request (all its streams, atomically). With `check_every_id`, every event
    /// id is looked up, so a reused id is reported here; without it, only the first id of
    /// each stream is (enough to recognise a replay), and the backend's unique index must
    /// catch the rest while writing.
    ///
    /// On `Err`, the planner's state is as before the call.
    pub fn plan(&mut self, appends: &[StreamAppend], check_every_id: bool) -> Result<Vec<Planned>> {
        let mut plans = Vec::with_capacity(appends.len());
        let mut conflicts = Vec::new();
        for append in appends {
            if let Some(original) = check_replay(append, |id| self.event(id))? {
                plans.push(Planned::Replay(original));
                continue;
            }
            // The first id is new; later ones may still be taken (in storage or in this group).
            for event in &append.events[1..] {
                let taken = self.planned_events.contains_key(&event.id)
                    || (check_every_id && self.lookup.event(&event.id)?.is_some());
                if taken {
                    return Err(Error::DuplicateEventId { id: event.id });
                }
            }
            match check_expected(append, self.stream(&append.stream)?) {
                Ok(after) => plans.push(Planned::Write { after, first_position: 0 }),
                Err(Error::WrongExpectedVersion(c)) => conflicts.extend(c),
                Err(other) => return Err(other),
            }
        }
        if !conflicts.is_empty() {
            return Err(Error::WrongExpectedVersion(conflicts));
        }
        for (append, plan) in appends.iter().zip(plans.iter_mut()) {
            let Planned::Write { after, first_position } = plan else { continue };
            *first_position = self.last_position + 1;
            for (offset, event) in (1u64..).zip(&append.events) {
                self.planned_events.insert(
                    event.id,
                    StoredEventRef {
                        stream: append.stream.clone(),
                        version: *after + offset,
                        position: self.last_position + offset,
                        event_type: event.event_type.clone(),
                        data: event.data.clone(),
                    },
                );
            }
            let count = append.events.len() as u64;
            self.last_position += count;
            self.planned_streams.insert(append.stream.clone(), (*after + count, StreamState::Live));
        }
        Ok(plans)
    }
}
