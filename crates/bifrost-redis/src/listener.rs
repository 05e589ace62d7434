//! Listening on a Pub/Sub channel on a connection of its own, again after every lost
//! connection (with a growing pause), and the head's wake-ups built on it: the append
//! script publishes each new head, and a slow poll of the head key covers messages lost
//! while the connection was down.

use std::sync::Arc;
use std::time::Duration;

use bifrost_core::Position;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Pauses between attempts to reconnect the listening connection.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long opening the listening connection and subscribing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Subscribes to `channel` and hands every message's payload to `on_message`, forever:
/// the task ends only when aborted. `on_listening` runs each time the subscription is
/// (re)established, so that the caller can catch up on what it may have missed.
pub(crate) fn listen(
    client: redis::Client,
    channel: String,
    mut on_message: impl FnMut(&[u8]) + Send + 'static,
    mut on_listening: impl FnMut() + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let subscribed = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            match subscribed {
                Ok(Ok(pubsub)) => {
                    backoff = FIRST_BACKOFF;
                    on_listening();
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        on_message(message.get_payload_bytes());
                    }
                    tracing::warn!(channel, "lost the Redis listening connection; reconnecting");
                }
                Ok(Err(e)) => tracing::warn!(channel, error = %e, "cannot listen on Redis; retrying"),
                Err(_) => tracing::warn!(channel, "listening on Redis timed out; retrying"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

/// Moves the head watch forward (never back).
pub(crate) fn advance(head: &watch::Sender<Position>, to: Position) {
    head.send_if_modified(|h| {
        let moved = to > *h;
        if moved {
            *h = to;
        }
        moved
    });
}

/// The head's wake-ups: the listening task and the fallback poll. Both hold the head's
/// sender; once both are stopped (and the writer too), it is dropped and live
/// subscriptions end.
pub(crate) struct HeadListener {
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl HeadListener {
    pub(crate) fn start(
        client: redis::Client,
        conn: ConnectionManager,
        head_key: String,
        channel: String,
        head: Arc<watch::Sender<Position>>,
        poll_interval: Duration,
    ) -> Self {
        let (poke, mut poked) = tokio::sync::mpsc::channel::<()>(1);
        let on_message = {
            let head = head.clone();
            move |payload: &[u8]| match std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.parse::<Position>().ok())
            {
                Some(position) => advance(&head, position),
                None => tracing::debug!("ignoring a malformed head announcement"),
            }
        };
        // Whatever was appended while not listening: read the head once now.
        let on_listening = move || {
            let _ = poke.try_send(());
        };
        let listening = listen(client, channel, on_message, on_listening);
        let poll = tokio::spawn(async move {
            let mut conn = conn;
            let mut ticks = tokio::time::interval(poll_interval.max(Duration::from_millis(10)));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    Some(()) = poked.recv() => {}
                }
                let read: redis::RedisResult<Option<Position>> =
                    redis::cmd("GET").arg(&head_key).query_async(&mut conn).await;
                match read {
                    Ok(position) => advance(&head, position.unwrap_or(0)),
                    Err(e) => tracing::debug!(error = %e, "cannot poll the head"),
                }
            }
        });
        Self { tasks: std::sync::Mutex::new(vec![listening, poll]) }
    }

    pub(crate) async fn stop(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for HeadListener {
    /// A store dropped without `close` (a crash, in tests) stops listening all the same.
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
    }
}
