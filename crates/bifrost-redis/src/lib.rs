//! Bifrost's Redis event store: a third backend for several stateless `bifrost serve`
//! nodes, sharing one Redis (a single server or a primary; not Redis Cluster, since the
//! scripts touch keys they compute).
//!
//! **Exact global order and atomicity.** Every append goes through one Lua script
//! (`scripts.rs`), and Redis runs a script alone, start to end. The script
//! checks every expected version of a request and that none of its event ids is stored,
//! then numbers its events after the stored head, writes them and moves the head; or it
//! writes nothing of that request. So appends from any number of nodes are serialised by
//! Redis itself: positions have no gaps, a reader that has seen position P never later
//! meets a new event below P, and each stream's versions are consecutive. Nothing is
//! locked and no reader ever waits on a timeout.
//!
//! **Idempotency** is decided in Rust by the shared rules: before the script runs, the
//! writer fetches whatever the request's event ids already name and applies
//! `check_replay` (the original result for a re-sent append, `DuplicateEventId` for an id
//! used elsewhere). Should another node store one of those ids in between, the script
//! refuses the request and the writer decides it again.
//!
//! **Throughput** comes from group commit per node: the writer task gathers the appends
//! that queue while the previous group is in flight and sends them in one script call
//! (each request still atomic on its own), two round trips per group whatever its size.
//!
//! **Storage.** The log is a sorted set (score = position, member = the event: a header the
//! script writes, then the body the writer encoded), with an id → position hash; each
//! stream has a hash (version, state, aggregate type, times) and a list of its positions;
//! the live stream names are a sorted set, so listings page in name order. Readers' state
//! is a hash and a sorted set of keys per scope. Every key starts with the prefix
//! ([`RedisOptions::prefix`]). **The whole log lives in RAM**: size the server for it.
//! The key layout and the stored event's form (`scripts.rs`, `codec.rs`) are what an
//! existing Redis holds: change them like a database schema, never in place.
//!
//! **Wake-ups.** The append script publishes the new head on `{prefix}:head`; each store
//! listens on a connection of its own (reconnecting with backoff) and moves its `head()`
//! watch, and polls the head key every [`RedisOptions::poll_interval`] in case a message
//! was lost. The writer also moves it before answering, so a writer reads its own appends.
//!
//! **Durability.** An append is acknowledged once Redis has run the script. That survives
//! a crash of the server only with `appendonly yes` and `appendfsync always`: read at
//! connect, reported by [`RedisStore::durable`] (a server that refuses `CONFIG GET`, as
//! managed ones do, counts as not durable). An append whose answer was lost (a timeout,
//! a dropped connection) may have been applied: re-sending it with the same event ids
//! returns the original result.
//!
//! **Reads** are scripts too, each seeing Redis between two appends. A filtered log read
//! decodes and filters in the store, a chunk of the log at a time: a very selective filter
//! over a long log reads much of it.
//!
//! **Cluster bus.** [`StateStore::cluster_bus`] is Pub/Sub on `{prefix}:bus`
//! ([`RedisBus`], also usable on its own by nodes of another store).
//!
//! **Consumer groups** ([`StateStore::shared_groups`], `groups/`) are kept in Redis, so
//! every node on a prefix serves the same ones: a group's unsettled events are rows fed
//! from the log by whichever node fetches, a lease is a row with a deadline and a nonce,
//! and every operation (feed, lease, ack, nack, expiry, replay, change) is one script, so
//! a lease fetched on one node is acked on another and a dead node's leases expire
//! through the others. A fetch costs a few round trips (feed, lease, events); a group's
//! status counts its lag by reading the matching log beyond what was fed.
//!
//! **TLS** (`rediss://host:port`): rustls, the server's certificate checked against the
//! platform's roots (`SSL_CERT_FILE` names another bundle) and the host name. The redis
//! client takes rustls's process-wide provider; when none is installed, ring is.

mod bus;
mod codec;
mod groups;
mod listener;
mod reader;
mod scripts;
mod state;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bifrost_core::backend::rules::{validate_appends, validate_state_changes};
use bifrost_core::cluster::ClusterBus;
use bifrost_core::group::{GroupEngine, GroupKind};
use bifrost_core::{
    AppendResult, DeleteMode, Direction, Error, EventId, EventStore, LogFilter, LogSlice, Position,
    RecordedEvent, Result, StateChange, StateEntry, StateStore, StreamAppend, StreamInfo, StreamListQuery,
    StreamListing, StreamName, StreamSlice, Version,
};
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

