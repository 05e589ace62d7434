//! The bridge workload: events forwarded per second to each broker kind from a backlog,
//! through the runner `bifrost serve` uses (under its lease, checkpointed in the store, each
//! batch confirmed by the broker before the checkpoint moves). The clock runs from the
//! bridge's creation until its checkpoint reaches the end of the backlog; afterwards the
//! broker's own count is checked (JetStream stream, queue, Redis stream), or, for Pub/Sub,
//! a subscriber's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use bifrost_api::{BridgeKindBody, BridgeRequest};
use bifrost_bridges::Bridges;
use bifrost_bridges::kinds::Brokers;
use bifrost_bridges::kinds::rabbitmq::EXCHANGE;
use bifrost_core::DurableStore;
use bifrost_core::lease::Leases;
use futures::StreamExt;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{FieldTable, ShortString};
use tokio_util::sync::CancellationToken;

use super::report::{self, Report};
use super::workloads::backlog;

/// The type of the backlog's events, the one the bridges forward.
const EVENT_TYPE: &str = "bench.bridge";
/// How long one broker may take to drain the backlog before the run fails (a hang guard).
const GRACE: Duration = Duration::from_secs(600);
/// How long a broker may take to accept a connection.
const CONNECT: Duration = Duration::from_secs(10);

/// Where the brokers are.
pub(super) struct BrokerUrls {
    pub(super) nats: String,
    pub(super) rabbitmq: String,
    pub(super) redis: String,
}

/// The bridges to run, how large their batches are, and the backlog they drain.
pub(super) struct BridgeSpec<'a> {
    pub(super) kinds: &'a [BridgeKindBody],
    pub(super) batch_size: u32,
    pub(super) total: u64,
    pub(super) streams: u64,
    pub(super) urls: &'a BrokerUrls,
    pub(super) run_id: &'a str,
    /// Skip a broker that does not answer (with a line on stderr) instead of failing: how
    /// `--workload all` runs on a machine without every broker.
    pub(super) skip_unreachable: bool,
}

