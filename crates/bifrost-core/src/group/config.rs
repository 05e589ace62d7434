//! How a consumer group delivers: its filter, start point, ack timeout, attempts, backoff
//! and in-flight limit. Persisted with the group as JSON.

use std::fmt;
use std::time::Duration;

use crate::name::{TENANT_SEPARATOR, validate_tenant};
use crate::{Category, Error, LogFilter, Position, Result, TenantScope, TypePattern};
use serde::{Deserialize, Serialize};

/// Longest group name, in characters.
pub const MAX_GROUP_NAME_LEN: usize = 128;

/// A consumer group's name: 1–128 characters of `A–Z a–z 0–9 _ . : @ -`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(String);

impl GroupName {
    pub fn new(name: &str) -> Result<Self> {
        let invalid = |why: String| Error::InvalidArgument(format!("invalid group name {name:?}: {why}"));
        if name.is_empty() {
            return Err(invalid("a group name must not be empty".into()));
        }
        if name.chars().count() > MAX_GROUP_NAME_LEN {
            return Err(invalid(format!("a group name is at most {MAX_GROUP_NAME_LEN} characters")));
        }
        if let Some(c) =
            name.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-')))
        {
            return Err(invalid(format!("{c:?} is not allowed; use A-Z a-z 0-9 _ . : @ -")));
        }
        Ok(Self(name.to_owned()))
    }

    /// `local` as tenant `tenant` names it in the store (`acme/orders`; `None`: the default
    /// tenant, no prefix). `tenant` must be a valid tenant id.
    pub fn in_tenant(tenant: Option<&str>, local: &GroupName) -> GroupName {
        match tenant {
            None => local.clone(),
            Some(tenant) => Self(format!("{tenant}{TENANT_SEPARATOR}{}", local.0)),
        }
    }

    /// A name as the store keeps it: a client's, optionally behind a tenant prefix.
    pub fn stored(name: &str) -> Result<Self> {
        if let Some((tenant, local)) = name.split_once(TENANT_SEPARATOR) {
            validate_tenant(tenant)
                .map_err(|why| Error::InvalidArgument(format!("invalid group name {name:?}: {why}")))?;
            Self::new(local)?;
            return Ok(Self(name.to_owned()));
        }
        Self::new(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant whose group this is (`None`: the default tenant).
    pub fn tenant(&self) -> Option<&str> {
        self.0.split_once(TENANT_SEPARATOR).map(|(tenant, _)| tenant)
    }

    /// The name as its tenant sees it.
    pub fn local(&self) -> &str {
        self.0.split_once(TENANT_SEPARATOR).map_or(&self.0, |(_, local)| local)
    }
}

impl TryFrom<String> for GroupName {
    type Error = Error;
    fn try_from(name: String) -> Result<Self> {
        Self::stored(&name)
    }
}

impl From<GroupName> for String {
    fn from(name: GroupName) -> String {
        name.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Which events a group receives: any of `types` (AMQP topic patterns; none means every
/// type) in streams of `category` (any when `None`).
///
/// `category` is as the group's tenant names it; `tenant` keeps the group inside its
/// tenant's streams (every tenant's for groups made while auth is off, and embedded ones).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupFilter {
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "is_all")]
    pub tenant: TenantScope,
}

fn is_all(scope: &TenantScope) -> bool {
    *scope == TenantScope::All
}

impl GroupFilter {
    pub fn types<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> Self {
        Self { types: types.into_iter().map(Into::into).collect(), ..Self::default() }
    }

    /// Only `tenant`'s streams.
    pub fn in_tenant(mut self, tenant: TenantScope) -> Self {
        self.tenant = tenant;
        self
    }

    pub fn with_category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }

    /// The store's filter for the log, or why a pattern or category is invalid.
    pub fn to_log_filter(&self) -> Result<LogFilter> {
        let mut filter = LogFilter::default();
        for t in &self.types {
            filter.types.push(TypePattern::new(t)?);
        }
        if let Some(c) = &self.category {
            let category = Category::new(c)?;
            filter.category = Some(match &self.tenant {
                TenantScope::Only(tenant) => Category::in_tenant(tenant.as_deref(), &category),
                TenantScope::All => category,
            });
        }
        filter.tenant = self.tenant.clone();
        Ok(filter)
    }
}

/// Where a new group starts reading the log. It counts only when the group is created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The first event of the log.
    #[default]
    Beginning,
    /// Only events appended after the group was created.
    End,
    /// Events after this position (exclusive).
    Position(Position),
}

/// How long to wait before redelivering a failed event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub kind: BackoffKind,
    /// The delay before the second attempt.
    #[serde(with = "millis")]
    pub initial: Duration,
    /// No delay is longer than this.
    #[serde(with = "millis")]
    pub max: Duration,
    /// Spread delays randomly over the upper half of each step, so consumers that failed
    /// together do not retry together.
    pub jitter: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackoffKind {
    /// The same delay every time.
    Fixed,
    /// `initial`, then doubling, up to `max`.
    Exponential,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            kind: BackoffKind::Exponential,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: true,
        }
    }
}

