//! Keeps the store's head current with what other nodes commit: `LISTEN` on the head
//! channel, a slow poll as a fallback for a lost notification or connection, and a
//! reconnect loop. Wakes the consumer groups' fetchers on what any node does to their
//! group (`LISTEN` on the groups channel). Hands what it hears on the cluster bus's
//! channel to the bus (`cluster.rs`). Also closes pooled connections that sat idle too
//! long.
//!
//! With an external cluster bus (`external.rs`) it holds no connection of its own: the
//! head's and the groups' wake-ups arrive on that bus, and the poll reads the head through
//! the pool.

use std::sync::Arc;
use std::time::Duration;

use bifrost_core::Position;
use bifrost_core::cluster::ClusterBus;
use bytes::Bytes;
use deadpool_postgres::Pool;
use futures::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::PostgresOptions;
use crate::cluster::Inbox;
use crate::external::{GROUPS_TOPIC, HEAD_TOPIC, parse_groups, parse_head};
use crate::groups::Wakeups;
use crate::schema::Sql;
use crate::writer::advance;

/// Log size at which statistics are first refreshed after start-up.
const ANALYZE_FIRST: Position = 10_000;

/// Where the other nodes' wake-ups come from.
pub(crate) enum Hearing {
    /// `LISTEN` on the store's channels; the cluster bus's messages go to its inbox.
    Notify(Inbox),
    /// An external cluster bus.
    Bus(Arc<dyn ClusterBus>),
}

pub(crate) struct Listener {
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Listener {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        config: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        sql: Arc<Sql>,
        pool: Pool,
        head: Arc<watch::Sender<Position>>,
        wakeups: Arc<Wakeups>,
        hearing: Hearing,
        options: &PostgresOptions,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let poll = options.poll_interval;
        let idle = options.idle_timeout;
        let bus = match hearing {
            Hearing::Notify(inbox) => inbox,
            Hearing::Bus(bus) => {
                // Subscribed before the store is handed out: from now on nothing is missed
                // but what the bus itself loses.
                let heard = Heard { heads: bus.subscribe(HEAD_TOPIC), groups: bus.subscribe(GROUPS_TOPIC) };
                let task = tokio::spawn(follow_bus(heard, sql, pool, head, wakeups, poll, idle, stopped));
                return Self { stop, task: tokio::sync::Mutex::new(Some(task)) };
            }
        };
        let server = (config, tls);
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut stopped = stopped;
            loop {
                let session =
                    listen(&server, &sql, &pool, &head, &wakeups, &bus, poll, idle, &mut stopped).await;
                if *stopped.borrow() {
                    return;
                }
                if let Err(e) = session {
                    tracing::warn!(error = %e, "change listener lost its connection; reconnecting");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Self { stop, task: tokio::sync::Mutex::new(Some(task)) }
    }

    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

/// One listening session; returns when its connection fails or the store stops.
#[allow(clippy::too_many_arguments)]
async fn listen(
    (config, tls): &(tokio_postgres::Config, MakeRustlsConnect),
    sql: &Sql,
    pool: &Pool,
    head: &watch::Sender<Position>,
    wakeups: &Wakeups,
    bus: &Inbox,
    poll: Duration,
    idle: Duration,
    stopped: &mut watch::Receiver<bool>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let groups_channel = sql.groups_channel.clone();
    let bus_channel = sql.bus_channel.clone();
    let bus = bus.clone();
    // The connection delivers notifications only while it is polled for messages.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                // Straight to the bus, not through the session below, whose polls would
                // hold messages up.
                Ok(AsyncMessage::Notification(n)) if n.channel() == bus_channel => bus.hear(n.payload()),
                Ok(AsyncMessage::Notification(n)) => {
                    let note = if n.channel() == groups_channel {
                        n.payload().parse::<i64>().ok().map(Note::Group)
                    } else {
                        n.payload().parse::<Position>().ok().map(Note::Head)
                    };
                    if notes_tx.send(note).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "change listener connection failed");
                    return;
                }
            }
        }
    });
    let session = async {
        // Messages on the bus while no one listened are lost: the bus is best effort.
        client.batch_execute(&format!("{}; {}; {}", sql.listen, sql.groups_listen, sql.bus_listen)).await?;
        // Whatever happened to the groups while no one listened.
        wakeups.wake_all();
        // Whatever committed while no one listened.
        let read_head = client.prepare(&sql.read_head).await?;
        let mut tick = tokio::time::interval(poll);
        let mut next_analyze = head.borrow().saturating_mul(2).max(ANALYZE_FIRST);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                note = notes.recv() => match note {
                    Some(Some(Note::Head(position))) => { head.send_if_modified(|h| advance(h, position)); }
                    Some(Some(Note::Group(group))) => wakeups.wake(group),
                    Some(None) => {}
                    None => return Ok(()), // the connection ended
                },
                _ = tick.tick() => {
                    let row = client.query_one(&read_head, &[]).await?;
                    if let Ok(position) = Position::try_from(row.get::<_, i64>(0)) {
                        head.send_if_modified(|h| advance(h, position));
                    }
                    housekeeping(pool, sql, head, idle, &mut next_analyze).await;
                }
                _ = stopped.changed() => return Ok(()),
            }
        }
    }
    .await;
    driver.abort();
    session
}

