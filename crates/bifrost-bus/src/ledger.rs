//! A consumer group's delivery state, in memory and without I/O: which events it has read
//! from the log, which are leased, waiting for a retry, settled (acked or parked), and the
//! checkpoint below which everything is settled.
//!
//! Ordering per stream: only the first unsettled event of a stream can be handed out, and
//! only while no event of that stream is leased or waiting for a retry. Different streams
//! are independent, so one slow or failing stream holds back nobody else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bifrost_core::{EventId, Position, RecordedEvent, StreamName, Timestamp};
use serde::{Deserialize, Serialize};

use crate::config::GroupConfig;

/// A lease handed to a consumer: it holds one event until acked, nacked or timed out.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub lease: LeaseId,
    /// 1 for the first delivery; counts every delivery, failed or in flight.
    pub attempt: u32,
    pub event: RecordedEvent,
}

/// A lease's identity inside one run of a group (tokens carry the run's epoch too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub(crate) u64);

#[derive(Debug)]
enum EntryState {
    Idle,
    Leased { lease: LeaseId, deadline: Instant, since: Instant },
    Waiting { due: Instant, due_at: Timestamp },
}

#[derive(Debug)]
struct Entry {
    event: RecordedEvent,
    /// Deliveries that failed (nacked or timed out).
    failures: u32,
    state: EntryState,
    /// Replayed from the dead-letter queue: at or below the checkpoint, so it does not
    /// hold the checkpoint back and is remembered separately until settled.
    replay: bool,
    last_reason: Option<String>,
}

#[derive(Debug, Default)]
struct StreamQueue {
    pending: BTreeSet<Position>,
    /// Entries of the stream that are leased or waiting for a retry.
    busy: u32,
    /// The entry of this stream in `ready`, if any.
    ready_at: Option<Position>,
}

/// An event that failed for the last time, to be written to the dead-letter queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub event_id: EventId,
    pub position: Position,
    pub stream: String,
    pub event_type: String,
    pub attempts: u32,
    pub reason: String,
    pub parked_at: Timestamp,
}

/// What happens to nacked leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackAction {
    /// Redeliver after this delay, or after the group's backoff when `None`; parked once
    /// the group's `max_attempts` deliveries have failed.
    Retry(Option<Duration>),
    /// Park in the dead-letter queue now.
    Park,
}

/// The durable part of a ledger: enough to rebuild it by re-reading the log from the
/// checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Cursor {
    pub checkpoint: Position,
    /// Settled positions above the checkpoint, as deltas from the previous one (the first
    /// from the checkpoint): small numbers, since acks arrive roughly in log order.
    #[serde(default)]
    pub settled: Vec<u64>,
    /// Unsettled events that failed before: (position, failures, retry due, last reason).
    #[serde(default)]
    pub failed: Vec<(Position, u32, Option<Timestamp>, Option<String>)>,
    /// Events replayed from the dead-letter queue and not settled yet: (position, id, failures).
    #[serde(default)]
    pub replays: Vec<(Position, EventId, u32)>,
}

/// What a restarted group remembers until it has re-read the log up to where it was.
#[derive(Debug, Default)]
struct Restored {
    settled: BTreeSet<Position>,
    failed: HashMap<Position, (u32, Option<Timestamp>, Option<String>)>,
    /// The highest position above: once the reader passes it, all of this is used up.
    horizon: Position,
}

#[derive(Debug)]
pub(crate) struct Ledger {
    checkpoint: Position,
    read_to: Position,
    entries: BTreeMap<Position, Entry>,
    streams: HashMap<StreamName, StreamQueue>,
    ready: BTreeSet<Position>,
    leases: HashMap<LeaseId, Position>,
    expiries: BTreeSet<(Instant, Position)>,
    retries: BTreeSet<(Instant, Position)>,
    settled: BTreeSet<Position>,
    restored: Restored,
    next_lease: u64,
    leased: usize,
    parked_out: Vec<DeadLetter>,
    /// Bumped by every change the cursor must persist.
    pub generation: u64,
    pub redeliveries: u64,
    /// Dead letters the group holds (written or about to be).
    pub parked: u64,
    pub timeouts: u64,
}

