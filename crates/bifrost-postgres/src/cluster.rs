//! The cluster bus (`bifrost_core::cluster`) on PostgreSQL: a publish is a `NOTIFY` on the
//! schema's bus channel, which every node's listener (`listener.rs`) hears — the
//! publishing node's too, since the listener has a connection of its own — and hands to
//! this module's dispatcher, which passes it to the topic's subscribers.
//!
//! A notification's payload must be shorter than 8000 bytes, so a message goes one of two
//! ways: inline, `{topic}\n:{payload}`, or, when that would not fit, as a row of
//! `bus_messages` and a notification naming it, `{topic}\n@{id}`, which each receiving
//! node reads through its pool. The row and its notification commit together, so the row
//! is there when the reference arrives; rows older than a minute are pruned now and then by
//! the nodes that insert them. One publisher's messages arrive in the order they were
//! sent: the dispatcher delivers in the order it heard, a stored message holding back the
//! ones behind it until it is read.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bifrost_core::backend::codec::corrupt;
use bifrost_core::cluster::{ClusterBus, Topics, check_message};
use bifrost_core::{Error, Result};
use bytes::Bytes;
use deadpool_postgres::Pool;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::codec::{pg, pool as pool_error};
use crate::schema::Sql;

/// A notification's payload must be shorter than this (PostgreSQL's
/// `NOTIFY_PAYLOAD_MAX_LENGTH`).
const NOTIFY_LIMIT: usize = 8000;
/// Notifications heard but not yet dispatched. Beyond this the listener drops them rather
/// than wait, because it also carries the head's and the groups' notifications.
const INBOX_CAPACITY: usize = 16_384;
/// Stored messages being read at once; the notifications behind them wait in the inbox.
const MAX_READING: usize = 32;
/// How often a node that stores messages prunes the old ones: often enough to keep the
/// table small, seldom enough to cost nothing per message.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// After the topic and its newline: the payload follows.
const INLINE: char = ':';
/// After the topic and its newline: the id of the message's row follows.
const STORED: char = '@';

/// The bus's statements, built once for the store's schema.
struct BusSql {
    channel: String,
    notify: String,
    /// Inserts the message (`$1` topic, `$2` payload) and notifies its reference on `$3`,
    /// in one statement and so one transaction.
    store: String,
    read: String,
    prune: String,
}

impl BusSql {
    fn new(store: &Sql) -> Self {
        let s = store.quoted_schema();
        Self {
            channel: store.bus_channel.clone(),
            notify: "SELECT pg_notify($1, $2)".to_owned(),
            store: format!(
                "WITH m AS (INSERT INTO {s}.bus_messages (topic, payload) VALUES ($1, $2) RETURNING id) \
                 SELECT pg_notify($3, $1 || chr(10) || '{STORED}' || m.id) FROM m"
            ),
            read: format!("SELECT payload FROM {s}.bus_messages WHERE id = $1"),
            prune: format!("DELETE FROM {s}.bus_messages WHERE created_at < now() - interval '1 minute'"),
        }
    }
}

/// A bus notification as heard: `{topic}\n:{payload}` carries the message,
/// `{topic}\n@{id}` names its row in `bus_messages`.
#[derive(Debug, PartialEq)]
struct Note {
    topic: String,
    body: Body,
}

#[derive(Debug, PartialEq)]
enum Body {
    Inline(Bytes),
    Stored(i64),
}

impl FromStr for Note {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let malformed =
            || corrupt("bus notification", format!("{:?}", s.chars().take(80).collect::<String>()));
        let (topic, rest) = s.split_once('\n').ok_or_else(malformed)?;
        let body = if let Some(payload) = rest.strip_prefix(INLINE) {
            Body::Inline(Bytes::copy_from_slice(payload.as_bytes()))
        } else if let Some(id) = rest.strip_prefix(STORED) {
            Body::Stored(id.parse().map_err(|_| malformed())?)
        } else {
            return Err(malformed());
        };
        Ok(Self { topic: topic.to_owned(), body })
    }
}

