//! A consumer group's delivery state, in memory and without I/O: which events it has read
//! from the log, which are leased, waiting for a retry, settled (acked or parked), and the
//! checkpoint below which everything is settled. Time comes in as an argument ([`Moment`]),
//! so tests drive it without sleeping.
//!
//! Ordering per stream: only the first unsettled event of a stream can be handed out, and
//! only while no event of that stream is leased or waiting for a retry. Different streams
//! are independent, so one slow or failing stream holds back nobody else.
//!
//! Attempts survive a crash. The durable form ([`Cursor`]) lists the events leased when it
//! was written, and a restart counts each of them as a failed attempt. A fetch that is not
//! deferred returns only after such a write; a deferred one (in-process consumers) does
//! not wait, but only hands out, unrecorded, events below a *horizon* that a write has
//! already declared: "deferred leases may be out up to here". After a crash, every event
//! below that horizon, and every event that failed before, is leased recorded (the fetch
//! waits for the write) until it settles, so a delivery that crashes the process is
//! counted from its second attempt on and a poison event ends up parked instead of
//! crashing the process forever.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bifrost_core::group::{DeadLetter, GroupConfig, Lease, LeaseToken, NACKED, NackAction, timeout_reason};
use bifrost_core::{EventId, Position, RecordedEvent, StreamName, Timestamp};
use serde::{Deserialize, Serialize};

/// The reason given to an event whose lease was out when its process stopped.
pub(crate) const STOPPED: &str = "the lease was still out when the process stopped";

/// How far beyond what the reader has taken in a deferred-lease horizon is declared, so
/// that consumers following the log live do not wait for a write per event. It moves on
/// again (a write nobody waits for) once the reader is half way there.
const HORIZON_STEP: u64 = 65_536;

/// A moment as the ledger sees it: a monotonic instant for deadlines, the wall clock for
/// what is written down (retry times, when an event was parked).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Moment {
    pub(crate) instant: Instant,
    pub(crate) wall: Timestamp,
}

impl Moment {
    pub(crate) fn now() -> Self {
        Self { instant: Instant::now(), wall: Timestamp::now() }
    }

    /// The wall-clock time `delay` from now.
    fn wall_after(self, delay: Duration) -> Timestamp {
        let micros = i64::try_from(delay.as_micros()).unwrap_or(i64::MAX);
        Timestamp::from_micros(self.wall.as_micros().saturating_add(micros))
    }

    /// The instant of the wall-clock time `at` (now when it is past).
    fn instant_of(self, at: Timestamp) -> Instant {
        let micros = at.as_micros().saturating_sub(self.wall.as_micros());
        self.instant + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
    }
}

#[derive(Debug)]
enum EntryState {
    Idle,
    Leased { lease: LeaseToken, deadline: Instant, since: Instant },
    Waiting { due: Instant, due_at: Timestamp },
}

#[derive(Debug)]
struct Entry {
    event: RecordedEvent,
    /// The queue the entry waits in: its stream (per-stream order) or its own (unordered).
    queue: StreamName,
    /// Deliveries that failed (nacked, timed out, or out when the process stopped).
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

/// The durable part of a ledger: enough to rebuild it by re-reading the log from the
/// checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Cursor {
    pub(crate) checkpoint: Position,
    /// Settled positions above the checkpoint, as deltas from the previous one (the first
    /// from the checkpoint): small numbers, since acks arrive roughly in log order.
    #[serde(default)]
    pub(crate) settled: Vec<u64>,
    /// Unsettled events that failed before: (position, failures, retry due, last reason).
    #[serde(default)]
    pub(crate) failed: Vec<(Position, u32, Option<Timestamp>, Option<String>)>,
    /// Events leased when this was written, as deltas like `settled`: a restart counts
    /// each as a failed attempt.
    #[serde(default)]
    pub(crate) leased: Vec<u64>,
    /// Events replayed from the dead-letter queue and not settled yet: (position, id,
    /// failures, counting the lease out when this was written).
    #[serde(default)]
    pub(crate) replays: Vec<(Position, EventId, u32)>,
    /// Deferred leases may have been handed out, unrecorded, for events up to here.
    #[serde(default)]
    pub(crate) deferred_to: Option<Position>,
}