/// Counts a group reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerCounts {
    /// Read from the log, not settled (in flight, waiting, or not yet delivered).
    pub unsettled: usize,
    pub in_flight: usize,
    pub waiting: usize,
}

impl Ledger {
    /// A ledger resuming from `cursor`, with `parked` dead letters already stored.
    pub(crate) fn new(cursor: Cursor, parked: u64) -> Self {
        let mut settled = BTreeSet::new();
        let mut at = cursor.checkpoint;
        for delta in cursor.settled {
            at += delta;
            settled.insert(at);
        }
        let failed: HashMap<_, _> =
            cursor.failed.into_iter().map(|(p, n, due, reason)| (p, (n, due, reason))).collect();
        let horizon = settled.last().copied().into_iter().chain(failed.keys().copied()).max().unwrap_or(0);
        Self {
            checkpoint: cursor.checkpoint,
            read_to: cursor.checkpoint,
            entries: BTreeMap::new(),
            streams: HashMap::new(),
            ready: BTreeSet::new(),
            leases: HashMap::new(),
            expiries: BTreeSet::new(),
            retries: BTreeSet::new(),
            settled: BTreeSet::new(),
            restored: Restored { settled, failed, horizon },
            next_lease: 1,
            leased: 0,
            parked_out: Vec::new(),
            generation: 0,
            redeliveries: 0,
            parked,
            timeouts: 0,
        }
    }

    pub(crate) fn checkpoint(&self) -> Position {
        self.checkpoint
    }

    pub(crate) fn read_to(&self) -> Position {
        self.read_to
    }

    /// Events read and not settled: the reader stops when this reaches its buffer limit.
    pub(crate) fn buffered(&self) -> usize {
        self.entries.len()
    }

    /// Positions an earlier run settled that the reader has not reached again: matching
    /// events beyond `read_to` that are not lag.
    pub(crate) fn settled_ahead(&self) -> usize {
        self.restored.settled.len()
    }

    pub(crate) fn counts(&self) -> LedgerCounts {
        LedgerCounts { unsettled: self.entries.len(), in_flight: self.leased, waiting: self.retries.len() }
    }

    /// Takes in a page of the log read after `read_to`, up to `next_position`.
    pub(crate) fn admit(&mut self, events: Vec<RecordedEvent>, next_position: Position, now: Instant) {
        let wall = Timestamp::now();
        for event in events {
            let position = event.position;
            if position <= self.read_to {
                continue;
            }
            if self.restored.settled.remove(&position) {
                self.settled.insert(position);
                continue;
            }
            let mut entry =
                Entry { event, failures: 0, state: EntryState::Idle, replay: false, last_reason: None };
            if let Some((failures, due_at, reason)) = self.restored.failed.remove(&position) {
                entry.failures = failures;
                entry.last_reason = reason;
                if let Some(due_at) = due_at {
                    let due = now + wall_delay(wall, due_at);
                    entry.state = EntryState::Waiting { due, due_at };
                    self.retries.insert((due, position));
                }
            }
            self.insert(entry);
        }
        if next_position > self.read_to {
            self.read_to = next_position;
        }
        if self.read_to > self.restored.horizon {
            self.restored = Restored::default();
        }
        self.advance_checkpoint();
    }

    /// Takes back an event replayed from the dead-letter queue, or remembered as replayed
    /// by an earlier run, with `failures` failed deliveries behind it.
    pub(crate) fn admit_replay(&mut self, event: RecordedEvent, failures: u32) {
        let position = event.position;
        if self.entries.contains_key(&position) {
            return;
        }
        let replay = position <= self.checkpoint;
        if !replay {
            self.settled.remove(&position);
        }
        self.insert(Entry { event, failures, state: EntryState::Idle, replay, last_reason: None });
        self.generation += 1;
    }

