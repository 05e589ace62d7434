//! The head watch: the position of the last committed event, as far as this client knows.
//!
//! It moves two ways. Every answer that shows a position (an append's result, a page of
//! events) moves it at once, so a client always sees its own writes. And a follower task,
//! started on the first call to `head()`, asks the server for its head and then follows
//! `GET /v1/subscribe` from there, moving the watch with every event's id; a dropped
//! connection is resumed with `Last-Event-ID`. The watch never moves back.
//!
//! The follower holds only a weak reference to the watch's sender: the sender lives in
//! the client, so when the last clone of the client is dropped (the follower is aborted
//! then too) or the client is closed, the sender goes and every receiver sees the watch
//! close. The follower also stops once no receiver is left; the next `head()` starts
//! another.

use std::sync::{Arc, Weak};

use bifrost_core::Position;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::client::{Resume, Transport};

/// Moves the watch up to `position`; a lower position changes nothing.
pub(crate) fn advance(sender: &watch::Sender<Position>, position: Position) {
    sender.send_if_modified(|head| {
        if position > *head {
            *head = position;
            true
        } else {
            false
        }
    });
}

/// Keeps `head` current until the client closes or goes away.
pub(crate) async fn follow(
    transport: Arc<Transport>,
    head: Weak<watch::Sender<Position>>,
    closed: CancellationToken,
) {
    tokio::select! {
        () = closed.cancelled() => {}
        () = run(&transport, &head) => {}
    }
}

async fn run(transport: &Transport, head: &Weak<watch::Sender<Position>>) {
    let mut backoff = transport.backoff();
    // Whether the watch holds a position of this server's log to resume from.
    let mut synced = false;
    loop {
        let Some(sender) = head.upgrade() else { return };
        if sender.receiver_count() == 0 {
            return;
        }
        let known = *sender.borrow();
        drop(sender);
        let resume = if synced {
            Resume::LastEventId(known)
        } else {
            match transport.log_head().await {
                Ok(position) => {
                    let Some(sender) = head.upgrade() else { return };
                    advance(&sender, position);
                    synced = true;
                    Resume::From(position)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot learn the server's head; trying again");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
        };
        match transport.open_sse(&[], resume).await {
            Ok(mut connection) => {
                backoff.reset();
                loop {
                    let Some(sender) = head.upgrade() else { return };
                    // Nobody watches any more: stop downloading the log (the next `head()`
                    // starts a follower again).
                    let event = tokio::select! {
                        event = connection.next() => event,
                        () = sender.closed() => return,
                    };
                    let Some(event) = event else { break };
                    if let Some(position) = event.id.as_deref().and_then(|id| id.parse::<Position>().ok()) {
                        advance(&sender, position);
                    }
                }
            }
            Err(e) => {
                // A refusal (not a lost connection) means the position is not one of this
                // server's: learn its head again.
                synced &= e.is_transient();
                tracing::debug!(error = %e, "cannot follow the server's log; trying again");
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