impl Backoff {
    pub fn fixed(delay: Duration) -> Self {
        Self { kind: BackoffKind::Fixed, initial: delay, max: delay, jitter: false }
    }

    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Self { kind: BackoffKind::Exponential, initial, max, jitter: true }
    }

    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay after the `failed`-th failed attempt (1 for the first failure).
    pub fn delay(&self, failed: u32) -> Duration {
        let base = match self.kind {
            BackoffKind::Fixed => self.initial,
            BackoffKind::Exponential => {
                let doublings = failed.saturating_sub(1).min(31);
                self.initial.saturating_mul(1u32 << doublings).min(self.max)
            }
        };
        if self.jitter && !base.is_zero() {
            // Equal jitter: half the step is kept, the other half is random.
            let half = base / 2;
            half + half.mul_f64(super::random::unit())
        } else {
            base
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.max < self.initial {
            return Err(Error::InvalidArgument(format!(
                "backoff max ({} ms) must not be less than initial ({} ms)",
                self.max.as_millis(),
                self.initial.as_millis()
            )));
        }
        if self.max > MAX_DELAY {
            return Err(Error::InvalidArgument(format!(
                "backoff max is at most {} ms",
                MAX_DELAY.as_millis()
            )));
        }
        Ok(())
    }
}

/// The longest backoff or retry delay: a day.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// A consumer group's settings. Every field has a default; see [`GroupConfig::default`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    #[serde(default)]
    pub filter: GroupFilter,
    #[serde(default)]
    pub start: StartFrom,
    /// A lease not acked within this counts as a failed attempt.
    #[serde(with = "millis")]
    pub ack_timeout: Duration,
    /// Deliveries before an event is parked in the dead-letter queue.
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    /// Events leased out at once, over all consumers.
    pub max_in_flight: usize,
    /// `true` (the default): per-stream order — while an event of a stream is leased or
    /// waiting for a retry, no later event of that stream is handed out. `false`: every
    /// event on its own, so a failing event holds back nothing (webhook endpoints that are
    /// not `ordered`).
    #[serde(default = "ordered_by_default")]
    pub ordered: bool,
}

fn ordered_by_default() -> bool {
    true
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            filter: GroupFilter::default(),
            start: StartFrom::Beginning,
            ack_timeout: Duration::from_secs(30),
            max_attempts: 5,
            backoff: Backoff::default(),
            max_in_flight: 1000,
            ordered: true,
        }
    }
}

/// Largest `max_in_flight`.
pub const MAX_IN_FLIGHT: usize = 100_000;

impl GroupConfig {
    /// The checkpoint a new group starts from, given the log's head now.
    pub fn start_position(&self, head: Position) -> Result<Position> {
        match self.start {
            StartFrom::Beginning => Ok(0),
            StartFrom::End => Ok(head),
            StartFrom::Position(p) if p <= head => Ok(p),
            StartFrom::Position(p) => Err(Error::InvalidArgument(format!(
                "start position {p} is beyond the head of the log ({head})"
            ))),
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.filter.to_log_filter()?;
        self.backoff.validate()?;
        if self.ack_timeout.is_zero() || self.ack_timeout > MAX_DELAY {
            return Err(Error::InvalidArgument(format!(
                "ack_timeout must be between 1 ms and {} ms",
                MAX_DELAY.as_millis()
            )));
        }
        if self.max_attempts == 0 {
            return Err(Error::InvalidArgument("max_attempts must be at least 1".into()));
        }
        if self.max_in_flight == 0 || self.max_in_flight > MAX_IN_FLIGHT {
            return Err(Error::InvalidArgument(format!(
                "max_in_flight must be between 1 and {MAX_IN_FLIGHT}"
            )));
        }
        Ok(())
    }
}

/// Durations as whole milliseconds, the unit of the HTTP API.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_up_to_max() {
        let b =
            Backoff::exponential(Duration::from_millis(100), Duration::from_millis(1000)).with_jitter(false);
        let delays: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX).as_millis(), 1000);
    }

    #[test]
    fn jitter_stays_within_the_upper_half_of_the_step() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = b.delay(3).as_millis();
            assert!((200..=400).contains(&d), "{d}");
            seen.insert(d);
        }
        assert!(seen.len() > 10, "jitter must spread delays: {seen:?}");
    }

    #[test]
    fn fixed_backoff_is_constant() {
        let b = Backoff::fixed(Duration::from_millis(250));
        assert!((1..10).all(|n| b.delay(n) == Duration::from_millis(250)));
    }

    #[test]
    fn config_rejects_nonsense() {
        let bad = [
            GroupConfig { max_attempts: 0, ..Default::default() },
            GroupConfig { max_in_flight: 0, ..Default::default() },
            GroupConfig { ack_timeout: Duration::ZERO, ..Default::default() },
            GroupConfig {
                backoff: Backoff::exponential(Duration::from_secs(2), Duration::from_secs(1)),
                ..Default::default()
            },
            GroupConfig { filter: GroupFilter::types(["order..x"]), ..Default::default() },
            GroupConfig { filter: GroupFilter::default().with_category("has space"), ..Default::default() },
        ];
        for config in bad {
            assert!(matches!(config.validate(), Err(Error::InvalidArgument(_))), "{config:?}");
        }
        GroupConfig::default().validate().unwrap();
    }

    #[test]
    fn group_names_are_validated() {
        assert!(GroupName::new("orders.billing-v2").is_ok());
        for bad in ["", "a b", "x/y", &"g".repeat(MAX_GROUP_NAME_LEN + 1)] {
            assert!(GroupName::new(bad).is_err(), "{bad:?}");
        }
    }
}
