//! The writer thread: the only connection that writes, committing appends (and state
//! writes, and outbox work) in groups.

use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use bifrost_core::backend::codec::{i64_from, u64_from};
use bifrost_core::backend::plan::{GroupPlanner, PlanLookup, Planned, stream_heads};
use bifrost_core::backend::rules::{StoredEventRef, StreamState, aggregate_type_of};
use bifrost_core::{
    AppendResult, DeleteMode, Error, EventType, Position, Result, StateChange, StreamAppend, StreamName,
    Timestamp, Version,
};
use bytes::Bytes;
use rusqlite::hooks::{AuthContext, Authorization};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

use crate::checkpoint::Checkpointer;
use crate::codec::sql;
use crate::outbox::{self, Job};
use crate::reader::stored_stream;
use crate::state;

enum Command {
    Append {
        appends: Vec<StreamAppend>,
        reply: oneshot::Sender<Result<Vec<AppendResult>>>,
    },
    /// `flush`: committed with an fsync (when the store's durability is full); else it may
    /// ride in a commit that is not flushed.
    State {
        changes: Vec<StateChange>,
        flush: bool,
        reply: oneshot::Sender<Result<()>>,
    },
    Transact(Box<dyn Job>),
    Delete {
        stream: StreamName,
        mode: DeleteMode,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// An append request's answer (also an outbox job's appends').
type Appended = Result<Vec<AppendResult>>;
type AppendRequest = (Vec<StreamAppend>, oneshot::Sender<Appended>);
type StateRequest = (Vec<StateChange>, oneshot::Sender<Result<()>>);

fn event_count(appends: &[StreamAppend]) -> usize {
    appends.iter().map(|a| a.events.len()).sum()
}

/// What one transaction commits: appends, and state writes and outbox work riding along
/// in the same fsync.
struct Batch {
    appends: Vec<AppendRequest>,
    states: Vec<StateRequest>,
    jobs: Vec<Box<dyn Job>>,
    /// Events and state changes gathered, which bound the size of one transaction.
    weight: usize,
    /// Every write of the batch may go out without an fsync.
    unflushed: bool,
}

impl Default for Batch {
    fn default() -> Self {
        Self { appends: Vec::new(), states: Vec::new(), jobs: Vec::new(), weight: 0, unflushed: true }
    }
}

impl Batch {
    fn len(&self) -> usize {
        self.appends.len() + self.states.len() + self.jobs.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a write to the batch, or hands back a command that must run on its own.
    fn push(&mut self, command: Command) -> Option<Command> {
        match command {
            Command::Append { appends, reply } => {
                self.unflushed = false;
                self.weight += event_count(&appends);
                self.appends.push((appends, reply));
                None
            }
            Command::State { changes, flush, reply } => {
                self.unflushed &= !flush;
                self.weight += changes.len();
                self.states.push((changes, reply));
                None
            }
            Command::Transact(job) => {
                self.unflushed = false;
                self.weight += 1;
                self.jobs.push(job);
                None
            }
            alone @ Command::Delete { .. } => Some(alone),
        }
    }
}

/// Handle to the writer thread. Dropping the last sender (on close) ends the thread.
pub(crate) struct Writer {
    sender: Mutex<Option<mpsc::Sender<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn closed() -> Error {
    Error::Unavailable("the store is closed".into())
}

impl Writer {
    pub(crate) fn start(
        conn: Connection,
        checkpointer: Checkpointer,
        max_batch: usize,
    ) -> Result<(Self, watch::Receiver<Position>)> {
        let mut state = WriterState::load(conn, checkpointer)?;
        let (head_tx, head_rx) = watch::channel(state.last_position);
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bifrost-sqlite-writer".into())
            .spawn(move || {
                state.run(&receiver, &head_tx, max_batch.max(1));
                state.checkpointer.stop();
            })
            .map_err(|e| Error::storage("cannot start the writer thread", e))?;
        let writer = Self { sender: Mutex::new(Some(sender)), thread: Mutex::new(Some(thread)) };
        Ok((writer, head_rx))
    }

    fn send(&self, command: Command) -> Result<()> {
        let guard = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().ok_or_else(closed)?.send(command).map_err(|_| closed())
    }

    pub(crate) async fn append(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Append { appends, reply })?;
        answer.await.map_err(|_| closed())?
    }

    pub(crate) async fn delete(&self, stream: StreamName, mode: DeleteMode) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Delete { stream, mode, reply })?;
        answer.await.map_err(|_| closed())?
    }

    /// Applies validated state changes, all or none, committed with the next group (see
    /// [`Command::State`] for `flush`).
    pub(crate) async fn write_state(&self, changes: Vec<StateChange>, flush: bool) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::State { changes, flush, reply })?;
        answer.await.map_err(|_| closed())?
    }

    /// Queues an outbox job for the next group; the job answers its caller itself.
    pub(crate) fn transact(&self, job: Box<dyn Job>) -> Result<()> {
        self.send(Command::Transact(job))
    }

    /// Lets queued commands finish, then stops the thread and closes the connection.
    pub(crate) async fn close(&self) -> Result<()> {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| Error::storage("joining the writer failed", e))?
                .map_err(|_| Error::Internal("the writer thread panicked".into()))?;
        }
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Without an explicit close, still let the thread drain and exit on its own.
        drop(self.sender.get_mut().ok().and_then(Option::take));
    }
}

