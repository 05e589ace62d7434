//! Consumer groups kept in Redis: the engine behind
//! [`StateStore::shared_groups`](bifrost_core::StateStore::shared_groups), so that every
//! node on one prefix serves the same groups.
//!
//! A group's unsettled events are rows fed from the log by whichever node fetches
//! (`read_to` says how far); acked or parked rows are removed, so the checkpoint is the
//! lowest row's position minus one. A lease is a row marked leased with a deadline and a
//! nonce (the token is the position and the nonce), so any node can hand it out, ack it,
//! nack it or, once its deadline passes, expire it; a node that dies leaves nothing only it
//! knew. Per-stream order is a property of the rows: a stream's first row goes out only
//! while no row of its stream is leased, and later ones only together with it (a batch).
//! Every operation is one Lua script (`scripts.rs`), atomic across nodes; expiring overdue
//! leases is part of every fetch and status. Fetchers wait on the log's head, on the
//! groups channel (published by every script that settles, replays or changes a group, on
//! any node), on the next retry's or deadline's due time, and on a fallback poll.
//!
//! The feed filters events in Rust (type patterns, category), so it is a log read followed
//! by a script that applies it only if `read_to` did not move meanwhile.

mod scripts;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bifrost_core::backend::codec::corrupt;
use bifrost_core::group::{
    BackoffKind, DeadLetter, DeadLetterEntry, Fetch, GroupConfig, GroupEngine, GroupKind, GroupName,
    GroupStatus, Lease, LeaseToken, NACKED, NackAction, Put, ReplaySelection, Settled, Verdict, random,
    timeout_reason,
};
use bifrost_core::{Error, EventId, LogFilter, NameCache, Position, RecordedEvent, Result, Timestamp};
use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::codec::{array, closed, decode_event, int, opt_bytes, redis_error, text, uint};
use crate::listener::listen;
use crate::reader;
use crate::scripts::{EVENTS_AT, Keys};

/// Most unsettled rows a group keeps ahead of its consumers: enough for many streams to
/// have their first event there, few enough that a fetch's pass over them is short.
const WINDOW: u64 = 2048;
/// Fallback poll of a waiting fetch, in case a wake-up is lost.
const POLL: Duration = Duration::from_secs(1);
/// Events counted per read when the lag is counted beyond `read_to`.
const COUNT_CHUNK: usize = 10_000;

/// What every kind's engine of one store shares: the connection, the head, and the
/// wake-ups heard on the groups channel.
struct Core {
    conn: ConnectionManager,
    keys: Arc<Keys>,
    head: watch::Receiver<Position>,
    wake: watch::Sender<u64>,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// Set when the store closes: every kind's engine answers `Unavailable` from then on.
    closed: AtomicBool,
}

/// The groups of one store, all kinds.
pub(crate) struct StoreGroups {
    core: Arc<Core>,
}

