//! Live subscriptions over Server-Sent Events: catch-up and live delivery by the server,
//! resumed after a dropped connection with `Last-Event-ID` so that nothing is missed or
//! seen twice.

use std::sync::Arc;

use bifrost_core::{EventStream, LogFilter, Position, RecordedEvent, SubscribeFrom};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream;
use tokio_util::sync::CancellationToken;

use crate::client::{Backoff, Client, Query, Resume, SseConnection, Transport, filter_query};
use crate::error::{Error, Result};
use crate::wire;

struct Subscription {
    transport: Arc<Transport>,
    closed: CancellationToken,
    query: Query,
    /// The last position delivered (or the start): what a reconnect resumes after.
    after: Position,
    connection: Option<SseConnection>,
    backoff: Backoff,
    /// Failed reconnections in a row.
    failures: u32,
    failed: bool,
}

impl Client {
    /// Subscribes to the global log over `GET /v1/subscribe`: the events after `from` that
    /// match `filter`, in log order, first those already stored and then live ones.
    ///
    /// Returns once the server has accepted the subscription, so a bad filter is an error
    /// here and [`SubscribeFrom::End`] means the events committed after this call (the
    /// server's head is asked first, so that a reconnect before the first event cannot skip
    /// any). A connection that drops or goes silent is opened again with `Last-Event-ID`,
    /// with growing delays, for as long as the stream is polled: no event is missed and none
    /// comes twice. The stream yields an error and ends when a reconnect is refused (e.g.
    /// the position no longer exists) or an event cannot be read; it ends when the client
    /// is closed.
    ///
    /// Payloads come as the server's SSE frames carry them: byte for byte, except that the
    /// server turns line breaks that are whitespace between JSON tokens into spaces (an SSE
    /// `data:` line cannot hold them).
    ///
    /// This is not [`EventStoreExt::subscribe`](bifrost_core::store::EventStoreExt::subscribe),
    /// which any store has: that one reads pages of the log and waits on the head watch.
    /// On an `Arc<Client>` with that trait in scope, method call syntax picks the trait's;
    /// call `Client::subscribe(&client, ..)` to be explicit.
    pub async fn subscribe(&self, from: SubscribeFrom, filter: LogFilter) -> Result<EventStream> {
        self.check_open()?;
        let transport = self.shared_transport();
        let after = match from {
            SubscribeFrom::Start => 0,
            SubscribeFrom::After(position) => position,
            SubscribeFrom::End => self.fetch_head().await?,
        };
        let query = filter_query(&filter);
        let connection = transport.open_sse(&query, Resume::From(after)).await?;
        let subscription = Subscription {
            backoff: transport.backoff(),
            transport,
            closed: self.closed_token(),
            query,
            after,
            connection: Some(connection),
            failures: 0,
            failed: false,
        };
        Ok(stream::unfold(subscription, next_event).boxed())
    }
}

async fn next_event(mut sub: Subscription) -> Option<(bifrost_core::Result<RecordedEvent>, Subscription)> {
    if sub.failed {
        return None;
    }
    let closed = sub.closed.clone();
    let item = tokio::select! {
        () = closed.cancelled() => return None,
        item = sub.step() => item,
    };
    if item.is_err() {
        sub.failed = true;
    }
    Some((item.map_err(|e| e.into_store_error(None)), sub))
}

impl Subscription {
    /// Counts a failed reconnection; past the limit, the subscription gives up.
    fn failed_again(&mut self, reason: String) -> Result<()> {
        self.failures += 1;
        match self.transport.max_reconnects {
            Some(max) if self.failures > max => {
                Err(Error::Disconnected { server: self.transport.server(), attempts: self.failures, reason })
            }
            _ => Ok(()),
        }
    }

    async fn step(&mut self) -> Result<RecordedEvent> {
        loop {
            let Some(connection) = &mut self.connection else {
                match self.transport.open_sse(&self.query, Resume::LastEventId(self.after)).await {
                    Ok(connection) => self.connection = Some(connection),
                    Err(e) if e.is_transient() => {
                        self.failed_again(e.to_string())?;
                        let delay = self.backoff.next_delay();
                        tracing::warn!(
                            "cannot resume the subscription ({e}); trying again after position {} in {delay:?}",
                            self.after
                        );
                        tokio::time::sleep(delay).await;
                    }
                    Err(e) => return Err(e),
                }
                continue;
            };
            match connection.next().await {
                Some(frame) => {
                    let event = wire::one_event(&Bytes::from(frame.data))?;
                    // Resuming strictly after the last position delivered already rules
                    // out repeats; this guards against a server that repeats one anyway.
                    if event.position <= self.after {
                        continue;
                    }
                    self.after = event.position;
                    self.backoff.reset();
                    return Ok(event);
                }
                None => {
                    // A connection that carried anything was healthy: only its end counts.
                    if connection.received {
                        self.failures = 0;
                    }
                    let reason = connection.ended.take().unwrap_or_else(|| "the connection ended".into());
                    self.connection = None;
                    let delay = self.backoff.next_delay();
                    tracing::warn!(
                        "connection lost ({reason}); resuming after position {} in {delay:?}",
                        self.after
                    );
                    self.failed_again(reason)?;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
