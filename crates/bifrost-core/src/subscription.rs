//! Catch-up subscriptions for every store: read the log from a checkpoint in pages, then
//! wait on the store's head for new commits.
//!
//! No gap and no duplicate follow from reading strictly by position and keeping the last
//! position handed out; no lost wake-up follows from marking the head as seen *before*
//! each read. Back-pressure follows from reading only when the consumer asks for more.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

use crate::error::Result;
use crate::event::RecordedEvent;
use crate::store::{EventStore, LogFilter, Position, SubscribeFrom};

/// A live, ordered stream of events. It ends when the store closes.
pub type EventStream = BoxStream<'static, Result<RecordedEvent>>;

/// Events read per page during catch-up.
pub const PAGE_SIZE: usize = 512;

struct State<S: ?Sized> {
    store: Arc<S>,
    head: watch::Receiver<Position>,
    filter: LogFilter,
    after: Position,
    buffer: VecDeque<RecordedEvent>,
    failed: bool,
}

/// Subscribes to the log of `store` from `from`, filtered by `filter`.
pub fn subscribe<S: EventStore + ?Sized>(
    store: Arc<S>,
    from: SubscribeFrom,
    filter: LogFilter,
) -> EventStream {
    let head = store.head();
    let after = match from {
        SubscribeFrom::Start => 0,
        SubscribeFrom::After(p) => p,
        SubscribeFrom::End => *head.borrow(),
    };
    let state = State { store, head, filter, after, buffer: VecDeque::new(), failed: false };
    stream::unfold(state, next_event).boxed()
}

async fn next_event<S: EventStore + ?Sized>(mut st: State<S>) -> Option<(Result<RecordedEvent>, State<S>)> {
    if st.failed {
        return None;
    }
    loop {
        if let Some(event) = st.buffer.pop_front() {
            st.after = event.position;
            return Some((Ok(event), st));
        }
        // Mark the current head as seen before reading, so a commit that lands during the
        // read wakes the wait below instead of being missed.
        let head = *st.head.borrow_and_update();
        if st.after < head {
            match st.store.read_all(st.after, &st.filter, PAGE_SIZE).await {
                Ok(slice) if slice.events.is_empty() => st.after = st.after.max(slice.next_position),
                Ok(slice) => {
                    st.buffer.extend(slice.events);
                    continue;
                }
                Err(e) => {
                    st.failed = true;
                    return Some((Err(e), st));
                }
            }
            if st.after < head {
                continue;
            }
        }
        if st.head.changed().await.is_err() {
            return None; // the store closed
        }
    }
}
