//! `GET /v1/cluster/nodes`: the nodes that share this node's store.

use axum::Json;
use axum::extract::State;
use bifrost_api::ClusterNodesBody;

use crate::AppState;
use crate::error::ApiResult;

/// Every node on the store: its address, version, last heartbeat, whether it is alive (heard
/// from within `cluster.lease_timeout_ms`) and the leases it holds. `self` names the node
/// that answered.
#[utoipa::path(
    get,
    path = "/v1/cluster/nodes",
    tag = "operations",
    responses((status = 200, description = "The nodes", body = ClusterNodesBody))
)]
pub(crate) async fn nodes(State(state): State<AppState>) -> ApiResult<Json<ClusterNodesBody>> {
    Ok(Json(state.cluster.nodes(state.listen.as_deref()).await?))
}
