//! The writer thread: the only connection that writes, committing appends in groups.

use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bifrost_core::store::{StoredEventRef, StreamState, aggregate_type_of, check_expected, check_replay};
use bifrost_core::{
    AppendResult, DeleteMode, Error, EventType, Position, Result, StreamAppend, StreamName, Timestamp,
    Version,
};
use bytes::Bytes;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

use crate::codec::{i64_from, sql, u64_from};

enum Command {
    Append { appends: Vec<StreamAppend>, reply: oneshot::Sender<Result<Vec<AppendResult>>> },
    Delete { stream: StreamName, mode: DeleteMode, reply: oneshot::Sender<Result<()>> },
}

impl Command {
    fn weight(&self) -> usize {
        match self {
            Self::Append { appends, .. } => appends.iter().map(|a| a.events.len()).sum(),
            Self::Delete { .. } => 1,
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
    pub(crate) fn start(conn: Connection, max_batch: usize) -> Result<(Self, watch::Receiver<Position>)> {
        let mut state = WriterState::load(conn)?;
        let (head_tx, head_rx) = watch::channel(state.last_position);
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bifrost-sqlite-writer".into())
            .spawn(move || state.run(&receiver, &head_tx, max_batch.max(1)))
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

    /// Lets queued commands finish, then stops the thread and closes the connection.
    pub(crate) async fn close(&self) -> Result<()> {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| Error::storage("joining the writer failed", e))?
                .map_err(|_| Error::Storage { message: "the writer thread panicked".into(), source: None })?;
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

enum Reply {
    Append(oneshot::Sender<Result<Vec<AppendResult>>>, Result<Vec<AppendResult>>),
    Delete(oneshot::Sender<Result<()>>, Result<()>),
}

impl Reply {
    fn is_ok(&self) -> bool {
        match self {
            Self::Append(_, r) => r.is_ok(),
            Self::Delete(_, r) => r.is_ok(),
        }
    }

    fn fail(self, message: &str) -> Self {
        let error = || Error::Storage { message: message.to_owned(), source: None };
        match self {
            Self::Append(tx, Ok(_)) => Self::Append(tx, Err(error())),
            Self::Delete(tx, Ok(())) => Self::Delete(tx, Err(error())),
            other => other,
        }
    }

    fn send(self) {
        // A caller that went away (cancelled request) no longer needs its answer.
        match self {
            Self::Append(tx, r) => drop(tx.send(r)),
            Self::Delete(tx, r) => drop(tx.send(r)),
        }
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

    fn collect(&self, first: Command, receiver: &mpsc::Receiver<Command>, max_batch: usize) -> Vec<Command> {
        let mut weight = first.weight();
        let mut batch = vec![first];
        let full = |batch: &Vec<Command>, weight: usize| batch.len() >= max_batch || weight >= 16 * max_batch;
        while !full(&batch, weight) {
            match receiver.try_recv() {
                Ok(command) => {
                    weight += command.weight();
                    batch.push(command);
                }
                Err(_) => break,
            }
        }
        let target = self.recent.min(max_batch);
        if batch.len() >= target {
            return batch;
        }
        let deadline = Instant::now() + (self.commit_time / 2).min(Self::MAX_LINGER);
        while batch.len() < target && !full(&batch, weight) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match receiver.recv_timeout(Self::GAP.min(deadline - now)) {
                Ok(command) => {
                    weight += command.weight();
                    batch.push(command);
                }
                Err(_) => break,
            }
        }
        batch
    }

    fn committed(&mut self, size: usize, took: Duration) {
        self.recent = size.max(self.recent - self.recent / 8);
        self.commit_time = took;
    }
}

struct WriterState {
    conn: Connection,
    last_position: Position,
    last_recorded: Timestamp,
}

impl WriterState {
    fn load(conn: Connection) -> Result<Self> {
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
        Ok(Self { conn, last_position, last_recorded: Timestamp::from_micros(last_recorded.unwrap_or(0)) })
    }

    fn run(&mut self, receiver: &mpsc::Receiver<Command>, head: &watch::Sender<Position>, max_batch: usize) {
        let mut group = GroupSizer::default();
        while let Ok(first) = receiver.recv() {
            let batch = group.collect(first, receiver, max_batch);
            let started = Instant::now();
            let size = batch.len();
            let replies = self.commit_group(batch);
            group.committed(size, started.elapsed());
            head.send_if_modified(|h| std::mem::replace(h, self.last_position) != self.last_position);
            for reply in replies {
                reply.send();
            }
        }
    }

    fn commit_group(&mut self, batch: Vec<Command>) -> Vec<Reply> {
        let start_position = self.last_position;
        let start_recorded = self.last_recorded;
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let message = format!("cannot begin a transaction: {e}");
            return batch.into_iter().map(|c| reply_error(c, &message)).collect();
        }
        self.last_recorded = Timestamp::now().max(self.last_recorded);
        let now = self.last_recorded;
        let replies: Vec<Reply> =
            batch.into_iter().map(|command| self.apply_isolated(command, now)).collect();
        let committed = if replies.iter().any(Reply::is_ok) {
            self.conn
                .execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'last_position'",
                    [self.last_position as i64],
                )
                .and_then(|_| self.conn.execute_batch("COMMIT"))
        } else {
            self.conn.execute_batch("ROLLBACK")
        };
        match committed {
            Ok(()) => replies,
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; every append in the group is rejected");
                let _ = self.conn.execute_batch("ROLLBACK");
                self.last_position = start_position;
                self.last_recorded = start_recorded;
                let message = format!("commit failed: {e}");
                replies.into_iter().map(|r| r.fail(&message)).collect()
            }
        }
    }

    /// Runs one command inside its own savepoint, so that its failure leaves the rest of
    /// the group untouched.
    fn apply_isolated(&mut self, command: Command, now: Timestamp) -> Reply {
        let before = self.last_position;
        if let Err(e) = self.conn.execute_batch("SAVEPOINT command") {
            return reply_error(command, &format!("cannot open a savepoint: {e}"));
        }
        let reply = match command {
            Command::Append { appends, reply } => Reply::Append(reply, self.append(appends, now)),
            Command::Delete { stream, mode, reply } => Reply::Delete(reply, self.delete(&stream, mode, now)),
        };
        let finish = if reply.is_ok() {
            "RELEASE command"
        } else {
            self.last_position = before;
            "ROLLBACK TO command; RELEASE command"
        };
        match self.conn.execute_batch(finish) {
            Ok(()) => reply,
            Err(e) => reply.fail(&format!("savepoint failed: {e}")),
        }
    }

    fn lookup(&self, id: &uuid::Uuid) -> Result<Option<StoredEventRef>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT stream, version, position, type, data FROM events WHERE id = ?1")
            .map_err(sql)?;
        let row = stmt
            .query_row([id.as_bytes().as_slice()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })
            .optional()
            .map_err(sql)?;
        let Some((stream, version, position, event_type, data)) = row else { return Ok(None) };
        Ok(Some(StoredEventRef {
            stream: StreamName::new(&stream)?,
            version: u64_from(version, "version")?,
            position: u64_from(position, "position")?,
            event_type: EventType::new(&event_type)?,
            data: Bytes::from(data),
        }))
    }