impl StoreGroups {
    pub(crate) fn start(
        client: redis::Client,
        conn: ConnectionManager,
        keys: Arc<Keys>,
        head: watch::Receiver<Position>,
    ) -> Self {
        let (wake, _) = watch::channel(0u64);
        let channel = format!("{}:groups", keys.prefix);
        let core = Arc::new(Core {
            conn,
            keys,
            head,
            wake,
            listener: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        let heard = Arc::downgrade(&core);
        let caught_up = heard.clone();
        let bump = |core: &std::sync::Weak<Core>| {
            if let Some(core) = core.upgrade() {
                core.wake.send_modify(|n| *n = n.wrapping_add(1));
            }
        };
        let listener = listen(client, channel, move |_| bump(&heard), move || bump(&caught_up));
        *core.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
        Self { core }
    }

    pub(crate) fn engine(&self, kind: GroupKind) -> Arc<dyn GroupEngine> {
        let kinds = format!("{}:groups:{}", self.core.keys.prefix, kind.as_str());
        Arc::new(RedisGroups { core: self.core.clone(), kinds, closed: AtomicBool::new(false) })
    }

    pub(crate) async fn stop(&self) {
        self.core.closed.store(true, Ordering::Release);
        let listener = self.core.listener.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(listener) = listener {
            listener.abort();
            let _ = listener.await;
        }
        // Waiting fetches see the change and find the store closed.
        self.core.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Drop for StoreGroups {
    fn drop(&mut self) {
        if let Some(listener) = self.core.listener.lock().unwrap_or_else(|p| p.into_inner()).take() {
            listener.abort();
        }
    }
}

/// The groups of one kind.
struct RedisGroups {
    core: Arc<Core>,
    /// The hash of this kind's groups: name → id.
    kinds: String,
    closed: AtomicBool,
}

/// What `INFO` says about a group.
struct Info {
    config: GroupConfig,
    read_to: Position,
    rows: u64,
    positions: Vec<Position>,
}

fn config_from(value: Value) -> Result<GroupConfig> {
    serde_json::from_slice(&crate::codec::bytes(value)?).map_err(|e| corrupt("group settings", e))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RedisGroups {
    fn conn(&self) -> Result<ConnectionManager> {
        if self.closed.load(Ordering::Acquire) || self.core.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        Ok(self.core.conn.clone())
    }

    /// Runs a group script on `name` with `args` after the prefix and the name; the reply
    /// after its `ok`, or `GroupNotFound`.
    async fn call(
        &self,
        script: &Script,
        name: &GroupName,
        args: impl FnOnce(&mut ScriptInvocation<'_>),
    ) -> Result<std::vec::IntoIter<Value>> {
        let mut conn = self.conn()?;
        let mut invocation = script.key(&self.kinds);
        invocation.key(&self.core.keys.log).arg(&self.core.keys.prefix).arg(name.as_str());
        args(&mut invocation);
        let reply: Value = invocation.invoke_async(&mut conn).await.map_err(redis_error)?;
        let mut parts = array(reply)?.into_iter();
        match parts.next().map(text).transpose()?.as_deref() {
            // `stale`: a feed found that another node fed first; its rows are as good.
            Some("ok" | "stale") => Ok(parts),
            Some("missing") => Err(Error::GroupNotFound(name.to_string())),
            other => Err(corrupt("group script reply", format!("{other:?}"))),
        }
    }

    async fn info(&self, name: &GroupName, with_rows: bool) -> Result<Info> {
        let mut parts = self
            .call(&scripts::INFO, name, |i| {
                i.arg(if with_rows { "rows" } else { "" });
            })
            .await?;
        let (Some(config), Some(read_to), Some(rows), Some(positions)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(crate::codec::corrupt_reply("group info"));
        };
        Ok(Info {
            config: config_from(config)?,
            read_to: uint(&read_to)?,
            rows: uint(&rows)?,
            positions: array(positions)?.iter().map(uint).collect::<Result<_>>()?,
        })
    }

    /// The stored events at `positions`, `None` where deleted.
    async fn events_at(&self, positions: &[Position]) -> Result<Vec<Option<RecordedEvent>>> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        let mut invocation = EVENTS_AT.key(&self.core.keys.log);
        invocation.arg(positions);
        let reply: Value = invocation.invoke_async(&mut conn).await.map_err(redis_error)?;
        let mut names = NameCache::default();
        array(reply)?
            .into_iter()
            .map(|v| opt_bytes(v)?.map(|b| decode_event(&b, &mut names).map(|d| d.event)).transpose())
            .collect()
    }

    async fn drop_rows(&self, name: &GroupName, positions: &[Position]) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        self.call(&scripts::DROP_ROWS, name, |i| {
            i.arg(positions);
        })
        .await?;
        Ok(())
    }

    /// Reads the log after `read_to` into rows, up to the window.
    async fn feed(&self, name: &GroupName) -> Result<()> {
        let info = self.info(name, false).await?;
        if info.rows >= WINDOW {
            return Ok(());
        }
        let filter = info.config.filter.to_log_filter()?;
        let mut conn = self.conn()?;
        let limit = usize::try_from(WINDOW - info.rows).unwrap_or(1);
        let page = reader::read_all(&mut conn, &self.core.keys, info.read_to, &filter, limit).await?;
        if page.next_position == info.read_to {
            return Ok(());
        }
        let mut invocation_args: Vec<String> = Vec::with_capacity(2 + 2 * page.events.len());
        invocation_args.push(info.read_to.to_string());
        invocation_args.push(page.next_position.to_string());
        for e in &page.events {
            invocation_args.push(e.position.to_string());
            invocation_args.push(e.stream.to_string());
        }
        self.call(&scripts::FEED, name, |i| {
            i.arg(&invocation_args);
        })
        .await?;
        Ok(())
    }

    /// One try at leasing: the leases and, when there are none, how long until a row is due.
    async fn lease(&self, name: &GroupName, fetch: &Fetch<'_>) -> Result<(Vec<Lease>, Option<Duration>)> {
        self.feed(name).await?;
        let nonce_base = random::next_u64() >> 16;
        let mut parts = self
            .call(&scripts::LEASE, name, |i| {
                i.arg(fetch.consumer).arg(fetch.max.max(1)).arg(fetch.per_stream.max(1)).arg(nonce_base);
            })
            .await?;
        let (Some(leased), Some(next)) = (parts.next(), parts.next()) else {
            return Err(crate::codec::corrupt_reply("lease"));
        };
        let leased = array(leased)?;
        let next = u64::try_from(int(&next)?).ok().map(Duration::from_micros);
        let mut granted = Vec::new();
        for triple in leased.chunks(3) {
            let [position, nonce, attempt] = triple else { return Err(crate::codec::corrupt_reply("lease")) };
            let attempt = u32::try_from(uint(attempt)?).map_err(|e| corrupt("attempt", e))?;
            granted.push((uint(position)?, uint(nonce)?, attempt));
        }
        let positions: Vec<Position> = granted.iter().map(|g| g.0).collect();
        let events = self.events_at(&positions).await?;
        let mut leases = Vec::with_capacity(granted.len());
        let mut gone = Vec::new();
        for ((position, nonce, attempt), event) in granted.into_iter().zip(events) {
            match event {
                Some(event) => leases.push(Lease { token: LeaseToken::new(position, nonce), attempt, event }),
                // Hard-deleted since it was fed: nothing to deliver.
                None => gone.push(position),
            }
        }
        self.drop_rows(name, &gone).await?;
        Ok((leases, next))
    }

    /// Position and stream of the events in `(after, to]` that match `new` but not `old`.
    async fn newly_matching(
        &self,
        mut after: Position,
        to: Position,
        old: &LogFilter,
        new: &LogFilter,
    ) -> Result<Vec<String>> {
        let mut conn = self.conn()?;
        let mut out = Vec::new();
        while after < to {
            let page = reader::read_all(&mut conn, &self.core.keys, after, new, COUNT_CHUNK).await?;
            for e in page.events.iter().take_while(|e| e.position <= to) {
                if !old.matches(&e.event_type, &e.stream, None, e.recorded_at) {
                    out.push(e.position.to_string());
                    out.push(e.stream.to_string());
                }
            }
            if page.events.len() < COUNT_CHUNK || page.next_position <= after {
                break;
            }
            after = page.next_position;
        }
        Ok(out)
    }

    /// Matching events after `read_to`, up to the head.
    async fn unread(&self, read_to: Position, filter: &LogFilter) -> Result<u64> {
        let mut conn = self.conn()?;
        let mut after = read_to;
        let mut count = 0;
        loop {
            let page = reader::read_all(&mut conn, &self.core.keys, after, filter, COUNT_CHUNK).await?;
            count += page.events.len() as u64;
            if page.events.len() < COUNT_CHUNK || page.next_position == after {
                return Ok(count);
            }
            after = page.next_position;
        }
    }
}

fn dead_letter(position: Position, stored: &str) -> Result<DeadLetter> {
    let mut fields = stored.splitn(6, '|');
    let mut next = || fields.next().ok_or_else(|| corrupt("dead letter", stored));
    let attempts = next()?.parse::<u32>().map_err(|e| corrupt("dead letter attempts", e))?;
    let parked_at = next()?.parse::<i64>().map_err(|e| corrupt("dead letter time", e))?;
    let event_id = EventId::parse_str(next()?).map_err(|e| corrupt("dead letter event id", e))?;
    let stream = next()?.to_owned();
    let event_type = next()?.to_owned();
    let reason = next()?.to_owned();
    Ok(DeadLetter {
        event_id,
        position,
        stream,
        event_type,
        attempts,
        reason,
        parked_at: Timestamp::from_micros(parked_at),
    })
}

#[async_trait]
impl GroupEngine for RedisGroups {
    async fn put(&self, name: &GroupName, config: GroupConfig) -> Result<Put> {
        config.validate()?;
        let mut conn = self.conn()?;
        let head: Option<Position> =
            redis::cmd("GET").arg(&self.core.keys.head).query_async(&mut conn).await.map_err(redis_error)?;
        let before = match self.info(name, false).await {
            Ok(info) => Some(info.config),
            Err(Error::GroupNotFound(_)) => None,
            Err(e) => return Err(e),
        };
        // The start point counts only at creation: an update keeps the one it had.
        let mut config = config;
        let start = match &before {
            None => config.start_position(head.unwrap_or(0))?,
            Some(before) => {
                config.start = before.start;
                0
            }
        };
        let json = serde_json::to_string(&config)
            .map_err(|e| Error::Internal(format!("group settings do not serialise: {e}")))?;
        let backoff_kind = match config.backoff.kind {
            BackoffKind::Fixed => "f",
            BackoffKind::Exponential => "e",
        };
        let mut invocation = scripts::PUT.key(&self.kinds);
        invocation
            .key(&self.core.keys.log)
            .key(format!("{}:group-seq", self.core.keys.prefix))
            .arg(&self.core.keys.prefix)
            .arg(name.as_str())
            .arg(json)
            .arg(u64::try_from(config.ack_timeout.as_millis()).unwrap_or(u64::MAX))
            .arg(config.max_attempts)
            .arg(backoff_kind)
            .arg(u64::try_from(config.backoff.initial.as_millis()).unwrap_or(u64::MAX))
            .arg(u64::try_from(config.backoff.max.as_millis()).unwrap_or(u64::MAX))
            .arg(if config.backoff.jitter { "1" } else { "0" })
            .arg(config.max_in_flight)
            .arg(if config.ordered { "1" } else { "0" })
            .arg(timeout_reason(config.ack_timeout))
            .arg(start);
        let reply: Value = invocation.invoke_async(&mut conn).await.map_err(redis_error)?;
        let outcome = array(reply)?.into_iter().next().map(text).transpose()?;
        if outcome.as_deref() == Some("created") {
            return Ok(Put::Created);
        }
        // A changed filter applies from the checkpoint on: rows that no longer match are
        // dropped (their leases end), events above the checkpoint that match only now are
        // added (they were never fed, so never settled), and the log beyond `read_to` is
        // read with the new filter as it is fed.
        if let Some(before) = before.filter(|b| b.filter != config.filter) {
            let (old, new) = (before.filter.to_log_filter()?, config.filter.to_log_filter()?);
            let info = self.info(name, true).await?;
            let events = self.events_at(&info.positions).await?;
            let unmatched: Vec<Position> = info
                .positions
                .iter()
                .zip(events)
                .filter(|(_, e)| {
                    e.as_ref().is_none_or(|e| !new.matches(&e.event_type, &e.stream, None, e.recorded_at))
                })
                .map(|(p, _)| *p)
                .collect();
            self.drop_rows(name, &unmatched).await?;
            let checkpoint = info.positions.iter().min().map_or(info.read_to, |p| p - 1);
            let newly = self.newly_matching(checkpoint, info.read_to, &old, &new).await?;
            if !newly.is_empty() {
                self.call(&scripts::ADD_ROWS, name, |i| {
                    i.arg(&newly);
                })
                .await?;
            }
        }
        Ok(Put::Updated)
    }

    async fn status(&self, name: &GroupName) -> Result<GroupStatus> {
        let parts: Vec<Value> = self.call(&scripts::STATUS, name, |_| {}).await?.collect();
        let [
            config,
            created,
            read_to,
            redeliveries,
            timeouts,
            checkpoint,
            rows,
            in_flight,
            waiting,
            parked,
            consumers,
        ] = <[Value; 11]>::try_from(parts).map_err(|_| crate::codec::corrupt_reply("group status"))?;
        let config = config_from(config)?;
        let read_to = uint(&read_to)?;
        let unread = self.unread(read_to, &config.filter.to_log_filter()?).await?;
        let mut seen = Vec::new();
        let mut flat = array(consumers)?.into_iter();
        while let (Some(consumer), Some(at)) = (flat.next(), flat.next()) {
            seen.push((text(consumer)?, Timestamp::from_micros(int(&at)?)));
        }
        seen.sort();
        Ok(GroupStatus {
            name: name.clone(),
            config,
            created_at: Timestamp::from_micros(int(&created)?),
            checkpoint: uint(&checkpoint)?,
            lag: uint(&rows)? + unread,
            in_flight: uint(&in_flight)?,
            waiting: uint(&waiting)?,
            parked: uint(&parked)?,
            redeliveries: uint(&redeliveries)?,
            timeouts: uint(&timeouts)?,
            consumers: seen,
        })
    }

    async fn list(&self) -> Result<Vec<GroupName>> {
        let mut conn = self.conn()?;
        let names: Vec<String> =
            redis::cmd("HKEYS").arg(&self.kinds).query_async(&mut conn).await.map_err(redis_error)?;
        let mut names = names
            .iter()
            .map(|n| GroupName::new(n).map_err(|e| corrupt("group name", e)))
            .collect::<Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    async fn delete(&self, name: &GroupName) -> Result<()> {
        self.call(&scripts::DELETE, name, |_| {}).await?;
        Ok(())
    }

    async fn fetch(&self, name: &GroupName, fetch: Fetch<'_>) -> Result<Vec<Lease>> {
        let deadline = Instant::now() + fetch.wait;
        let mut head = self.core.head.clone();
        let mut wake = self.core.wake.subscribe();
        loop {
            // Marked as seen before looking, so a change during the look wakes the wait.
            head.borrow_and_update();
            wake.borrow_and_update();
            let (leases, next) = self.lease(name, &fetch).await?;
            if !leases.is_empty() {
                return Ok(leases);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(leases);
            }
            let mut pause = (deadline - now).min(POLL);
            if let Some(next) = next {
                pause = pause.min(next + Duration::from_millis(1));
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return Err(closed()) },
                _ = wake.changed() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn settle(
        &self,
        name: &GroupName,
        leases: &[LeaseToken],
        verdict: Verdict<'_>,
        _deferred: bool,
    ) -> Result<Settled> {
        let (op, delay, reason) = match verdict {
            Verdict::Ack => ("ack", None, ""),
            Verdict::Nack(NackAction::Retry(delay), reason) => ("retry", delay, reason.unwrap_or(NACKED)),
            Verdict::Nack(NackAction::Park, reason) => ("park", None, reason.unwrap_or(NACKED)),
            Verdict::Nack(NackAction::Release(delay), _) => ("release", Some(delay), ""),
        };
        let delay: i64 = delay.map_or(-1, |d| i64::try_from(micros(d)).unwrap_or(i64::MAX));
        let mut parts = self
            .call(&scripts::SETTLE, name, |i| {
                i.arg(op).arg(delay).arg(reason);
                for token in leases {
                    i.arg(token.high()).arg(token.low());
                }
            })
            .await?;
        let expired_at = array(parts.next().unwrap_or_default())?;
        let mut expired = Vec::with_capacity(expired_at.len());
        for index in &expired_at {
            let index = usize::try_from(int(index)?).map_err(|e| corrupt("lease index", e))?;
            let token = index.checked_sub(1).and_then(|i| leases.get(i));
            expired.push(*token.ok_or_else(|| crate::codec::corrupt_reply("lease index"))?);
        }
        Ok(Settled { count: leases.len() - expired.len(), expired })
    }

    async fn dead_letters(
        &self,
        name: &GroupName,
        after: Option<Position>,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>> {
        let mut parts = self
            .call(&scripts::DEAD_LETTERS, name, |i| {
                i.arg(after.unwrap_or(0)).arg(limit.min(i64::MAX as usize));
            })
            .await?;
        let mut flat = array(parts.next().unwrap_or_default())?.into_iter();
        let mut letters = Vec::new();
        while let (Some(position), Some(stored)) = (flat.next(), flat.next()) {
            letters.push(dead_letter(uint(&position)?, &text(stored)?)?);
        }
        let positions: Vec<Position> = letters.iter().map(|d| d.position).collect();
        let events = self.events_at(&positions).await?;
        Ok(letters
            .into_iter()
            .zip(events)
            .map(|(dead_letter, event)| DeadLetterEntry { dead_letter, event })
            .collect())
    }

    async fn replay(&self, name: &GroupName, selection: ReplaySelection) -> Result<usize> {
        let mut parts = self
            .call(&scripts::REPLAY, name, |i| match &selection {
                ReplaySelection::All => {
                    i.arg("all");
                }
                ReplaySelection::UpTo(p) => {
                    i.arg("upto").arg(*p);
                }
                ReplaySelection::Ids(ids) => {
                    i.arg("ids");
                    for id in ids {
                        i.arg(id.hyphenated().to_string());
                    }
                }
            })
            .await?;
        let replayed = uint(&parts.next().unwrap_or_default())?;
        Ok(usize::try_from(replayed).unwrap_or(usize::MAX))
    }

    async fn discard(&self, name: &GroupName, id: EventId) -> Result<bool> {
        let mut parts = self
            .call(&scripts::DISCARD, name, |i| {
                i.arg(id.hyphenated().to_string());
            })
            .await?;
        Ok(int(&parts.next().unwrap_or_default())? == 1)
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        // Waiting fetches look again, find the engine closed and end.
        self.core.wake.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}
