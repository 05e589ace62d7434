//! This node among the nodes that share its store: its identity (the `Bifrost-Node` header
//! of every answer), its heartbeat in the state space, and `GET /v1/cluster/nodes`.
//!
//! Each node writes its record (`cluster-nodes` scope) every `heartbeat`; a node whose last
//! heartbeat is older than `lease_timeout` is shown dead, and its leases (`cluster-leases`,
//! [`bifrost_core::lease`]) expire on the same clock, so its work is taken over by others.
//!
//! The bus between the nodes (`--cluster-bus`) is chosen and connected by [`bus`]; the NATS
//! one is [`nats_bus`].

mod bus;
mod nats_bus;

pub use bus::{ClusterBusError, ClusterBusSpec};
pub use nats_bus::NatsBus;

use std::sync::Arc;
use std::time::Duration;

use bifrost_api::{ClusterNodeBody, ClusterNodesBody};
use bifrost_core::lease::{Leases, now_ms};
use bifrost_core::{DurableStore, StateChange, Timestamp};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The scope of the node records.
const NODES_SCOPE: &str = "cluster-nodes";
/// A dead node's record is dropped after this long.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Who this node is and how often it says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `--node-id`; default `<hostname>-<8 hex>`, new at every start.
    pub node_id: String,
    /// How often the node writes its heartbeat (1 s).
    pub heartbeat: Duration,
    /// A node silent this long is dead and its leases expire (10 s).
    pub lease_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: default_node_id(),
            heartbeat: Duration::from_secs(1),
            lease_timeout: Duration::from_secs(10),
        }
    }
}

/// `<hostname>-<8 hex>`: readable, and unique per start.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "bifrost".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

/// A node's record, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeRecord {
    id: String,
    listen: String,
    version: String,
    started_at: String,
    last_heartbeat_ms: u64,
}

/// This node's place in the cluster.
pub(crate) struct Cluster {
    store: Arc<dyn DurableStore>,
    config: ClusterConfig,
    pub(crate) leases: Leases,
    started_at: String,
}

impl Cluster {
    pub(crate) fn new(store: Arc<dyn DurableStore>, config: ClusterConfig) -> Self {
        let state: Arc<dyn bifrost_core::StateStore> = Arc::clone(&store) as _;
        let leases = Leases::new(state, config.node_id.clone(), config.lease_timeout);
        Self { store, config, leases, started_at: Timestamp::now().to_string() }
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.config.node_id
    }

    fn record(&self, listen: &str) -> NodeRecord {
        NodeRecord {
            id: self.config.node_id.clone(),
            listen: listen.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at.clone(),
            last_heartbeat_ms: now_ms(),
        }
    }

    async fn beat(&self, listen: &str) -> bifrost_core::Result<()> {
        let value = serde_json::to_vec(&self.record(listen))
            .map_err(|e| bifrost_core::Error::Internal(format!("node record: {e}")))?;
        let put = StateChange::Put {
            scope: NODES_SCOPE.into(),
            key: self.config.node_id.clone(),
            value: value.into(),
        };
        self.store.write_state_unflushed(vec![put]).await
    }

    /// Writes the heartbeat now and every `heartbeat` until `stop`; then removes the record
    /// (a node that stops cleanly is gone, not dead).
    pub(crate) async fn run(self: Arc<Self>, listen: String, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats: u64 = 0;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.beat(&listen).await {
                tracing::warn!(error = %e, "cannot write this node's heartbeat");
            }
            beats += 1;
            if beats % 60 == 1
                && let Err(e) = self.forget_the_long_dead().await
            {
                tracing::debug!(error = %e, "cannot prune old node records");
            }
        }
        let delete = StateChange::Delete { scope: NODES_SCOPE.into(), key: self.config.node_id.clone() };
        if let Err(e) = self.store.write_state(vec![delete]).await {
            tracing::debug!(error = %e, "cannot remove this node's record");
        }
    }

    async fn records(&self) -> bifrost_core::Result<Vec<NodeRecord>> {
        let entries = bifrost_core::state::scan_all(self.store.as_ref(), NODES_SCOPE).await?;
        Ok(entries.into_iter().filter_map(|e| serde_json::from_slice(&e.value).ok()).collect())
    }

    async fn forget_the_long_dead(&self) -> bifrost_core::Result<()> {
        let cutoff = now_ms().saturating_sub(u64::try_from(FORGET_AFTER.as_millis()).unwrap_or(u64::MAX));
        let stale: Vec<StateChange> = self
            .records()
            .await?
            .into_iter()
            .filter(|r| r.last_heartbeat_ms < cutoff)
            .map(|r| StateChange::Delete { scope: NODES_SCOPE.into(), key: r.id })
            .collect();
        if stale.is_empty() { Ok(()) } else { self.store.write_state(stale).await }
    }

    /// Every node that shares the store (this one first when it has no record yet).
    pub(crate) async fn nodes(&self, listen: Option<&str>) -> bifrost_core::Result<ClusterNodesBody> {
        let now = now_ms();
        let timeout = u64::try_from(self.config.lease_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut records = self.records().await?;
        if !records.iter().any(|r| r.id == self.config.node_id) {
            records.insert(0, self.record(listen.unwrap_or("")));
        }
        let leases = self.leases.live().await?;
        let nodes = records
            .into_iter()
            .map(|r| {
                let owns =
                    leases.iter().filter(|(_, l)| l.owner == r.id).map(|(name, _)| name.clone()).collect();
                let millis = i64::try_from(r.last_heartbeat_ms).unwrap_or(i64::MAX).saturating_mul(1000);
                ClusterNodeBody {
                    alive: now.saturating_sub(r.last_heartbeat_ms) <= timeout,
                    last_heartbeat: Timestamp::from_micros(millis).to_string(),
                    id: r.id,
                    listen: r.listen,
                    version: r.version,
                    started_at: r.started_at,
                    owns,
                }
            })
            .collect();
        Ok(ClusterNodesBody { self_id: self.config.node_id.clone(), nodes })
    }
}
