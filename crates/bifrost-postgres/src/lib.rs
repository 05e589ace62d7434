//! Bifrost's PostgreSQL event store, for teams that run several stateless `bifrost serve`
//! nodes against one database.
//!
//! **Exact global order.** Every append transaction first locks the single `head` row
//! (`SELECT … FOR UPDATE`), numbers its events after the position stored there, and
//! commits; the lock is released only after the commit is visible. So transactions number
//! and commit strictly one after another, across every node: a reader that has seen
//! position P can never later meet a newly committed event below P, and a rolled-back
//! transaction burns no position (there is no sequence). No reader ever waits on a timeout
//! to skip a gap, because there are no gaps to guess about.
//!
//! **Throughput** comes back through group commit per node: a writer task gathers the
//! appends that arrive while the previous transaction runs and commits them together, with
//! a fixed number of round trips per group (bulk lookups, one `unnest` insert), whatever
//! its size. Live subscriptions wake on `LISTEN/NOTIFY`, with a slow poll as a fallback.
//!
//! **Readers' state** (the `state` table, see [`StateStore`]) is written in transactions
//! of its own on pooled connections, outside the head lock.
//!
//! **Transactional outbox.** [`PostgresStore::begin`] opens an [`OutboxTransaction`]: the
//! application runs its own statements in it and queues appends, and its commit writes the
//! events the way the writer does (under the head lock, so the order stays exact) and
//! commits both at once — or, dropped, rolls both back.
//!
//! **Cluster bus.** [`StateStore::cluster_bus`] is `NOTIFY` on the schema's bus channel,
//! heard by every node's listener, the sender's included: a message that fits a
//! notification travels in it, a larger one as a row of `bus_messages` that each node reads
//! by id. Best effort: a node that is not listening at that moment misses it.
//!
//! **External bus.** With [`PostgresOptions::bus`] (NATS, Redis) that bus is the cluster
//! bus, and the head's and the groups' wake-ups travel on it instead of `NOTIFY`: the
//! writer announces a commit once it is committed, and no connection is held for `LISTEN`.
//! A lost wake-up only delays delivery, by at most [`PostgresOptions::poll_interval`].
//!
//! **TLS** follows the connection string's libpq `sslmode`: `disable`, `prefer` (the
//! default: TLS when the server offers it, certificate unchecked), `require` (TLS, unchecked
//! unless an `sslrootcert` is named), `verify-ca` (the chain must reach a trusted root) and
//! `verify-full` (the chain and the host name). Roots come from `sslrootcert` or else the
//! platform's store. rustls with the ring provider, one connector for every connection.

mod cluster;
mod codec;
mod external;
mod groups;
mod listener;
mod outbox;
mod reader;
mod schema;
mod state;
mod tls;
mod writer;

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bifrost_core::backend::rules::{validate_appends, validate_state_changes};
use bifrost_core::cluster::ClusterBus;
use bifrost_core::group::{GroupEngine, GroupKind};
use bifrost_core::{
    AppendResult, DeleteMode, Direction, Error, EventStore, LogFilter, LogSlice, Position, RecordedEvent,
    Result, StateChange, StateEntry, StateStore, StreamAppend, StreamInfo, StreamListQuery, StreamListing,
    StreamName, StreamSlice, Version,
};
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::watch;
use uuid::Uuid;

use crate::cluster::PgBus;
use crate::codec::unavailable;
use crate::external::HeadAnnouncer;
use crate::groups::{StoreGroups, Wakeups};
use crate::listener::{Hearing, Listener};
use crate::schema::Sql;
use crate::writer::Writer;

pub use crate::outbox::OutboxTransaction;
/// The driver of [`OutboxTransaction::client`], re-exported so that an application uses the
/// same version.
pub use tokio_postgres;

/// Settings for every session Bifrost opens. Custom plans: see `connect`. The timeouts turn
/// a transaction abandoned while holding the head lock, or a wait on it that cannot end,
/// into an error instead of a stalled cluster.
const SESSION_SETTINGS: &str = "-c plan_cache_mode=force_custom_plan -c lock_timeout=30s \
     -c idle_in_transaction_session_timeout=60s";