/// Events forwarded per second to each kind in `spec.kinds`, one after the other, from one
/// backlog of `spec.total` events.
pub(super) async fn throughput(
    store: &Arc<dyn DurableStore>,
    spec: &BridgeSpec<'_>,
) -> anyhow::Result<Vec<Report>> {
    let run_id = spec.run_id;
    // Every broker first, so that one that is down fails the run before the backlog is written.
    let mut sinks = Vec::new();
    for &kind in spec.kinds {
        match Sink::open(kind, spec.urls, run_id).await {
            Ok(sink) => sinks.push(sink),
            Err(e) if spec.skip_unreachable => eprintln!("bridges: skipped: {e:#}"),
            Err(e) => return Err(e),
        }
    }
    let before = *store.head().borrow();
    backlog(store, spec.total, spec.streams, EVENT_TYPE, &format!("brbench{run_id}")).await?;
    let last = *store.head().borrow();

    let leases = Leases::new(Arc::clone(store) as _, "bench", Duration::from_secs(10));
    let bridges =
        Arc::new(Bridges::new(Arc::clone(store), leases, Duration::from_millis(200), Arc::new(Brokers)));
    let stop = CancellationToken::new();
    let runner = bridges.start(stop.clone());

    let mut reports = Vec::new();
    let mut outcome = Ok(());
    for sink in &sinks {
        let drained = drain(&bridges, sink, spec, before, last).await;
        match drained {
            Ok(report) => reports.push(report),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    stop.cancel();
    let _ = runner.await;
    for sink in sinks {
        sink.remove().await;
    }
    outcome.map(|()| reports)
}

/// Runs one bridge from `before` until its checkpoint reaches `last`, then checks the broker.
async fn drain(
    bridges: &Bridges,
    sink: &Sink,
    spec: &BridgeSpec<'_>,
    before: u64,
    last: u64,
) -> anyhow::Result<Report> {
    let kind = sink.kind();
    let label = bifrost_bridges::spec::kind_name(kind);
    let name = format!("bench-{label}-{}", spec.run_id);
    let request: BridgeRequest = serde_json::from_value(serde_json::json!({
        "direction": "out",
        "kind": kind,
        "url": sink.url(spec.urls),
        "filter": {"types": [EVENT_TYPE]},
        "target": sink.target(),
        "start": {"position": before},
        "batch_size": spec.batch_size,
    }))
    .context("the bench's bridge request")?;
    let report_name = format!("bridges-{label}");
    let bar = report::progress(&report_name, last - before, "events");
    let started = Instant::now();
    bridges.put(&name, request).await.with_context(|| format!("creating the {label} bridge"))?;
    let deadline = started + GRACE;
    let finished = loop {
        let status = bridges.get(&name).await.with_context(|| format!("reading the {label} bridge"))?;
        bar.set_position(status.checkpoint.saturating_sub(before));
        if status.checkpoint >= last {
            break Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            let error = status.last_error.map(|e| e.message).unwrap_or_else(|| "none".into());
            break Err(anyhow::anyhow!(
                "{label}: the bridge reached position {} of {last} within {GRACE:?} (last error: {error})",
                status.checkpoint
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    bar.finish_and_clear();
    let published = bridges.get(&name).await.map(|s| s.published).unwrap_or(0);
    bridges.delete(&name).await.with_context(|| format!("deleting the {label} bridge"))?;
    let elapsed = finished?;
    let total = spec.total;
    let landed = sink.count().await?;
    let check = match kind {
        // A subscriber that Redis found too slow is dropped: Pub/Sub keeps nothing for it.
        BridgeKindBody::RedisPubsub if landed == 0 => bail!("{label}: the subscriber received nothing"),
        BridgeKindBody::RedisPubsub => format!("{landed} reached a subscriber"),
        _ if landed != total => bail!("{label}: the broker holds {landed} messages, {total} were bridged"),
        _ => format!("{landed} on the broker"),
    };
    let description =
        format!("{total}-event backlog, batch {}, {published} published, {check}", spec.batch_size);
    Ok(Report::new(&report_name, description, total, elapsed, "-", &report::histogram()?))
}

/// Where one kind's messages land, made for this run and removed after it.
enum Sink {
    Nats { context: jetstream::Context, stream: String, subject: String },
    Rabbit { _connection: lapin::Connection, channel: lapin::Channel, queue: String, prefix: String },
    RedisStream { connection: redis::aio::MultiplexedConnection, key: String },
    RedisPubSub { channel: String, received: Arc<AtomicU64>, stop: CancellationToken },
}

impl Sink {
    async fn open(kind: BridgeKindBody, urls: &BrokerUrls, run_id: &str) -> anyhow::Result<Self> {
        let prefix = format!("brbench{run_id}");
        match kind {
            BridgeKindBody::Nats => {
                let client = within("NATS", &urls.nats, async_nats::connect(urls.nats.as_str())).await?;
                let context = jetstream::new(client);
                let stream = format!("BIFROST_BENCH_{run_id}");
                let config = jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![format!("{prefix}.>")],
                    ..Default::default()
                };
                context.create_stream(config).await.context("creating the bench's JetStream stream")?;
                Ok(Self::Nats { context, stream, subject: format!("{prefix}.{{type}}") })
            }
            BridgeKindBody::Rabbitmq => {
                let connection = within(
                    "RabbitMQ",
                    &urls.rabbitmq,
                    lapin::Connection::connect(&urls.rabbitmq, lapin::ConnectionProperties::default()),
                )
                .await?;
                let channel = connection.create_channel().await.context("opening a RabbitMQ channel")?;
                // The bridge declares the exchange too; the queue must be bound before it
                // publishes (an unroutable message is an error).
                channel
                    .exchange_declare(
                        ShortString::from(EXCHANGE),
                        lapin::ExchangeKind::Topic,
                        lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() },
                        FieldTable::default(),
                    )
                    .await
                    .context("declaring the bifrost exchange")?;
                let queue = format!("bifrost-bench-{run_id}");
                channel
                    .queue_declare(
                        ShortString::from(queue.as_str()),
                        QueueDeclareOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .context("declaring the bench queue")?;
                channel
                    .queue_bind(
                        ShortString::from(queue.as_str()),
                        ShortString::from(EXCHANGE),
                        ShortString::from(format!("{prefix}.#")),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .context("binding the bench queue")?;
                Ok(Self::Rabbit { _connection: connection, channel, queue, prefix })
            }
            BridgeKindBody::RedisStream => {
                let client = redis::Client::open(urls.redis.as_str()).context("the Redis URL")?;
                let connection =
                    within("Redis", &urls.redis, client.get_multiplexed_async_connection()).await?;
                Ok(Self::RedisStream { connection, key: format!("{prefix}:stream") })
            }
            BridgeKindBody::RedisPubsub => {
                let client = redis::Client::open(urls.redis.as_str()).context("the Redis URL")?;
                let mut pubsub = within("Redis", &urls.redis, client.get_async_pubsub()).await?;
                let channel = format!("{prefix}.{EVENT_TYPE}");
                pubsub.subscribe(&channel).await.context("subscribing to the bench channel")?;
                let received = Arc::new(AtomicU64::new(0));
                let stop = CancellationToken::new();
                let (count, token) = (Arc::clone(&received), stop.clone());
                tokio::spawn(async move {
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            () = token.cancelled() => return,
                            next = messages.next() => match next {
                                Some(_) => { count.fetch_add(1, Ordering::Relaxed); }
                                None => return,
                            },
                        }
                    }
                });
                Ok(Self::RedisPubSub { channel, received, stop })
            }
        }
    }

    fn kind(&self) -> BridgeKindBody {
        match self {
            Self::Nats { .. } => BridgeKindBody::Nats,
            Self::Rabbit { .. } => BridgeKindBody::Rabbitmq,
            Self::RedisStream { .. } => BridgeKindBody::RedisStream,
            Self::RedisPubSub { .. } => BridgeKindBody::RedisPubsub,
        }
    }

    fn url<'u>(&self, urls: &'u BrokerUrls) -> &'u str {
        match self {
            Self::Nats { .. } => &urls.nats,
            Self::Rabbit { .. } => &urls.rabbitmq,
            Self::RedisStream { .. } | Self::RedisPubSub { .. } => &urls.redis,
        }
    }

    fn target(&self) -> String {
        match self {
            Self::Nats { subject, .. } => subject.clone(),
            Self::Rabbit { prefix, .. } => format!("{prefix}.{{type}}"),
            Self::RedisStream { key, .. } => key.clone(),
            Self::RedisPubSub { channel, .. } => channel.clone(),
        }
    }

    /// Messages that landed.
    async fn count(&self) -> anyhow::Result<u64> {
        match self {
            Self::Nats { context, stream, .. } => {
                let mut stream = context.get_stream(stream).await.context("reading the JetStream stream")?;
                Ok(stream.info().await.context("reading the JetStream stream")?.state.messages)
            }
            Self::Rabbit { channel, queue, .. } => {
                let declared = channel
                    .queue_declare(
                        ShortString::from(queue.as_str()),
                        QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                        FieldTable::default(),
                    )
                    .await
                    .context("reading the bench queue")?;
                Ok(u64::from(declared.message_count()))
            }
            Self::RedisStream { connection, key } => {
                let mut connection = connection.clone();
                redis::cmd("XLEN")
                    .arg(key)
                    .query_async(&mut connection)
                    .await
                    .context("reading the Redis stream")
            }
            Self::RedisPubSub { received, .. } => {
                // The last messages may still be on their way to the subscriber.
                let mut seen = received.load(Ordering::Relaxed);
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let now = received.load(Ordering::Relaxed);
                    if now == seen {
                        return Ok(now);
                    }
                    seen = now;
                }
            }
        }
    }

    /// Removes what `open` made; a failure here only leaves a stray name behind.
    async fn remove(self) {
        match self {
            Self::Nats { context, stream, .. } => {
                let _ = context.delete_stream(&stream).await;
            }
            Self::Rabbit { channel, queue, .. } => {
                let _ = channel
                    .queue_delete(ShortString::from(queue.as_str()), QueueDeleteOptions::default())
                    .await;
            }
            Self::RedisStream { mut connection, key } => {
                let _: Result<u64, _> = redis::cmd("DEL").arg(&key).query_async(&mut connection).await;
            }
            Self::RedisPubSub { stop, .. } => stop.cancel(),
        }
    }
}

/// Awaits a broker connection for at most [`CONNECT`], naming the broker when it fails.
async fn within<T, E: std::fmt::Display>(
    broker: &str,
    url: &str,
    connect: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    let shown = bifrost_bridges::spec::mask_password(url);
    match tokio::time::timeout(CONNECT, connect).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(e)) => bail!("cannot reach {broker} at {shown}: {e} (leave it out with --bridge-kinds)"),
        Err(_) => {
            bail!("{broker} at {shown} did not answer within {CONNECT:?} (leave it out with --bridge-kinds)")
        }
    }
}