pub use crate::bus::RedisBus;
use crate::codec::{closed, int, redis_error};
use crate::groups::StoreGroups;
use crate::listener::HeadListener;
use crate::scripts::{DELETE, Keys};
use crate::writer::Writer;

/// Longest key prefix (it starts every key and channel name).
const MAX_PREFIX: usize = 128;

/// Connection and store settings.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Starts every key and channel of the store (`{prefix}:log`, …), like PostgreSQL's
    /// schema: stores with different prefixes share a Redis without meeting.
    pub prefix: String,
    /// Fallback poll of the head, in case a published head is lost.
    pub poll_interval: Duration,
    /// Most append requests sent in one script call.
    pub max_batch: usize,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// How long a command may take before it fails as unavailable.
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: "bifrost".into(),
            poll_interval: Duration::from_secs(1),
            max_batch: 1024,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
        }
    }
}

/// A prefix is 1-128 characters of `A-Z a-z 0-9 _ . @ -`. No `:`, so the first `:` of a
/// key ends its prefix and two stores' keys can never meet (stream names may hold `:`);
/// no glob characters, since `remove_prefix` matches `{prefix}:*`.
pub(crate) fn check_prefix(prefix: &str) -> Result<()> {
    let valid = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid Redis key prefix {prefix:?}: use 1-{MAX_PREFIX} characters of A-Z a-z 0-9 _ . @ -"
        )))
    }
}

/// A client for `redis://[user:pass@]host:port[/db]` or `rediss://…` (TLS).
pub(crate) fn client(url: &str) -> Result<redis::Client> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("redis") => {}
        Some("rediss") => {
            // Both of rustls's providers are in the build (reqwest brings aws-lc-rs), so the
            // redis client's `ClientConfig::builder()` needs a process default; an installed
            // one stays.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        _ => {
            return Err(Error::InvalidArgument(
                "a Redis URL looks like redis://[user:pass@]host:port[/db] or rediss://…".into(),
            ));
        }
    }
    redis::Client::open(url).map_err(|e| Error::InvalidArgument(format!("invalid Redis URL: {e}")))
}

/// A multiplexed connection that reconnects on its own.
pub(crate) async fn manager(client: &redis::Client, options: &RedisOptions) -> Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.response_timeout))
        .set_max_delay(Duration::from_secs(2));
    client.get_connection_manager_with_config(config).await.map_err(redis_error)
}

/// The Redis store. Cheap to share behind an `Arc`.
pub struct RedisStore {
    conn: ConnectionManager,
    keys: Arc<Keys>,
    writer: Writer,
    listener: HeadListener,
    head: watch::Receiver<Position>,
    bus: Arc<RedisBus>,
    /// The consumer groups kept in Redis, shared by every node on the prefix.
    groups: StoreGroups,
    durable: bool,
    closed: AtomicBool,
}

impl RedisStore {
    /// Connects, reads whether the server is durable, and starts the writer, the head's
    /// listener and the bus.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self> {
        check_prefix(&options.prefix)?;
        let client = client(url)?;
        let mut conn = manager(&client, &options).await?;
        let durable = durable(&mut conn).await;
        let keys = Arc::new(Keys::new(&options.prefix));
        let initial: Option<Position> =
            redis::cmd("GET").arg(&keys.head).query_async(&mut conn).await.map_err(redis_error)?;
        let (head_tx, head) = watch::channel(initial.unwrap_or(0));
        let head_tx = Arc::new(head_tx);
        let listener = HeadListener::start(
            client.clone(),
            conn.clone(),
            keys.head.clone(),
            keys.head_channel.clone(),
            head_tx.clone(),
            options.poll_interval,
        );
        let writer = Writer::start(conn.clone(), keys.clone(), head_tx, options.max_batch);
        let groups = StoreGroups::start(client.clone(), conn.clone(), keys.clone(), head.clone());
        let bus = RedisBus::start(client, conn.clone(), &options.prefix);
        Ok(Self { conn, keys, writer, listener, head, bus, groups, durable, closed: AtomicBool::new(false) })
    }

    /// Whether an acknowledged write survives a crash of the Redis server: `appendonly yes`
    /// with `appendfsync always`, as read at connect.
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// The key prefix this store uses.
    pub fn prefix(&self) -> &str {
        &self.keys.prefix
    }

    /// A connection for a read; `Unavailable` once closed.
    fn conn(&self) -> Result<ConnectionManager> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        Ok(self.conn.clone())
    }
}