    fn insert(&mut self, entry: Entry) {
        let position = entry.event.position;
        let stream = entry.event.stream.clone();
        let queue = self.streams.entry(stream.clone()).or_default();
        queue.pending.insert(position);
        if !matches!(entry.state, EntryState::Idle) {
            queue.busy += 1;
        }
        self.entries.insert(position, entry);
        self.refresh(&stream);
    }

    /// Puts the stream's deliverable entry (if any) in `ready`, and only that one.
    fn refresh(&mut self, stream: &StreamName) {
        let Some(queue) = self.streams.get_mut(stream) else { return };
        let want = if queue.busy == 0 { queue.pending.first().copied() } else { None };
        if queue.ready_at != want {
            if let Some(old) = queue.ready_at {
                self.ready.remove(&old);
            }
            if let Some(new) = want {
                self.ready.insert(new);
            }
            queue.ready_at = want;
        }
        if queue.pending.is_empty() {
            self.streams.remove(stream);
        }
    }

    /// Leases up to `max` ready events (at most `per_stream` consecutive ones of a stream),
    /// in log order, within the group's in-flight limit.
    pub(crate) fn lease(
        &mut self,
        max: usize,
        per_stream: usize,
        now: Instant,
        config: &GroupConfig,
    ) -> Vec<Delivery> {
        let room = config.max_in_flight.saturating_sub(self.leased);
        let max = max.min(room);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(first) = self.ready.pop_first() else { break };
            let stream = self.entries[&first].event.stream.clone();
            if let Some(queue) = self.streams.get_mut(&stream) {
                queue.ready_at = None;
            }
            // The stream's first event and, for batches, the ones right after it.
            let limit = per_stream.max(1).min(max - out.len());
            let mut next = Some(first);
            for _ in 0..limit {
                let Some(position) = next else { break };
                out.push(self.lease_one(position, now, config.ack_timeout));
                next = self.streams[&stream].pending.range(position + 1..).next().copied();
            }
        }
        out
    }

    fn lease_one(&mut self, position: Position, now: Instant, ack_timeout: Duration) -> Delivery {
        let lease = LeaseId(self.next_lease);
        self.next_lease += 1;
        let deadline = now + ack_timeout;
        let entry = self.entries.get_mut(&position).expect("a ready position has an entry");
        entry.state = EntryState::Leased { lease, deadline, since: now };
        let attempt = entry.failures + 1;
        let event = entry.event.clone();
        if attempt > 1 {
            self.redeliveries += 1;
        }
        if let Some(queue) = self.streams.get_mut(&event.stream) {
            queue.busy += 1;
        }
        self.leases.insert(lease, position);
        self.expiries.insert((deadline, position));
        self.leased += 1;
        Delivery { lease, attempt, event }
    }

    /// Ends a lease without a verdict: the entry is idle again (its stream refreshed by
    /// the caller's next step). Returns the position and when it was leased; `None` when
    /// the lease is not held.
    fn release(&mut self, lease: LeaseId) -> Option<(Position, Option<Instant>)> {
        let position = self.leases.remove(&lease)?;
        let entry = self.entries.get_mut(&position)?;
        let mut leased_at = None;
        if let EntryState::Leased { deadline, since, .. } = entry.state {
            self.expiries.remove(&(deadline, position));
            leased_at = Some(since);
        }
        entry.state = EntryState::Idle;
        self.leased -= 1;
        if let Some(queue) = self.streams.get_mut(&entry.event.stream) {
            queue.busy -= 1;
        }
        Some((position, leased_at))
    }

    /// Acks leases. Returns when each acked one was leased, and which were no longer held.
    pub(crate) fn ack(&mut self, leases: &[LeaseId]) -> (Vec<Instant>, Vec<LeaseId>) {
        let mut acked = Vec::with_capacity(leases.len());
        let mut expired = Vec::new();
        for &lease in leases {
            match self.release(lease) {
                Some((position, since)) => {
                    self.settle(position);
                    acked.extend(since);
                }
                None => expired.push(lease),
            }
        }
        if !acked.is_empty() {
            self.generation += 1;
            self.advance_checkpoint();
        }
        (acked, expired)
    }

    /// Nacks leases: each is retried later or parked. Returns the leases no longer held.
    pub(crate) fn nack(
        &mut self,
        leases: &[LeaseId],
        action: NackAction,
        reason: Option<&str>,
        now: Instant,
        config: &GroupConfig,
    ) -> (usize, Vec<LeaseId>) {
        let mut done = 0;
        let mut expired = Vec::new();
        for &lease in leases {
            let Some((position, _)) = self.release(lease) else {
                expired.push(lease);
                continue;
            };
            done += 1;
            let reason = reason.map_or_else(|| "nacked by the consumer".to_owned(), str::to_owned);
            self.fail(position, action, reason, now, config);
        }
        if done > 0 {
            self.generation += 1;
            self.advance_checkpoint();
        }
        (done, expired)
    }

    /// One failed delivery of an idle entry: wait for a retry, or park it.
    fn fail(
        &mut self,
        position: Position,
        action: NackAction,
        reason: String,
        now: Instant,
        config: &GroupConfig,
    ) {
        let Some(entry) = self.entries.get_mut(&position) else { return };
        entry.failures += 1;
        let park = action == NackAction::Park || entry.failures >= config.max_attempts;
        if park {
            let entry = &self.entries[&position];
            self.parked_out.push(DeadLetter {
                event_id: entry.event.id,
                position,
                stream: entry.event.stream.to_string(),
                event_type: entry.event.event_type.to_string(),
                attempts: entry.failures,
                reason,
                parked_at: Timestamp::now(),
            });
            self.parked += 1;
            self.settle(position);
            return;
        }
        let delay = match action {
            NackAction::Retry(Some(delay)) => delay,
            _ => config.backoff.delay(entry.failures),
        };
        let due = now + delay;
        let due_at = Timestamp::from_micros(
            Timestamp::now().as_micros().saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX)),
        );
        entry.state = EntryState::Waiting { due, due_at };
        entry.last_reason = Some(reason);
        self.retries.insert((due, position));
        let stream = entry.event.stream.clone();
        if let Some(queue) = self.streams.get_mut(&stream) {
            queue.busy += 1;
        }
        self.refresh(&stream);
    }

    /// Removes a settled entry and lets its stream move on.
    fn settle(&mut self, position: Position) {
        let Some(entry) = self.entries.remove(&position) else { return };
        if let EntryState::Waiting { due, .. } = entry.state {
            self.retries.remove(&(due, position));
            if let Some(queue) = self.streams.get_mut(&entry.event.stream) {
                queue.busy -= 1;
            }
        }
        if let Some(queue) = self.streams.get_mut(&entry.event.stream) {
            queue.pending.remove(&position);
            if queue.ready_at == Some(position) {
                self.ready.remove(&position);
                queue.ready_at = None;
            }
        }
        if !entry.replay {
            self.settled.insert(position);
        }
        self.refresh(&entry.event.stream);
    }

    fn advance_checkpoint(&mut self) {
        let next = match self.entries.range(self.checkpoint + 1..).next() {
            Some((&position, _)) => position - 1,
            None => self.read_to,
        };
        if next > self.checkpoint {
            self.checkpoint = next;
            self.settled = self.settled.split_off(&(next + 1));
            self.generation += 1;
        }
    }

    /// Expires overdue leases and releases due retries. Returns whether anything became
    /// deliverable or was parked, and when to look again.
    pub(crate) fn tick(&mut self, now: Instant, config: &GroupConfig) -> (bool, Option<Instant>) {
        let mut changed = false;
        while let Some(&(deadline, position)) = self.expiries.first() {
            if deadline > now {
                break;
            }
            let lease = match self.entries.get(&position).map(|e| &e.state) {
                Some(EntryState::Leased { lease, .. }) => *lease,
                _ => {
                    self.expiries.pop_first();
                    continue;
                }
            };
            self.release(lease);
            self.timeouts += 1;
            let reason = format!("the ack timed out after {} ms", config.ack_timeout.as_millis());
            self.fail(position, NackAction::Retry(None), reason, now, config);
            changed = true;
        }
        while let Some(&(due, position)) = self.retries.first() {
            if due > now {
                break;
            }
            self.retries.pop_first();
            if let Some(entry) = self.entries.get_mut(&position) {
                entry.state = EntryState::Idle;
                let stream = entry.event.stream.clone();
                if let Some(queue) = self.streams.get_mut(&stream) {
                    queue.busy -= 1;
                }
                self.refresh(&stream);
                changed = true;
            }
        }
        if changed {
            self.generation += 1;
            self.advance_checkpoint();
        }
        let next = match (self.expiries.first(), self.retries.first()) {
            (Some(a), Some(b)) => Some(a.0.min(b.0)),
            (a, b) => a.or(b).map(|x| x.0),
        };
        (changed, next)
    }

    /// Dead letters produced since the last call, for the next persist.
    pub(crate) fn take_parked(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.parked_out)
    }

    /// Puts back dead letters whose write failed, so the next persist carries them.
    pub(crate) fn restore_parked(&mut self, mut parked: Vec<DeadLetter>) {
        parked.append(&mut self.parked_out);
        self.parked_out = parked;
    }

    pub(crate) fn cursor(&self) -> Cursor {
        let mut settled = Vec::with_capacity(self.settled.len() + self.restored.settled.len());
        let mut at = self.checkpoint;
        // Until the log is re-read past what an earlier run settled, that knowledge is kept.
        let all: BTreeSet<Position> = self.settled.union(&self.restored.settled).copied().collect();
        for position in all.into_iter().filter(|&p| p > self.checkpoint) {
            settled.push(position - at);
            at = position;
        }
        let mut failed: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| e.failures > 0 && !e.replay)
            .map(|(&p, e)| {
                let due = match e.state {
                    EntryState::Waiting { due_at, .. } => Some(due_at),
                    _ => None,
                };
                (p, e.failures, due, e.last_reason.clone())
            })
            .collect();
        failed
            .extend(self.restored.failed.iter().map(|(&p, (n, due, reason))| (p, *n, *due, reason.clone())));
        failed.sort_by_key(|f| f.0);
        let replays = self
            .entries
            .iter()
            .filter(|(_, e)| e.replay)
            .map(|(&p, e)| (p, e.event.id, e.failures))
            .collect();
        Cursor { checkpoint: self.checkpoint, settled, failed, replays }
    }
}

/// How long from `now` until the wall-clock time `at` (zero when past).
fn wall_delay(now: Timestamp, at: Timestamp) -> Duration {
    let micros = at.as_micros().saturating_sub(now.as_micros());
    Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// Lease ids are handed out as opaque tokens that also name the group's run, so a lease
/// from before a restart is recognised as expired rather than confused with a new one.
pub(crate) fn lease_token(epoch: u64, lease: LeaseId) -> String {
    format!("{epoch:016x}{:016x}", lease.0)
}

pub(crate) fn parse_lease_token(epoch: u64, token: &str) -> Option<LeaseId> {
    if token.len() != 32 || !token.is_ascii() {
        return None;
    }
    let (run, lease) = token.split_at(16);
    let run = u64::from_str_radix(run, 16).ok()?;
    let lease = u64::from_str_radix(lease, 16).ok()?;
    (run == epoch).then_some(LeaseId(lease))
}
