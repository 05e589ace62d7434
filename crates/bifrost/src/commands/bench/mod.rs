//! `bifrost bench`: throughput and latency of the store and of the HTTP service, measured
//! the way a user would see them.
//!
//! W1–W3 drive the store in process; W4–W5 and the consumer-group workloads (`groups`,
//! `group-latency`) go through HTTP, to `--url` or to a server the bench starts on its own
//! runtime over the same store. The WebSocket workloads (`ws-idle`, `ws-broadcast`,
//! `ws-broadcast-stream`) start `bifrost serve` as a child process of their own, so that the
//! server's memory can be told from the clients'. Every workload checks what it did and fails loudly when the
//! store disagrees; timings are reported, never asserted.

mod bridges;
mod bus;
mod groups;
mod http;
mod raw;
mod report;
mod sourcing;
mod webhooks;
mod workloads;
mod ws;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use bifrost_api::BridgeKindBody;
use bifrost_core::{DurableStore, EventStore};
use bifrost_postgres::PostgresOptions;
use bifrost_sqlite::Durability;
use clap::{Args, ValueEnum};

use crate::store::StoreSpec;

use self::groups::GroupSpec;
use self::http::InProcessServer;
use self::raw::RawClient;
use self::report::Summary;
use self::workloads::{LogExpectation, WriteSpec};

/// The default size of W3's prefill when it runs without W1 and W2 (their default sum).
const PREFILL_EVENTS: u64 = 700_000;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Which workloads to run: w1 (64 writers, 1 event per append), w2 (4 writers, 100 per
    /// append), w3 (read the global log), w4 (HTTP appends), w5 (append → SSE delivery
    /// latency), groups (HTTP consumers of a consumer group, fetch → ack), group-latency
    /// (append → group fetch latency), bus (an in-process durable consumer with a no-op
    /// handler), bus-latency (append → in-process handler latency), aggregate-load (load a
    /// 10,000-event aggregate with and without a snapshot), commands (commands through the
    /// repository on 16 concurrent aggregates), webhooks (deliveries/s from a backlog to one
    /// and to ten endpoints, to a receiver in the bench), webhook-latency (append → receiver
    /// latency at --webhook-rate), ws-idle (the server's memory per idle WebSocket
    /// connection), ws-broadcast (one publish to a room of --ws-connections subscribers:
    /// time until the last receives it), ws-broadcast-stream (the same with an event
    /// appended to a stream), or all.
    /// Comma-separated or repeated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub(crate) workload: Vec<WorkloadArg>,

    /// The store: `sqlite://DIR`, `memory:`, `postgres://…` or `redis://…` [default: the
    /// embedded store in a fresh temporary directory, removed afterwards unless --keep].
    /// PostgreSQL runs in a fresh schema `bifrost_bench_<hex>`, Redis under a fresh key prefix
    /// of that name, removed afterwards unless --keep.
    #[arg(long, value_name = "URL")]
    pub(crate) store: Option<String>,

    /// PostgreSQL: run in this schema instead of a fresh one (it is created if missing and
    /// never dropped; the log may already hold events). Redis: this key prefix.
    #[arg(long, value_name = "NAME")]
    pub(crate) pg_schema: Option<String>,

    /// Durability of the embedded store (PostgreSQL's is the database's `synchronous_commit`).
    #[arg(long, value_name = "MODE", value_parser = ["full", "relaxed"], default_value = "full")]
    pub(crate) durability: String,

    /// Keep the temporary store directory or the fresh PostgreSQL schema (its path or name
    /// is printed).
    #[arg(long)]
    pub(crate) keep: bool,

    /// Run the HTTP workloads (w4, w5, groups, group-latency) against this running server
    /// instead of one started in process. Several (comma-separated or repeated): nodes of one
    /// cluster; w4 appends through the first, w5 appends through the first and streams from
    /// the last (append → SSE across nodes), and the group workloads spread their consumers over
    /// them, each consumer fetching through one node and acking through the next.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub(crate) url: Vec<String>,

    /// The credential the HTTP workloads send to a --url server with auth on (an API key
    /// with the scopes they use, or the admin key).
    #[arg(long, env = "BIFROST_KEY", value_name = "KEY", hide_env_values = true)]
    pub(crate) key: Option<String>,

    /// Concurrent writers (w1, w2) or connections (w4) instead of each workload's default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) writers: Option<u64>,

    /// Events per append (w2, and the batch phase of w4) [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) batch: Option<u64>,

    /// Events each write workload writes (w1, w2, each phase of w4; w3's prefill when it
    /// runs alone; the backlog of groups) instead of its default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,

    /// Consumers of the group workloads (groups, group-latency).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) consumers: u64,

    /// Streams the group workloads spread their events over (a group hands out one event
    /// of a stream at a time).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) streams: u64,

    /// w5, group-latency: how long to append, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub(crate) duration: f64,

    /// w5, group-latency: appends per second.
    #[arg(long, value_name = "N", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rate: u64,

    /// webhook-latency: appends per second.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) webhook_rate: u64,

    /// ws-idle, ws-broadcast, ws-broadcast-stream: WebSocket connections. Each needs an
    /// open file in the bench and one in the server: the bench raises its open-file limit to
    /// the hard limit, and says how to raise that when it is too low.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) ws_connections: u64,

    /// ws-broadcast, ws-broadcast-stream: publishes (appends), one at a time.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) ws_publishes: u64,

    /// bridges: the broker kinds to forward to, one after the other.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "nats,rabbitmq,redis-stream,redis-pubsub"
    )]
    pub(crate) bridge_kinds: Vec<BridgeKindArg>,

    /// bridges: the bridges' batch_size (messages in flight, unconfirmed, at once).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) bridge_batch: u32,

    /// bridges: the NATS server (with JetStream).
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    pub(crate) nats_url: String,

    /// bridges: the RabbitMQ broker.
    #[arg(long, value_name = "URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub(crate) rabbitmq_url: String,

    /// bridges: the Redis server (Streams and Pub/Sub).
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis_url: String,

    /// w3: events per page.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub(crate) page_size: usize,

    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub(crate) enum WorkloadArg {
    W1,
    W2,
    W3,
    W4,
    W5,
    Groups,
    GroupLatency,
    Bus,
    BusLatency,
    AggregateLoad,
    Commands,
    Webhooks,
    WebhookLatency,
    WsIdle,
    WsBroadcast,
    WsBroadcastStream,
    Bridges,
    All,
}