/// Connection and pool settings (the seeds' pool size and timeouts).
#[derive(Clone)]
pub struct PostgresOptions {
    /// Schema that holds Bifrost's tables; created at start-up.
    pub schema: String,
    /// Most pooled connections (reads and the writer share them).
    pub pool_size: usize,
    /// How long to wait for a pooled connection before answering "unavailable".
    pub wait_timeout: Duration,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// Pooled connections idle longer than this are closed.
    pub idle_timeout: Duration,
    /// Most append requests committed in one transaction.
    pub max_batch: usize,
    /// Fallback poll of the head and of the consumer groups' fetchers, in case a wake-up
    /// is lost (`cluster.poll_ms`).
    pub poll_interval: Duration,
    /// The cluster bus between the nodes, when it is not PostgreSQL's own `NOTIFY`: it
    /// carries the head's and the groups' wake-ups too, and is the store's
    /// [`StateStore::cluster_bus`]. Its owner closes it, after the store.
    pub bus: Option<Arc<dyn ClusterBus>>,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("wait_timeout", &self.wait_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_batch", &self.max_batch)
            .field("poll_interval", &self.poll_interval)
            .field("bus", &if self.bus.is_some() { "external" } else { "notify" })
            .finish()
    }
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            schema: "bifrost".into(),
            pool_size: 10,
            wait_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_batch: 1024,
            poll_interval: Duration::from_secs(1),
            bus: None,
        }
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PostgresStore {
    pool: Pool,
    sql: Arc<Sql>,
    writer: Writer,
    listener: Listener,
    head: watch::Receiver<Position>,
    /// For outbox commits to move the head. Weak: the writer and the listener own it, and
    /// once they stop (close) it is dropped, which ends live subscriptions.
    head_tx: Weak<watch::Sender<Position>>,
    /// The consumer groups kept in the database, shared by every node.
    groups: StoreGroups,
    /// The cluster bus: the external one, or `NOTIFY`'s (`pg_bus`).
    bus: Arc<dyn ClusterBus>,
    /// The cluster bus on `NOTIFY`, when there is no external one; the listener feeds its
    /// subscribers.
    pg_bus: Option<Arc<PgBus>>,
    /// Tells the other nodes of this node's commits, on the external bus.
    announcer: Option<Arc<HeadAnnouncer>>,
}

impl PostgresStore {
    /// Connects, creates or upgrades the schema (safe when several nodes start at once)
    /// and starts the writer and the change listener.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self> {
        let (mut config, tls_settings) = tls::parse(url)?;
        let tls = tls::connector(&tls_settings)?;
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("bifrost");
        }
        // Plan every execution with its real arguments: a generic plan cached while the log
        // was empty (a sequential scan for `id = ANY($1)`, a sort for a page) would stay
        // wrong as the log grows.
        let server_options = match config.get_options() {
            Some(existing) => format!("{existing} {SESSION_SETTINGS}"),
            None => SESSION_SETTINGS.to_owned(),
        };
        config.options(&server_options);
        let mut sql = Sql::new(&options.schema)?;
        sql.head_on_notify = options.bus.is_none();
        let sql = Arc::new(sql);
        schema::migrate(&config, tls.clone(), &sql).await?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::storage("cannot build the connection pool", e))?;
        let initial = reader::head(&pool, &sql).await?;
        let (head_tx, head) = watch::channel(initial);
        reader::analyze(&pool, &sql).await?;
        let head_tx = Arc::new(head_tx);
        let wakeups = Arc::new(Wakeups::default());
        let (bus, pg_bus, hearing, announcer): (Arc<dyn ClusterBus>, _, _, _) = match &options.bus {
            Some(external) => {
                let announcer = Arc::new(HeadAnnouncer::start(external.clone(), initial));
                (external.clone(), None, Hearing::Bus(external.clone()), Some(announcer))
            }
            None => {
                let (pg_bus, inbox) = PgBus::start(pool.clone(), &sql);
                (pg_bus.clone(), Some(pg_bus), Hearing::Notify(inbox), None)
            }
        };
        let listener = Listener::start(
            config,
            tls,
            sql.clone(),
            pool.clone(),
            head_tx.clone(),
            wakeups.clone(),
            hearing,
            &options,
        );
        let weak_head_tx = Arc::downgrade(&head_tx);
        let writer =
            Writer::start(pool.clone(), sql.clone(), head_tx, announcer.clone(), options.max_batch.max(1));
        let groups = StoreGroups::start(
            pool.clone(),
            &sql,
            head.clone(),
            wakeups,
            options.poll_interval,
            options.bus.clone(),
        );
        Ok(Self { pool, sql, writer, listener, head, head_tx: weak_head_tx, groups, bus, pg_bus, announcer })
    }

    /// Opens a transaction for the application's own statements and its appends, committed
    /// together: the transactional outbox. See [`OutboxTransaction`] for the order it keeps,
    /// when it holds the head lock, and where the application's tables live.
    pub async fn begin(&self) -> Result<OutboxTransaction> {
        OutboxTransaction::begin(&self.pool, self.sql.clone(), self.head_tx.clone(), self.announcer.clone())
            .await
    }

    /// The schema this store uses.
    pub fn schema(&self) -> &str {
        self.sql.schema()
    }

    /// Whether a pooled connection of this store is encrypted, as the server sees it
    /// (`pg_stat_ssl`); lets tests prove what a connection string negotiated.
    #[doc(hidden)]
    pub async fn connection_encrypted(&self) -> Result<bool> {
        let client = self.pool.get().await.map_err(codec::pool)?;
        let row = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .map_err(codec::pg)?;
        row.try_get(0).map_err(codec::pg)
    }
}

