//! The writer task: gathers the appends that queue while the previous group is being
//! written and sends each group to Redis as one call of the append script.
//!
//! A group takes two round trips whatever its size: one script call that looks up every
//! event id of the group (so replays and reused ids are decided in Rust by the shared
//! rules), and one append script call that checks the expected versions and numbers the
//! events. When another node stores one of a request's ids between the two, the script
//! refuses that request (`retry`) and the next round decides it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bifrost_core::backend::rules::{StoredEventRef, aggregate_type_of, check_replay};
use bifrost_core::{
    AppendResult, Error, ExpectedVersion, NameCache, Position, Result, StreamAppend, Timestamp,
    VersionConflict,
};
use redis::Value;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::codec::{self, array, closed, decode_event, encode_body, int, redis_error, uint};
use crate::scripts::{APPEND, EVENTS_BY_ID, Keys};

/// Most events sent in one script call (a single larger append still goes alone): a
/// script holds Redis for its whole run.
const MAX_GROUP_EVENTS: usize = 10_000;
/// Most payload bytes gathered into one group.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Rounds a group may take before its remaining requests fail: each `retry` means another
/// writer stored one of their ids, so this is only reached under pathological contention.
const MAX_ROUNDS: usize = 16;

struct Request {
    appends: Vec<StreamAppend>,
    reply: oneshot::Sender<Result<Vec<AppendResult>>>,
}

pub(crate) struct Writer {
    sender: Mutex<Option<mpsc::UnboundedSender<Request>>>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub(crate) fn start(
        conn: ConnectionManager,
        keys: Arc<Keys>,
        head: Arc<watch::Sender<Position>>,
        max_batch: usize,
    ) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(conn, keys, head, receiver, max_batch.max(1)));
        Self { sender: Mutex::new(Some(sender)), task: tokio::sync::Mutex::new(Some(task)) }
    }

    pub(crate) async fn append(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        let (reply, answer) = oneshot::channel();
        {
            let guard = self.sender.lock().unwrap_or_else(|p| p.into_inner());
            guard.as_ref().ok_or_else(closed)?.send(Request { appends, reply }).map_err(|_| closed())?;
        }
        answer.await.map_err(|_| closed())?
    }

    /// Lets queued appends finish, then stops the task.
    pub(crate) async fn close(&self) {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

fn size(request: &Request) -> (usize, usize) {
    let events = request.appends.iter().map(|a| a.events.len()).sum();
    let bytes = request.appends.iter().flat_map(|a| &a.events).map(|e| e.data.len()).sum();
    (events, bytes)
}

async fn run(
    mut conn: ConnectionManager,
    keys: Arc<Keys>,
    head: Arc<watch::Sender<Position>>,
    mut receiver: mpsc::UnboundedReceiver<Request>,
    max_batch: usize,
) {
    let mut next: Option<Request> = None;
    loop {
        let first = match next.take() {
            Some(r) => r,
            None => match receiver.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let (mut events, mut bytes) = size(&first);
        let mut group = vec![first];
        while group.len() < max_batch && events < MAX_GROUP_EVENTS && bytes < MAX_GROUP_BYTES {
            let Ok(request) = receiver.try_recv() else { break };
            let (e, b) = size(&request);
            if events + e > MAX_GROUP_EVENTS || bytes + b > MAX_GROUP_BYTES {
                next = Some(request);
                break;
            }
            events += e;
            bytes += b;
            group.push(request);
        }
        write_group(&mut conn, &keys, &head, group).await;
    }
}

/// What the rules decided for one stream of a request before the script runs.
enum Decision {
    Replay(AppendResult),
    Write,
}

async fn write_group(
    conn: &mut ConnectionManager,
    keys: &Keys,
    head: &watch::Sender<Position>,
    mut pending: Vec<Request>,
) {
    for _ in 0..MAX_ROUNDS {
        if pending.is_empty() {
            return;
        }
        match round(conn, keys, head, pending).await {
            Ok(retry) => pending = retry,
            Err((e, failed)) => {
                for request in failed {
                    let _ = request.reply.send(Err(clone_error(&e)));
                }
                return;
            }
        }
    }
    for request in pending {
        let _ = request.reply.send(Err(Error::Unavailable(
            "the append kept meeting concurrent writes of its event ids; try again".into(),
        )));
    }
}

/// An error for every request of a failed round (the store's error is not `Clone`).
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::Corrupt { message, .. } => Error::Corrupt { message: message.clone(), source: None },
        other => Error::Storage { message: other.to_string(), source: None },
    }
}

