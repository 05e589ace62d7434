//! The writer task: gathers appends into groups and commits each group in one transaction
//! that holds the `head` row lock, with a fixed number of round trips per group.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bifrost_core::backend::codec::{i64_from, u64_from};
use bifrost_core::backend::plan::{GroupPlanner, PlanLookup, Planned, stream_heads};
use bifrost_core::backend::rules::{StoredEventRef, StreamState, aggregate_type_of};
use bifrost_core::{
    AppendResult, DeleteMode, Error, EventType, Position, Result, StreamAppend, StreamName, Timestamp,
    Version,
};
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::codec::{pg, pool as pool_error};
use crate::external::HeadAnnouncer;
use crate::schema::Sql;

enum Command {
    Append { appends: Vec<StreamAppend>, reply: oneshot::Sender<Result<Vec<AppendResult>>> },
    Delete { stream: StreamName, mode: DeleteMode, reply: oneshot::Sender<Result<()>> },
}

pub(crate) struct Writer {
    sender: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

fn closed() -> Error {
    Error::Unavailable("the store is closed".into())
}

impl Writer {
    pub(crate) fn start(
        pool: Pool,
        sql: Arc<Sql>,
        head: Arc<watch::Sender<Position>>,
        announcer: Option<Arc<HeadAnnouncer>>,
        max_batch: usize,
    ) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(pool, sql, head, announcer, receiver, max_batch));
        Self { sender: Mutex::new(Some(sender)), task: tokio::sync::Mutex::new(Some(task)) }
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

