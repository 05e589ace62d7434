//! The ledger checked against a plain model with proptest: any sequence of reads, leases,
//! acks, nacks, the passing of time, writes and crashes. Time is an argument, so nothing
//! sleeps; a crash restarts from the last write, as a killed process would.
//!
//! The model keeps, per event of the log: read or not, failures, and whether it is settled,
//! leased (until when) or waiting (until when). The ledger must hand out exactly the
//! events the model says are ready — the first unsettled event of each stream with nothing
//! of its stream out, in log order, within the in-flight limit — with attempt = failures +
//! 1, and agree on the checkpoint and counts. Besides, a lease handed out unrecorded must
//! be covered by the horizon of the last write, and after a crash every event under that
//! horizon must be leased recorded: that is what makes a delivery that crashes the process
//! count.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bifrost_core::group::{Backoff, GroupConfig, LeaseToken, NackAction};
use bifrost_core::{EventType, Position, RecordedEvent, StreamName, Timestamp};
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::{Cursor, Ledger, Moment};

const STREAMS: usize = 4;
const LOG: usize = 24;
const ACK_TIMEOUT: u64 = 50;
const BACKOFF: u64 = 10;

fn config() -> GroupConfig {
    GroupConfig {
        ack_timeout: Duration::from_millis(ACK_TIMEOUT),
        max_attempts: 3,
        backoff: Backoff::fixed(Duration::from_millis(BACKOFF)),
        max_in_flight: 5,
        ..GroupConfig::default()
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// The reader takes in up to this many more events of the log.
    Read(usize),
    Lease {
        max: usize,
        deferred: bool,
    },
    /// Acks the n-th lease held (modulo how many there are).
    Ack(usize),
    Nack(usize, NackKind),
    /// Milliseconds pass; the timer runs.
    Advance(u64),
    /// The ledger's cursor is written.
    Write,
    /// The process dies and restarts from the last write.
    Crash,
}

#[derive(Clone, Copy, Debug)]
enum NackKind {
    Backoff,
    Delay(u64),
    Park,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..8).prop_map(Op::Read),
        4 => (1usize..6, any::<bool>()).prop_map(|(max, deferred)| Op::Lease { max, deferred }),
        4 => (0usize..8).prop_map(Op::Ack),
        2 => (0usize..8, prop_oneof![
            Just(NackKind::Backoff),
            (0u64..40).prop_map(NackKind::Delay),
            Just(NackKind::Park),
        ]).prop_map(|(i, k)| Op::Nack(i, k)),
        3 => (0u64..80).prop_map(Op::Advance),
        2 => Just(Op::Write),
        1 => Just(Op::Crash),
    ]
}

/// The log: event i (position i + 1) is in stream `stream_of[i]`.
fn log(stream_of: &[usize]) -> Vec<RecordedEvent> {
    let mut versions = [0u64; STREAMS];
    stream_of
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            versions[s] += 1;
            RecordedEvent {
                id: uuid::Uuid::from_u128(i as u128 + 1),
                stream: StreamName::new(&format!("s-{s}")).unwrap(),
                aggregate_type: "s".into(),
                event_type: EventType::new("test.event").unwrap(),
                schema_version: 1,
                version: versions[s],
                position: i as Position + 1,
                data: Bytes::from_static(b"{}"),
                metadata: Bytes::from_static(b"{}"),
                occurred_at: Timestamp::from_micros(0),
                recorded_at: Timestamp::from_micros(0),
            }
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Idle,
    /// Leased until this time (ms).
    Leased(u64),
    /// Waiting for a retry until this time (ms).
    Waiting(u64),
    Acked,
    Parked,
}

#[derive(Clone, Debug)]
struct Model {
    stream_of: Vec<usize>,
    read: usize,
    failures: Vec<u32>,
    state: Vec<State>,
    /// Held leases: token → event index.
    leases: Vec<(LeaseToken, usize)>,
}

impl Model {
    fn new(stream_of: Vec<usize>) -> Self {
        let n = stream_of.len();
        Self { stream_of, read: 0, failures: vec![0; n], state: vec![State::Idle; n], leases: Vec::new() }
    }

    fn unsettled(&self, i: usize) -> bool {
        !matches!(self.state[i], State::Acked | State::Parked)
    }

