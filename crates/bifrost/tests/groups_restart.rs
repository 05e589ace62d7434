//! Consumer groups across restarts of a real server on SQLite: with competing consumers
//! fetching and acking while the server is stopped once with SIGTERM and once with SIGKILL,
//! every event is acked, an event whose ack was answered is never delivered again, and the
//! events of one stream are acked in order.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Server;
use common::consumers::{Consumer, Shared, append_accounts, check, consume};
use serde_json::{Value, json};

const STREAMS: u64 = 200;
const PER_STREAM: u64 = 10;
const EVENTS: u64 = STREAMS * PER_STREAM;
const CONSUMERS: usize = 4;
const GROUP: &str = "restart";
/// A consumer's "work" on each batch, so that leases are held when the server goes down.
const WORK: Duration = Duration::from_millis(60);
/// Whole-test hang guard.
const DEADLINE: Duration = Duration::from_secs(60);

fn wait_for(shared: &Shared, started: Instant, acked: usize) {
    while shared.acked_count() < acked {
        assert!(started.elapsed() < DEADLINE, "only {} events acked", shared.acked_count());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn acked_events_are_never_delivered_again_across_sigterm_and_sigkill() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let addr = server.addr.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let url = server.url();

    runtime.block_on(async {
        append_accounts(&client, &url, STREAMS, 0..PER_STREAM).await;
        let config = json!({"filter": {"types": ["acct.#"]}, "ack_timeout_ms": 1000, "max_attempts": 1000,
                            "backoff": {"kind": "fixed", "initial_ms": 20, "max_ms": 20, "jitter": false}});
        let response = client.put(format!("{url}/v1/groups/{GROUP}")).json(&config).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 201, "{}", response.text().await.unwrap());
    });

    let shared = Shared::new(GROUP);
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|c| {
            let me = Consumer {
                name: format!("c{c}"),
                fetch_from: url.clone(),
                ack_to: vec![url.clone()],
                dies: Arc::new(AtomicBool::new(false)),
                work: WORK,
                holding: Arc::default(),
            };
            runtime.spawn(consume(Arc::clone(&shared), client.clone(), me))
        })
        .collect();

    // A graceful stop a third of the way, a crash two thirds of the way, each while the
    // consumers hold leases and send acks; the server comes back on the same port and data.
    wait_for(&shared, started, EVENTS as usize / 3);
    let (status, lines) = server.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit: {lines:?}");
    let after_sigterm = shared.acked_count();
    server = Server::start(dir.path(), &addr, &[]);
    wait_for(&shared, started, (after_sigterm + EVENTS as usize) / 2);
    server.kill();
    let after_sigkill = shared.acked_count();
    server = Server::start(dir.path(), &addr, &[]);

    // Until the group has nothing left: no lag, nothing leased, nothing parked.
    let status = runtime.block_on(async {
        loop {
            assert!(started.elapsed() < DEADLINE, "the group did not drain; acked {}", shared.acked_count());
            let response = client.get(format!("{url}/v1/groups/{GROUP}")).send().await.unwrap();
            let status: Value = response.json().await.unwrap();
            if status["lag"] == 0 && status["in_flight"] == 0 {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(status["parked"], 0, "{status}");
    shared.stop.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        for c in consumers {
            tokio::time::timeout(Duration::from_secs(10), c).await.expect("a consumer hangs").unwrap();
        }
    });
    let (status, _) = server.terminate();
    assert_eq!(status.code(), Some(0));

    let journal = std::mem::take(&mut *shared.journal.lock().unwrap());
    check(&journal, STREAMS, PER_STREAM);
    let redelivered = journal.deliveries.iter().filter(|d| d.2 > 1).count();
    eprintln!(
        "{} deliveries ({redelivered} redeliveries), {} acks answered, {} acks unanswered; \
         {after_sigterm} acked before SIGTERM, {after_sigkill} before SIGKILL; {:?}",
        journal.deliveries.len(),
        journal.acked.len(),
        journal.unsure.len(),
        started.elapsed()
    );
}
