//! A bridge on several nodes: three `bifrost serve` on one PostgreSQL database, a Redis
//! Streams bridge run by one of them; its owner killed with SIGKILL, another node resumes
//! from the checkpoint within the lease timeout, nothing is lost, and what is sent twice
//! carries the same dedupe id.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bifrost_core::testkit::service_unavailable;
use common::pg::{Schema, block_on};
use common::{Server, append_orders, call, eventually};
use serde_json::json;

fn redis_url() -> String {
    std::env::var("BIFROST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `(event id, position)` of every entry of the stream, in stream order.
fn entries(key: &str) -> Vec<(String, u64)> {
    block_on(async {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let reply: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(&mut connection).await.unwrap();
        reply
            .ids
            .iter()
            .map(|entry| {
                let id: String = entry.get("id").unwrap();
                let position: String = entry.get("position").unwrap();
                (id, position.parse().unwrap())
            })
            .collect()
    })
}

fn delete_key(key: &str) {
    block_on(async {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("DEL").arg(key).query_async(&mut connection).await.unwrap();
    });
}

fn redis_up() -> bool {
    block_on(async {
        let client = redis::Client::open(redis_url()).map_err(|e| e.to_string())?;
        let mut connection = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
        redis::cmd("PING").query_async::<String>(&mut connection).await.map_err(|e| e.to_string())
    })
    .map(|_| true)
    .or_else(|e| service_unavailable::<bool>("Redis", e).ok_or(()))
    .unwrap_or(false)
}

fn node(nodes: &[Option<Server>], i: usize) -> &Server {
    nodes[i].as_ref().unwrap()
}

#[test]
fn a_killed_owners_bridge_resumes_on_another_node_without_loss() {
    let Some(schema) = Schema::fresh() else { return };
    if !redis_up() {
        return;
    }
    let key = format!("test-{}:order", uuid::Uuid::new_v4().simple());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Option<Server>> = (0..3)
        .map(|i| {
            let mut args: Vec<String> = schema.serve_args().to_vec();
            args.extend([
                "--node-id".into(),
                format!("node-{i}"),
                "--cluster-heartbeat-ms".into(),
                "200".into(),
            ]);
            args.extend(["--cluster-lease-timeout-ms".into(), "2000".into()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Some(Server::start(dirs[i].path(), "127.0.0.1:0", &args))
        })
        .collect();

    let target = key.replace(":order", ":{category}");
    let bridge = json!({"direction": "out", "kind": "redis-stream", "url": redis_url(), "target": target,
                        "start": "beginning", "batch_size": 10});
    let (status, body) = call(node(&nodes, 0), reqwest::Method::PUT, "/v1/bridges/orders", Some(bridge));
    assert_eq!(status, 201, "{body}");

    let mut sent = Vec::new();
    for round in 0..5 {
        sent.extend(append_orders(node(&nodes, round % 3), &format!("order-{round}"), 10));
    }
    eventually("the first 50 in Redis", Duration::from_secs(20), || entries(&key).len() >= 50);
    let (_, body) = call(node(&nodes, 1), reqwest::Method::GET, "/v1/bridges/orders", None);
    let owner = body["node"].as_str().unwrap().to_owned();
    let owner_index: usize = owner.trim_start_matches("node-").parse().unwrap();

    // The owner dies; the others go on appending and another node takes the bridge over.
    nodes[owner_index].take().unwrap().kill();
    let alive: Vec<usize> = (0..3).filter(|&i| i != owner_index).collect();
    for round in 0..5 {
        sent.extend(append_orders(node(&nodes, alive[round % 2]), &format!("order-{}", round + 5), 10));
    }
    eventually("all 100 in Redis", Duration::from_secs(30), || {
        let ids: std::collections::HashSet<String> = entries(&key).into_iter().map(|(id, _)| id).collect();
        sent.iter().all(|id| ids.contains(id))
    });

    let got = entries(&key);
    let mut position_of: HashMap<String, u64> = HashMap::new();
    let mut first_seen = Vec::new();
    for (id, position) in &got {
        match position_of.get(id) {
            Some(p) => assert_eq!(p, position, "a repeat of {id} carries the same event"),
            None => {
                position_of.insert(id.clone(), *position);
                first_seen.push(*position);
            }
        }
    }
    assert!(first_seen.windows(2).all(|w| w[0] < w[1]), "log order: {first_seen:?}");
    assert_eq!(position_of.len(), 100, "every event, none lost");

    let (_, body) = call(node(&nodes, alive[0]), reqwest::Method::GET, "/v1/bridges/orders", None);
    assert_ne!(body["node"].as_str(), Some(owner.as_str()), "{body}");
    assert_eq!(body["lag"], 0, "{body}");
    delete_key(&key);
    drop(nodes);
}