    /// The events a lease of `max` hands out now, in order.
    fn ready(&self, max: usize) -> Vec<usize> {
        let room = config().max_in_flight - self.leases.len();
        let mut out = Vec::new();
        for s in 0..STREAMS {
            let mine: Vec<usize> =
                (0..self.read).filter(|&i| self.stream_of[i] == s && self.unsettled(i)).collect();
            let busy = mine.iter().any(|&i| matches!(self.state[i], State::Leased(_) | State::Waiting(_)));
            if let (false, Some(&first)) = (busy, mine.first()) {
                out.push(first);
            }
        }
        out.sort_unstable();
        out.truncate(max.min(room));
        out
    }

    /// One failed delivery: parked at the last attempt, else waiting for the backoff.
    fn fail(&mut self, i: usize, now: u64, delay: Option<u64>, park: bool) {
        self.failures[i] += 1;
        self.state[i] = if park || self.failures[i] >= config().max_attempts {
            State::Parked
        } else {
            State::Waiting(now + delay.unwrap_or(BACKOFF))
        };
    }

    fn tick(&mut self, now: u64) {
        let expired: Vec<usize> = (0..self.state.len())
            .filter(|&i| matches!(self.state[i], State::Leased(deadline) if deadline <= now))
            .collect();
        for i in expired {
            self.leases.retain(|&(_, j)| j != i);
            self.fail(i, now, None, false);
        }
        for state in &mut self.state {
            if matches!(state, State::Waiting(due) if *due <= now) {
                *state = State::Idle;
            }
        }
    }

    fn checkpoint(&self) -> Position {
        (0..self.read).find(|&i| self.unsettled(i)).unwrap_or(self.read) as Position
    }

    /// What a restart makes of this (written) state: leases out become failed attempts.
    fn restarted(mut self, now: u64) -> Self {
        for (_, i) in std::mem::take(&mut self.leases) {
            self.fail(i, now, None, false);
        }
        self
    }
}

struct Run {
    events: Vec<RecordedEvent>,
    base: Instant,
    now: u64,
    run: u64,
    ledger: Ledger,
    model: Model,
    /// The last write: the cursor, and the model as it was then.
    written: (Cursor, Model),
    /// After a crash: every event up to here must be leased recorded until it settles.
    careful_to: Position,
}

impl Run {
    fn moment(&self) -> Moment {
        Moment {
            instant: self.base + Duration::from_millis(self.now),
            wall: Timestamp::from_micros(1_000_000_000_000 + self.now as i64 * 1000),
        }
    }