/// Decides how long to gather a group before committing it.
///
/// Taking only what is already queued makes groups alternate between a handful and
/// everyone else: the writers answered last are still re-sending when the next commit
/// starts. So when recent groups were large (many concurrent writers), the writer lingers
/// until about as many appends have arrived — never longer than a fraction of a commit,
/// and never when appends stop arriving. A lone writer (recent groups of one) never waits.
#[derive(Default)]
struct GroupSizer {
    /// Recent largest group, decaying so that a burst does not make every later commit wait.
    recent: usize,
    /// How long the last commit took (the cost a linger is weighed against).
    commit_time: Duration,
}

impl GroupSizer {
    /// Longest pause between arrivals before the group is considered complete.
    const GAP: Duration = Duration::from_micros(150);
    const MAX_LINGER: Duration = Duration::from_millis(2);

    /// Gathers a group of appends, state writes and outbox jobs starting with `first`. A
    /// delete ends the group; it is returned to run on its own next.
    fn collect(
        &self,
        first: Command,
        receiver: &mpsc::Receiver<Command>,
        max_batch: usize,
    ) -> (Batch, Option<Command>) {
        let mut batch = Batch::default();
        if let Some(alone) = batch.push(first) {
            return (batch, Some(alone));
        }
        let target = self.recent.min(max_batch);
        let deadline = Instant::now() + (self.commit_time / 2).min(Self::MAX_LINGER);
        while batch.len() < max_batch && batch.weight < 16 * max_batch {
            let next = match receiver.try_recv() {
                Ok(command) => command,
                Err(_) => {
                    // Queue empty: linger only while the group is smaller than recent ones.
                    let now = Instant::now();
                    if batch.len() >= target || now >= deadline {
                        break;
                    }
                    match receiver.recv_timeout(Self::GAP.min(deadline - now)) {
                        Ok(command) => command,
                        Err(_) => break,
                    }
                }
            };
            if let Some(alone) = batch.push(next) {
                return (batch, Some(alone));
            }
        }
        (batch, None)
    }

    fn committed(&mut self, size: usize, took: Duration) {
        self.recent = size.max(self.recent - self.recent / 8);
        self.commit_time = took;
    }
}

/// Events between two checkpoints. Checkpointing after every commit made the database
/// file's fsyncs compete with the WAL's on every commit; batching them lets the pages that
/// many commits rewrite (index leaves of busy streams) reach the database once.
const CHECKPOINT_EVERY: u64 = 1024;

/// Most stream heads the writer keeps in memory; past this the cache starts over.
const STREAM_CACHE_LIMIT: usize = 100_000;

/// Planning lookups against the writer's own transaction.
struct Lookup<'c> {
    conn: &'c Connection,
    /// Committed stream heads. The writer is the only writer, so they never go stale.
    streams: &'c mut HashMap<StreamName, (Version, StreamState)>,
    /// Whether to look event ids up at all. Off, every id is taken to be new and the unique
    /// index reports the rare exception (a retried append), which is then planned again
    /// with lookups on: one index probe fewer per append on the common path.
    probe_ids: bool,
}

