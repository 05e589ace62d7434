//! The rules every backend applies the same way, so that backends cannot drift apart:
//! append validation, the idempotent-replay and expected-version checks (which
//! [`GroupPlanner`](super::plan::GroupPlanner) applies to a whole group), the paging rules
//! of stream and log reads, and the validation of state writes.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::event::{EventId, NewEvent, validate_new_event};
use crate::name::{EventType, StreamName};
use crate::state::{MAX_STATE_NAME_LEN, StateChange};
use crate::store::{AppendResult, Direction, Position, StreamAppend, Version};

/// The checks every backend makes before touching storage: non-empty events, valid event
/// fields, no stream twice, no event id twice.
pub fn validate_appends(appends: &[StreamAppend]) -> Result<()> {
    if appends.is_empty() {
        return Err(Error::InvalidArgument("an append needs at least one stream".into()));
    }
    let mut streams = HashSet::with_capacity(appends.len());
    let mut ids = HashSet::new();
    for append in appends {
        if append.events.is_empty() {
            return Err(Error::InvalidArgument(format!("the append to {} has no events", append.stream)));
        }
        if !streams.insert(&append.stream) {
            return Err(Error::InvalidArgument(format!(
                "stream {} appears more than once in one append",
                append.stream
            )));
        }
        for event in &append.events {
            validate_new_event(event)?;
            if !ids.insert(event.id) {
                return Err(Error::InvalidArgument(format!(
                    "event id {} appears more than once in one append",
                    event.id
                )));
            }
        }
    }
    Ok(())
}

/// What a backend found for an event id during an idempotency check.
#[derive(Clone, Debug)]
pub struct StoredEventRef {
    pub stream: StreamName,
    pub version: Version,
    pub position: Position,
    pub event_type: EventType,
    pub data: bytes::Bytes,
}

/// Decides whether `append` re-sends events that are already stored.
///
/// `Ok(Some(result))`: every event is already stored, in this stream, in this order, with
/// the same type and data — the original result is the answer and nothing is written.
/// `Ok(None)`: the first id is new; the append goes ahead (a later id that turns out to be
/// stored is a [`Error::DuplicateEventId`], which the backend detects).
/// `Err(DuplicateEventId)`: some id is stored for a different event or place.
pub fn check_replay(
    append: &StreamAppend,
    mut lookup: impl FnMut(&EventId) -> Result<Option<StoredEventRef>>,
) -> Result<Option<AppendResult>> {
    let Some(first) = append.events.first() else { return Ok(None) };
    let Some(stored_first) = lookup(&first.id)? else { return Ok(None) };
    let mut last = stored_first.clone();
    for (offset, event) in (0u64..).zip(&append.events) {
        let stored = if offset == 0 {
            stored_first.clone()
        } else {
            lookup(&event.id)?.ok_or(Error::DuplicateEventId { id: first.id })?
        };
        let same = stored.stream == append.stream
            && stored.version == stored_first.version + offset
            && stored.event_type == event.event_type
            && stored.data == event.data;
        if !same {
            return Err(Error::DuplicateEventId { id: event.id });
        }
        last = stored;
    }
    Ok(Some(AppendResult {
        stream: append.stream.clone(),
        first_version: stored_first.version,
        last_version: last.version,
        first_position: stored_first.position,
        last_position: last.position,
    }))
}

/// The state of a stream as a backend keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    Live,
    SoftDeleted,
    Tombstoned,
}

impl StreamState {
    pub fn as_i64(self) -> i64 {
        match self {
            Self::Live => 0,
            Self::SoftDeleted => 1,
            Self::Tombstoned => 2,
        }
    }

    pub fn from_i64(v: i64) -> Result<Self> {
        match v {
            0 => Ok(Self::Live),
            1 => Ok(Self::SoftDeleted),
            2 => Ok(Self::Tombstoned),
            other => Err(super::codec::corrupt("stream state", other)),
        }
    }
}