/// What a restarted group remembers until it has re-read the log up to where it was.
#[derive(Debug, Default)]
struct Restored {
    settled: BTreeSet<Position>,
    failed: HashMap<Position, (u32, Option<Timestamp>, Option<String>)>,
    leased: BTreeSet<Position>,
    /// The highest position above: once the reader passes it, all of this is used up.
    horizon: Position,
}

/// Leases handed out by [`Ledger::lease`].
#[derive(Debug, Default)]
pub(crate) struct Leased {
    pub(crate) leases: Vec<Lease>,
    /// Some of them must be recorded before they are handed out.
    pub(crate) record: bool,
}

#[derive(Debug)]
pub(crate) struct Ledger {
    /// The high half of this run's lease tokens: no token of an earlier run matches.
    run: u64,
    /// Per-stream order; `false`: every event is a queue of its own.
    ordered: bool,
    checkpoint: Position,
    read_to: Position,
    entries: BTreeMap<Position, Entry>,
    streams: HashMap<StreamName, StreamQueue>,
    ready: BTreeSet<Position>,
    /// Leases held, by the low half of their token (the high half is `run` for every one).
    leases: HashMap<u64, Position>,
    expiries: BTreeSet<(Instant, Position)>,
    retries: BTreeSet<(Instant, Position)>,
    settled: BTreeSet<Position>,
    /// Entries that failed before (not replays): what the cursor lists with their failures,
    /// kept here so that a write does not walk every entry.
    failed: BTreeSet<Position>,
    /// Entries replayed from the dead-letter queue.
    replays: BTreeSet<Position>,
    restored: Restored,
    next_lease: u64,
    parked_out: Vec<DeadLetter>,
    /// Deferred leases of events up to here were declared by a write that succeeded.
    horizon: Position,
    /// The horizon the next write declares.
    horizon_wanted: Position,
    /// This run has handed out deferred leases: the horizon must keep ahead of the reader.
    deferring: bool,
    /// Declared by an earlier run that may have stopped with unrecorded deferred leases:
    /// every event up to here is leased recorded.
    careful_to: Position,
    /// Bumped by every change the cursor must persist.
    pub(crate) generation: u64,
    pub(crate) redeliveries: u64,
    /// Dead letters the group holds (written or about to be).
    pub(crate) parked: u64,
    pub(crate) timeouts: u64,
}

/// Counts a group reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LedgerCounts {
    /// Read from the log, not settled (in flight, waiting, or not yet delivered).
    pub(crate) unsettled: usize,
    pub(crate) in_flight: usize,
    pub(crate) waiting: usize,
}

/// Positions from deltas (see [`Cursor::settled`]).
fn undelta(from: Position, deltas: &[u64]) -> impl Iterator<Item = Position> + '_ {
    deltas.iter().scan(from, |at, delta| {
        *at += delta;
        Some(*at)
    })
}

/// Deltas of ascending positions above `from`.
fn delta(from: Position, positions: impl IntoIterator<Item = Position>) -> Vec<u64> {
    let mut at = from;
    positions
        .into_iter()
        .map(|p| {
            let d = p - at;
            at = p;
            d
        })
        .collect()
}