/// The broker kinds of the bridges workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BridgeKindArg {
    Nats,
    Rabbitmq,
    RedisStream,
    RedisPubsub,
}

impl From<BridgeKindArg> for BridgeKindBody {
    fn from(kind: BridgeKindArg) -> Self {
        match kind {
            BridgeKindArg::Nats => Self::Nats,
            BridgeKindArg::Rabbitmq => Self::Rabbitmq,
            BridgeKindArg::RedisStream => Self::RedisStream,
            BridgeKindArg::RedisPubsub => Self::RedisPubsub,
        }
    }
}

/// The workloads asked for; they run in their fixed order whatever the order asked.
#[derive(Debug, Clone, Copy)]
struct Selection<'a>(&'a [WorkloadArg]);

impl Selection<'_> {
    fn has(self, workload: WorkloadArg) -> bool {
        self.0.contains(&WorkloadArg::All) || self.0.contains(&workload)
    }

    fn needs_store(self) -> bool {
        use WorkloadArg::*;
        [W1, W2, W3, Bus, BusLatency, AggregateLoad, Commands, Bridges].into_iter().any(|w| self.has(w))
    }

    fn needs_http(self) -> bool {
        use WorkloadArg::*;
        [W4, W5, Groups, GroupLatency, Webhooks, WebhookLatency].into_iter().any(|w| self.has(w))
    }

    fn needs_ws(self) -> bool {
        use WorkloadArg::*;
        [WsIdle, WsBroadcast, WsBroadcastStream].into_iter().any(|w| self.has(w))
    }

    fn needs_webhooks(self) -> bool {
        self.has(WorkloadArg::Webhooks) || self.has(WorkloadArg::WebhookLatency)
    }
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let selection = Selection(&args.workload);
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    if args.page_size == 0 {
        bail!("--page-size must be greater than 0");
    }
    let durability: Durability =
        args.durability.parse().map_err(|_| anyhow::anyhow!("unknown durability {:?}", args.durability))?;
    let ws_connections = usize::try_from(args.ws_connections).context("--ws-connections is too large")?;
    if selection.needs_ws() {
        if !args.url.is_empty() {
            bail!("the ws workloads start a server of their own (to measure its memory); leave out --url");
        }
        // Before anything runs: a limit too low fails now, not after the other workloads.
        ws::raise_fd_limit(ws_connections)?;
    }

    // The temporary directory lives as long as this function: removed on every way out.
    let (spec, temp_dir) = match &args.store {
        Some(url) => (StoreSpec::parse(Some(url), &PathBuf::from("."))?, None),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("bifrost-bench-")
                .tempdir()
                .context("cannot create a temporary directory for the store")?;
            (StoreSpec::Sqlite(dir.path().to_owned()), Some(dir))
        }
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    // The log must start empty (W3 checks its length), so PostgreSQL gets a schema of its
    // own unless one is named.
    let schema = match (&spec, &args.pg_schema) {
        (StoreSpec::Postgres(url), named) => Some(BenchSchema {
            kind: SchemaKind::Postgres,
            url: url.clone(),
            name: named.clone().unwrap_or_else(|| format!("bifrost_bench_{run_id}")),
            fresh: named.is_none(),
        }),
        // Redis: a key prefix of the run's own, the same way.
        (StoreSpec::Redis(url), named) => Some(BenchSchema {
            kind: SchemaKind::Redis,
            url: url.clone(),
            name: named.clone().unwrap_or_else(|| format!("bifrost_bench_{run_id}")),
            fresh: named.is_none(),
        }),
        (_, Some(_)) => bail!("--pg-schema applies only to a postgres:// or redis:// store"),
        (_, None) => None,
    };
    // Only a store this run made starts empty, so only then must the log hold exactly what
    // the workloads wrote.
    let fresh = temp_dir.is_some() || spec == StoreSpec::Memory || schema.as_ref().is_some_and(|s| s.fresh);
    let in_process_server = selection.needs_http() && args.url.is_empty();
    let opens_store = selection.needs_store() || in_process_server;
    let store = if opens_store {
        let postgres = PostgresOptions {
            schema: schema.as_ref().map_or_else(|| PostgresOptions::default().schema, |s| s.name.clone()),
            ..PostgresOptions::default()
        };
        let redis = bifrost_redis::RedisOptions {
            prefix: schema
                .as_ref()
                .map_or_else(|| bifrost_redis::RedisOptions::default().prefix, |s| s.name.clone()),
            ..bifrost_redis::RedisOptions::default()
        };
        let opened = spec.open(durability, postgres, redis).await.map(|opened| opened.store);
        // A fresh schema is dropped even when connecting failed half way (after creating it).
        if let (Err(_), Some(schema)) = (&opened, &schema) {
            let _ = schema.finish(false).await;
        }
        Some(opened?)
    } else {
        None
    };
    // The server runs with its metrics recorder; so does the bench, for comparable numbers.
    let metrics = bifrost_server::install_metrics_recorder().ok();

    let (store_label, durability_label) = match (args.url.as_slice(), selection.needs_store()) {
        ([url], false) => (format!("server at {url}"), "as the server is configured".to_owned()),
        ([_, ..], false) => (
            format!("{} servers at {}", args.url.len(), args.url.join(", ")),
            "as the servers are configured".to_owned(),
        ),
        // Only the ws workloads: each starts a server with its defaults.
        _ if !selection.needs_store() && !selection.needs_http() => (
            "a bifrost serve process per workload (embedded SQLite in a temporary directory)".to_owned(),
            "the server's default".to_owned(),
        ),
        _ if temp_dir.is_some() => {
            ("embedded SQLite in a temporary directory".to_owned(), durability.to_string())
        }
        _ => match &schema {
            Some(schema) if schema.kind == SchemaKind::Redis => (
                format!("Redis {spec}, prefix {}", schema.name),
                "as Redis is configured (appendonly, appendfsync)".to_owned(),
            ),
            Some(schema) => (
                format!("PostgreSQL {spec}, schema {}", schema.name),
                "as the database is configured (synchronous_commit)".to_owned(),
            ),
            None => (spec.to_string(), durability.to_string()),
        },
    };
    let mut summary = Summary::new(store_label, durability_label);

    let outcome = run_workloads(&args, selection, store.clone(), fresh, metrics, &run_id, &mut summary).await;
    let outcome = match (outcome, store) {
        // A server started here closed the store when it stopped.
        (Ok(true), _) | (Ok(false), None) => Ok(()),
        (Ok(false), Some(store)) => store.close().await.context("closing the store"),
        (Err(e), store) => {
            // Stop the store's writer and listener before its schema is dropped.
            if let (Some(store), Some(_)) = (store, &schema) {
                let _ = store.close().await;
            }
            Err(e)
        }
    };
    let finished = match schema.as_ref().filter(|_| opens_store) {
        Some(schema) => schema.finish(args.keep).await,
        None => Ok(()),
    };
    outcome?;
    finished?;
    if selection.needs_ws() {
        run_ws(selection, ws_connections, args.ws_publishes, &run_id, &mut summary).await?;
    }

    if args.json {
        println!("{}", summary.to_json()?);
    } else {
        print!("{}", summary.table());
    }
    if let Some(dir) = temp_dir.filter(|_| args.keep) {
        eprintln!("the store is kept in {}", dir.keep().display());
    }
    Ok(())
}

