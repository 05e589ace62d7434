//! Rate limits: GCRA (`governor`) per caller — its API key, the admin key, a JWT's subject,
//! or its IP address when auth is off. One limiter counts requests, another counts appended
//! events (n events are n cells, capped at the burst so that one large append can always
//! pass a fresh limiter). Probes and `/metrics` are never limited.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::auth::{ActorKind, Principal};
use crate::error::{ApiError, ProblemType};

/// `[limits]`: 0 turns a limit off (the default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Requests per second of one caller (`limits.requests_per_s`).
    pub requests_per_s: u32,
    /// Appended events per second of one caller (`limits.events_per_s`).
    pub events_per_s: u32,
    /// Seconds of the rate a caller may spend at once (`limits.burst_s`, 1).
    pub burst_s: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { requests_per_s: 0, events_per_s: 0, burst_s: 1 }
    }
}

/// Stale callers are forgotten after this many checks.
const RETAIN_EVERY: u64 = 10_000;

struct Limiter {
    limiter: DefaultKeyedRateLimiter<String>,
    burst: NonZeroU32,
    checks: AtomicU64,
}

impl Limiter {
    fn new(per_s: u32, burst_s: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_s)?;
        let burst = NonZeroU32::new(per_s.saturating_mul(burst_s.max(1))).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Self { limiter: DefaultKeyedRateLimiter::keyed(quota), burst, checks: AtomicU64::new(0) })
    }

    /// `Err(wait)` when `cells` more would break the caller's rate.
    fn check(&self, key: &String, cells: u32) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            self.limiter.retain_recent();
        }
        let cells = NonZeroU32::new(cells.min(self.burst.get())).unwrap_or(NonZeroU32::MIN);
        match self.limiter.check_key_n(key, cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            // Cannot happen: cells are capped at the burst.
            Err(_) => Err(Duration::from_secs(1)),
        }
    }
}

/// The limits of one server.
pub(crate) struct Limits {
    requests: Option<Limiter>,
    events: Option<Limiter>,
}

impl Limits {
    pub(crate) fn new(config: &LimitsConfig) -> Self {
        Self {
            requests: Limiter::new(config.requests_per_s, config.burst_s),
            events: Limiter::new(config.events_per_s, config.burst_s),
        }
    }

    /// Whether requests are limited at all.
    pub(crate) fn limits_requests(&self) -> bool {
        self.requests.is_some()
    }

    /// One request of `caller` from `ip`.
    pub(crate) fn request(&self, caller: &Principal, ip: Option<IpAddr>) -> Result<(), RateLimited> {
        match &self.requests {
            Some(limiter) => limiter.check(&key(caller, ip), 1).map_err(RateLimited),
            None => Ok(()),
        }
    }

    /// `count` events appended by `caller` from `ip`.
    pub(crate) fn events(
        &self,
        caller: &Principal,
        ip: Option<IpAddr>,
        count: usize,
    ) -> Result<(), RateLimited> {
        match &self.events {
            Some(limiter) => {
                limiter.check(&key(caller, ip), u32::try_from(count).unwrap_or(u32::MAX)).map_err(RateLimited)
            }
            None => Ok(()),
        }
    }
}

/// Who is counted: the credential, or the address when there is none.
fn key(caller: &Principal, ip: Option<IpAddr>) -> String {
    let actor = &caller.actor;
    match actor.kind {
        ActorKind::Key => format!("key:{}", actor.id.as_deref().unwrap_or_default()),
        ActorKind::AdminKey => "admin".to_owned(),
        ActorKind::Jwt => format!(
            "jwt:{}:{}",
            caller.tenant.as_deref().unwrap_or_default(),
            actor.sub.as_deref().unwrap_or_default()
        ),
        ActorKind::Open => match ip {
            Some(ip) => format!("ip:{ip}"),
            None => "ip:unknown".to_owned(),
        },
    }
}

/// A refusal: how long the caller should wait.
#[derive(Debug)]
pub(crate) struct RateLimited(pub(crate) Duration);

impl RateLimited {
    fn error(&self) -> ApiError {
        let ms = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX).max(1);
        ApiError::new(ProblemType::RateLimited, format!("too many requests: retry in {ms} ms"))
            .with("retry_after_ms", ms.into())
    }
}

impl IntoResponse for RateLimited {
    fn into_response(self) -> Response {
        self.error().into_response()
    }
}

impl From<RateLimited> for ApiError {
    fn from(limited: RateLimited) -> Self {
        limited.error()
    }
}
