//! Several nodes on one store: `GET /v1/cluster/nodes`.

use serde::{Deserialize, Serialize};

/// One node that shares the store.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterNodeBody {
    /// `--node-id`, default `<hostname>-<8 hex>` per start.
    pub id: String,
    /// The address it serves on.
    pub listen: String,
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub last_heartbeat: String,
    /// Heard from within `cluster.lease_timeout_ms`.
    pub alive: bool,
    /// The leases it holds, e.g. `bridge:b1`.
    pub owns: Vec<String>,
}

/// `GET /v1/cluster/nodes`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterNodesBody {
    /// The id of the node that answered.
    #[serde(rename = "self")]
    pub self_id: String,
    pub nodes: Vec<ClusterNodeBody>,
}
