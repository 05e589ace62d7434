//! A group's three background tasks: the reader fills the ledger from the log, the timer
//! expires leases and releases retries, the persister writes the group's state.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant as TokioInstant;

use super::{LAZY_PERSIST, READ_PAGE, Shared, buffer_limit};
use crate::ledger::Moment;

/// Fills the ledger from the log while it has room, then waits for new events.
pub(super) async fn read_loop(shared: Arc<Shared>) {
    let mut head = shared.store.head();
    let mut closed = shared.closed.subscribe();
    loop {
        if *closed.borrow_and_update() {
            return;
        }
        let room_wait = shared.reader.notified();
        tokio::pin!(room_wait);
        room_wait.as_mut().enable();
        let (after, room) = {
            let inner = shared.lock();
            (inner.ledger.read_to(), buffer_limit(&inner.config).saturating_sub(inner.ledger.buffered()))
        };
        if room == 0 {
            tokio::select! {
                () = &mut room_wait => {}
                _ = closed.changed() => {}
            }
            continue;
        }
        let head_now = *head.borrow_and_update();
        if after >= head_now {
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                _ = closed.changed() => {}
            }
            continue;
        }
        match shared.store.read_all(after, &shared.filter, room.min(READ_PAGE)).await {
            Ok(page) => {
                let (moved, wake_timer, horizon) = {
                    let mut inner = shared.lock();
                    let inner = &mut *inner;
                    let before = inner.ledger.generation;
                    inner.ledger.admit(page.events, page.next_position, Moment::now(), &inner.config);
                    let horizon = inner.ledger.advance_horizon();
                    // An earlier run's retries (and its leases, now failed attempts) are
                    // due at their own times: the timer must know.
                    let next = inner.ledger.next_deadline();
                    let wake = next.is_some_and(|at| inner.timer_at.is_none_or(|t| at < t));
                    (inner.ledger.generation != before, wake, horizon)
                };
                if wake_timer {
                    shared.timer.notify_one();
                }
                shared.fetchers.notify_waiters();
                if horizon {
                    shared.persist_now.notify_one();
                } else if moved {
                    shared.persist_later.notify_one();
                }
            }
            Err(e) => {
                tracing::warn!(group = %shared.name, error = %e, "reading the log failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = closed.changed() => {}
                }
            }
        }
    }
}

/// Expires leases and releases retries when they are due.
pub(super) async fn timer_loop(shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    loop {
        if *closed.borrow_and_update() {
            return;
        }
        let wake = shared.timer.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let (changed, next) = {
            let mut inner = shared.lock();
            let inner = &mut *inner;
            let result = inner.ledger.tick(Moment::now(), &inner.config);
            inner.timer_at = result.1;
            result
        };
        if changed {
            shared.fetchers.notify_waiters();
            shared.reader.notify_one();
            shared.persist_later.notify_one();
        }
        let sleep = match next {
            Some(at) => tokio::time::sleep_until(TokioInstant::from_std(at)),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            () = sleep => {}
            () = &mut wake => {}
            _ = closed.changed() => {}
        }
    }
}

/// Writes the group's state: at once when someone waits for it, otherwise a little later
/// so that unhurried changes share a write.
pub(super) async fn persist_loop(shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    loop {
        // Also when the group was closed before this task first ran.
        if *closed.borrow_and_update() {
            return;
        }
        tokio::select! {
            () = shared.persist_now.notified() => {}
            () = shared.persist_later.notified() => {
                tokio::select! {
                    () = tokio::time::sleep(LAZY_PERSIST) => {}
                    () = shared.persist_now.notified() => {}
                    _ = closed.changed() => {}
                }
            }
            _ = closed.changed() => {}
        }
        if *closed.borrow_and_update() {
            return;
        }
        if shared.persist(false).await.is_err() {
            // Try again soon; waiters already have their error.
            tokio::time::sleep(Duration::from_millis(100)).await;
            shared.persist_later.notify_one();
        }
    }
}
