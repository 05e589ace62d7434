//! `--cluster-bus`: which bus carries the wake-ups, presence and ephemeral messages between
//! the nodes of one store (never stored events): PostgreSQL's own `LISTEN/NOTIFY` (the
//! default), NATS or Redis.

use std::fmt;
use std::sync::Arc;

use bifrost_core::cluster::ClusterBus;

use super::nats_bus::NatsBus;

/// Why the cluster bus could not be connected at start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClusterBusError(pub(crate) String);

/// A parsed `cluster.bus` setting. A URL may carry a password: print it only through
/// `Display`, which masks it.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum ClusterBusSpec {
    /// `postgres`: `LISTEN/NOTIFY` on the store's own database.
    #[default]
    Postgres,
    /// `nats://…`: core NATS publish/subscribe.
    Nats(String),
    /// `redis://…` or `rediss://…`: Redis publish/subscribe.
    Redis(String),
}

impl ClusterBusSpec {
    /// Reads a setting; `Err` says what is accepted (without repeating a password).
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value == "postgres" || value == "postgresql" {
            return Ok(Self::Postgres);
        }
        let has_host = |rest: &str| !rest.is_empty() && !rest.starts_with('/');
        if let Some(rest) = value.strip_prefix("nats://")
            && has_host(rest)
        {
            return Ok(Self::Nats(value.to_owned()));
        }
        if let Some(rest) = value.strip_prefix("redis://").or_else(|| value.strip_prefix("rediss://"))
            && has_host(rest)
        {
            return Ok(Self::Redis(value.to_owned()));
        }
        Err(format!(
            "cluster.bus must be \"postgres\", nats://HOST[:PORT] or redis://HOST[:PORT], not {:?}",
            redact(value)
        ))
    }

    /// `postgres`, the bus that needs nothing but the store.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres)
    }

    /// Connects to the bus, whose subjects, channels or keys are kept apart by `namespace`
    /// (the store's schema) so that two clusters on one broker do not hear each other.
    /// `None` for `postgres`: the store is its own bus. An unreachable broker is an error.
    pub async fn connect(&self, namespace: &str) -> Result<Option<Arc<dyn ClusterBus>>, ClusterBusError> {
        match self {
            Self::Postgres => Ok(None),
            Self::Nats(url) => {
                let bus: Arc<dyn ClusterBus> = NatsBus::connect(url, namespace).await?;
                Ok(Some(bus))
            }
            Self::Redis(url) => {
                let bus: Arc<dyn ClusterBus> = bifrost_redis::RedisBus::connect(url, namespace)
                    .await
                    .map_err(|e| ClusterBusError(format!("cannot connect to Redis: {e}")))?;
                Ok(Some(bus))
            }
        }
    }
}

impl fmt::Display for ClusterBusSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres => f.write_str("postgres"),
            Self::Nats(url) | Self::Redis(url) => f.write_str(&redact(url)),
        }
    }
}

/// As `Display`: a password must not reach a log through `{:?}` either.
impl fmt::Debug for ClusterBusSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterBusSpec({self})")
    }
}

/// The URL with its secret masked: `user:pass@` → `user:***@`, and NATS's lone token
/// (`nats://TOKEN@host`) → `***@`. A Redis URL's lone userinfo is a user name and stays.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(end) => rest.split_at(end),
        None => (rest, ""),
    };
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_owned() };
    let userinfo = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None if scheme == "nats" => "***".to_owned(),
        None => userinfo.to_owned(),
    };
    format!("{scheme}://{userinfo}@{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_bad_ones_are_refused_without_their_password() {
        assert_eq!(ClusterBusSpec::parse("postgres"), Ok(ClusterBusSpec::Postgres));
        assert_eq!(
            ClusterBusSpec::parse(" nats://127.0.0.1:4222 "),
            Ok(ClusterBusSpec::Nats("nats://127.0.0.1:4222".into()))
        );
        assert_eq!(
            ClusterBusSpec::parse("rediss://h:6380"),
            Ok(ClusterBusSpec::Redis("rediss://h:6380".into()))
        );
        for bad in ["", "nats", "nats://", "kafka://h", "memory", "redis:///x"] {
            assert!(ClusterBusSpec::parse(bad).is_err(), "{bad:?}");
        }
        let err = ClusterBusSpec::parse("amqp://u:secret@h").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn a_bus_url_never_shows_its_password() {
        let cases = [
            ("nats://u:secret@h:4222", "nats://u:***@h:4222"),
            ("nats://secret@h:4222", "nats://***@h:4222"),
            ("nats://h:4222", "nats://h:4222"),
            ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://user@h", "redis://user@h"),
        ];
        for (url, shown) in cases {
            let spec = ClusterBusSpec::parse(url).unwrap();
            assert_eq!(spec.to_string(), shown);
            assert!(!format!("{spec:?}").contains("secret"));
        }
    }
}