    /// Lets queued commands finish, then stops the task.
    pub(crate) async fn close(&self) {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

async fn run(
    pool: Pool,
    sql: Arc<Sql>,
    head: Arc<watch::Sender<Position>>,
    announcer: Option<Arc<HeadAnnouncer>>,
    mut receiver: mpsc::UnboundedReceiver<Command>,
    max_batch: usize,
) {
    let mut held: Option<Command> = None;
    loop {
        let first = match held.take() {
            Some(c) => c,
            None => match receiver.recv().await {
                Some(c) => c,
                None => return,
            },
        };
        match first {
            Command::Delete { stream, mode, reply } => {
                let result = delete(&pool, &sql, &stream, mode).await;
                let _ = reply.send(result);
            }
            Command::Append { appends, reply } => {
                // The group: whatever queued up while the previous transaction ran. A delete
                // ends the group and runs on its own next.
                let mut group = vec![(appends, reply)];
                while group.len() < max_batch {
                    match receiver.try_recv() {
                        Ok(Command::Append { appends, reply }) => group.push((appends, reply)),
                        Ok(delete) => {
                            held = Some(delete);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let (requests, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                let (results, committed) = commit_group(&pool, &sql, &requests).await;
                if let Some(position) = committed {
                    head.send_if_modified(|h| advance(h, position));
                    if let Some(announcer) = &announcer {
                        announcer.committed(position);
                    }
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
        }
    }
}

/// Moves a head forward, never back.
pub(crate) fn advance(head: &mut Position, to: Position) -> bool {
    if to > *head {
        *head = to;
        true
    } else {
        false
    }
}

/// The committed state a group's planning needs, fetched in bulk up front.
#[derive(Default)]
struct Fetched {
    events: HashMap<Uuid, StoredEventRef>,
    streams: HashMap<StreamName, (Version, StreamState)>,
}

impl PlanLookup for Fetched {
    fn event(&mut self, id: &Uuid) -> Result<Option<StoredEventRef>> {
        Ok(self.events.get(id).cloned())
    }

    fn stream(&mut self, stream: &StreamName) -> Result<Option<(Version, StreamState)>> {
        Ok(self.streams.get(stream).copied())
    }
}

/// Column buffers for one `unnest` insert, borrowing the requests' bytes.
#[derive(Default)]
struct Rows<'a> {
    position: Vec<i64>,
    id: Vec<Uuid>,
    stream: Vec<&'a str>,
    version: Vec<i64>,
    category: Vec<&'a str>,
    aggregate_type: Vec<&'a str>,
    event_type: Vec<&'a str>,
    schema_version: Vec<i32>,
    data: Vec<&'a [u8]>,
    /// Every event's metadata encoding, one after another; `metadata_ends` marks where each
    /// ends. One buffer for the group instead of one allocation per event.
    metadata: Vec<u8>,
    metadata_ends: Vec<usize>,
    correlation_id: Vec<Option<&'a str>>,
    occurred_at: Vec<i64>,
    recorded_at: Vec<i64>,
}

/// Commits a group. Returns each request's result, and the new head when the transaction
/// committed.
async fn commit_group(
    pool: &Pool,
    sql: &Sql,
    requests: &[Vec<StreamAppend>],
) -> (Vec<Result<Vec<AppendResult>>>, Option<Position>) {
    match try_commit_group(pool, sql, requests).await {
        Ok((results, head)) => (results, head),
        Err(e) => {
            tracing::warn!(error = %e, "group commit failed; every append in the group is rejected");
            let message = e.to_string();
            let unavailable = matches!(e, Error::Unavailable(_));
            let results = requests
                .iter()
                .map(|_| {
                    Err(if unavailable {
                        Error::Unavailable(message.clone())
                    } else {
                        Error::Storage { message: message.clone(), source: None }
                    })
                })
                .collect();
            (results, None)
        }
    }
}

async fn try_commit_group(
    pool: &Pool,
    sql: &Sql,
    requests: &[Vec<StreamAppend>],
) -> Result<(Vec<Result<Vec<AppendResult>>>, Option<Position>)> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    prepare_writes(&tx, sql).await?;
    // The serialization point: until this transaction commits, no other writer on any node
    // can number events.
    let lock = tx.prepare_cached(&sql.lock_head).await.map_err(pg)?;
    let head = Head::from_row(&tx.query_one(&lock, &[]).await.map_err(pg)?)?;
    let (plans, written) = write_locked(&tx, sql, head, requests).await?;
    match written {
        Some(_) => tx.commit().await.map_err(pg)?,
        // Nothing to write (all conflicts or replays): no need to hold the lock longer.
        None => tx.rollback().await.map_err(pg)?,
    }
    Ok((finish(requests, plans), written))
}

/// The `head` row, as an append transaction finds it once it holds the lock on it.
pub(crate) struct Head {
    pub(crate) position: Position,
    /// The last commit's `recorded_at`, which the next one never goes below.
    pub(crate) recorded_at: Timestamp,
}

impl Head {
    /// From a row whose first two columns are the head's position and `recorded_at`.
    pub(crate) fn from_row(row: &tokio_postgres::Row) -> Result<Self> {
        Ok(Self {
            position: u64_from(row.try_get(0).map_err(pg)?, "head position")?,
            recorded_at: Timestamp::from_micros(row.try_get(1).map_err(pg)?),
        })
    }
}

/// Prepares (or finds cached) every statement an append transaction runs, all in one
/// pipelined round trip, before the head lock is taken: a connection that has not seen
/// them yet must not prepare them one by one while every writer of the cluster waits.
pub(crate) async fn prepare_writes<C: GenericClient>(tx: &C, sql: &Sql) -> Result<()> {
    futures::try_join!(
        tx.prepare_cached(&sql.lock_head),
        tx.prepare_cached(&sql.lock_head_outbox),
        tx.prepare_cached(&sql.find_ids),
        tx.prepare_cached(&sql.find_streams),
        tx.prepare_cached(&sql.insert_events),
        tx.prepare_cached(&sql.upsert_streams),
        tx.prepare_cached(&sql.update_head),
        tx.prepare_cached(&sql.notify),
    )
    .map_err(pg)?;
    Ok(())
}

/// Plans `requests` (each atomic on its own) and writes the successful ones, inside a
/// transaction that already holds the head lock — so nothing else can commit events until
/// it ends, and the positions after `head` are this transaction's to give — with a fixed
/// number of round trips: one pipelined bulk lookup of ids and streams, one `unnest`
/// insert, one pipelined upsert/head/notify (no notify when the head travels on an external
/// bus: the caller announces it after the commit). The caller commits. Returns each request's
/// plans or why it failed, and the last position written (`None`: nothing was).
pub(crate) async fn write_locked<C: GenericClient>(
    tx: &C,
    sql: &Sql,
    head: Head,
    requests: &[Vec<StreamAppend>],
) -> Result<(Vec<Result<Vec<Planned>>>, Option<Position>)> {
    let now = Timestamp::now().max(head.recorded_at);
    let head = head.position;

    let all_ids: Vec<Uuid> = requests.iter().flatten().flat_map(|a| a.events.iter().map(|e| e.id)).collect();
    let all_streams: Vec<&str> = requests.iter().flatten().map(|a| a.stream.as_str()).collect();
    let find_ids = tx.prepare_cached(&sql.find_ids).await.map_err(pg)?;
    let find_streams = tx.prepare_cached(&sql.find_streams).await.map_err(pg)?;
    let (ids_param, streams_param): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
        ([&all_ids], [&all_streams]);
    // Pipelined: both lookups travel in one round trip.
    let (id_rows, stream_rows) =
        futures::try_join!(tx.query(&find_ids, &ids_param), tx.query(&find_streams, &streams_param))
            .map_err(pg)?;
    let mut fetched = Fetched::default();
    for row in id_rows {
        let stream: &str = row.get(1);
        let event_type: &str = row.get(4);
        fetched.events.insert(
            row.get(0),
            StoredEventRef {
                stream: StreamName::stored(stream)?,
                version: u64_from(row.get(2), "version")?,
                position: u64_from(row.get(3), "position")?,
                event_type: EventType::new(event_type)?,
                data: Bytes::copy_from_slice(row.get::<_, &[u8]>(5)),
            },
        );
    }
    for row in stream_rows {
        let state = StreamState::from_i64(i64::from(row.get::<_, i16>(2)))?;
        let name: &str = row.get(0);
        fetched.streams.insert(StreamName::stored(name)?, (u64_from(row.get(1), "version")?, state));
    }

    // Every id was fetched, so the planner can check them all: nothing fails while writing.
    let mut planner = GroupPlanner::new(fetched, head);
    let plans: Vec<Result<Vec<Planned>>> =
        requests.iter().map(|appends| planner.plan(appends, true)).collect();
    if planner.last_position() == head {
        return Ok((plans, None));
    }

    let mut rows = Rows::default();
    let written: Vec<(&StreamAppend, &Planned)> = requests
        .iter()
        .zip(&plans)
        .filter_map(|(a, p)| Some(a.iter().zip(p.as_ref().ok()?)))
        .flatten()
        .collect();
    for &(append, plan) in &written {
        let stream = append.stream.as_str();
        let category = append.stream.category();
        for placed in plan.placed(append) {
            let event = placed.event;
            rows.position.push(i64_from(placed.position)?);
            rows.id.push(event.id);
            rows.stream.push(stream);
            rows.version.push(i64_from(placed.version)?);
            rows.category.push(category);
            rows.aggregate_type.push(aggregate_type_of(event, &append.stream));
            rows.event_type.push(event.event_type.as_str());
            rows.schema_version.push(i32::try_from(event.schema_version).unwrap_or(i32::MAX));
            rows.data.push(event.data.as_ref());
            event.metadata.write_json(&mut rows.metadata);
            rows.metadata_ends.push(rows.metadata.len());
            rows.correlation_id.push(event.metadata.correlation_id.as_deref());
            rows.occurred_at.push(event.occurred_at.unwrap_or(now).as_micros());
            rows.recorded_at.push(now.as_micros());
        }
    }
    let starts = std::iter::once(0).chain(rows.metadata_ends.iter().copied());
    let metadata: Vec<&[u8]> =
        starts.zip(&rows.metadata_ends).map(|(start, &end)| &rows.metadata[start..end]).collect();
    let insert = tx.prepare_cached(&sql.insert_events).await.map_err(pg)?;
    tx.execute(
        &insert,
        &[
            &rows.position,
            &rows.id,
            &rows.stream,
            &rows.version,
            &rows.category,
            &rows.aggregate_type,
            &rows.event_type,
            &rows.schema_version,
            &rows.data,
            &metadata,
            &rows.correlation_id,
            &rows.occurred_at,
            &rows.recorded_at,
        ],
    )
    .await
    .map_err(pg)?;
    let heads = stream_heads(written);
    let names: Vec<&str> = heads.iter().map(|h| h.stream.as_str()).collect();
    let categories: Vec<&str> = heads.iter().map(|h| h.stream.category()).collect();
    let types: Vec<&str> = heads.iter().map(|h| h.aggregate_type).collect();
    let versions = heads.iter().map(|h| i64_from(h.version)).collect::<Result<Vec<_>>>()?;
    let upsert = tx.prepare_cached(&sql.upsert_streams).await.map_err(pg)?;
    let update_head = tx.prepare_cached(&sql.update_head).await.map_err(pg)?;
    let notify = tx.prepare_cached(&sql.notify).await.map_err(pg)?;
    let last = planner.last_position();
    let last_i = i64_from(last)?;
    let payload = last.to_string();
    let now_micros = now.as_micros();
    let upsert_params: [&(dyn ToSql + Sync); 5] = [&names, &categories, &types, &versions, &now_micros];
    let head_params: [&(dyn ToSql + Sync); 2] = [&last_i, &now_micros];
    let notify_params: [&(dyn ToSql + Sync); 2] = [&sql.channel, &payload];
    let notify_head =
        async { if sql.head_on_notify { tx.execute(&notify, &notify_params).await } else { Ok(0) } };
    futures::try_join!(
        tx.execute(&upsert, &upsert_params),
        tx.execute(&update_head, &head_params),
        notify_head,
    )
    .map_err(pg)?;
    Ok((plans, Some(last)))
}

pub(crate) fn finish(
    requests: &[Vec<StreamAppend>],
    plans: Vec<Result<Vec<Planned>>>,
) -> Vec<Result<Vec<AppendResult>>> {
    requests
        .iter()
        .zip(plans)
        .map(|(appends, plans)| Ok(appends.iter().zip(&plans?).map(|(a, p)| p.result(a)).collect()))
        .collect()
}

async fn delete(pool: &Pool, sql: &Sql, stream: &StreamName, mode: DeleteMode) -> Result<()> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg)?;
    let lock = tx.prepare_cached(&sql.lock_head).await.map_err(pg)?;
    tx.query_one(&lock, &[]).await.map_err(pg)?;
    let state_stmt = tx.prepare_cached(&sql.stream_state).await.map_err(pg)?;
    let row = tx.query_opt(&state_stmt, &[&stream.as_str()]).await.map_err(pg)?;
    let state = row.map(|r| StreamState::from_i64(i64::from(r.get::<_, i16>(1)))).transpose()?;
    match (state, mode) {
        (None, _) | (Some(StreamState::SoftDeleted), DeleteMode::Soft) => {
            return Err(Error::StreamNotFound(stream.clone()));
        }
        (Some(StreamState::Tombstoned), _) => return Err(Error::StreamDeleted(stream.clone())),
        _ => {}
    }
    let new_state = match mode {
        DeleteMode::Soft => StreamState::SoftDeleted,
        DeleteMode::Hard => {
            let delete = tx.prepare_cached(&sql.delete_events).await.map_err(pg)?;
            tx.execute(&delete, &[&stream.as_str()]).await.map_err(pg)?;
            StreamState::Tombstoned
        }
    };
    let set = tx.prepare_cached(&sql.set_stream_state).await.map_err(pg)?;
    let state_i = i16::try_from(new_state.as_i64()).unwrap_or(0);
    tx.execute(&set, &[&stream.as_str(), &state_i, &Timestamp::now().as_micros()]).await.map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(())
}