#[async_trait]
impl EventStore for PostgresStore {
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
        reader::read_stream(&self.pool, &self.sql, stream, from, direction, limit).await
    }

    async fn read_all(&self, after: Position, filter: &LogFilter, limit: usize) -> Result<LogSlice> {
        let mut slice = reader::read_all(&self.pool, &self.sql, after, filter, limit).await?;
        // The name rules (tenant, `$` streams) after the query: a page may come back short,
        // its `next_position` still past every row read.
        slice.events.retain(|e| filter.admits(&e.stream));
        Ok(slice)
    }

    async fn event(&self, id: Uuid) -> Result<Option<RecordedEvent>> {
        reader::event(&self.pool, &self.sql, id).await
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo> {
        reader::stream_info(&self.pool, &self.sql, stream).await
    }

    async fn list_streams(&self, query: &StreamListQuery) -> Result<StreamListing> {
        reader::list_streams(&self.pool, &self.sql, query).await
    }

    async fn delete_stream(&self, stream: &StreamName, mode: DeleteMode) -> Result<()> {
        self.writer.delete(stream.clone(), mode).await
    }

    fn head(&self) -> watch::Receiver<Position> {
        self.head.clone()
    }

    async fn close(&self) -> Result<()> {
        self.groups.stop().await;
        self.writer.close().await;
        self.listener.stop().await;
        if let Some(announcer) = &self.announcer {
            announcer.stop();
        }
        if let Some(pg_bus) = &self.pg_bus {
            pg_bus.close().await;
        }
        self.pool.close();
        Ok(())
    }
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn write_state(&self, changes: Vec<StateChange>) -> Result<()> {
        validate_state_changes(&changes)?;
        state::write(&self.pool, &self.sql, &changes).await
    }

    async fn read_state(&self, scope: &str, key: &str) -> Result<Option<Bytes>> {
        state::read(&self.pool, &self.sql, scope, key).await
    }

    async fn scan_state(&self, scope: &str, after: Option<&str>, limit: usize) -> Result<Vec<StateEntry>> {
        state::scan(&self.pool, &self.sql, scope, after, limit).await
    }

    /// Groups are rows of this database: every node on it serves the same ones.
    fn shared_groups(&self, kind: GroupKind) -> Option<Arc<dyn GroupEngine>> {
        Some(self.groups.engine(kind))
    }

    /// `NOTIFY` on the schema's bus channel, or the external bus: every node on this schema
    /// hears it.
    fn cluster_bus(&self) -> Option<Arc<dyn ClusterBus>> {
        Some(self.bus.clone())
    }
}

/// Drops a schema and everything in it: for tests that each use their own schema.
pub async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    let sql = Sql::new(schema)?;
    let (config, tls_settings) = tls::parse(url)?;
    let (client, connection) = config.connect(tls::connector(&tls_settings)?).await.map_err(unavailable)?;
    let driver = tokio::spawn(connection);
    let result = client
        // A session that still holds a lock on one of the tables must not make this wait
        // forever: give up (and say so) instead.
        .batch_execute(&format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
            sql.quoted_schema()
        ))
        .await
        .map_err(codec::pg);
    drop(client);
    let _ = driver.await;
    result
}
