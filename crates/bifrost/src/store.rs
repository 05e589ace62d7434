//! Which store backs the server or the bench, and opening it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bifrost_core::{EventStore, InMemoryStore};
use bifrost_sqlite::{Durability, SqliteOptions, SqliteStore};

/// A parsed `store` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreSpec {
    /// The embedded SQLite store in this directory.
    Sqlite(PathBuf),
    /// Nothing kept after exit.
    Memory,
    /// A PostgreSQL URL (not available in this build).
    Postgres,
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
            return Ok(Self::Postgres);
        }
        if let Some(dir) = value.strip_prefix("sqlite://").or_else(|| value.strip_prefix("sqlite:")) {
            if dir.is_empty() {
                bail!("store {value:?} names no directory; use sqlite://DIR");
            }
            return Ok(Self::Sqlite(PathBuf::from(dir)));
        }
        bail!("unknown store {value:?}: use sqlite://DIR, memory: or postgres://…");
    }

    /// Opens the store. `durability` applies to the embedded store.
    pub(crate) fn open(&self, durability: Durability) -> anyhow::Result<Arc<dyn EventStore>> {
        match self {
            Self::Sqlite(dir) => {
                let options = SqliteOptions { durability, ..SqliteOptions::default() };
                let store = SqliteStore::open(dir, options)
                    .with_context(|| format!("cannot open the store in {}", dir.display()))?;
                Ok(Arc::new(store))
            }
            Self::Memory => Ok(InMemoryStore::shared()),
            Self::Postgres => bail!(
                "the PostgreSQL backend is not available in this build; use the embedded store \
                 (sqlite://DIR, the default) or memory:"
            ),
        }
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(dir) => write!(f, "sqlite://{}", dir.display()),
            Self::Memory => f.write_str("memory:"),
            Self::Postgres => f.write_str("postgres://…"),
        }
    }
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
        assert_eq!(parse(Some("postgres://u@localhost/db")).unwrap(), StoreSpec::Postgres);
        assert!(parse(Some("mysql://x")).is_err());
        assert!(parse(Some("sqlite://")).is_err());
    }

    #[test]
    fn postgres_says_it_is_not_available() {
        let err = parse(Some("postgres://localhost/test")).unwrap().open(Durability::Full).err().unwrap();
        assert!(err.to_string().contains("PostgreSQL backend is not available"), "{err}");
    }
}
