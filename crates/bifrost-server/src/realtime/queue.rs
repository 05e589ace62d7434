//! A connection's outgoing frames: bounded, in three priority lanes.
//!
//! `high` overtakes `normal` overtakes `low`, except that a frame never overtakes an earlier
//! frame of the same subscription (it joins the lowest lane that still holds one of them),
//! so one subscription's events keep their position order. The bound counts every lane:
//! a live frame that finds the queue full is refused and the connection is closed as a slow
//! consumer; a replay waits for room instead (it reads the store at its own pace).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use bifrost_api::PriorityBody;
use tokio::sync::Notify;

/// Lanes, highest first.
const LANES: usize = 3;

fn lane_of(priority: PriorityBody) -> usize {
    match priority {
        PriorityBody::High => 0,
        PriorityBody::Normal => 1,
        PriorityBody::Low => 2,
    }
}

struct Queued {
    frame: Utf8Bytes,
    subscription: Option<u64>,
}

#[derive(Default)]
struct Lanes {
    lanes: [VecDeque<(usize, Queued)>; LANES],
    len: usize,
    /// Frames waiting per subscription, per lane (absent: none).
    waiting: HashMap<u64, [u32; LANES]>,
    closed: bool,
}

/// The frames waiting to be written to one connection.
pub(crate) struct OutQueue {
    capacity: usize,
    lanes: Mutex<Lanes>,
    /// A frame was queued (or the queue closed).
    queued: Notify,
    /// A frame was taken (room was made).
    taken: Notify,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Full,
    Closed,
}

impl OutQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            lanes: Mutex::default(),
            queued: Notify::new(),
            taken: Notify::new(),
        }
    }

    /// Queues `frame` if there is room.
    pub(crate) fn push(
        &self,
        frame: Utf8Bytes,
        priority: PriorityBody,
        subscription: Option<u64>,
    ) -> Result<(), Refused> {
        {
            let Ok(mut state) = self.lanes.lock() else { return Err(Refused::Closed) };
            if state.closed {
                return Err(Refused::Closed);
            }
            if state.len >= self.capacity {
                return Err(Refused::Full);
            }
            let mut lane = lane_of(priority);
            if let Some(id) = subscription {
                let waiting = state.waiting.entry(id).or_default();
                // Never ahead of an earlier frame of the same subscription.
                if let Some(lowest) = (lane + 1..LANES).rev().find(|&l| waiting[l] > 0) {
                    lane = lowest;
                }
                waiting[lane] += 1;
            }
            state.lanes[lane].push_back((lane, Queued { frame, subscription }));
            state.len += 1;
        }
        self.queued.notify_one();
        Ok(())
    }

    /// Queues `frame`, waiting up to `patience` for room.
    pub(crate) async fn push_waiting(
        &self,
        frame: Utf8Bytes,
        priority: PriorityBody,
        subscription: Option<u64>,
        patience: Duration,
    ) -> Result<(), Refused> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let taken = self.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            // A frame is a shared buffer: a refused try costs a reference count.
            match self.push(frame.clone(), priority, subscription) {
                Err(Refused::Full) => {}
                done => return done,
            }
            if tokio::time::timeout_at(deadline, taken).await.is_err() {
                return Err(Refused::Full);
            }
        }
    }

    /// The next frame to write, highest lane first; `None` once closed.
    pub(crate) async fn pop(&self) -> Option<Utf8Bytes> {
        loop {
            let queued = self.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            {
                let Ok(mut state) = self.lanes.lock() else { return None };
                if state.closed {
                    return None;
                }
                let state = &mut *state;
                if let Some((lane, item)) = state.lanes.iter_mut().find_map(VecDeque::pop_front) {
                    state.len -= 1;
                    if let Some(id) = item.subscription
                        && let Some(waiting) = state.waiting.get_mut(&id)
                    {
                        waiting[lane] = waiting[lane].saturating_sub(1);
                        if waiting.iter().all(|&n| n == 0) {
                            state.waiting.remove(&id);
                        }
                    }
                    self.taken.notify_waiters();
                    return Some(item.frame);
                }
            }
            queued.await;
        }
    }

    /// Ends the queue: pending and later frames are dropped, `pop` returns `None`.
    pub(crate) fn close(&self) {
        if let Ok(mut state) = self.lanes.lock() {
            state.closed = true;
            state.lanes = Default::default();
            state.waiting = HashMap::new();
            state.len = 0;
        }
        self.queued.notify_waiters();
        self.queued.notify_one();
        self.taken.notify_waiters();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn text(s: &str) -> Utf8Bytes {
        s.to_owned().into()
    }

    async fn drain(queue: &OutQueue, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(queue.pop().await.unwrap().as_str().to_owned());
        }
        out
    }

    #[tokio::test]
    async fn higher_lanes_overtake_but_a_subscription_keeps_its_order() {
        let queue = OutQueue::new(10);
        queue.push(text("low-a"), PriorityBody::Low, Some(1)).unwrap();
        queue.push(text("normal-b"), PriorityBody::Normal, Some(2)).unwrap();
        // Subscription 1 has a low frame waiting: its high frame waits behind it.
        queue.push(text("high-a"), PriorityBody::High, Some(1)).unwrap();
        queue.push(text("high-c"), PriorityBody::High, None).unwrap();
        assert_eq!(drain(&queue, 4).await, ["high-c", "normal-b", "low-a", "high-a"]);
        // Once subscription 1's frames are out, its high frames overtake again.
        queue.push(text("low-d"), PriorityBody::Low, None).unwrap();
        queue.push(text("high-a2"), PriorityBody::High, Some(1)).unwrap();
        assert_eq!(drain(&queue, 2).await, ["high-a2", "low-d"]);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_live_frames_and_makes_replays_wait() {
        let queue = std::sync::Arc::new(OutQueue::new(2));
        queue.push(text("1"), PriorityBody::Normal, None).unwrap();
        queue.push(text("2"), PriorityBody::High, None).unwrap();
        assert_eq!(queue.push(text("3"), PriorityBody::High, None), Err(Refused::Full));
        let patient = Duration::from_secs(5);
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(
                async move { queue.push_waiting(text("3"), PriorityBody::Normal, None, patient).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        assert_eq!(drain(&queue, 1).await, ["2"]);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(drain(&queue, 2).await, ["1", "3"]);
        // Nobody reads: the replay gives up.
        queue.push(text("4"), PriorityBody::Normal, None).unwrap();
        queue.push(text("5"), PriorityBody::Normal, None).unwrap();
        let refused =
            queue.push_waiting(text("6"), PriorityBody::Normal, None, Duration::from_millis(30)).await;
        assert_eq!(refused, Err(Refused::Full));
        queue.close();
        assert_eq!(queue.pop().await, None);
        assert_eq!(queue.push(text("7"), PriorityBody::Normal, None), Err(Refused::Closed));
    }
}