/// Checks a message before it is sent, and returns its payload as text.
fn checked<'a>(topic: &str, payload: &'a [u8]) -> Result<&'a str> {
    let text = check_message(topic, payload)?;
    // PostgreSQL's text, which carries the payload, cannot hold one.
    if text.contains('\0') {
        return Err(Error::InvalidArgument("a bus payload cannot contain a NUL character".into()));
    }
    Ok(text)
}

/// Where the listener puts what it hears on the bus channel, for the dispatcher.
#[derive(Clone)]
pub(crate) struct Inbox {
    heard: mpsc::Sender<String>,
    /// Whether messages are being dropped, so that an overload is logged once, not per
    /// message.
    dropping: Arc<AtomicBool>,
}

impl Inbox {
    /// Never waits: a full inbox drops the message (the bus is best effort), so that the
    /// listener's other notifications keep flowing.
    pub(crate) fn hear(&self, payload: &str) {
        match self.heard.try_send(payload.to_owned()) {
            Ok(()) => self.dropping.store(false, Ordering::Relaxed),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "cluster bus: {INBOX_CAPACITY} messages wait for dispatch; dropping messages"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// The bus of one store: publishes through the pool; its subscribers get what this node's
/// listener hears.
pub(crate) struct PgBus {
    pool: Pool,
    sql: Arc<BusSql>,
    topics: Arc<Topics>,
    /// When this node last pruned `bus_messages`; `None`: not yet.
    pruned: Mutex<Option<Instant>>,
    dispatcher: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl PgBus {
    /// The bus, with its dispatcher running, and the inbox the listener feeds it through.
    pub(crate) fn start(pool: Pool, store_sql: &Sql) -> (Arc<Self>, Inbox) {
        let sql = Arc::new(BusSql::new(store_sql));
        let topics = Arc::new(Topics::default());
        let (inbox, heard) = mpsc::channel(INBOX_CAPACITY);
        let dispatcher = tokio::spawn(dispatch(pool.clone(), sql.clone(), topics.clone(), heard));
        let bus = Self {
            pool,
            sql,
            topics,
            pruned: Mutex::new(None),
            dispatcher: tokio::sync::Mutex::new(Some(dispatcher)),
        };
        (Arc::new(bus), Inbox { heard: inbox, dropping: Arc::new(AtomicBool::new(false)) })
    }

    /// Stops the dispatcher (messages still on their way are lost) and ends every
    /// subscription. Publishing fails from now on, once the pool is closed.
    pub(crate) async fn close(&self) {
        if let Some(dispatcher) = self.dispatcher.lock().await.take() {
            dispatcher.abort();
            let _ = dispatcher.await;
        }
        self.topics.close();
    }

    /// Whether this publish should also prune old rows, and if so, notes that it does.
    fn prune_due(&self) -> bool {
        let mut pruned = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
        if pruned.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return false;
        }
        *pruned = Some(Instant::now());
        true
    }
}

#[async_trait]
impl ClusterBus for PgBus {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let text = checked(topic, &payload)?;
        let client = self.pool.get().await.map_err(pool_error)?;
        // The topic, a newline, the mark and the payload.
        if topic.len() + 2 + text.len() < NOTIFY_LIMIT {
            let note = format!("{topic}\n{INLINE}{text}");
            let stmt = client.prepare_cached(&self.sql.notify).await.map_err(pg)?;
            client.execute(&stmt, &[&self.sql.channel, &note]).await.map_err(pg)?;
            return Ok(());
        }
        let stmt = client.prepare_cached(&self.sql.store).await.map_err(pg)?;
        client.execute(&stmt, &[&topic, &text, &self.sql.channel]).await.map_err(pg)?;
        // The message is on its way; pruning only delays this caller, and a failure is no
        // reason to report the message as unsent.
        if self.prune_due()
            && let Err(e) = client.execute(&self.sql.prune, &[]).await
        {
            tracing::debug!(error = %e, "could not prune the cluster bus's stored messages");
        }
        Ok(())
    }

    fn subscribe(&self, topic: &str) -> broadcast::Receiver<Bytes> {
        self.topics.subscribe(topic)
    }
}

/// Delivers what the listener heard, in the order it heard it: an inline message at once
/// when nothing is ahead of it, a stored one once read (several read at a time, delivered
/// in order). Ends when the listener is gone or the store closes.
async fn dispatch(pool: Pool, sql: Arc<BusSql>, topics: Arc<Topics>, mut heard: mpsc::Receiver<String>) {
    let mut pending = FuturesOrdered::new();
    loop {
        tokio::select! {
            Some(message) = pending.next(), if !pending.is_empty() => {
                let message: Option<(String, Bytes)> = message;
                if let Some((topic, payload)) = message {
                    topics.deliver(&topic, payload);
                }
            }
            note = heard.recv(), if pending.len() < MAX_READING => {
                let Some(note) = note else { return };
                let note = match note.parse::<Note>() {
                    Ok(note) => note,
                    Err(e) => {
                        tracing::debug!(error = %e, "ignoring a malformed cluster bus notification");
                        continue;
                    }
                };
                match note.body {
                    Body::Inline(payload) if pending.is_empty() => topics.deliver(&note.topic, payload),
                    // Nobody here listens: not worth reading.
                    _ if !topics.heard(&note.topic) => {}
                    body => pending.push_back(resolve(pool.clone(), sql.clone(), note.topic, body)),
                }
            }
        }
    }
}

/// A heard message's topic and payload, reading a stored one; `None` when it is gone
/// (pruned after a long wait) or cannot be read.
async fn resolve(pool: Pool, sql: Arc<BusSql>, topic: String, body: Body) -> Option<(String, Bytes)> {
    let id = match body {
        Body::Inline(payload) => return Some((topic, payload)),
        Body::Stored(id) => id,
    };
    let read = async {
        let client = pool.get().await.map_err(pool_error)?;
        let stmt = client.prepare_cached(&sql.read).await.map_err(pg)?;
        let row = client.query_opt(&stmt, &[&id]).await.map_err(pg)?;
        row.map(|row| row.try_get::<_, String>(0).map_err(|e| corrupt("bus message", e))).transpose()
    };
    match read.await {
        Ok(Some(payload)) => Some((topic, Bytes::from(payload))),
        Ok(None) => {
            tracing::debug!(id, topic, "a stored cluster bus message was pruned before it was read");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, id, topic, "could not read a stored cluster bus message");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use bifrost_core::cluster::MAX_BUS_PAYLOAD;

    use super::*;

    #[test]
    fn notes_parse_in_both_forms_and_a_payload_may_hold_anything_after_the_mark() {
        let inline: Note = "presence\n:{\"a\":\"@1\\n\"}\n@2".parse().unwrap();
        assert_eq!(
            inline,
            Note {
                topic: "presence".into(),
                body: Body::Inline(Bytes::from_static(b"{\"a\":\"@1\\n\"}\n@2"))
            }
        );
        let stored: Note = "presence\n@42".parse().unwrap();
        assert_eq!(stored, Note { topic: "presence".into(), body: Body::Stored(42) });
        let empty: Note = "t\n:".parse().unwrap();
        assert_eq!(empty.body, Body::Inline(Bytes::new()));
    }

    #[test]
    fn malformed_notes_are_refused() {
        for bad in ["presence", "presence\n", "presence\n{}", "presence\n@", "presence\n@x1"] {
            assert!(bad.parse::<Note>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn payloads_are_checked_as_on_every_bus_and_may_not_hold_a_nul() {
        assert_eq!(checked("a.b-c_d e", b"{}").unwrap(), "{}");
        assert!(matches!(checked("tab\t", b"{}"), Err(Error::InvalidArgument(_))));
        assert!(matches!(checked("t", b"a\0b"), Err(Error::InvalidArgument(_))));
        assert!(matches!(checked("t", &vec![b'a'; MAX_BUS_PAYLOAD + 1]), Err(Error::InvalidArgument(_))));
    }
}