impl PlanLookup for Lookup<'_> {
    fn event(&mut self, id: &uuid::Uuid) -> Result<Option<StoredEventRef>> {
        if !self.probe_ids {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT stream, version, position, type, data FROM events WHERE id = ?1")
            .map_err(sql)?;
        let mut rows = stmt.query([id.as_bytes().as_slice()]).map_err(sql)?;
        let Some(row) = rows.next().map_err(sql)? else { return Ok(None) };
        let text = |i: usize| -> Result<String> { row.get::<_, String>(i).map_err(sql) };
        Ok(Some(StoredEventRef {
            stream: StreamName::stored(&text(0)?)?,
            version: u64_from(row.get(1).map_err(sql)?, "version")?,
            position: u64_from(row.get(2).map_err(sql)?, "position")?,
            event_type: EventType::new(&text(3)?)?,
            data: Bytes::from(row.get::<_, Vec<u8>>(4).map_err(sql)?),
        }))
    }

    fn stream(&mut self, stream: &StreamName) -> Result<Option<(Version, StreamState)>> {
        if let Some(head) = self.streams.get(stream) {
            return Ok(Some(*head));
        }
        let head = stored_stream(self.conn, stream)?;
        if let Some(head) = head {
            if self.streams.len() >= STREAM_CACHE_LIMIT {
                self.streams.clear();
            }
            self.streams.insert(stream.clone(), head);
        }
        Ok(head)
    }
}

/// A write that failed because one append reused a stored id (caught by the unique index,
/// see [`GroupPlanner::plan`]): the group is retried, planning that append with id lookups
/// (it may be a replay) or, if it was already, without it.
struct Reused {
    request: usize,
    id: uuid::Uuid,
}

enum WriteError {
    Reused(Reused),
    Failed(Error),
}

impl From<Error> for WriteError {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

/// Each write's answer once its group is settled.
struct Answers {
    appends: Vec<Appended>,
    states: Vec<Result<()>>,
    jobs: Vec<Appended>,
}

/// One outbox job's appends, written inside its savepoint.
struct JobWritten {
    results: Vec<AppendResult>,
    last_position: Position,
    /// Heads of the streams written, for the cache once the group commits.
    streams: HashMap<StreamName, (Version, StreamState)>,
}

/// A group written inside its (not yet committed) transaction.
struct Written {
    results: Vec<Result<Vec<AppendResult>>>,
    last_position: Position,
    recorded_at: Timestamp,
    /// Stream heads after the group, for the cache once it commits.
    streams: HashMap<StreamName, (Version, StreamState)>,
}

/// How far along a request is in its group.
enum Status {
    /// Planned on the fast path: ids assumed new.
    Optimistic,
    /// Planned with every id looked up, after the unique index objected.
    Verified,
    Failed(Error),
}

struct WriterState {
    conn: Connection,
    /// Commits are fsynced (`synchronous=FULL`): then a group of unflushed state writes only
    /// commits with `synchronous=NORMAL`.
    flushes: bool,
    /// The connection is set to `synchronous=NORMAL` now (for a group of unflushed writes).
    relaxed: bool,
    checkpointer: Checkpointer,
    /// Events committed since the checkpoint thread was last asked to run.
    since_checkpoint: u64,
    streams: HashMap<StreamName, (Version, StreamState)>,
    last_position: Position,
    last_recorded: Timestamp,
}

impl WriterState {
    fn load(conn: Connection, checkpointer: Checkpointer) -> Result<Self> {
        let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).map_err(sql)?;
        let stored: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'last_position'", [], |r| r.get(0))
            .map_err(sql)?;
        // The meta row is written in the same transaction as the events, but take the max
        // with the table anyway so a hand-edited database cannot make positions repeat.
        let max_in_log: Option<i64> =
            conn.query_row("SELECT max(position) FROM events", [], |r| r.get(0)).map_err(sql)?;
        let last_position = u64_from(stored.max(max_in_log.unwrap_or(0)), "last position")?;
        let last_recorded: Option<i64> = conn
            .query_row("SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1", [], |r| r.get(0))
            .optional()
            .map_err(sql)?;
        Ok(Self {
            conn,
            flushes: synchronous >= 2,
            relaxed: false,
            checkpointer,
            since_checkpoint: 0,
            streams: HashMap::new(),
            last_position,
            last_recorded: Timestamp::from_micros(last_recorded.unwrap_or(0)),
        })
    }