/// What every poll also does: closes pooled connections idle too long, and refreshes the
/// statistics as the log grows (doubling steps), whether or not autovacuum runs on this
/// database.
async fn housekeeping(
    pool: &Pool,
    sql: &Sql,
    head: &watch::Sender<Position>,
    idle: Duration,
    next_analyze: &mut Position,
) {
    pool.retain(|_, metrics| metrics.last_used() < idle);
    let head_now = *head.borrow();
    if head_now >= *next_analyze {
        if let Err(e) = crate::reader::analyze(pool, sql).await {
            tracing::warn!(error = %e, "ANALYZE of the event tables failed");
        }
        *next_analyze = head_now.saturating_mul(2).max(ANALYZE_FIRST);
    }
}

/// The external bus's subscriptions of the listener.
struct Heard {
    heads: broadcast::Receiver<Bytes>,
    groups: broadcast::Receiver<Bytes>,
}

/// The listener on an external cluster bus: moves the head to what other nodes announce,
/// wakes the groups they name, and polls the head through the pool for whatever the bus
/// lost. Returns when the store stops.
#[allow(clippy::too_many_arguments)]
async fn follow_bus(
    mut heard: Heard,
    sql: Arc<Sql>,
    pool: Pool,
    head: Arc<watch::Sender<Position>>,
    wakeups: Arc<Wakeups>,
    poll: Duration,
    idle: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_analyze = head.borrow().saturating_mul(2).max(ANALYZE_FIRST);
    // A bus that ends (its owner closed it) leaves the poll.
    let (mut heads_open, mut groups_open) = (true, true);
    loop {
        tokio::select! {
            message = heard.heads.recv(), if heads_open => match message {
                Ok(payload) => {
                    if let Some(position) = parse_head(&payload) {
                        head.send_if_modified(|h| advance(h, position));
                    }
                }
                // Announcements were lost: look now rather than at the next tick.
                Err(RecvError::Lagged(_)) => tick.reset_immediately(),
                Err(RecvError::Closed) => heads_open = false,
            },
            message = heard.groups.recv(), if groups_open => match message {
                Ok(payload) => {
                    for group in parse_groups(&payload) {
                        wakeups.wake(group);
                    }
                }
                Err(RecvError::Lagged(_)) => wakeups.wake_all(),
                Err(RecvError::Closed) => groups_open = false,
            },
            _ = tick.tick() => {
                match crate::reader::head(&pool, &sql).await {
                    Ok(position) => { head.send_if_modified(|h| advance(h, position)); }
                    Err(e) => tracing::warn!(error = %e, "cannot read the head of the log"),
                }
                housekeeping(&pool, &sql, &head, idle, &mut next_analyze).await;
            }
            _ = stopped.changed() => return,
        }
    }
}

/// A notification: the head moved, or a consumer group's fetchers should look again.
enum Note {
    Head(Position),
    Group(i64),
}
