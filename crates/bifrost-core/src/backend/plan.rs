//! Planning a group of appends before writing any of it.
//!
//! Backends that commit many appends in one transaction (group commit) decide each
//! append's fate in memory first — replay, conflict, duplicate, or where its events go —
//! against what is stored *and* what earlier appends of the same group will store. Then
//! they write the successful ones in bulk. A failed append never touches storage, so no
//! savepoints or rollbacks are needed to isolate it.

use std::collections::HashMap;

use crate::backend::rules::{StoredEventRef, StreamState, aggregate_type_of, check_expected, check_replay};
use crate::error::{Error, Result};
use crate::event::{EventId, NewEvent};
use crate::name::StreamName;
use crate::store::{AppendResult, Position, StreamAppend, Version};

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

/// One event a planned append writes, at the version and position its plan gives it.
#[derive(Clone, Copy, Debug)]
pub struct PlacedEvent<'a> {
    pub event: &'a NewEvent,
    pub version: Version,
    pub position: Position,
}

/// A stream a group writes: its version once the group commits, and the aggregate type it
/// is created with should the group create it (its first event's, see [`aggregate_type_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHead<'a> {
    pub stream: &'a StreamName,
    pub version: Version,
    pub aggregate_type: &'a str,
}

impl Planned {
    /// The events of `append` where this plan puts them, in order; none for a replay.
    pub fn placed<'a>(&self, append: &'a StreamAppend) -> impl Iterator<Item = PlacedEvent<'a>> + use<'a> {
        let (after, first_position, events) = match *self {
            Self::Write { after, first_position } => (after, first_position, append.events.as_slice()),
            Self::Replay(_) => (0, 0, &[][..]),
        };
        (0u64..).zip(events).map(move |(offset, event)| PlacedEvent {
            event,
            version: after + 1 + offset,
            position: first_position + offset,
        })
    }

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
            let after = *after;
            for placed in plan.placed(append) {
                self.planned_events.insert(
                    placed.event.id,
                    StoredEventRef {
                        stream: append.stream.clone(),
                        version: placed.version,
                        position: placed.position,
                        event_type: placed.event.event_type.clone(),
                        data: placed.event.data.clone(),
                    },
                );
            }
            let count = append.events.len() as u64;
            self.last_position += count;
            self.planned_streams.insert(append.stream.clone(), (after + count, StreamState::Live));
        }
        Ok(plans)
    }
}

/// The head of every stream that the planned appends of a group write, once per stream in
/// the order they are first written: a stream written by several appends of the group gets
/// the last one's version and the first one's aggregate type. Replays write nothing.
pub fn stream_heads<'a>(
    planned: impl IntoIterator<Item = (&'a StreamAppend, &'a Planned)>,
) -> Vec<StreamHead<'a>> {
    let mut heads: Vec<StreamHead<'a>> = Vec::new();
    let mut index: HashMap<&StreamName, usize> = HashMap::new();
    for (append, plan) in planned {
        let Planned::Write { after, .. } = *plan else { continue };
        let version = after + append.events.len() as u64;
        match index.get(&append.stream) {
            Some(&i) => heads[i].version = version,
            None => {
                index.insert(&append.stream, heads.len());
                let aggregate_type = aggregate_type_of(&append.events[0], &append.stream);
                heads.push(StreamHead { stream: &append.stream, version, aggregate_type });
            }
        }
    }
    heads
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::event::NewEvent;
    use crate::name::EventType;
    use crate::store::ExpectedVersion;

    struct Empty;

    impl PlanLookup for Empty {
        fn event(&mut self, _: &EventId) -> Result<Option<StoredEventRef>> {
            Ok(None)
        }

        fn stream(&mut self, _: &StreamName) -> Result<Option<(Version, StreamState)>> {
            Ok(None)
        }
    }

    fn append(stream: &str, n: usize, aggregate_type: Option<&str>) -> StreamAppend {
        let events = (0..n)
            .map(|_| {
                let event = NewEvent::new(EventType::new("a.b").unwrap(), "{}");
                match aggregate_type {
                    Some(t) => event.with_aggregate_type(t),
                    None => event,
                }
            })
            .collect();
        StreamAppend::new(StreamName::new(stream).unwrap(), ExpectedVersion::Any, events)
    }

    #[test]
    fn placed_events_and_stream_heads_follow_the_plans_of_a_group() {
        let mut planner = GroupPlanner::new(Empty, 10);
        let first = vec![append("order-1", 2, Some("Order")), append("cart-1", 1, None)];
        let second = vec![append("order-1", 3, None)];
        let first_plans = planner.plan(&first, true).unwrap();
        let second_plans = planner.plan(&second, true).unwrap();

        let placed: Vec<_> = first
            .iter()
            .zip(&first_plans)
            .chain(second.iter().zip(&second_plans))
            .flat_map(|(a, p)| p.placed(a).map(|e| (a.stream.as_str(), e.version, e.position)))
            .collect();
        assert_eq!(
            placed,
            [
                ("order-1", 1, 11),
                ("order-1", 2, 12),
                ("cart-1", 1, 13),
                ("order-1", 3, 14),
                ("order-1", 4, 15),
                ("order-1", 5, 16)
            ]
        );
        assert_eq!(planner.last_position(), 16);

        let heads = stream_heads(first.iter().zip(&first_plans).chain(second.iter().zip(&second_plans)));
        let heads: Vec<_> = heads.iter().map(|h| (h.stream.as_str(), h.version, h.aggregate_type)).collect();
        assert_eq!(heads, [("order-1", 5, "Order"), ("cart-1", 1, "cart")]);

        let replay = Planned::Replay(second_plans[0].result(&second[0]));
        assert_eq!(replay.placed(&second[0]).count(), 0);
        assert!(stream_heads([(&second[0], &replay)]).is_empty());
    }
}