    /// Restarts the ledger from a cursor and re-reads the log up to where it was.
    fn reopen(&mut self, cursor: Cursor, read: usize) {
        self.run += 1;
        self.ledger = Ledger::new(cursor, 0, self.run, true);
        let from = self.ledger.checkpoint() as usize;
        self.ledger.admit(self.events[from..read].to_vec(), read as Position, self.moment(), &config());
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let config = config();
        match *op {
            Op::Read(n) => {
                let to = (self.model.read + n).min(self.events.len());
                let page = self.events[self.model.read..to].to_vec();
                self.ledger.admit(page, to as Position, self.moment(), &config);
                self.model.read = to;
            }
            Op::Lease { max, deferred } => {
                let want = self.model.ready(max);
                let leased = self.ledger.lease(max, 1, self.moment().instant, &config, deferred);
                let got: Vec<usize> = leased.leases.iter().map(|l| l.event.position as usize - 1).collect();
                prop_assert_eq!(&got, &want, "leased events");
                for lease in &leased.leases {
                    let i = lease.event.position as usize - 1;
                    prop_assert_eq!(lease.attempt, self.model.failures[i] + 1, "attempt of event {}", i);
                    self.model.state[i] = State::Leased(self.now + ACK_TIMEOUT);
                    self.model.leases.push((lease.token, i));
                }
                if !leased.leases.is_empty() {
                    prop_assert!(deferred || leased.record, "a lease that is not deferred is recorded");
                    let any_retry = leased.leases.iter().any(|l| l.attempt > 1);
                    prop_assert!(!any_retry || leased.record, "a retry is recorded");
                    let careful = leased.leases.iter().any(|l| l.event.position <= self.careful_to);
                    prop_assert!(
                        !careful || leased.record,
                        "after a crash, events under its horizon are recorded"
                    );
                    if !leased.record {
                        let horizon = self.written.0.deferred_to.unwrap_or(0);
                        let top = leased.leases.iter().map(|l| l.event.position).max().unwrap_or(0);
                        prop_assert!(
                            top <= horizon,
                            "unrecorded lease of {} above the written horizon {}",
                            top,
                            horizon
                        );
                    } else {
                        // The caller waits for the write that records them.
                        self.write();
                    }
                }
            }
            Op::Ack(n) if !self.model.leases.is_empty() => {
                let (token, i) = self.model.leases.remove(n % self.model.leases.len());
                let (acked, expired) = self.ledger.ack(&[token]);
                prop_assert_eq!((acked.len(), expired.len()), (1, 0));
                self.model.state[i] = State::Acked;
            }
            Op::Nack(n, kind) if !self.model.leases.is_empty() => {
                let (token, i) = self.model.leases.remove(n % self.model.leases.len());
                let action = match kind {
                    NackKind::Backoff => NackAction::Retry(None),
                    NackKind::Delay(ms) => NackAction::Retry(Some(Duration::from_millis(ms))),
                    NackKind::Park => NackAction::Park,
                };
                let (done, expired) = self.ledger.nack(&[token], action, None, self.moment(), &config);
                prop_assert_eq!((done, expired.len()), (1, 0));
                let delay = match kind {
                    NackKind::Delay(ms) => Some(ms),
                    _ => None,
                };
                self.model.fail(i, self.now, delay, matches!(kind, NackKind::Park));
            }
            Op::Ack(_) | Op::Nack(..) => {
                // Nothing held: a token of nothing is expired.
                let (acked, expired) = self.ledger.ack(&[LeaseToken::new(u64::MAX, 1)]);
                prop_assert_eq!((acked.len(), expired.len()), (0, 1));
            }
            Op::Advance(ms) => {
                self.now += ms;
                self.ledger.tick(self.moment(), &config);
                self.model.tick(self.now);
            }
            Op::Write => self.write(),
            Op::Crash => {
                let (cursor, model) = self.written.clone();
                self.careful_to = self.careful_to.max(cursor.deferred_to.unwrap_or(0));
                let read = model.read;
                self.model = model.restarted(self.now);
                self.reopen(cursor, read);
                self.write();
            }
        }
        self.check()
    }

    fn write(&mut self) {
        let cursor = self.ledger.cursor();
        self.ledger.recorded(&cursor);
        self.written = (cursor, self.model.clone());
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let counts = self.ledger.counts();
        let model = &self.model;
        let unsettled = (0..model.read).filter(|&i| model.unsettled(i)).count();
        let waiting = model.state.iter().filter(|s| matches!(s, State::Waiting(_))).count();
        prop_assert_eq!(self.ledger.checkpoint(), model.checkpoint(), "checkpoint");
        prop_assert_eq!(counts.unsettled, unsettled, "unsettled");
        prop_assert_eq!(counts.in_flight, model.leases.len(), "in flight");
        prop_assert_eq!(counts.waiting, waiting, "waiting");
        // Per-stream order: nothing of a stream is out before all its earlier events settled.
        let mut first_unsettled: HashMap<usize, usize> = HashMap::new();
        for i in 0..model.read {
            if model.unsettled(i) {
                first_unsettled.entry(model.stream_of[i]).or_insert(i);
            }
        }
        for &(_, i) in &model.leases {
            prop_assert_eq!(first_unsettled[&model.stream_of[i]], i, "event {} leased out of order", i);
        }
        Ok(())
    }
}

#[test]
fn the_ledger_behaves_as_the_model_under_any_sequence_of_operations() {
    let mut runner = TestRunner::new(Config { cases: 400, ..Config::default() });
    let strategy = (proptest::collection::vec(0..STREAMS, LOG), proptest::collection::vec(op(), 1..80));
    runner
        .run(&strategy, |(stream_of, ops)| {
            let events = log(&stream_of);
            let ledger = Ledger::new(Cursor::default(), 0, 1, true);
            let model = Model::new(stream_of);
            let mut run = Run {
                events,
                base: Instant::now(),
                now: 0,
                run: 1,
                written: (ledger.cursor(), model.clone()),
                ledger,
                model,
                careful_to: 0,
            };
            for op in &ops {
                run.apply(op)?;
            }
            Ok(())
        })
        .unwrap();
}