    fn run(&mut self, receiver: &mpsc::Receiver<Command>, head: &watch::Sender<Position>, max_batch: usize) {
        let mut group = GroupSizer::default();
        let mut held = None;
        loop {
            let first = match held.take() {
                Some(command) => command,
                None => match receiver.recv() {
                    Ok(command) => command,
                    Err(_) => return,
                },
            };
            match first {
                Command::Delete { stream, mode, reply } => {
                    let result = self.delete(&stream, mode);
                    let _ = reply.send(result);
                }
                write => {
                    let (batch, next) = group.collect(write, receiver, max_batch);
                    held = next;
                    if batch.is_empty() {
                        continue;
                    }
                    let started = Instant::now();
                    let size = batch.len();
                    let (requests, replies): (Vec<_>, Vec<_>) = batch.appends.into_iter().unzip();
                    let (states, state_replies): (Vec<_>, Vec<_>) = batch.states.into_iter().unzip();
                    let mut jobs = batch.jobs;
                    let answers = self.commit_group(&requests, &states, &mut jobs, batch.unflushed);
                    group.committed(size, started.elapsed());
                    head.send_if_modified(|h| std::mem::replace(h, self.last_position) != self.last_position);
                    for (reply, result) in replies.into_iter().zip(answers.appends) {
                        // A caller that went away (cancelled request) no longer needs it.
                        let _ = reply.send(result);
                    }
                    for (reply, result) in state_replies.into_iter().zip(answers.states) {
                        let _ = reply.send(result);
                    }
                    for (job, result) in jobs.into_iter().zip(answers.jobs) {
                        // Answering drops the application's values (its closure when it
                        // never ran, its result when the caller left): a panicking `Drop`
                        // of theirs must not end the writer.
                        let answered =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.answer(result)));
                        if answered.is_err() {
                            tracing::error!("dropping an outbox job's values panicked; the writer goes on");
                        }
                    }
                }
            }
        }
    }

    /// Commits a group of append requests, state writes and outbox jobs in one transaction:
    /// plan, write, commit once.
    fn commit_group(
        &mut self,
        requests: &[Vec<StreamAppend>],
        states: &[Vec<StateChange>],
        jobs: &mut [Box<dyn Job>],
        unflushed: bool,
    ) -> Answers {
        let mut status: Vec<Status> = requests.iter().map(|_| Status::Optimistic).collect();
        // A state write's own failure, once it has one.
        let mut state_status: Vec<Option<Error>> = states.iter().map(|_| None).collect();
        loop {
            match self.try_commit_group(requests, &mut status, states, &mut state_status, jobs, unflushed) {
                Ok((appends, jobs)) => {
                    let states = state_status.into_iter().map(|s| s.map_or(Ok(()), Err)).collect();
                    return Answers { appends, states, jobs };
                }
                Err(WriteError::Reused(Reused { request, id })) => {
                    status[request] = match status[request] {
                        Status::Optimistic => Status::Verified,
                        _ => Status::Failed(Error::DuplicateEventId { id }),
                    };
                }
                Err(WriteError::Failed(e)) => {
                    tracing::error!(error = %e, "group commit failed; every write in the group is rejected");
                    let message = e.to_string();
                    let failed = || Error::Storage { message: message.clone(), source: None };
                    let appends = status
                        .into_iter()
                        .map(|s| match s {
                            Status::Failed(e) => Err(e),
                            _ => Err(failed()),
                        })
                        .collect();
                    let states = state_status.into_iter().map(|s| Err(s.unwrap_or_else(failed))).collect();
                    let jobs = jobs.iter().map(|_| Err(failed())).collect();
                    return Answers { appends, states, jobs };
                }
            }
        }
    }

    /// One attempt at a group. Outbox jobs run last, once everything that can make the group
    /// start over (an id the unique index rejects) is behind: their work runs once.
    fn try_commit_group(
        &mut self,
        requests: &[Vec<StreamAppend>],
        status: &mut [Status],
        states: &[Vec<StateChange>],
        state_status: &mut [Option<Error>],
        jobs: &mut [Box<dyn Job>],
        unflushed: bool,
    ) -> Result<(Vec<Appended>, Vec<Appended>), WriteError> {
        self.relax(unflushed).map_err(sql)?;
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(sql)?;
        let written = self.write_group(requests, status).and_then(|mut written| {
            let state_changes = self.write_states(states, state_status)?;
            let (job_results, kept) = self.write_jobs(jobs, &mut written)?;
            Ok((written, state_changes + kept, job_results))
        });
        let (written, other_changes, job_results) = match written {
            Ok(written) => written,
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        if written.last_position == self.last_position && other_changes == 0 {
            // Only replays and failures: nothing to commit.
            self.conn.execute_batch("ROLLBACK").map_err(sql)?;
            return Ok((written.results, job_results));
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(WriteError::Failed(Error::storage("commit failed", e)));
        }
        self.since_checkpoint += written.last_position - self.last_position + other_changes;
        self.last_position = written.last_position;
        self.last_recorded = written.recorded_at;
        if self.since_checkpoint >= CHECKPOINT_EVERY {
            self.since_checkpoint = 0;
            self.checkpointer.nudge();
        }
        if self.streams.len() + written.streams.len() > STREAM_CACHE_LIMIT {
            self.streams.clear();
        }
        self.streams.extend(written.streams);
        Ok((written.results, job_results))
    }

    /// Sets whether the next commit skips the fsync (`synchronous=NORMAL`: the WAL frames
    /// reach the OS, so the commit survives the process, and the next flushed commit flushes
    /// them too). Only ever relaxed for a group of unflushed state writes.
    fn relax(&mut self, relaxed: bool) -> rusqlite::Result<()> {
        let relaxed = relaxed && self.flushes;
        if relaxed != self.relaxed {
            self.conn.execute_batch(if relaxed {
                "PRAGMA synchronous = NORMAL"
            } else {
                "PRAGMA synchronous = FULL"
            })?;
            self.relaxed = relaxed;
        }
        Ok(())
    }

    /// Plans and writes the group inside the open transaction.
    fn write_group(
        &mut self,
        requests: &[Vec<StreamAppend>],
        status: &mut [Status],
    ) -> Result<Written, WriteError> {
        let now = Timestamp::now().max(self.last_recorded);
        let lookup = Lookup { conn: &self.conn, streams: &mut self.streams, probe_ids: false };
        let mut planner = GroupPlanner::new(lookup, self.last_position);
        let mut plans = Vec::with_capacity(requests.len());
        for (appends, status) in requests.iter().zip(status.iter_mut()) {
            planner.lookup_mut().probe_ids = match status {
                Status::Optimistic => false,
                Status::Verified => true,
                Status::Failed(_) => {
                    plans.push(None);
                    continue;
                }
            };
            let mut planned = planner.plan(appends, false);
            if matches!(planned, Err(Error::WrongExpectedVersion(_))) && !planner.lookup_mut().probe_ids {
                // A retried append carries an expected version that its first attempt made
                // stale: look its ids up before calling it a conflict.
                planner.lookup_mut().probe_ids = true;
                planned = planner.plan(appends, false);
            }
            match planned {
                Ok(p) => plans.push(Some(p)),
                Err(e) => {
                    *status = Status::Failed(e);
                    plans.push(None);
                }
            }
        }
        let last_position = planner.last_position();
        let streams = planner.into_planned_streams();
        if last_position != self.last_position {
            let planned: Vec<(usize, &StreamAppend, &Planned)> = requests
                .iter()
                .zip(&plans)
                .enumerate()
                .filter_map(|(request, (appends, plans))| {
                    Some(appends.iter().zip(plans.as_ref()?).map(move |(a, p)| (request, a, p)))
                })
                .flatten()
                .collect();
            write_planned(&self.conn, &planned, last_position, now)?;
        }
        Ok(Written { results: finish(status, plans, requests), last_position, recorded_at: now, streams })
    }

    /// Runs each outbox job inside a savepoint of its own, after the group's appends and
    /// state writes: its work (the application's SQL, under [`outbox::authorize`]), then the
    /// appends it returned, planned against everything the transaction holds so far. A job
    /// whose work fails or whose appends are refused is rolled back to its savepoint — its
    /// rows and its events — and fails alone. Returns each job's appended results and how
    /// many jobs were kept.
    fn write_jobs(
        &mut self,
        jobs: &mut [Box<dyn Job>],
        written: &mut Written,
    ) -> Result<(Vec<Appended>, u64), WriteError> {
        let mut results = Vec::with_capacity(jobs.len());
        let mut kept = 0;
        for job in jobs.iter_mut() {
            self.conn.execute_batch(&format!("SAVEPOINT {}", outbox::SAVEPOINT)).map_err(sql)?;
            self.conn.authorizer(Some(outbox::authorize)).map_err(sql)?;
            let appends = job.run(&self.conn);
            self.conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>).map_err(sql)?;
            if self.conn.is_autocommit() {
                // SQLite ended the transaction on its own (a full disk, an I/O error).
                return Err(WriteError::Failed(Error::Storage {
                    message: "the transaction ended while an outbox work ran".into(),
                    source: None,
                }));
            }
            let result = match appends {
                // The job answers with its own reason.
                None => Err(Error::Storage { message: "the outbox work failed".into(), source: None }),
                Some(appends) => self.write_job_appends(&appends, written),
            };
            match result {
                Ok(job_written) => {
                    self.conn.execute_batch(&format!("RELEASE {}", outbox::SAVEPOINT)).map_err(sql)?;
                    written.last_position = job_written.last_position;
                    written.streams.extend(job_written.streams);
                    kept += 1;
                    results.push(Ok(job_written.results));
                }
                Err(e) => {
                    // Fails when SQLite already rolled the whole transaction back: then the
                    // group fails as a whole.
                    self.conn
                        .execute_batch(&format!("ROLLBACK TO {0}; RELEASE {0}", outbox::SAVEPOINT))
                        .map_err(sql)?;
                    results.push(Err(e));
                }
            }
        }
        Ok((results, kept))
    }

    /// Plans and writes one job's appends after what the transaction already holds. Every
    /// id is looked up (a resent job replays), so the unique index never rejects one here.
    fn write_job_appends(&self, appends: &[StreamAppend], written: &Written) -> Result<JobWritten> {
        // Stream heads come from the open transaction, which holds the group's writes (the
        // cache holds only committed ones).
        let mut heads = HashMap::new();
        let lookup = Lookup { conn: &self.conn, streams: &mut heads, probe_ids: true };
        let mut planner = GroupPlanner::new(lookup, written.last_position);
        let plans = planner.plan(appends, true)?;
        let last_position = planner.last_position();
        let streams = planner.into_planned_streams();
        if last_position != written.last_position {
            let planned: Vec<_> = appends.iter().zip(&plans).map(|(a, p)| (0, a, p)).collect();
            write_planned(&self.conn, &planned, last_position, written.recorded_at).map_err(|e| match e {
                WriteError::Reused(Reused { id, .. }) => Error::DuplicateEventId { id },
                WriteError::Failed(e) => e,
            })?;
        }
        let results = appends.iter().zip(&plans).map(|(a, p)| p.result(a)).collect();
        Ok(JobWritten { results, last_position, streams })
    }

    /// Applies each state write of the group inside its own savepoint, so that one failing
    /// (an expectation that does not hold, say) undoes only itself, not the appends or the
    /// other writes of the group. Returns how many changes were applied.
    fn write_states(
        &self,
        states: &[Vec<StateChange>],
        status: &mut [Option<Error>],
    ) -> Result<u64, WriteError> {
        let mut applied = 0;
        for (changes, status) in states.iter().zip(status.iter_mut()) {
            if status.is_some() || changes.is_empty() {
                continue;
            }
            self.conn.execute_batch("SAVEPOINT state_write").map_err(sql)?;
            match state::apply(&self.conn, changes) {
                Ok(()) => {
                    self.conn.execute_batch("RELEASE state_write").map_err(sql)?;
                    applied +=
                        changes.iter().filter(|c| !matches!(c, StateChange::Expect { .. })).count() as u64;
                }
                Err(e) => {
                    // Fails when SQLite already rolled the whole transaction back (a full
                    // disk, an I/O error): then the group fails as a whole.
                    self.conn.execute_batch("ROLLBACK TO state_write; RELEASE state_write").map_err(sql)?;
                    *status = Some(e);
                }
            }
        }
        Ok(applied)
    }

    fn delete(&mut self, stream: &StreamName, mode: DeleteMode) -> Result<()> {
        // The next lookup reads the new state from the table.
        self.streams.remove(stream);
        match (stored_stream(&self.conn, stream)?, mode) {
            (None, _) | (Some((_, StreamState::SoftDeleted)), DeleteMode::Soft) => {
                return Err(Error::StreamNotFound(stream.clone()));
            }
            (Some((_, StreamState::Tombstoned)), _) => return Err(Error::StreamDeleted(stream.clone())),
            _ => {}
        }
        let now = Timestamp::now().max(self.last_recorded);
        self.relax(false).map_err(sql)?;
        let tx = self.conn.transaction().map_err(sql)?;
        let state = match mode {
            DeleteMode::Soft => StreamState::SoftDeleted,
            DeleteMode::Hard => {
                tx.execute("DELETE FROM events WHERE stream = ?1", [stream.as_str()]).map_err(sql)?;
                StreamState::Tombstoned
            }
        };
        tx.execute(
            "UPDATE streams SET state = ?2, updated_at = ?3 WHERE name = ?1",
            params![stream.as_str(), state.as_i64(), now.as_micros()],
        )
        .map_err(sql)?;
        tx.commit().map_err(|e| Error::storage("commit failed", e))
    }
}

