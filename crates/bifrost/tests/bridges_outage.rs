//! A broker that dies in the middle of a run: `bifrost serve` forwards to a Redis or NATS
//! server of the test's own, which is killed with SIGKILL while events keep being appended
//! and then started again on the same port and data directory. The bridge reports the
//! failure, retries with backoff, skips nothing, and once the broker is back everything
//! arrives, in log order, each event once on the broker (Redis: repeats carry the same id;
//! JetStream: the dedupe id drops them).
//!
//! The brokers are private processes (`redis-server`, `nats-server` from the machine's
//! packages), so that killing them disturbs no other test.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bifrost_core::testkit::service_unavailable;
use common::pg::block_on;
use common::{Server, append_orders, call, eventually};
use serde_json::{Value, json};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A broker process of the test's own, on a fixed port and data directory, so that it can
/// be killed and started again as the same broker.
struct Broker {
    program: &'static str,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    /// `None` (skipped, or failed under `BIFROST_REQUIRE_SERVICES=1`) when the program is
    /// not installed.
    fn start(program: &'static str, args: Vec<String>, port: u16) -> Option<Self> {
        let mut broker = Self { program, args, port, child: None };
        if let Err(e) = broker.spawn() {
            return service_unavailable(program, e);
        }
        Some(broker)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !port_open(self.port) {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "{} is not listening on {}",
                    self.program, self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGKILL, and wait until the port is closed.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        eventually("the broker's port closing", Duration::from_secs(10), || !port_open(self.port));
    }

    fn restart(&mut self) {
        self.spawn().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn bridge_state(server: &Server) -> Value {
    call(server, reqwest::Method::GET, "/v1/bridges/orders", None).1
}

/// The run both brokers share: 50 events delivered, the broker killed, 50 more appended
/// while it is down (the bridge must say it is failing), the broker back, 50 more; then
/// `landed` (the broker's `(event id, position)` list, in its order) must hold all 150.
fn outage_run(broker: &mut Broker, bridge: Value, landed: impl Fn() -> Vec<(String, u64)>) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let (status, body) = call(&server, reqwest::Method::PUT, "/v1/bridges/orders", Some(bridge));
    assert_eq!(status, 201, "{body}");

    let mut sent = Vec::new();
    for round in 0..5 {
        sent.extend(append_orders(&server, &format!("order-{round}"), 10));
    }
    eventually("the first 50 on the broker", Duration::from_secs(20), || landed().len() >= 50);

    broker.kill();
    for round in 5..10 {
        sent.extend(append_orders(&server, &format!("order-{round}"), 10));
    }
    eventually("the bridge reporting the outage", Duration::from_secs(30), || {
        let state = bridge_state(&server);
        state["state"] == "failing" && state["last_error"].is_object()
    });
    let stuck = bridge_state(&server);
    assert!(stuck["lag"].as_u64().unwrap() > 0, "nothing can be confirmed while the broker is down: {stuck}");

    broker.restart();
    for round in 10..15 {
        sent.extend(append_orders(&server, &format!("order-{round}"), 10));
    }
    eventually("all 150 on the broker", Duration::from_secs(60), || {
        let ids: HashSet<String> = landed().into_iter().map(|(id, _)| id).collect();
        sent.iter().all(|id| ids.contains(id))
    });
    eventually("the bridge running again with no lag", Duration::from_secs(20), || {
        let state = bridge_state(&server);
        state["state"] == "running" && state["lag"] == 0
    });

    let mut position_of: HashMap<String, u64> = HashMap::new();
    let mut first_seen = Vec::new();
    for (id, position) in landed() {
        match position_of.get(&id) {
            Some(p) => assert_eq!(*p, position, "a repeat of {id} carries the same event"),
            None => {
                position_of.insert(id, position);
                first_seen.push(position);
            }
        }
    }
    assert!(first_seen.windows(2).all(|w| w[0] < w[1]), "log order: {first_seen:?}");
    assert_eq!(position_of.len(), 150, "every event, none lost, nothing else");
}

#[test]
fn a_redis_server_killed_and_restarted_mid_run_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    // Durable (append-only file, fsync per write): what Redis confirmed survives its SIGKILL.
    let args = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        &data.path().display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let Some(mut broker) = Broker::start("redis-server", args, port) else { return };
    let url = format!("redis://127.0.0.1:{port}");
    let key = "orders:order";
    let bridge = json!({"direction": "out", "kind": "redis-stream", "url": url, "target": "orders:{category}",
                        "start": "beginning", "batch_size": 10});
    let landed = || {
        block_on(async {
            let Ok(client) = redis::Client::open(url.as_str()) else { return Vec::new() };
            let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                return Vec::new();
            };
            let reply: redis::streams::StreamRangeReply =
                match redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(&mut connection).await {
                    Ok(reply) => reply,
                    Err(_) => return Vec::new(),
                };
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
    };
    outage_run(&mut broker, bridge, landed);
}

/// Every message of the JetStream stream: `(Nats-Msg-Id, position from the body)`.
async fn jetstream_messages(url: &str, stream: &str) -> Vec<(String, u64)> {
    let Ok(client) = async_nats::connect(url).await else { return Vec::new() };
    let context = async_nats::jetstream::new(client);
    let Ok(mut handle) = context.get_stream(stream).await else { return Vec::new() };
    let Ok(info) = handle.info().await else { return Vec::new() };
    let state = info.state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let Ok(message) = handle.get_raw_message(seq).await else { continue };
        let id = message.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()).unwrap();
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        out.push((id, body["position"].as_u64().unwrap()));
    }
    out
}

#[test]
fn a_nats_server_killed_and_restarted_mid_run_loses_nothing_and_stores_each_event_once() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd", &data.path().display().to_string()]
        .map(str::to_owned)
        .to_vec();
    // Debian installs it in /usr/sbin, outside a normal user's PATH.
    let program =
        if Path::new("/usr/sbin/nats-server").exists() { "/usr/sbin/nats-server" } else { "nats-server" };
    let Some(mut broker) = Broker::start(program, args, port) else { return };
    let url = format!("nats://127.0.0.1:{port}");
    let stream = "ORDERS";
    block_on(async {
        let client = async_nats::connect(url.as_str()).await.unwrap();
        let context = async_nats::jetstream::new(client);
        let config = async_nats::jetstream::stream::Config {
            name: stream.into(),
            subjects: vec!["orders.>".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        };
        context.create_stream(config).await.unwrap();
    });
    let bridge = json!({"direction": "out", "kind": "nats", "url": url, "target": "orders.{type}",
                        "start": "beginning", "batch_size": 10});
    outage_run(&mut broker, bridge, || block_on(jetstream_messages(&url, stream)));
    let messages = block_on(jetstream_messages(&url, stream));
    assert_eq!(messages.len(), 150, "JetStream keeps each event once (dedupe by Nats-Msg-Id)");
}