/// The WebSocket workloads, last: each against a server process of its own.
async fn run_ws(
    selection: Selection<'_>,
    connections: usize,
    publishes: u64,
    run_id: &str,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let spec = ws::WsSpec { connections, publishes, run_id };
    if selection.has(WorkloadArg::WsIdle) {
        summary.push(ws::idle(&spec).await?);
    }
    if selection.has(WorkloadArg::WsBroadcast) {
        summary.push(ws::broadcast(&spec, ws::Fanout::Room).await?);
    }
    if selection.has(WorkloadArg::WsBroadcastStream) {
        summary.push(ws::broadcast(&spec, ws::Fanout::Stream).await?);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemaKind {
    Postgres,
    Redis,
}

/// The PostgreSQL schema, or the Redis key prefix, a bench runs in.
struct BenchSchema {
    kind: SchemaKind,
    url: String,
    name: String,
    /// Made by this run (and so dropped by it, unless --keep).
    fresh: bool,
}

impl BenchSchema {
    /// Drops a schema (or the keys of a prefix) this run made, or says where it is kept.
    async fn finish(&self, keep: bool) -> anyhow::Result<()> {
        if !self.fresh {
            return Ok(());
        }
        let what = match self.kind {
            SchemaKind::Postgres => "PostgreSQL schema",
            SchemaKind::Redis => "Redis key prefix",
        };
        if keep {
            eprintln!("the {what} is kept: {}", self.name);
            return Ok(());
        }
        // Dropping connects afresh, with no timeout of its own: a server that went silent
        // must not keep the bench from ending.
        let limit = PostgresOptions::default().connect_timeout.saturating_mul(6);
        let dropped = match self.kind {
            SchemaKind::Postgres => {
                tokio::time::timeout(limit, bifrost_postgres::drop_schema(&self.url, &self.name)).await
            }
            SchemaKind::Redis => {
                tokio::time::timeout(limit, async {
                    bifrost_redis::remove_prefix(&self.url, &self.name).await.map(drop)
                })
                .await
            }
        };
        let dropped = dropped
            .map_err(|_| anyhow::anyhow!("the server did not answer within {} ms", limit.as_millis()))
            .and_then(|r| r.map_err(anyhow::Error::from));
        dropped.with_context(|| format!("cannot remove the bench's {what} {}", self.name))
    }
}

/// Runs the selected workloads in order; returns whether an in-process server ran (it
/// closes the store when it stops).
async fn run_workloads(
    args: &BenchArgs,
    selection: Selection<'_>,
    store: Option<Arc<dyn DurableStore>>,
    fresh: bool,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    run_id: &str,
    summary: &mut Summary,
) -> anyhow::Result<bool> {
    let mut written = 0u64;
    if let Some(store) = store.as_ref().filter(|_| selection.needs_store()) {
        let store: &Arc<dyn EventStore> = &(store.clone() as Arc<dyn EventStore>);
        if selection.has(WorkloadArg::W1) {
            let spec = WriteSpec {
                name: "w1",
                writers: args.writers.unwrap_or(64),
                batch: 1,
                total: args.count.unwrap_or(200_000),
                run_id,
            };
            summary.push(workloads::write(store, &spec).await?);
            written += spec.total;
        }
        if selection.has(WorkloadArg::W2) {
            let spec = WriteSpec {
                name: "w2",
                writers: args.writers.unwrap_or(4),
                batch: args.batch.unwrap_or(100),
                total: args.count.unwrap_or(500_000),
                run_id,
            };
            summary.push(workloads::write(store, &spec).await?);
            written += spec.total;
        }
        if selection.has(WorkloadArg::W3) {
            if written == 0 && *store.head().borrow() == 0 {
                let spec = WriteSpec {
                    name: "w3-prefill",
                    writers: 4,
                    batch: 1000,
                    total: args.count.unwrap_or(PREFILL_EVENTS),
                    run_id,
                };
                workloads::write(store, &spec).await?;
                written += spec.total;
            }
            let expect =
                if fresh { LogExpectation::Exactly(written) } else { LogExpectation::AtLeast(written) };
            summary.push(workloads::read_log(store, args.page_size, expect).await?);
        }
    }
    // The in-process bus, after the store workloads and before the server starts.
    if let Some(store) = store.as_ref() {
        if selection.has(WorkloadArg::Bus) {
            summary.push(bus::durable_consumer(store, args.count.unwrap_or(200_000), run_id).await?);
        }
        if selection.has(WorkloadArg::BusLatency) {
            let seconds = args.duration.ceil() as u64;
            summary.push(bus::handler_latency(store, args.rate, seconds, run_id).await?);
        }
        if selection.has(WorkloadArg::AggregateLoad) {
            for report in sourcing::aggregate_load(store, args.count.unwrap_or(10_000), run_id).await? {
                summary.push(report);
            }
        }
        if selection.has(WorkloadArg::Commands) {
            let aggregates = args.writers.unwrap_or(16);
            summary.push(sourcing::commands(store, args.count.unwrap_or(20_000), aggregates, run_id).await?);
        }
        if selection.has(WorkloadArg::Bridges) {
            let kinds: Vec<BridgeKindBody> = args.bridge_kinds.iter().map(|&k| k.into()).collect();
            let urls = bridges::BrokerUrls {
                nats: args.nats_url.clone(),
                rabbitmq: args.rabbitmq_url.clone(),
                redis: args.redis_url.clone(),
            };
            let spec = bridges::BridgeSpec {
                kinds: &kinds,
                batch_size: args.bridge_batch,
                total: args.count.unwrap_or(100_000),
                streams: args.streams,
                urls: &urls,
                run_id,
                skip_unreachable: !args.workload.contains(&WorkloadArg::Bridges),
            };
            for report in bridges::throughput(store, &spec).await? {
                summary.push(report);
            }
        }
    }
    if !selection.needs_http() {
        return Ok(false);
    }

    if selection.needs_webhooks() && !args.url.is_empty() {
        bail!("the webhook workloads run against the in-process server; leave out --url");
    }
    let server = match (args.url.is_empty(), store.clone()) {
        (false, _) => None,
        (true, Some(store)) => {
            Some(InProcessServer::start(store, metrics, selection.needs_webhooks()).await?)
        }
        (true, None) => bail!("no store for the in-process server"),
    };
    let urls = match &server {
        Some(server) => vec![format!("http://{}", server.addr())],
        None => args.url.clone(),
    };
    let result = run_http(args, selection, &urls, store.as_ref(), run_id, summary).await;
    let stopped = match server {
        Some(server) => server.stop().await.map(|()| true),
        None => Ok(false),
    };
    result?;
    stopped
}

async fn run_http(
    args: &BenchArgs,
    selection: Selection<'_>,
    urls: &[String],
    store: Option<&Arc<dyn DurableStore>>,
    run_id: &str,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let connections = args.writers.unwrap_or(64);
    let http = bearer(reqwest::Client::builder(), args.key.as_deref())?
        .pool_max_idle_per_host(usize::try_from(connections).unwrap_or(usize::MAX))
        .tcp_nodelay(true)
        .build()
        .context("cannot create the HTTP client")?;
    let nodes =
        urls.iter().map(|url| RawClient::new(url, http.clone())).collect::<anyhow::Result<Vec<_>>>()?;
    for node in &nodes {
        http::wait_ready(node).await?;
    }
    let Some(client) = nodes.first().cloned() else { bail!("no server to benchmark") };
    if selection.has(WorkloadArg::W4) {
        let total = args.count.unwrap_or(200_000);
        summary.push(
            http::write(
                &client,
                &WriteSpec { name: "w4-single", writers: connections, batch: 1, total, run_id },
            )
            .await?,
        );
        let total = args.count.unwrap_or(500_000);
        let batch = args.batch.unwrap_or(100);
        summary.push(
            http::write(&client, &WriteSpec { name: "w4-batch", writers: connections, batch, total, run_id })
                .await?,
        );
    }
    if selection.has(WorkloadArg::W5) {
        // With several nodes the events are appended on the first and streamed from the
        // last: the cross-node path (the cluster bus's wake-up, the other node's read).
        let sse_node = nodes.last().unwrap_or(&client);
        summary.push(http::delivery(&client, sse_node, args.rate, args.duration, run_id).await?);
    }
    let spec = GroupSpec { consumers: args.consumers, streams: args.streams, run_id };
    if selection.has(WorkloadArg::Groups) {
        summary.push(groups::throughput(&nodes, &spec, args.count.unwrap_or(200_000)).await?);
    }
    if selection.has(WorkloadArg::GroupLatency) {
        summary.push(groups::latency(&nodes, &spec, args.rate, args.duration).await?);
    }
    if let Some(store) = store.filter(|_| selection.needs_webhooks()) {
        if selection.has(WorkloadArg::Webhooks) {
            let total = args.count.unwrap_or(20_000);
            for report in webhooks::throughput(&client, store, total, args.streams, run_id).await? {
                summary.push(report);
            }
        }
        if selection.has(WorkloadArg::WebhookLatency) {
            summary.push(webhooks::latency(&client, store, args.webhook_rate, args.duration, run_id).await?);
        }
    }
    Ok(())
}

/// Every request of `builder`'s client carries `Authorization: Bearer <key>`, when a key is
/// given.
pub(super) fn bearer(
    builder: reqwest::ClientBuilder,
    key: Option<&str>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let Some(key) = key else { return Ok(builder) };
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
        .context("the key is not a valid header value")?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(builder.default_headers(headers))
}
