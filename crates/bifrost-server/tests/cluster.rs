//! The node's identity: `Bifrost-Node` on every answer, and `GET /v1/cluster/nodes` with
//! this node alive and the leases it holds.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bifrost_core::lease::Leases;
use bifrost_core::{DurableStore, InMemoryStore, StateStore};
use bifrost_server::{ClusterConfig, ServerConfig};
use common::ws::Node;
use reqwest::Method;

fn config(node_id: &str) -> ServerConfig {
    let cluster = ClusterConfig {
        node_id: node_id.into(),
        heartbeat: Duration::from_millis(100),
        lease_timeout: Duration::from_millis(1000),
    };
    ServerConfig { cluster, ..ServerConfig::default() }
}

#[tokio::test]
async fn every_answer_names_the_node_that_gave_it() {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let node = Node::start(store, config("node-a")).await;
    for (method, path, status) in [
        (Method::GET, "/healthz", 200),
        (Method::GET, "/v1/streams/order-1/events", 404),
        (Method::GET, "/v1/streams/bad%20name/events", 400),
        (Method::GET, "/no/such/route", 404),
        (Method::DELETE, "/v1/events", 405),
        (Method::GET, "/v1/cluster/nodes", 200),
    ] {
        let response = node.http.request(method.clone(), node.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        assert_eq!(response.headers()["bifrost-node"], "node-a", "{method} {path}");
    }
}

#[tokio::test]
async fn the_nodes_route_shows_this_node_alive_with_the_leases_it_holds() {
    let store: Arc<dyn DurableStore> = InMemoryStore::shared();
    let node = Node::start(Arc::clone(&store), config("node-a")).await;
    let state: Arc<dyn StateStore> = Arc::clone(&store) as _;
    let mine = Leases::new(Arc::clone(&state), "node-a", Duration::from_secs(10));
    assert!(mine.acquire("bridge:b1").await.unwrap());
    let theirs = Leases::new(state, "node-b", Duration::from_secs(10));
    assert!(theirs.acquire("cleaner").await.unwrap());

    tokio::time::sleep(Duration::from_millis(300)).await; // a few heartbeats
    let (status, body) = node.call(Method::GET, "/v1/cluster/nodes", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["self"], "node-a");
    let nodes = body["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{body}");
    let me = &nodes[0];
    assert_eq!((me["id"].as_str(), me["alive"].as_bool()), (Some("node-a"), Some(true)));
    assert_eq!(me["listen"], node.addr.to_string());
    assert_eq!(me["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(me["owns"], serde_json::json!(["bridge:b1"]), "only its own leases");
    for time in ["started_at", "last_heartbeat"] {
        assert!(me[time].as_str().unwrap().parse::<bifrost_core::Timestamp>().is_ok(), "{time}: {me}");
    }
}
