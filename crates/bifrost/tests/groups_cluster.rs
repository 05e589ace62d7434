//! Consumer groups on several `bifrost serve` processes sharing one PostgreSQL schema, and
//! across a SIGKILL: one group for every node, a lease settled through any node, a node
//! killed while its consumers hold leases losing nothing, a node that joins taking a share.
//! Without a reachable database the tests skip with a clear line, or fail when
//! `BIFROST_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Server;
use common::consumers::{Consumer, Shared, append_accounts, check, consume};
use common::pg::Schema;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(90);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

fn node(dir: &tempfile::TempDir, schema: &Schema, listen: &str) -> Server {
    let args = schema.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(dir.path(), listen, &args)
}

async fn status(client: &reqwest::Client, url: &str, group: &str) -> (u16, Value) {
    let response = client.get(format!("{url}/v1/groups/{group}")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// 3 nodes, 2 consumers on each (fetching through their node, acking through the next
/// one), 3,000 events over 300 streams. Node 2 is killed with SIGKILL a third of the way
/// through while its consumers hold leases; they vanish with it. Every event is acked, an
/// answered ack is final, each stream goes out in order, the dead node's leases come back
/// through the others with their attempt counted, and a node started again takes a share
/// of new work.
#[test]
fn three_nodes_share_a_group_and_lose_nothing_when_one_is_killed() {
    const STREAMS: u64 = 300;
    const PER_STREAM: u64 = 10;
    let Some(schema) = Schema::fresh() else { return };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Option<Server>> = (0..3).map(|_| Some(node(&dir, &schema, "127.0.0.1:0"))).collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.as_ref().unwrap().url()).collect();
    let runtime = runtime();
    let client = client();
    runtime.block_on(async {
        append_accounts(&client, &urls[0], STREAMS, 0..PER_STREAM).await;
        let config = json!({"filter": {"types": ["acct.#"]}, "ack_timeout_ms": 2000, "max_attempts": 1000,
                            "backoff": {"kind": "fixed", "initial_ms": 20, "max_ms": 20, "jitter": false}});
        let response =
            client.put(format!("{}/v1/groups/cluster", urls[1])).json(&config).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 201, "{}", response.text().await.unwrap());
    });

    let shared = Shared::new("cluster");
    let dies: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let holding: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    let mut consumers = Vec::new();
    for n in 0..3 {
        for k in 0..2 {
            // Acks go through the other nodes in turn; a dead one is skipped.
            let me = Consumer {
                name: format!("n{n}c{k}"),
                fetch_from: urls[n].clone(),
                ack_to: vec![urls[(n + 1) % 3].clone(), urls[(n + 2) % 3].clone()],
                dies: dies[n].clone(),
                work: Duration::from_millis(40),
                holding: holding[n].clone(),
            };
            consumers.push(runtime.spawn(consume(shared.clone(), client.clone(), me)));
        }
    }
    // A third of the way, at a moment node 2's consumers hold leases.
    while shared.acked_count() < (STREAMS * PER_STREAM) as usize / 3 || holding[2].load(Ordering::SeqCst) == 0
    {
        assert!(started.elapsed() < DEADLINE, "only {} acked", shared.acked_count());
        std::thread::sleep(Duration::from_millis(5));
    }
    dies[2].store(true, Ordering::SeqCst);
    nodes[2].take().unwrap().kill();
    let killed_at = shared.clock.load(Ordering::SeqCst);

    // The survivors drain the group.
    let last = runtime.block_on(async {
        loop {
            assert!(started.elapsed() < DEADLINE, "the group did not drain; acked {}", shared.acked_count());
            let (code, status) = status(&client, &urls[0], "cluster").await;
            assert_eq!(code, 200);
            if status["lag"] == 0 && status["in_flight"] == 0 {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(last["parked"], 0, "{last}");
    // Every node answers the same figures.
    let (_, on_1) = runtime.block_on(status(&client, &urls[1], "cluster"));
    for key in ["checkpoint", "lag", "in_flight", "parked"] {
        assert_eq!(on_1[key], last[key], "{key} differs between nodes");
    }

    // A node that joins (node 2 again, on a new port) takes a share of new work.
    let rejoined = node(&dir, &schema, "127.0.0.1:0");
    let newcomer = Consumer {
        name: "newcomer".into(),
        fetch_from: rejoined.url(),
        ack_to: vec![rejoined.url()],
        dies: Arc::new(AtomicBool::new(false)),
        work: Duration::from_millis(40),
        holding: Arc::default(),
    };
    consumers.push(runtime.spawn(consume(shared.clone(), client.clone(), newcomer)));
    runtime.block_on(async {
        append_accounts(&client, &urls[0], STREAMS, PER_STREAM..PER_STREAM + 2).await;
        // Drained again (an ack whose answer was lost may have settled an event too).
        loop {
            assert!(started.elapsed() < DEADLINE, "only {} acked after the rejoin", shared.acked_count());
            let (_, status) = status(&client, &rejoined.url(), "cluster").await;
            if status["lag"] == 0 && status["in_flight"] == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    shared.stop.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        for c in consumers {
            tokio::time::timeout(Duration::from_secs(15), c).await.expect("a consumer hangs").unwrap();
        }
    });

    let journal = std::mem::take(&mut *shared.journal.lock().unwrap());
    check(&journal, STREAMS, PER_STREAM + 2);
    // The dead node's consumers held leases when it died: those events came back through
    // the survivors, with their attempt counted.
    let came_back = journal
        .deliveries
        .iter()
        .filter(|held| held.4.starts_with("n2") && held.3 < killed_at)
        .filter(|held| {
            journal
                .deliveries
                .iter()
                .any(|d| d.1 == held.1 && d.3 > killed_at && d.2 == held.2 + 1 && !d.4.starts_with("n2"))
        })
        .count();
    assert!(came_back > 0, "no lease of the killed node came back with a counted attempt");
    let newcomer_got = journal.deliveries.iter().filter(|d| d.4 == "newcomer").count();
    assert!(newcomer_got > 0, "the node that joined took no share");
    for node in nodes.into_iter().flatten() {
        let (status, _) = node.terminate();
        assert_eq!(status.code(), Some(0));
    }
    let (status, _) = rejoined.terminate();
    assert_eq!(status.code(), Some(0));
}

/// A group created, changed and deleted through one node: the others answer accordingly
/// at once, with no restart; a long poll on a node ends 404 when another deletes the group.
#[test]
fn a_group_changed_through_one_node_is_seen_by_the_others() {
    let Some(schema) = Schema::fresh() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (node(&dir, &schema, "127.0.0.1:0"), node(&dir, &schema, "127.0.0.1:0"));
    let runtime = runtime();
    let client = client();
    runtime.block_on(async {
        let (code, _) = status(&client, &b.url(), "shared").await;
        assert_eq!(code, 404);
        let put =
            client.put(format!("{}/v1/groups/shared", a.url())).json(&json!({"max_attempts": 3})).send();
        assert_eq!(put.await.unwrap().status().as_u16(), 201);
        let (code, body) = status(&client, &b.url(), "shared").await;
        assert_eq!((code, body["config"]["max_attempts"].clone()), (200, json!(3)));
        let put =
            client.put(format!("{}/v1/groups/shared", b.url())).json(&json!({"max_attempts": 9})).send();
        assert_eq!(put.await.unwrap().status().as_u16(), 200);
        let (_, body) = status(&client, &a.url(), "shared").await;
        assert_eq!(body["config"]["max_attempts"], 9);
        let listed: Value =
            client.get(format!("{}/v1/groups", b.url())).send().await.unwrap().json().await.unwrap();
        assert_eq!(listed["groups"].as_array().unwrap().len(), 1);

        let poll = {
            let (client, url) = (client.clone(), b.url());
            tokio::spawn(async move {
                let response =
                    client.post(format!("{url}/v1/groups/shared/fetch?wait=20000")).send().await.unwrap();
                (response.status().as_u16(), response.json::<Value>().await.unwrap())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let deleted = client.delete(format!("{}/v1/groups/shared", a.url())).send().await.unwrap();
        assert_eq!(deleted.status().as_u16(), 204);
        let (code, body) = tokio::time::timeout(Duration::from_secs(5), poll).await.unwrap().unwrap();
        assert_eq!((code, body["type"].as_str()), (404, Some("bifrost:group-not-found")));
        let (code, _) = status(&client, &b.url(), "shared").await;
        assert_eq!(code, 404);
    });
}

/// A nack with a delay, then SIGKILL, then a restart: the retry fires on time with its
/// attempt count; a lease held at the crash comes back with its attempt counted. On the
/// embedded store (the same node again) and on PostgreSQL (another node takes over).
fn a_retry_and_a_held_lease_survive_a_sigkill(start: impl Fn() -> Server) {
    let runtime = runtime();
    let client = client();
    let server = start();
    let url = server.url();
    let (a, b) = runtime.block_on(async {
        for stream in ["acct-0", "acct-1"] {
            let body = json!({"events": [{"type": "acct.changed", "data": {}}]});
            let response =
                client.post(format!("{url}/v1/streams/{stream}/events")).json(&body).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 201);
        }
        let config =
            json!({"ack_timeout_ms": 1000, "backoff": {"kind": "fixed", "initial_ms": 200, "max_ms": 200}});
        client.put(format!("{url}/v1/groups/g")).json(&config).send().await.unwrap();
        let fetched: Value =
            client.post(format!("{url}/v1/groups/g/fetch?max=2")).send().await.unwrap().json().await.unwrap();
        let messages = fetched["messages"].as_array().unwrap().clone();
        assert_eq!(messages.len(), 2, "{fetched}");
        (messages[0].clone(), messages[1].clone())
    });
    // a is nacked with a 2 s delay; b stays leased as the server dies.
    let nacked_at = Instant::now();
    runtime.block_on(async {
        let body = json!({"leases": [a["lease"]], "action": "retry", "delay_ms": 2000});
        let response = client.post(format!("{url}/v1/groups/g/nack")).json(&body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
    });
    server.kill();
    let server = start();
    let url = server.url();
    let mut came_back = Vec::new();
    runtime.block_on(async {
        while came_back.len() < 2 {
            assert!(nacked_at.elapsed() < Duration::from_secs(20), "not back: {came_back:?}");
            let fetched: Value = client
                .post(format!("{url}/v1/groups/g/fetch?max=2&wait=1000"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let messages = fetched["messages"].as_array().unwrap();
            for m in messages {
                came_back.push((
                    m["event"]["id"].clone(),
                    m["attempt"].as_u64().unwrap(),
                    nacked_at.elapsed(),
                ));
            }
            let leases: Vec<&Value> = messages.iter().map(|m| &m["lease"]).collect();
            client
                .post(format!("{url}/v1/groups/g/ack"))
                .json(&json!({"leases": leases}))
                .send()
                .await
                .unwrap();
        }
    });
    let of = |event: &Value| came_back.iter().find(|c| c.0 == event["event"]["id"]).cloned().unwrap();
    let (_, attempt, after) = of(&a);
    assert_eq!(attempt, 2, "the nacked event keeps its attempt count");
    assert!(after >= Duration::from_millis(2000), "the retry fired after {after:?}, before its delay");
    assert!(after < Duration::from_secs(12), "the retry fired only after {after:?}");
    let (_, attempt, _) = of(&b);
    assert_eq!(attempt, 2, "the lease held at the crash counts as an attempt");
    let (status, _) = server.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_retry_and_a_held_lease_survive_a_sigkill_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    a_retry_and_a_held_lease_survive_a_sigkill(|| Server::start(dir.path(), "127.0.0.1:0", &[]));
}

#[test]
fn a_retry_and_a_held_lease_survive_a_sigkill_on_postgres() {
    let Some(schema) = Schema::fresh() else { return };
    let dir = tempfile::tempdir().unwrap();
    a_retry_and_a_held_lease_survive_a_sigkill(|| node(&dir, &schema, "127.0.0.1:0"));
}
