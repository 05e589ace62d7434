//! Where the toolkit reads the time: the system clock in production, a clock the test moves
//! by hand in tests, so that a saga's timeouts are tested without waiting for them.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bifrost_core::Timestamp;
use tokio::sync::Notify;

#[async_trait]
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;

    /// Resolves once the clock reads `deadline` or later.
    async fn sleep_until(&self, deadline: Timestamp);
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    async fn sleep_until(&self, deadline: Timestamp) {
        let wait = deadline.as_micros().saturating_sub(Timestamp::now().as_micros());
        tokio::time::sleep(Duration::from_micros(u64::try_from(wait).unwrap_or(0))).await;
    }
}

/// A clock that stands still until [`advance`](Self::advance)d.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
    jumped: Notify,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self { now: Mutex::new(start), jumped: Notify::new() }
    }

    /// Moves the clock forward and wakes whoever waits on it.
    pub fn advance(&self, by: Duration) {
        if let Ok(mut now) = self.now.lock() {
            let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
            *now = Timestamp::from_micros(now.as_micros().saturating_add(micros));
        }
        self.jumped.notify_waiters();
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(Timestamp::now())
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.now.lock().map_or_else(|_| Timestamp::now(), |now| *now)
    }

    async fn sleep_until(&self, deadline: Timestamp) {
        loop {
            // Registered before the clock is read, so an advance in between is not missed.
            let jumped = self.jumped.notified();
            tokio::pin!(jumped);
            jumped.as_mut().enable();
            if self.now() >= deadline {
                return;
            }
            jumped.await;
        }
    }
}