/// Each request's answer: its own failure, or its plans turned into results. Takes the
/// failures out of `status` (if the commit then fails, every request gets that failure).
fn finish(
    status: &mut [Status],
    plans: Vec<Option<Vec<Planned>>>,
    requests: &[Vec<StreamAppend>],
) -> Vec<Result<Vec<AppendResult>>> {
    status
        .iter_mut()
        .zip(plans)
        .zip(requests)
        .map(|((status, plans), appends)| match (std::mem::replace(status, Status::Optimistic), plans) {
            (Status::Failed(e), _) => Err(e),
            (_, Some(plans)) => Ok(appends.iter().zip(&plans).map(|(a, p)| p.result(a)).collect()),
            (_, None) => Err(Error::Internal("append was not planned".into())),
        })
        .collect()
}

/// Writes planned appends inside the open transaction: their events, each written stream's
/// head, and the log's last position. Each append comes with the index of its request, to
/// report should the unique index reject one of its ids (see [`Reused`]).
fn write_planned(
    conn: &Connection,
    planned: &[(usize, &StreamAppend, &Planned)],
    last_position: Position,
    now: Timestamp,
) -> Result<(), WriteError> {
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO events (position, id, stream, version, category, aggregate_type, type, \
             schema_version, data, metadata, correlation_id, occurred_at, recorded_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .map_err(sql)?;
    // Each event's metadata encoding, in one buffer reused for the whole group.
    let mut metadata = Vec::new();
    for &(request, append, plan) in planned {
        let stream = &append.stream;
        for placed in plan.placed(append) {
            let event = placed.event;
            metadata.clear();
            event.metadata.write_json(&mut metadata);
            let inserted = insert.execute(params![
                i64_from(placed.position)?,
                event.id.as_bytes().as_slice(),
                stream.as_str(),
                i64_from(placed.version)?,
                stream.category(),
                aggregate_type_of(event, stream),
                event.event_type.as_str(),
                i64::from(event.schema_version),
                event.data.as_ref(),
                metadata.as_slice(),
                event.metadata.correlation_id.as_deref(),
                event.occurred_at.unwrap_or(now).as_micros(),
                now.as_micros(),
            ]);
            match inserted {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(f, Some(msg)))
                    if f.code == ErrorCode::ConstraintViolation && msg.contains("events.id") =>
                {
                    return Err(WriteError::Reused(Reused { request, id: event.id }));
                }
                Err(e) => return Err(Error::storage("inserting an event failed", e).into()),
            }
        }
    }
    drop(insert);
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO streams (name, category, aggregate_type, version, state, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5) \
             ON CONFLICT (name) DO UPDATE SET version = excluded.version, state = 0, \
             updated_at = excluded.updated_at",
        )
        .map_err(sql)?;
    for head in stream_heads(planned.iter().map(|&(_, append, plan)| (append, plan))) {
        upsert
            .execute(params![
                head.stream.as_str(),
                head.stream.category(),
                head.aggregate_type,
                i64_from(head.version)?,
                now.as_micros()
            ])
            .map_err(sql)?;
    }
    conn.execute("UPDATE meta SET value = ?1 WHERE key = 'last_position'", [i64_from(last_position)?])
        .map_err(sql)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bifrost_core::ExpectedVersion;
    use bifrost_core::testkit::{events, stream};

    use super::*;
    use crate::{DB_FILE, Durability, schema};

    /// A state write failing inside a group (here a trigger refuses one key) is undone to its
    /// savepoint: the appends and the other state writes of the group still commit.
    #[test]
    fn a_failing_state_write_fails_alone_in_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let conn = schema::open_writer(&path, Durability::Full).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON state WHEN NEW.key = 'refused' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .unwrap();
        let checkpointer = Checkpointer::start(&path, Durability::Full).unwrap();
        let mut writer = WriterState::load(conn, checkpointer).unwrap();

        let appends = vec![vec![StreamAppend::new(stream("order-1"), ExpectedVersion::Any, events(2))]];
        let states = vec![
            vec![StateChange::put("s", "before", "1")],
            vec![StateChange::put("s", "undone", "1"), StateChange::put("s", "refused", "1")],
            vec![StateChange::put("s", "after", "1")],
        ];
        let answers = writer.commit_group(&appends, &states, &mut [], false);

        assert_eq!(answers.appends[0].as_ref().unwrap()[0].last_version, 2);
        assert!(answers.states[0].is_ok());
        assert!(matches!(answers.states[1], Err(Error::Storage { .. })), "{:?}", answers.states[1]);
        assert!(answers.states[2].is_ok());
        let keys: Vec<String> = writer
            .conn
            .prepare("SELECT key FROM state ORDER BY key")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(keys, ["after", "before"]);
        let stored: i64 = writer.conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(stored, 2);
    }

    /// Outbox jobs in one group with plain appends and a state write: the one whose work
    /// fails and the one whose append conflicts are rolled back to their savepoints (rows and
    /// events), and everything else of the group commits, numbered without a gap.
    #[test]
    fn outbox_jobs_fail_alone_in_their_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let conn = schema::open_writer(&path, Durability::Full).unwrap();
        conn.execute_batch("CREATE TABLE app (id TEXT PRIMARY KEY)").unwrap();
        let checkpointer = Checkpointer::start(&path, Durability::Full).unwrap();
        let mut writer = WriterState::load(conn, checkpointer).unwrap();

        let job = |row: &'static str, expected: ExpectedVersion, fail: bool| {
            let (reply, answer) = oneshot::channel();
            let work = move |conn: &Connection| {
                conn.execute("INSERT INTO app (id) VALUES (?1)", [row])?;
                if fail {
                    return Err(rusqlite::Error::InvalidQuery);
                }
                let append = StreamAppend::new(stream(&format!("app-{row}")), expected, events(2));
                Ok((vec![append], row))
            };
            (Box::new(outbox::Work::new(work, reply)) as Box<dyn Job>, answer)
        };
        let (failing, failing_answer) = job("failing", ExpectedVersion::Any, true);
        let (conflicting, conflicting_answer) = job("conflicting", ExpectedVersion::Exact(3), false);
        let (kept, kept_answer) = job("kept", ExpectedVersion::NoStream, false);
        let mut jobs = vec![failing, conflicting, kept];
        let appends = vec![vec![StreamAppend::new(stream("order-1"), ExpectedVersion::Any, events(1))]];
        let states = vec![vec![StateChange::put("s", "k", "1")]];
        let answers = writer.commit_group(&appends, &states, &mut jobs, false);
        for (job, result) in jobs.into_iter().zip(answers.jobs) {
            job.answer(result);
        }

        assert_eq!(answers.appends[0].as_ref().unwrap()[0].first_position, 1);
        assert!(answers.states[0].is_ok());
        assert!(matches!(failing_answer.blocking_recv().unwrap(), Err(outbox::OutboxError::Work(_))));
        assert!(matches!(
            conflicting_answer.blocking_recv().unwrap(),
            Err(outbox::OutboxError::Store(Error::WrongExpectedVersion(_)))
        ));
        let (results, value) = kept_answer.blocking_recv().unwrap().unwrap();
        assert_eq!(value, "kept");
        assert_eq!((results[0].first_position, results[0].last_position), (2, 3));
        assert_eq!(writer.last_position, 3);
        let rows: Vec<String> = writer
            .conn
            .prepare("SELECT id FROM app ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(rows, ["kept"]);
        let stored: i64 = writer.conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(stored, 3);
        let meta: i64 = writer
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'last_position'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(meta, 3);
    }
}