/// Whether the server fsyncs every write before answering. A server that refuses
/// `CONFIG GET` (managed offerings rename or forbid it) counts as not durable.
async fn durable(conn: &mut ConnectionManager) -> bool {
    let config: redis::RedisResult<std::collections::HashMap<String, String>> =
        redis::cmd("CONFIG").arg("GET").arg("appendonly").arg("appendfsync").query_async(conn).await;
    match config {
        Ok(config) => {
            let appendonly = config.get("appendonly").is_some_and(|v| v.eq_ignore_ascii_case("yes"));
            let always = config.get("appendfsync").is_some_and(|v| v.eq_ignore_ascii_case("always"));
            appendonly && always
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "Redis refused CONFIG GET appendonly/appendfsync: durability unknown, counted as relaxed"
            );
            false
        }
    }
}

#[async_trait]
impl EventStore for RedisStore {
    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        validate_appends(&appends)?;
        self.writer.append(appends).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from: Version,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamSlice> {
        reader::read_stream(&mut self.conn()?, &self.keys, stream, from, direction, limit).await
    }

    async fn read_all(&self, after: Position, filter: &LogFilter, limit: usize) -> Result<LogSlice> {
        reader::read_all(&mut self.conn()?, &self.keys, after, filter, limit).await
    }

    async fn event(&self, id: EventId) -> Result<Option<RecordedEvent>> {
        reader::event(&mut self.conn()?, &self.keys, id).await
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo> {
        reader::stream_info(&mut self.conn()?, &self.keys, stream).await
    }

    async fn list_streams(&self, query: &StreamListQuery) -> Result<StreamListing> {
        reader::list_streams(&mut self.conn()?, &self.keys, query).await
    }

    async fn delete_stream(&self, stream: &StreamName, mode: DeleteMode) -> Result<()> {
        let mut conn = self.conn()?;
        let mut invocation = DELETE.key(&self.keys.log);
        invocation
            .key(&self.keys.ids)
            .key(&self.keys.streams)
            .arg(self.keys.meta(stream.as_str()))
            .arg(self.keys.positions(stream.as_str()))
            .arg(stream.as_str())
            .arg(match mode {
                DeleteMode::Soft => "soft",
                DeleteMode::Hard => "hard",
            });
        let outcome: redis::Value = invocation.invoke_async(&mut conn).await.map_err(redis_error)?;
        match int(&outcome)? {
            0 => Ok(()),
            2 => Err(Error::StreamDeleted(stream.clone())),
            _ => Err(Error::StreamNotFound(stream.clone())),
        }
    }

    fn head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.groups.stop().await;
        self.writer.close().await;
        self.listener.stop().await;
        self.bus.close().await;
        Ok(())
    }
}

#[async_trait]
impl StateStore for RedisStore {
    async fn write_state(&self, changes: Vec<StateChange>) -> Result<()> {
        validate_state_changes(&changes)?;
        state::write(&mut self.conn()?, &self.keys, &changes).await
    }

    async fn read_state(&self, scope: &str, key: &str) -> Result<Option<Bytes>> {
        state::read(&mut self.conn()?, &self.keys, scope, key).await
    }

    async fn scan_state(&self, scope: &str, after: Option<&str>, limit: usize) -> Result<Vec<StateEntry>> {
        state::scan(&mut self.conn()?, &self.keys, scope, after, limit).await
    }

    /// Groups are kept in Redis: every node on this prefix serves the same ones.
    fn shared_groups(&self, kind: GroupKind) -> Option<Arc<dyn GroupEngine>> {
        Some(self.groups.engine(kind))
    }

    /// Pub/Sub on `{prefix}:bus`: every node on this prefix hears it.
    fn cluster_bus(&self) -> Option<Arc<dyn ClusterBus>> {
        Some(self.bus.clone())
    }
}

/// Removes every key of `prefix` (`SCAN MATCH {prefix}:*` and `UNLINK`): for tests that
/// each use their own prefix, and for dropping a store. Returns how many keys it removed.
pub async fn remove_prefix(url: &str, prefix: &str) -> Result<u64> {
    check_prefix(prefix)?;
    let client = client(url)?;
    let mut conn = client.get_multiplexed_async_connection().await.map_err(redis_error)?;
    let pattern = format!("{prefix}:*");
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await.map_err(redis_error)?;
            removed += n;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