/// The expected-version rule, given a stream's stored version and state: returns the
/// version to append after. Tombstoned streams refuse every append; soft-deleted ones count
/// as absent for the check but keep counting versions.
pub fn check_expected(
    append: &StreamAppend,
    stored: Option<(Version, StreamState)>,
) -> Result<Version, Error> {
    let (version, actual) = match stored {
        None => (0, None),
        Some((_, StreamState::Tombstoned)) => return Err(Error::StreamDeleted(append.stream.clone())),
        Some((v, StreamState::SoftDeleted)) => (v, None),
        Some((v, StreamState::Live)) => (v, Some(v)),
    };
    append
        .expected
        .check(&append.stream, actual)
        .map(|()| version)
        .map_err(|c| Error::WrongExpectedVersion(vec![c]))
}

/// Default `aggregate_type`: the event's own, else the stream's category.
pub fn aggregate_type_of<'a>(event: &'a NewEvent, stream: &'a StreamName) -> &'a str {
    event.aggregate_type.as_deref().unwrap_or_else(|| stream.local_category())
}

/// The versions a stream read covers, and where the next page starts.
pub struct StreamWindow {
    pub first: Version,
    pub count: usize,
    pub direction: Direction,
    pub next: Option<Version>,
}

impl StreamWindow {
    pub fn iter(&self) -> impl Iterator<Item = Version> + '_ {
        let n = self.count as u64;
        (0..n).map(move |i| match self.direction {
            Direction::Forward => self.first + i,
            Direction::Backward => self.first - i,
        })
    }
}

/// Applies the paging rules of `read_stream` for a stream at version `last`: forward reads
/// may start at most one past the end, backward reads beyond the end start at the end.
pub fn stream_window(
    stream: &StreamName,
    last: Version,
    from: Version,
    direction: Direction,
    limit: usize,
) -> Result<StreamWindow> {
    let limit = limit.max(1) as u64;
    match direction {
        Direction::Forward => {
            let first = from.max(1);
            if first > last + 1 {
                return Err(Error::OutOfRange(format!(
                    "stream {stream} is at version {last}; a forward read can start at most at {}",
                    last + 1
                )));
            }
            let end = last.min(first.saturating_add(limit - 1));
            let count = if first > last { 0 } else { end - first + 1 };
            let next = (end < last).then_some(end + 1);
            Ok(StreamWindow { first, count: count as usize, direction, next })
        }
        Direction::Backward => {
            let first = from.min(last);
            if first == 0 {
                return Ok(StreamWindow { first: 0, count: 0, direction, next: None });
            }
            let count = first.min(limit);
            let end = first - count + 1;
            let next = (end > 1).then_some(end - 1);
            Ok(StreamWindow { first, count: count as usize, direction, next })
        }
    }
}

/// Starting a log read past the head is a client error (a position this log never had).
pub fn check_log_start(after: Position, head: Position) -> Result<()> {
    if after > head {
        return Err(Error::OutOfRange(format!(
            "position {after} is beyond the end of the log (the last position is {head})"
        )));
    }
    Ok(())
}

/// The checks every backend makes before writing: scopes and keys are non-empty, at most
/// [`MAX_STATE_NAME_LEN`] bytes, and without NUL (which some databases cannot store).
pub fn validate_state_changes(changes: &[StateChange]) -> Result<()> {
    for change in changes {
        let (scope, key) = change.names();
        validate_state_name("scope", scope)?;
        if let Some(key) = key {
            validate_state_name("key", key)?;
        }
    }
    Ok(())
}

pub fn validate_state_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument(format!("a state {what} must not be empty")));
    }
    if name.len() > MAX_STATE_NAME_LEN {
        return Err(Error::InvalidArgument(format!(
            "a state {what} is at most {MAX_STATE_NAME_LEN} bytes, got {}",
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(Error::InvalidArgument(format!("a state {what} must not contain NUL")));
    }
    Ok(())
}
