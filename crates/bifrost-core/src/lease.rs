//! Leases in the state space: one node at a time runs a piece of work (a bridge, a cleaner),
//! and another takes it over once the holder stops renewing.
//!
//! A lease is one key of the `cluster-leases` scope holding its owner and expiry. Taking or
//! renewing it is a conditional write that expects the value just read
//! ([`StateChange::Expect`]), so two nodes racing for a free or expired lease cannot both
//! win. Expiry is wall-clock time in milliseconds: nodes that share a store are assumed to
//! keep their clocks within a fraction of the lease time of each other (NTP).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::state::{StateChange, StateStore};
use crate::{Error, Result};

/// The scope of the leases.
pub const LEASE_SCOPE: &str = "cluster-leases";

/// What a lease key holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub owner: String,
    /// Unix milliseconds.
    pub expires_at_ms: u64,
}

impl LeaseRecord {
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms
    }
}

/// The current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One node's handle on the leases of a store.
#[derive(Clone)]
pub struct Leases {
    store: Arc<dyn StateStore>,
    node: String,
    ttl: Duration,
}

impl Leases {
    /// Leases held by `node`, each valid for `ttl` after it was last taken or renewed.
    pub fn new(store: Arc<dyn StateStore>, node: impl Into<String>, ttl: Duration) -> Self {
        Self { store, node: node.into(), ttl }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Takes `name` if it is free, expired or already this node's (then it is renewed).
    /// `Ok(false)`: another node holds it.
    pub async fn acquire(&self, name: &str) -> Result<bool> {
        self.acquire_at(name, now_ms()).await
    }

    /// [`acquire`](Self::acquire) at a given time (for tests with a clock of their own).
    pub async fn acquire_at(&self, name: &str, now_ms: u64) -> Result<bool> {
        let current = self.store.read_state(LEASE_SCOPE, name).await?;
        if let Some(held) = current.as_deref().and_then(|v| serde_json::from_slice::<LeaseRecord>(v).ok())
            && held.owner != self.node
            && held.is_live(now_ms)
        {
            return Ok(false);
        }
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let record = LeaseRecord { owner: self.node.clone(), expires_at_ms: now_ms.saturating_add(ttl_ms) };
        let value = serde_json::to_vec(&record).map_err(|e| Error::Internal(format!("lease record: {e}")))?;
        let write = vec![
            StateChange::Expect { scope: LEASE_SCOPE.into(), key: name.into(), value: current },
            StateChange::Put { scope: LEASE_SCOPE.into(), key: name.into(), value: Bytes::from(value) },
        ];
        match self.store.write_state_unflushed(write).await {
            Ok(()) => Ok(true),
            // Another node wrote it between the read and the write: it won.
            Err(Error::StateConflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives `name` up if this node holds it, so another can take it at once.
    pub async fn release(&self, name: &str) -> Result<()> {
        let Some(current) = self.store.read_state(LEASE_SCOPE, name).await? else { return Ok(()) };
        match serde_json::from_slice::<LeaseRecord>(&current) {
            Ok(held) if held.owner == self.node => {}
            _ => return Ok(()),
        }
        let write = vec![
            StateChange::Expect { scope: LEASE_SCOPE.into(), key: name.into(), value: Some(current) },
            StateChange::Delete { scope: LEASE_SCOPE.into(), key: name.into() },
        ];
        match self.store.write_state(write).await {
            Ok(()) | Err(Error::StateConflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every live lease, by name, with its holder.
    pub async fn live(&self) -> Result<Vec<(String, LeaseRecord)>> {
        let now = now_ms();
        Ok(crate::state::scan_all(self.store.as_ref(), LEASE_SCOPE)
            .await?
            .into_iter()
            .filter_map(|entry| {
                let record = serde_json::from_slice::<LeaseRecord>(&entry.value).ok()?;
                record.is_live(now).then_some((entry.key, record))
            })
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::MemoryState;

    #[tokio::test]
    async fn one_node_holds_a_lease_until_it_expires_or_is_released() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryState::default());
        let ttl = Duration::from_secs(10);
        let a = Leases::new(Arc::clone(&store), "a", ttl);
        let b = Leases::new(Arc::clone(&store), "b", ttl);
        let t = 1_000_000;
        assert!(a.acquire_at("bridge:x", t).await.unwrap());
        assert!(!b.acquire_at("bridge:x", t + 1).await.unwrap(), "held by a");
        assert!(a.acquire_at("bridge:x", t + 5_000).await.unwrap(), "a renews");
        assert!(!b.acquire_at("bridge:x", t + 14_999).await.unwrap(), "renewed until t + 15 s");
        assert!(b.acquire_at("bridge:x", t + 15_000).await.unwrap(), "expired: b takes it over");
        assert!(!a.acquire_at("bridge:x", t + 15_001).await.unwrap());
        // b gives it up; a takes it at once.
        b.release("bridge:x").await.unwrap();
        assert!(a.acquire_at("bridge:x", t + 15_002).await.unwrap());
        // Releasing another node's lease does nothing.
        b.release("bridge:x").await.unwrap();
        assert!(!b.acquire_at("bridge:x", t + 15_003).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nodes_racing_for_a_free_lease_do_not_both_win() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryState::default());
        let ttl = Duration::from_secs(10);
        for round in 0..50 {
            let name = format!("cleaner-{round}");
            let start = Arc::new(tokio::sync::Barrier::new(4));
            let tries: Vec<_> = (0..4)
                .map(|i| {
                    let leases = Leases::new(Arc::clone(&store), format!("n{i}"), ttl);
                    let (name, start) = (name.clone(), Arc::clone(&start));
                    tokio::spawn(async move {
                        start.wait().await;
                        leases.acquire(&name).await.unwrap()
                    })
                })
                .collect();
            let won =
                futures::future::join_all(tries).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
            assert_eq!(won, 1, "round {round}");
        }
    }
}