    fn stream_state(&self, stream: &StreamName) -> Result<Option<(Version, StreamState)>> {
        let mut stmt =
            self.conn.prepare_cached("SELECT version, state FROM streams WHERE name = ?1").map_err(sql)?;
        let row = stmt
            .query_row([stream.as_str()], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()
            .map_err(sql)?;
        row.map(|(v, s)| Ok((u64_from(v, "version")?, StreamState::from_i64(s)?))).transpose()
    }

    fn append(&mut self, appends: Vec<StreamAppend>, now: Timestamp) -> Result<Vec<AppendResult>> {
        // Check every stream before writing anything: a replay answers with the original
        // result, and every conflict is reported, not just the first.
        enum Plan {
            Replay(AppendResult),
            Write(Version),
        }
        let mut plans = Vec::with_capacity(appends.len());
        let mut conflicts = Vec::new();
        for append in &appends {
            if let Some(original) = check_replay(append, |id| self.lookup(id))? {
                plans.push(Plan::Replay(original));
                continue;
            }
            match check_expected(append, self.stream_state(&append.stream)?) {
                Ok(version) => plans.push(Plan::Write(version)),
                Err(Error::WrongExpectedVersion(c)) => {
                    conflicts.extend(c);
                    plans.push(Plan::Write(0));
                }
                Err(other) => return Err(other),
            }
        }
        if !conflicts.is_empty() {
            return Err(Error::WrongExpectedVersion(conflicts));
        }
        appends
            .into_iter()
            .zip(plans)
            .map(|(append, plan)| match plan {
                Plan::Replay(original) => Ok(original),
                Plan::Write(version) => self.write_events(append, version, now),
            })
            .collect()
    }

    fn write_events(&mut self, append: StreamAppend, after: Version, now: Timestamp) -> Result<AppendResult> {
        let stream = append.stream;
        let category = stream.category();
        let stream_type = aggregate_type_of(&append.events[0], &stream);
        let first_position = self.last_position + 1;
        let mut version = after;
        let mut insert = self
            .conn
            .prepare_cached(
                "INSERT INTO events (position, id, stream, version, category, aggregate_type, type, \
                 schema_version, data, metadata, correlation_id, occurred_at, recorded_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .map_err(sql)?;
        for event in &append.events {
            version += 1;
            let position = self.last_position + 1;
            let inserted = insert.execute(params![
                i64_from(position)?,
                event.id.as_bytes().as_slice(),
                stream.as_str(),
                i64_from(version)?,
                category,
                event.aggregate_type.as_deref().unwrap_or(&stream_type),
                event.event_type.as_str(),
                i64::from(event.schema_version),
                event.data.as_ref(),
                event.metadata.to_json_bytes().as_ref(),
                event.metadata.correlation_id.as_deref(),
                event.occurred_at.unwrap_or(now).as_micros(),
                now.as_micros(),
            ]);
            match inserted {
                Ok(_) => self.last_position = position,
                Err(rusqlite::Error::SqliteFailure(f, Some(msg)))
                    if f.code == ErrorCode::ConstraintViolation && msg.contains("events.id") =>
                {
                    return Err(Error::DuplicateEventId { id: event.id });
                }
                Err(e) => return Err(Error::storage("inserting an event failed", e)),
            }
        }
        drop(insert);
        let version_column = i64_from(version)?;
        self.conn
            .prepare_cached(
                "INSERT INTO streams (name, category, aggregate_type, version, state, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5) \
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version, state = 0, \
                 updated_at = excluded.updated_at",
            )
            .and_then(|mut s| s.execute(params![stream.as_str(), category, stream_type, version_column, now.as_micros()]))
            .map_err(sql)?;
        Ok(AppendResult {
            stream,
            first_version: after + 1,
            last_version: version,
            first_position,
            last_position: self.last_position,
        })
    }

    fn delete(&mut self, stream: &StreamName, mode: DeleteMode, now: Timestamp) -> Result<()> {
        match (self.stream_state(stream)?, mode) {
            (None, _) | (Some((_, StreamState::SoftDeleted)), DeleteMode::Soft) => {
                return Err(Error::StreamNotFound(stream.clone()));
            }
            (Some((_, StreamState::Tombstoned)), _) => return Err(Error::StreamDeleted(stream.clone())),
            _ => {}
        }
        let state = match mode {
            DeleteMode::Soft => StreamState::SoftDeleted,
            DeleteMode::Hard => {
                self.conn.execute("DELETE FROM events WHERE stream = ?1", [stream.as_str()]).map_err(sql)?;
                StreamState::Tombstoned
            }
        };
        self.conn
            .execute(
                "UPDATE streams SET state = ?2, updated_at = ?3 WHERE name = ?1",
                params![stream.as_str(), state.as_i64(), now.as_micros()],
            )
            .map_err(sql)?;
        Ok(())
    }
}

fn reply_error(command: Command, message: &str) -> Reply {
    let error = || Error::Storage { message: message.to_owned(), source: None };
    match command {
        Command::Append { reply, .. } => Reply::Append(reply, Err(error())),
        Command::Delete { reply, .. } => Reply::Delete(reply, Err(error())),
    }
}
