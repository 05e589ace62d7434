//! Which store backs the server or the bench, and opening it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bifrost_core::{DurableStore, InMemoryStore};
use bifrost_postgres::{PostgresOptions, PostgresStore};
use bifrost_redis::{RedisOptions, RedisStore};
use bifrost_sqlite::{Durability, SqliteOptions, SqliteStore};

/// A parsed `store` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreSpec {
    /// The embedded SQLite store in this directory.
    Sqlite(PathBuf),
    /// Nothing kept after exit.
    Memory,
    /// A PostgreSQL URL (it may carry a password: print it only through `Display`).
    Postgres(String),
    /// A Redis URL, `redis://` or `rediss://` (the same care with its password).
    Redis(String),
}

/// An open store, and whether what it acknowledges survives a crash of its server
/// (`bifrost_store_durable`).
pub(crate) struct OpenStore {
    pub(crate) store: Arc<dyn DurableStore>,
    pub(crate) durable: bool,
}

impl StoreSpec {
    /// `None` is the embedded store in `data_dir`.
    pub(crate) fn parse(value: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        let Some(value) = value.map(str::trim) else { return Ok(Self::Sqlite(data_dir.to_owned())) };
        if value.is_empty() || value == "sqlite" {
            return Ok(Self::Sqlite(data_dir.to_owned()));
        }
        if value == "memory" || value == "memory:" || value == "memory://" {
            return Ok(Self::Memory);
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            return Ok(Self::Postgres(value.to_owned()));
        }
        if value.starts_with("redis://") || value.starts_with("rediss://") {
            return Ok(Self::Redis(value.to_owned()));
        }
        if let Some(dir) = value.strip_prefix("sqlite://").or_else(|| value.strip_prefix("sqlite:")) {
            if dir.is_empty() {
                bail!("store {value:?} names no directory; use sqlite://DIR");
            }
            return Ok(Self::Sqlite(PathBuf::from(dir)));
        }
        // Not `{value:?}`: a mistyped PostgreSQL URL may still carry a password.
        bail!("unknown store {:?}: use sqlite://DIR, memory:, postgres://… or redis://…", redact_url(value));
    }

    /// Opens the store: the log and the state space beside it (consumer groups keep their
    /// cursors there). `durability` applies to the embedded store, `postgres` to PostgreSQL
    /// (whose durability is the database's own `synchronous_commit`), `redis` to Redis (whose
    /// durability is read from its `appendonly` and `appendfsync`).
    pub(crate) async fn open(
        &self,
        durability: Durability,
        postgres: PostgresOptions,
        redis: RedisOptions,
    ) -> anyhow::Result<OpenStore> {
        let store: Arc<dyn DurableStore> = match self {
            Self::Sqlite(dir) => {
                let dir = dir.clone();
                // SQLite opens with blocking file I/O (and may wait on the directory lock).
                let store = tokio::task::spawn_blocking(move || {
                    let options = SqliteOptions { durability, ..SqliteOptions::default() };
                    SqliteStore::open(&dir, options)
                        .with_context(|| format!("cannot open the store in {}", dir.display()))
                })
                .await
                .context("opening the store stopped unexpectedly")??;
                Arc::new(store)
            }
            Self::Memory => InMemoryStore::shared(),
            Self::Postgres(url) => {
                // The driver bounds each connection attempt, but not a server that accepts
                // the connection and then says nothing; start-up must not hang on one. The
                // allowance covers the schema connection and the first pooled one.
                let limit = postgres.connect_timeout.saturating_mul(2);
                let schema = postgres.schema.clone();
                let connected = tokio::time::timeout(limit, PostgresStore::connect(url, postgres))
                    .await
                    .map_err(|_| anyhow::anyhow!("PostgreSQL did not answer within {} ms", limit.as_millis()))
                    .and_then(|r| r.map_err(anyhow::Error::from));
                let store = connected.with_context(|| {
                    format!("cannot open the PostgreSQL store {self} (schema {schema:?})")
                })?;
                Arc::new(store)
            }
            Self::Redis(url) => {
                let limit = redis.connect_timeout.saturating_mul(2);
                let prefix = redis.prefix.clone();
                let connected = tokio::time::timeout(limit, RedisStore::connect(url, redis))
                    .await
                    .map_err(|_| anyhow::anyhow!("Redis did not answer within {} ms", limit.as_millis()))
                    .and_then(|r| r.map_err(anyhow::Error::from));
                let store = connected
                    .with_context(|| format!("cannot open the Redis store {self} (prefix {prefix:?})"))?;
                let durable = store.durable();
                return Ok(OpenStore { store: Arc::new(store), durable });
            }
        };
        let durable = match self {
            Self::Sqlite(_) => durability == Durability::Full,
            Self::Memory => false,
            // Commits wait for the WAL's flush unless the database says otherwise.
            Self::Postgres(_) | Self::Redis(_) => true,
        };
        Ok(OpenStore { store, durable })
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(dir) => write!(f, "sqlite://{}", dir.display()),
            Self::Memory => f.write_str("memory:"),
            Self::Postgres(url) | Self::Redis(url) => f.write_str(&redact_url(url)),
        }
    }
}