impl Ledger {
    /// A ledger resuming from `cursor`, with `parked` dead letters already stored. `run`
    /// makes this run's lease tokens its own.
    pub(crate) fn new(cursor: Cursor, parked: u64, run: u64, ordered: bool) -> Self {
        let settled: BTreeSet<Position> = undelta(cursor.checkpoint, &cursor.settled).collect();
        let leased: BTreeSet<Position> = undelta(cursor.checkpoint, &cursor.leased).collect();
        let failed: HashMap<_, _> =
            cursor.failed.into_iter().map(|(p, n, due, reason)| (p, (n, due, reason))).collect();
        let horizon = [settled.last().copied(), leased.last().copied(), failed.keys().max().copied()]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
        let careful_to = cursor.deferred_to.unwrap_or(0);
        Self {
            run,
            ordered,
            checkpoint: cursor.checkpoint,
            read_to: cursor.checkpoint,
            entries: BTreeMap::new(),
            streams: HashMap::new(),
            ready: BTreeSet::new(),
            leases: HashMap::new(),
            expiries: BTreeSet::new(),
            retries: BTreeSet::new(),
            settled: BTreeSet::new(),
            failed: BTreeSet::new(),
            replays: BTreeSet::new(),
            restored: Restored { settled, failed, leased, horizon },
            next_lease: 1,
            parked_out: Vec::new(),
            horizon: 0,
            horizon_wanted: 0,
            deferring: false,
            careful_to,
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
        // What an earlier run left waiting (its retries, and its leases, now failed
        // attempts) waits still, even before the reader has taken it in again.
        let restored = &self.restored;
        let waiting_ahead = restored.failed.values().filter(|(_, due, _)| due.is_some()).count()
            + restored.leased.iter().filter(|p| restored.failed.get(p).is_none_or(|f| f.1.is_none())).count();
        LedgerCounts {
            unsettled: self.entries.len(),
            in_flight: self.leases.len(),
            waiting: self.retries.len() + waiting_ahead,
        }
    }

    /// When the earliest lease expires or retry is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match (self.expiries.first(), self.retries.first()) {
            (Some(a), Some(b)) => Some(a.0.min(b.0)),
            (a, b) => a.or(b).map(|x| x.0),
        }
    }

    /// Takes in a page of the log read after `read_to`, up to `next_position`. An event an
    /// earlier run had leased comes back as a failed attempt: waiting for its backoff, or
    /// parked when that was its last attempt.
    pub(crate) fn admit(
        &mut self,
        events: Vec<RecordedEvent>,
        next_position: Position,
        now: Moment,
        config: &GroupConfig,
    ) {
        for event in events {
            let position = event.position;
            if position <= self.read_to {
                continue;
            }
            if self.restored.settled.remove(&position) {
                self.settled.insert(position);
                continue;
            }
            let queue = self.queue_of(&event);
            let mut entry = Entry {
                event,
                queue,
                failures: 0,
                state: EntryState::Idle,
                replay: false,
                last_reason: None,
            };
            if let Some((failures, due_at, reason)) = self.restored.failed.remove(&position) {
                entry.failures = failures;
                entry.last_reason = reason;
                if let Some(due_at) = due_at {
                    entry.state = EntryState::Waiting { due: now.instant_of(due_at), due_at };
                }
            }
            let was_leased = self.restored.leased.remove(&position);
            if was_leased {
                // Whatever the entry waited for before, it was delivered since.
                entry.state = EntryState::Idle;
            }
            if let EntryState::Waiting { due, .. } = entry.state {
                self.retries.insert((due, position));
            }
            self.insert(entry);
            if was_leased {
                self.fail(position, NackAction::Retry(None), STOPPED.to_owned(), now, config);
                self.generation += 1;
            }
        }
        if next_position > self.read_to {
            self.read_to = next_position;
        }
        if self.read_to > self.restored.horizon {
            self.restored = Restored::default();
        }
        self.advance_checkpoint();
    }

    /// Moves the deferred-lease horizon on ahead of the reader when it is half way there (for
    /// a run that hands out deferred leases). `true`: a write should declare it soon, before
    /// consumers reach it.
    pub(crate) fn advance_horizon(&mut self) -> bool {
        let declared = self.horizon.max(self.horizon_wanted);
        if !self.deferring || self.read_to.saturating_add(HORIZON_STEP / 2) <= declared {
            return false;
        }
        self.horizon_wanted = self.read_to.saturating_add(HORIZON_STEP);
        self.generation += 1;
        true
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
        let queue = self.queue_of(&event);
        self.insert(Entry { event, queue, failures, state: EntryState::Idle, replay, last_reason: None });
        self.generation += 1;
    }

    /// The queue of `event`: its stream, or (unordered) a name of its own — `@<position>`,
    /// which no stream of the same ledger can share, since then every queue is one.
    fn queue_of(&self, event: &RecordedEvent) -> StreamName {
        if self.ordered {
            return event.stream.clone();
        }
        StreamName::new(&format!("@{}", event.position)).unwrap_or_else(|_| event.stream.clone())
    }

    fn insert(&mut self, entry: Entry) {
        let position = entry.event.position;
        if entry.replay {
            self.replays.insert(position);
        } else if entry.failures > 0 {
            self.failed.insert(position);
        }
        let stream = entry.queue.clone();
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
    /// in log order, within the group's in-flight limit. `deferred`: see the module docs.
    pub(crate) fn lease(
        &mut self,
        max: usize,
        per_stream: usize,
        now: Instant,
        config: &GroupConfig,
        deferred: bool,
    ) -> Leased {
        let room = config.max_in_flight.saturating_sub(self.leases.len());
        let max = max.min(room);
        let mut out = Leased::default();
        while out.leases.len() < max {
            let Some(first) = self.ready.pop_first() else { break };
            let stream = self.entries[&first].queue.clone();
            if let Some(queue) = self.streams.get_mut(&stream) {
                queue.ready_at = None;
            }
            // The stream's first event and, for batches, the ones right after it.
            let limit = per_stream.max(1).min(max - out.leases.len());
            let mut next = Some(first);
            for _ in 0..limit {
                let Some(position) = next else { break };
                let lease = self.lease_one(position, now, config.ack_timeout);
                out.record |= !deferred || self.must_record(position, lease.attempt);
                out.leases.push(lease);
                next = self.streams[&stream].pending.range(position + 1..).next().copied();
            }
        }
        if !out.leases.is_empty() {
            self.generation += 1;
        }
        out
    }

    /// Whether a deferred lease of `position` at `attempt` must be recorded before it is
    /// handed out; moves the horizon the next write declares when needed.
    fn must_record(&mut self, position: Position, attempt: u32) -> bool {
        self.deferring = true;
        if attempt > 1 || position <= self.careful_to {
            return true;
        }
        if position <= self.horizon {
            return false;
        }
        let wanted = self.read_to.max(position).saturating_add(HORIZON_STEP);
        self.horizon_wanted = self.horizon_wanted.max(wanted);
        true
    }

    fn lease_one(&mut self, position: Position, now: Instant, ack_timeout: Duration) -> Lease {
        let lease = LeaseToken::new(self.run, self.next_lease);
        self.next_lease += 1;
        let deadline = now + ack_timeout;
        let entry = self.entries.get_mut(&position).expect("a ready position has an entry");
        entry.state = EntryState::Leased { lease, deadline, since: now };
        let attempt = entry.failures + 1;
        let event = entry.event.clone();
        let entry_queue = entry.queue.clone();
        if attempt > 1 {
            self.redeliveries += 1;
        }
        if let Some(queue) = self.streams.get_mut(&entry_queue) {
            queue.busy += 1;
        }
        self.leases.insert(lease.low(), position);
        self.expiries.insert((deadline, position));
        Lease { token: lease, attempt, event }
    }

    /// Ends a lease without a verdict: the entry is idle again (its stream refreshed by
    /// the caller's next step). Returns the position and when it was leased; `None` when
    /// the lease is not held.
    fn release(&mut self, lease: LeaseToken) -> Option<(Position, Instant)> {
        if lease.high() != self.run {
            return None;
        }
        let position = self.leases.remove(&lease.low())?;
        let entry = self.entries.get_mut(&position)?;
        let EntryState::Leased { deadline, since, .. } = entry.state else { return None };
        self.expiries.remove(&(deadline, position));
        entry.state = EntryState::Idle;
        if let Some(queue) = self.streams.get_mut(&entry.queue) {
            queue.busy -= 1;
        }
        Some((position, since))
    }

    /// Ends leases that were never handed out (their recording failed): idle again, their
    /// attempt uncounted.
    pub(crate) fn unlease(&mut self, leases: &[LeaseToken]) {
        for &lease in leases {
            if let Some((position, _)) = self.release(lease)
                && let Some(entry) = self.entries.get(&position)
            {
                let stream = entry.queue.clone();
                self.refresh(&stream);
            }
        }
        self.generation += 1;
    }

    /// [`unlease`](Self::unlease) of every lease out.
    pub(crate) fn unlease_all(&mut self) {
        let leases: Vec<LeaseToken> = self.leases.keys().map(|&low| LeaseToken::new(self.run, low)).collect();
        self.unlease(&leases);
    }

    /// Acks leases. Returns when each acked one was leased, and which were no longer held.
    pub(crate) fn ack(&mut self, leases: &[LeaseToken]) -> (Vec<Instant>, Vec<LeaseToken>) {
        let mut acked = Vec::with_capacity(leases.len());
        let mut expired = Vec::new();
        for &lease in leases {
            match self.release(lease) {
                Some((position, since)) => {
                    self.settle(position);
                    acked.push(since);
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

    /// Nacks leases: each is retried later or parked. Returns how many were held, and the
    /// leases no longer held.
    pub(crate) fn nack(
        &mut self,
        leases: &[LeaseToken],
        action: NackAction,
        reason: Option<&str>,
        now: Moment,
        config: &GroupConfig,
    ) -> (usize, Vec<LeaseToken>) {
        let mut done = 0;
        let mut expired = Vec::new();
        for &lease in leases {
            let Some((position, _)) = self.release(lease) else {
                expired.push(lease);
                continue;
            };
            done += 1;
            self.fail(position, action, reason.unwrap_or(NACKED).to_owned(), now, config);
        }
        if done > 0 {
            self.generation += 1;
            self.advance_checkpoint();
        }
        (done, expired)
    }

    /// One failed delivery of an idle entry: wait for a retry, or park it. A release is not a
    /// failure: the entry only waits.
    fn fail(
        &mut self,
        position: Position,
        action: NackAction,
        reason: String,
        now: Moment,
        config: &GroupConfig,
    ) {
        let Some(entry) = self.entries.get_mut(&position) else { return };
        let released = matches!(action, NackAction::Release(_));
        if !released {
            entry.failures += 1;
            if !entry.replay {
                self.failed.insert(position);
            }
        }
        let park = !released && (action == NackAction::Park || entry.failures >= config.max_attempts);
        if park {
            self.parked_out.push(DeadLetter {
                event_id: entry.event.id,
                position,
                stream: entry.event.stream.to_string(),
                event_type: entry.event.event_type.to_string(),
                attempts: entry.failures,
                reason,
                parked_at: now.wall,
            });
            self.parked += 1;
            self.settle(position);
            return;
        }
        let delay = match action {
            NackAction::Retry(Some(delay)) | NackAction::Release(delay) => delay,
            _ => config.backoff.delay(entry.failures),
        };
        let due = now.instant + delay;
        entry.state = EntryState::Waiting { due, due_at: now.wall_after(delay) };
        entry.last_reason = Some(reason);
        self.retries.insert((due, position));
        let stream = entry.queue.clone();
        if let Some(queue) = self.streams.get_mut(&stream) {
            queue.busy += 1;
        }
        self.refresh(&stream);
    }

    /// Removes a settled entry and lets its stream move on.
    fn settle(&mut self, position: Position) {
        let Some(entry) = self.entries.remove(&position) else { return };
        self.failed.remove(&position);
        self.replays.remove(&position);
        if let EntryState::Waiting { due, .. } = entry.state {
            self.retries.remove(&(due, position));
            if let Some(queue) = self.streams.get_mut(&entry.queue) {
                queue.busy -= 1;
            }
        }
        if let Some(queue) = self.streams.get_mut(&entry.queue) {
            queue.pending.remove(&position);
            if queue.ready_at == Some(position) {
                self.ready.remove(&position);
                queue.ready_at = None;
            }
        }
        if !entry.replay {
            self.settled.insert(position);
        }
        self.refresh(&entry.queue);
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
    pub(crate) fn tick(&mut self, now: Moment, config: &GroupConfig) -> (bool, Option<Instant>) {
        let mut changed = false;
        while let Some(&(deadline, position)) = self.expiries.first() {
            if deadline > now.instant {
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
            self.fail(position, NackAction::Retry(None), timeout_reason(config.ack_timeout), now, config);
            changed = true;
        }
        while let Some(&(due, position)) = self.retries.first() {
            if due > now.instant {
                break;
            }
            self.retries.pop_first();
            if let Some(entry) = self.entries.get_mut(&position) {
                entry.state = EntryState::Idle;
                let stream = entry.queue.clone();
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
        (changed, self.next_deadline())
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

    /// The durable form of the ledger now.
    pub(crate) fn cursor(&self) -> Cursor {
        // Until the log is re-read past what an earlier run knew, that knowledge is kept.
        let settled = self.settled.union(&self.restored.settled).copied().filter(|&p| p > self.checkpoint);
        let mut leased: BTreeSet<Position> = self.restored.leased.clone();
        let mut failed: Vec<_> =
            self.restored.failed.iter().map(|(&p, (n, due, reason))| (p, *n, *due, reason.clone())).collect();
        let is_out = |e: &Entry| matches!(e.state, EntryState::Leased { .. });
        for &p in self.leases.values() {
            if !self.entries.get(&p).is_some_and(|e| e.replay) {
                leased.insert(p);
            }
        }
        for (&p, e) in self.failed.iter().filter_map(|p| self.entries.get_key_value(p)) {
            let due = match e.state {
                EntryState::Waiting { due_at, .. } => Some(due_at),
                _ => None,
            };
            failed.push((p, e.failures, due, e.last_reason.clone()));
        }
        let replays = self
            .replays
            .iter()
            .filter_map(|p| self.entries.get_key_value(p))
            .map(|(&p, e)| (p, e.event.id, e.failures + u32::from(is_out(e))))
            .collect();
        failed.sort_by_key(|f| f.0);
        let deferred_to = self.careful_to.max(self.horizon).max(self.horizon_wanted);
        Cursor {
            checkpoint: self.checkpoint,
            settled: delta(self.checkpoint, settled),
            failed,
            leased: delta(self.checkpoint, leased),
            replays,
            deferred_to: (deferred_to > self.checkpoint).then_some(deferred_to),
        }
    }

    /// The cursor written as the group closes: every lease still out is listed in it, so
    /// this run's deferred horizon is no longer needed (an earlier run's still is).
    pub(crate) fn closing_cursor(&self) -> Cursor {
        let mut cursor = self.cursor();
        cursor.deferred_to = (self.careful_to > self.checkpoint).then_some(self.careful_to);
        cursor
    }

    /// A write of `cursor` succeeded: the horizon it declares holds.
    pub(crate) fn recorded(&mut self, cursor: &Cursor) {
        if let Some(to) = cursor.deferred_to {
            self.horizon = self.horizon.max(to);
        }
    }
}

#[cfg(test)]
mod model_check;
