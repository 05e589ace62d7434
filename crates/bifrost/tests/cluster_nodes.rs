//! Node identity on several nodes: three `bifrost serve` on one PostgreSQL database see each
//! other in `GET /v1/cluster/nodes`; one killed with SIGKILL is shown dead once it has been
//! silent for the lease timeout; one stopped cleanly leaves the list.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Server;
use common::pg::Schema;
use serde_json::Value;

fn nodes(server: &Server) -> (String, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let response = reqwest::get(format!("{}/v1/cluster/nodes", server.url())).await.unwrap();
        assert_eq!(response.status(), 200);
        let header = response.headers()["bifrost-node"].to_str().unwrap().to_owned();
        (header, response.json().await.unwrap())
    })
}

/// `(id, alive)` of every node in the answer, by id.
fn alive(body: &Value) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_owned(), n["alive"].as_bool().unwrap()))
        .collect();
    out.sort();
    out
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_nodes_see_each_other_and_a_killed_one_dies_while_a_stopped_one_leaves() {
    let Some(schema) = Schema::fresh() else { return };
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |i: usize| {
        let mut args: Vec<String> = schema.serve_args().to_vec();
        let id = format!("node-{i}");
        args.extend(["--node-id".into(), id, "--cluster-heartbeat-ms".into(), "200".into()]);
        args.extend(["--cluster-lease-timeout-ms".into(), "1500".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(dirs[i].path(), "127.0.0.1:0", &args)
    };
    let (a, b, c) = (start(0), start(1), start(2));
    let all_alive = vec![("node-0".into(), true), ("node-1".into(), true), ("node-2".into(), true)];
    for (server, id) in [(&a, "node-0"), (&b, "node-1"), (&c, "node-2")] {
        eventually("all three alive", || alive(&nodes(server).1) == all_alive);
        let (header, body) = nodes(server);
        assert_eq!((header.as_str(), body["self"].as_str()), (id, Some(id)));
        let me = body["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap().clone();
        assert_eq!(me["listen"], server.addr.as_str());
    }

    c.kill();
    let c_dead = vec![("node-0".into(), true), ("node-1".into(), true), ("node-2".into(), false)];
    eventually("node-2 shown dead", || alive(&nodes(&a).1) == c_dead);
    assert_eq!(alive(&nodes(&b).1), c_dead);

    let (status, _) = b.terminate();
    assert!(status.success());
    eventually("node-1 gone from the list", || {
        alive(&nodes(&a).1) == [("node-0".into(), true), ("node-2".into(), false)]
    });
}