/// The URL with any password replaced by `***`: `user:secret@host` and a
/// `password=` query parameter both. Logs, errors and `bifrost config` show URLs; none of
/// them may show a password.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    // The query may name `user=a@b`; the userinfo ends at the last `@` before it.
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    match before_query.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => param.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Option<&str>) -> anyhow::Result<StoreSpec> {
        StoreSpec::parse(value, Path::new("data"))
    }

    #[test]
    fn store_urls_parse() {
        assert_eq!(parse(None).unwrap(), StoreSpec::Sqlite("data".into()));
        assert_eq!(parse(Some("sqlite:///var/lib/b")).unwrap(), StoreSpec::Sqlite("/var/lib/b".into()));
        assert_eq!(parse(Some("sqlite://rel/dir")).unwrap(), StoreSpec::Sqlite("rel/dir".into()));
        assert_eq!(parse(Some("memory:")).unwrap(), StoreSpec::Memory);
        assert_eq!(
            parse(Some("postgres://u@localhost/db")).unwrap(),
            StoreSpec::Postgres("postgres://u@localhost/db".into())
        );
        assert_eq!(
            parse(Some(" postgresql://localhost/db ")).unwrap(),
            StoreSpec::Postgres("postgresql://localhost/db".into())
        );
        assert!(parse(Some("mysql://x")).is_err());
        assert!(parse(Some("sqlite://")).is_err());
    }

    #[test]
    fn a_postgres_url_never_prints_its_password() {
        let cases = [
            ("postgres://user:secret@db:5432/app", "postgres://user:***@db:5432/app"),
            ("postgres://user@db/app", "postgres://user@db/app"),
            ("postgres://db/app", "postgres://db/app"),
            (
                "postgresql://u:p%40ss@h1,h2/app?sslmode=disable",
                "postgresql://u:***@h1,h2/app?sslmode=disable",
            ),
            ("postgres://u:a@b@db/app", "postgres://u:***@db/app"),
            ("postgres://db/app?user=u&password=secret", "postgres://db/app?user=u&password=***"),
        ];
        for (url, shown) in cases {
            let spec = parse(Some(url)).unwrap();
            assert_eq!(spec.to_string(), shown);
            assert!(!format!("{spec}").contains("secret"));
        }
        let err = parse(Some("postgress://u:secret@db/app")).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_postgres_is_an_error_naming_the_store_without_its_password() {
        let spec = parse(Some("postgres://u:secret@127.0.0.1:1/test")).unwrap();
        let options = PostgresOptions {
            connect_timeout: std::time::Duration::from_secs(2),
            ..PostgresOptions::default()
        };
        let err = spec.open(Durability::Full, options, RedisOptions::default()).await.err().unwrap();
        let text = format!("{err:#}");
        assert!(text.contains("postgres://u:***@127.0.0.1:1/test"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[tokio::test]
    async fn redis_urls_are_the_redis_store_and_an_unreachable_one_is_an_error_without_its_password() {
        assert_eq!(
            parse(Some("redis://127.0.0.1:6379/2")).unwrap(),
            StoreSpec::Redis("redis://127.0.0.1:6379/2".into())
        );
        assert_eq!(parse(Some("rediss://h:6380")).unwrap(), StoreSpec::Redis("rediss://h:6380".into()));
        let spec = parse(Some("redis://:secret@127.0.0.1:1")).unwrap();
        assert_eq!(spec.to_string(), "redis://:***@127.0.0.1:1");
        let options =
            RedisOptions { connect_timeout: std::time::Duration::from_secs(2), ..RedisOptions::default() };
        let err = spec.open(Durability::Full, PostgresOptions::default(), options).await.err().unwrap();
        let text = format!("{err:#}");
        assert!(text.contains("redis://:***@127.0.0.1:1"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}