/// One round: decides replays, runs the script, answers every request it settled and
/// returns those to try again. On a failure to reach Redis, every request of the round
/// fails with it.
async fn round(
    conn: &mut ConnectionManager,
    keys: &Keys,
    head: &watch::Sender<Position>,
    pending: Vec<Request>,
) -> std::result::Result<Vec<Request>, (Error, Vec<Request>)> {
    let stored = match stored_events(conn, keys, &pending).await {
        Ok(stored) => stored,
        Err(e) => return Err((e, pending)),
    };
    let mut to_write: Vec<(Request, Vec<Decision>)> = Vec::new();
    for request in pending {
        match decide(&request.appends, &stored) {
            Err(e) => {
                let _ = request.reply.send(Err(e));
            }
            Ok(decisions) if decisions.iter().all(|d| matches!(d, Decision::Replay(_))) => {
                let results = decisions
                    .into_iter()
                    .filter_map(|d| match d {
                        Decision::Replay(r) => Some(r),
                        Decision::Write => None,
                    })
                    .collect();
                let _ = request.reply.send(Ok(results));
            }
            Ok(decisions) => to_write.push((request, decisions)),
        }
    }
    if to_write.is_empty() {
        return Ok(Vec::new());
    }
    let reply = match append_script(conn, keys, &to_write).await {
        Ok(reply) => reply,
        Err(e) => return Err((e, to_write.into_iter().map(|(r, _)| r).collect())),
    };
    let parsed = parse_reply(reply, to_write.len());
    let (new_head, verdicts) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return Err((e, to_write.into_iter().map(|(r, _)| r).collect())),
    };
    // Readers of this node see the group before its writers hear back.
    head.send_if_modified(|h| {
        let moved = new_head > *h;
        if moved {
            *h = new_head;
        }
        moved
    });
    let mut retry = Vec::new();
    for ((request, decisions), verdict) in to_write.into_iter().zip(verdicts) {
        let written: Vec<&StreamAppend> = request
            .appends
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| matches!(d, Decision::Write))
            .map(|(a, _)| a)
            .collect();
        let answer = match verdict {
            Verdict::Retry => {
                retry.push(request);
                continue;
            }
            Verdict::Deleted(index) => match written.get(index) {
                Some(append) => Err(Error::StreamDeleted(append.stream.clone())),
                None => Err(codec_error("a deleted stream's index")),
            },
            Verdict::Conflict(conflicts) => conflicts
                .into_iter()
                .map(|(index, actual)| {
                    let append = written.get(index).ok_or_else(|| codec_error("a conflict's index"))?;
                    Ok(VersionConflict { stream: append.stream.clone(), expected: append.expected, actual })
                })
                .collect::<Result<Vec<_>>>()
                .and_then(|c| Err(Error::WrongExpectedVersion(c))),
            Verdict::Ok(placed) => results(&request.appends, decisions, &placed),
        };
        let _ = request.reply.send(answer);
    }
    Ok(retry)
}

fn codec_error(what: &str) -> Error {
    codec::corrupt_reply(what)
}

/// Every request's results in request order: replays as stored, writes where the script
/// put them.
fn results(
    appends: &[StreamAppend],
    decisions: Vec<Decision>,
    placed: &[(u64, u64)],
) -> Result<Vec<AppendResult>> {
    let mut placed = placed.iter();
    appends
        .iter()
        .zip(decisions)
        .map(|(append, decision)| match decision {
            Decision::Replay(original) => Ok(original),
            Decision::Write => {
                let &(after, first_position) = placed.next().ok_or_else(|| codec_error("placed streams"))?;
                let count = append.events.len() as u64;
                Ok(AppendResult {
                    stream: append.stream.clone(),
                    first_version: after + 1,
                    last_version: after + count,
                    first_position,
                    last_position: first_position + count - 1,
                })
            }
        })
        .collect()
}

/// The stored events of every id the group names, by id (absent ids are not in the map).
async fn stored_events(
    conn: &mut ConnectionManager,
    keys: &Keys,
    pending: &[Request],
) -> Result<HashMap<Uuid, StoredEventRef>> {
    let ids: Vec<String> = pending
        .iter()
        .flat_map(|r| &r.appends)
        .flat_map(|a| &a.events)
        .map(|e| e.id.hyphenated().to_string())
        .collect();
    let mut invocation = EVENTS_BY_ID.key(&keys.ids);
    invocation.key(&keys.log).arg(&ids);
    let reply: Value = invocation.invoke_async(conn).await.map_err(redis_error)?;
    let mut found = HashMap::new();
    let mut names = NameCache::default();
    for value in array(reply)? {
        let Some(stored) = codec::opt_bytes(value)? else { continue };
        let e = decode_event(&stored, &mut names)?.event;
        found.insert(
            e.id,
            StoredEventRef {
                stream: e.stream,
                version: e.version,
                position: e.position,
                event_type: e.event_type,
                data: e.data,
            },
        );
    }
    Ok(found)
}

