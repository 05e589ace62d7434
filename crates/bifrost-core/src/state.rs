//! Durable state kept beside the log for those who read it: consumer checkpoints,
//! consumer-group cursors, dead letters, snapshots.
//!
//! The log stays the single source of truth; this is the bookkeeping of its readers. It is
//! a small key-value space split into scopes (`group/orders`, `dlq/orders`, …). A write is
//! atomic across all its changes and, like an append, durable once it returns (unless the
//! store runs in a relaxed durability mode).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::rules::validate_state_changes;
use crate::error::{Error, Result};
use crate::group::{GroupEngine, GroupKind};

/// Longest scope or key, in bytes.
pub const MAX_STATE_NAME_LEN: usize = 512;

/// One change of a [`StateStore::write_state`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateChange {
    /// Creates or replaces the value at `scope`/`key`.
    Put { scope: String, key: String, value: Bytes },
    /// Removes `scope`/`key`; removing a missing key is not an error.
    Delete { scope: String, key: String },
    /// Removes every key of `scope`.
    DeleteScope { scope: String },
    /// A precondition, not a change: `scope`/`key` must hold `value` (`None`: must be
    /// absent) as the write begins, or the whole write fails with
    /// [`Error::StateConflict`] and changes nothing. Every expectation of a write is
    /// checked before any of its changes applies. Two writers that both expect the value
    /// they read cannot both succeed: the fencing a checkpoint needs when two readers of
    /// one log might run at once.
    Expect { scope: String, key: String, value: Option<Bytes> },
}

impl StateChange {
    pub fn put(scope: impl Into<String>, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self::Put { scope: scope.into(), key: key.into(), value: value.into() }
    }

    pub fn delete(scope: impl Into<String>, key: impl Into<String>) -> Self {
        Self::Delete { scope: scope.into(), key: key.into() }
    }

    pub fn delete_scope(scope: impl Into<String>) -> Self {
        Self::DeleteScope { scope: scope.into() }
    }

    pub fn expect(scope: impl Into<String>, key: impl Into<String>, value: Option<Bytes>) -> Self {
        Self::Expect { scope: scope.into(), key: key.into(), value }
    }

    pub(crate) fn names(&self) -> (&str, Option<&str>) {
        match self {
            Self::Put { scope, key, .. } | Self::Delete { scope, key } | Self::Expect { scope, key, .. } => {
                (scope, Some(key))
            }
            Self::DeleteScope { scope } => (scope, None),
        }
    }
}

/// A key and its value, as [`StateStore::scan_state`] returns them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateEntry {
    pub key: String,
    pub value: Bytes,
}

/// The durable key-value space of a store. Every backend implements it and runs
/// [`state_conformance_suite!`](crate::state_conformance_suite).
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Applies every change, in order, atomically: all of them or none. Durable on return.
    async fn write_state(&self, changes: Vec<StateChange>) -> Result<()>;

    /// [`write_state`](Self::write_state), but it may return before the write is flushed to
    /// stable storage: once it returns it survives a crash of the process, not necessarily
    /// one of the machine. For bookkeeping whose loss in a power cut costs little (a lease
    /// recorded so that its attempt counts). By default, a flushed write.
    async fn write_state_unflushed(&self, changes: Vec<StateChange>) -> Result<()> {
        self.write_state(changes).await
    }

    /// The value at `scope`/`key`, `None` when there is none.
    async fn read_state(&self, scope: &str, key: &str) -> Result<Option<Bytes>>;

    /// Up to `limit` entries of `scope` in byte order of their keys, starting after `after`
    /// (exclusive) when given.
    async fn scan_state(&self, scope: &str, after: Option<&str>, limit: usize) -> Result<Vec<StateEntry>>;

    /// The consumer groups of `kind` that the backend keeps in its database, shared by every
    /// process that opens it (PostgreSQL). `None`, the default: the process runs its groups
    /// itself from this state space (`bifrost-bus`), which is right for a store that one
    /// process at a time opens (the embedded store's lock file, memory).
    fn shared_groups(&self, kind: GroupKind) -> Option<Arc<dyn GroupEngine>> {
        let _ = kind;
        None
    }

    /// The bus between every process that opens this store (PostgreSQL: `LISTEN/NOTIFY`).
    /// `None`, the default: one process opens the store, so this node is the whole cluster.
    fn cluster_bus(&self) -> Option<Arc<dyn crate::cluster::ClusterBus>> {
        None
    }
}

/// Every entry of `scope`, in key order, read page by page: for scopes that stay small
/// (settings, leases, node records).
pub async fn scan_all<S: StateStore + ?Sized>(store: &S, scope: &str) -> Result<Vec<StateEntry>> {
    const PAGE: usize = 500;
    let mut out: Vec<StateEntry> = Vec::new();
    loop {
        let after = out.last().map(|e| e.key.clone());
        let page = store.scan_state(scope, after.as_deref(), PAGE).await?;
        let full = page.len() == PAGE;
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// An event store that also keeps its readers' state: what the delivery engine runs on.
/// Every backend of Bifrost is one.
pub trait DurableStore: crate::store::EventStore + StateStore {}

impl<T: crate::store::EventStore + StateStore> DurableStore for T {}

/// State held in memory: for the in-memory store, and for readers that need no durability
/// (an unnamed bus subscription).
#[derive(Debug, Default)]
pub struct MemoryState {
    scopes: Mutex<BTreeMap<String, BTreeMap<String, Bytes>>>,
}

impl MemoryState {
    pub fn new() -> Self {
        Self::default()
    }

    fn scopes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, Bytes>>> {
        // Nothing under this lock can panic half-way through a write: changes are validated
        // before any is applied, and applying one cannot fail.
        self.scopes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl StateStore for MemoryState {
    async fn write_state(&self, changes: Vec<StateChange>) -> Result<()> {
        validate_state_changes(&changes)?;
        let mut scopes = self.scopes();
        for change in &changes {
            if let StateChange::Expect { scope, key, value } = change {
                let current = scopes.get(scope).and_then(|keys| keys.get(key));
                if current != value.as_ref() {
                    return Err(Error::StateConflict { scope: scope.clone(), key: key.clone() });
                }
            }
        }
        for change in changes {
            match change {
                StateChange::Put { scope, key, value } => {
                    scopes.entry(scope).or_default().insert(key, value);
                }
                StateChange::Delete { scope, key } => {
                    if let Some(keys) = scopes.get_mut(&scope) {
                        keys.remove(&key);
                        if keys.is_empty() {
                            scopes.remove(&scope);
                        }
                    }
                }
                StateChange::DeleteScope { scope } => {
                    scopes.remove(&scope);
                }
                StateChange::Expect { .. } => {}
            }
        }
        Ok(())
    }

    async fn read_state(&self, scope: &str, key: &str) -> Result<Option<Bytes>> {
        Ok(self.scopes().get(scope).and_then(|keys| keys.get(key)).cloned())
    }

    async fn scan_state(&self, scope: &str, after: Option<&str>, limit: usize) -> Result<Vec<StateEntry>> {
        let scopes = self.scopes();
        let Some(keys) = scopes.get(scope) else { return Ok(Vec::new()) };
        let range = match after {
            Some(after) => {
                keys.range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => keys.range::<str, _>(..),
        };
        Ok(range
            .take(limit)
            .map(|(key, value)| StateEntry { key: key.clone(), value: value.clone() })
            .collect())
    }
}