/// The shared replay rule for each stream of a request; a later id that is stored while
/// the first is new is a duplicate.
fn decide(appends: &[StreamAppend], stored: &HashMap<Uuid, StoredEventRef>) -> Result<Vec<Decision>> {
    appends
        .iter()
        .map(|append| {
            if let Some(original) = check_replay(append, |id| Ok(stored.get(id).cloned()))? {
                return Ok(Decision::Replay(original));
            }
            match append.events.iter().find(|e| stored.contains_key(&e.id)) {
                Some(taken) => Err(Error::DuplicateEventId { id: taken.id }),
                None => Ok(Decision::Write),
            }
        })
        .collect()
}

async fn append_script(
    conn: &mut ConnectionManager,
    keys: &Keys,
    to_write: &[(Request, Vec<Decision>)],
) -> Result<Value> {
    let now = Timestamp::now();
    let mut invocation = APPEND.key(&keys.head);
    invocation
        .key(&keys.clock)
        .key(&keys.log)
        .key(&keys.ids)
        .key(&keys.streams)
        .arg(&keys.stream_meta)
        .arg(&keys.stream_positions)
        .arg(&keys.head_channel)
        .arg(to_write.len());
    for (request, decisions) in to_write {
        let written: Vec<&StreamAppend> = request
            .appends
            .iter()
            .zip(decisions)
            .filter(|(_, d)| matches!(d, Decision::Write))
            .map(|(a, _)| a)
            .collect();
        invocation.arg(written.len());
        for append in written {
            let (kind, version) = match append.expected {
                ExpectedVersion::Any => ("a", 0),
                ExpectedVersion::NoStream => ("n", 0),
                ExpectedVersion::StreamExists => ("e", 0),
                ExpectedVersion::Exact(v) => ("x", v),
            };
            invocation
                .arg(append.stream.as_str())
                .arg(kind)
                .arg(version)
                .arg(aggregate_type_of(&append.events[0], &append.stream))
                .arg(append.events.len());
            for event in &append.events {
                invocation.arg(event.id.hyphenated().to_string()).arg(encode_body(
                    event,
                    &append.stream,
                    now,
                ));
            }
        }
    }
    invocation.invoke_async(conn).await.map_err(redis_error)
}

enum Verdict {
    Ok(Vec<(u64, u64)>),
    Retry,
    Deleted(usize),
    Conflict(Vec<(usize, Option<u64>)>),
}

/// `{head, recorded_at, replies}` of the append script.
fn parse_reply(reply: Value, expected: usize) -> Result<(Position, Vec<Verdict>)> {
    let mut parts = array(reply)?.into_iter();
    let (Some(head), Some(_recorded_at), Some(replies)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(codec_error("append reply"));
    };
    let head = uint(&head)?;
    let replies = array(replies)?;
    if replies.len() != expected {
        return Err(codec_error("append reply count"));
    }
    let index = |v: &Value| -> Result<usize> {
        let i = usize::try_from(int(v)?).map_err(|_| codec_error("index"))?;
        i.checked_sub(1).ok_or_else(|| codec_error("index"))
    };
    let verdicts = replies
        .into_iter()
        .map(|reply| {
            let mut reply = array(reply)?.into_iter();
            let kind = reply.next().map(codec::text).transpose()?.unwrap_or_default();
            match kind.as_str() {
                "retry" => Ok(Verdict::Retry),
                "deleted" => Ok(Verdict::Deleted(index(&reply.next().unwrap_or_default())?)),
                "conflict" => {
                    let flat = array(reply.next().unwrap_or_default())?;
                    flat.chunks(2)
                        .map(|pair| match pair {
                            [i, actual] => {
                                let actual = int(actual)?;
                                Ok((index(i)?, u64::try_from(actual).ok()))
                            }
                            _ => Err(codec_error("conflict pair")),
                        })
                        .collect::<Result<Vec<_>>>()
                        .map(Verdict::Conflict)
                }
                "ok" => {
                    let flat = array(reply.next().unwrap_or_default())?;
                    flat.chunks(2)
                        .map(|pair| match pair {
                            [after, first] => Ok((uint(after)?, uint(first)?)),
                            _ => Err(codec_error("placed pair")),
                        })
                        .collect::<Result<Vec<_>>>()
                        .map(Verdict::Ok)
                }
                _ => Err(codec_error("append verdict")),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((head, verdicts))
}
