//! Consumer groups across restarts of a real server on SQLite: with competing consumers
//! fetching and acking while the server is stopped once with SIGTERM and once with SIGKILL,
//! every event is acked, an event whose ack was answered is never delivered again, and the
//! events of one stream are acked in order.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a failed test

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
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

/// One event of the test, by where it lives.
type Key = (u64, u64);

/// What the consumers saw, each observation stamped from one shared counter so that
/// observations of different consumers can be ordered where causality orders them.
#[derive(Default)]
struct Journal {
    /// (event, its id, attempt, stamp when the fetch answer arrived).
    deliveries: Vec<(Key, String, u64, u64)>,
    /// Acks answered 200 and not listed as expired: (event, its id, attempt, stamp before
    /// sending, stamp after the answer).
    acked: Vec<(Key, String, u64, u64, u64)>,
    /// Acks with no clear answer (the server went away, or answered an error): the event may
    /// or may not be settled. (event, stamp before sending).
    unsure: Vec<(Key, u64)>,
}

struct Shared {
    url: String,
    clock: AtomicU64,
    stop: AtomicBool,
    journal: Mutex<Journal>,
    /// Distinct events acked with a 200 answer.
    acked: Mutex<HashSet<Key>>,
}

impl Shared {
    fn stamp(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

fn key_of(event: &Value) -> Key {
    let stream = event["stream"].as_str().unwrap();
    let index = stream.strip_prefix("acct-").unwrap().parse().unwrap();
    (index, event["version"].as_u64().unwrap())
}

/// A few first deliveries are left unacked on purpose: they come back after the ack
/// timeout, and hold their stream back meanwhile.
fn drops(key: Key, attempt: u64) -> bool {
    attempt == 1 && key.0.is_multiple_of(40) && key.1 == 5
}

async fn consumer(shared: Arc<Shared>, client: reqwest::Client, name: String) {
    let fetch_url = format!("{}/v1/groups/{GROUP}/fetch?max=50&wait=200&consumer={name}", shared.url);
    let ack_url = format!("{}/v1/groups/{GROUP}/ack", shared.url);
    while !shared.stop.load(Ordering::SeqCst) {
        let answer = match client.post(&fetch_url).send().await {
            Ok(r) if r.status().as_u16() == 200 => r.json::<Value>().await.ok(),
            // Down, shutting down or restarting: try again shortly.
            _ => None,
        };
        let Some(answer) = answer else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let received = shared.stamp();
        let messages = answer["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            continue;
        }
        let mut leases = Vec::new();
        {
            let mut journal = shared.journal.lock().unwrap();
            for m in &messages {
                let key = key_of(&m["event"]);
                let id = m["event"]["id"].as_str().unwrap().to_owned();
                let attempt = m["attempt"].as_u64().unwrap();
                journal.deliveries.push((key, id.clone(), attempt, received));
                if !drops(key, attempt) {
                    leases.push((m["lease"].as_str().unwrap().to_owned(), key, id, attempt));
                }
            }
        }
        tokio::time::sleep(WORK).await;
        if leases.is_empty() {
            continue;
        }
        let body = json!({ "leases": leases.iter().map(|l| &l.0).collect::<Vec<_>>() });
        let sent = shared.stamp();
        let answer = match client.post(&ack_url).json(&body).send().await {
            Ok(r) if r.status().as_u16() == 200 => r.json::<Value>().await.ok(),
            _ => None,
        };
        let answered = shared.stamp();
        let mut journal = shared.journal.lock().unwrap();
        let Some(answer) = answer else {
            journal.unsure.extend(leases.iter().map(|l| (l.1, sent)));
            continue;
        };
        let expired: HashSet<&str> =
            answer["expired"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        let mut acked = shared.acked.lock().unwrap();
        for (lease, key, id, attempt) in leases {
            if !expired.contains(lease.as_str()) {
                journal.acked.push((key, id, attempt, sent, answered));
                acked.insert(key);
            }
        }
        assert_eq!(
            answer["acked"].as_u64().unwrap() as usize + expired.len(),
            body["leases"].as_array().unwrap().len(),
            "{answer}"
        );
    }
}

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

    // The streams' events interleave in the log, as independent writers would leave them.
    runtime.block_on(async {
        for version in 0..PER_STREAM {
            let appends: Vec<Value> = (0..STREAMS)
                .map(|s| {
                    json!({"stream": format!("acct-{s}"), "expected_version": version,
                           "events": [{"type": "acct.changed", "data": {"s": s, "v": version + 1}}]})
                })
                .collect();
            let response = client
                .post(format!("{url}/v1/append"))
                .json(&json!({ "appends": appends }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 201, "{}", response.text().await.unwrap());
        }
        let config = json!({"filter": {"types": ["acct.#"]}, "ack_timeout_ms": 1000, "max_attempts": 1000,
                            "backoff": {"kind": "fixed", "initial_ms": 20, "max_ms": 20, "jitter": false}});
        let response = client.put(format!("{url}/v1/groups/{GROUP}")).json(&config).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 201, "{}", response.text().await.unwrap());
    });

    let shared = Arc::new(Shared {
        url: url.clone(),
        clock: AtomicU64::new(1),
        stop: AtomicBool::new(false),
        journal: Mutex::new(Journal::default()),
        acked: Mutex::new(HashSet::new()),
    });
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|c| runtime.spawn(consumer(Arc::clone(&shared), client.clone(), format!("c{c}"))))
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
    check(&journal);
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

fn check(journal: &Journal) {
    // Every event was acked, or was in an ack the server may have recorded before it went
    // away (then the group was right not to deliver it again).
    let acked: HashMap<Key, (u64, u64)> = {
        let mut acked = HashMap::new();
        for &(key, ref id, attempt, sent, answered) in &journal.acked {
            let earlier = acked.insert(key, (sent, answered));
            assert!(
                earlier.is_none(),
                "event {key:?} ({id}) was acked twice, the second at attempt {attempt}"
            );
        }
        acked
    };
    let unsure: HashSet<Key> = journal.unsure.iter().map(|u| u.0).collect();
    for s in 0..STREAMS {
        for v in 1..=PER_STREAM {
            assert!(
                acked.contains_key(&(s, v)) || unsure.contains(&(s, v)),
                "event acct-{s}@{v} was never acked"
            );
        }
    }
    // Not vacuous: most acks were answered, and the stops cut into leases held by consumers.
    assert!(acked.len() as u64 >= EVENTS * 3 / 4, "only {} events acked with an answer", acked.len());
    assert!(
        journal.deliveries.len() as u64 > EVENTS,
        "every event was delivered once: the stops cut into no lease"
    );

    // An answered ack is final: the event never comes back.
    for (key, id, attempt, received) in &journal.deliveries {
        if let Some(&(_, answered)) = acked.get(key) {
            assert!(
                *received < answered,
                "event {key:?} ({id}) was delivered again (attempt {attempt}) after its ack was answered"
            );
        }
    }

    // Per stream, answered acks come in version order...
    let mut by_stream: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for (key, _, _, sent, _) in &journal.acked {
        by_stream.entry(key.0).or_default().push((*sent, key.1));
    }
    for (stream, mut acks) in by_stream {
        acks.sort_unstable();
        let versions: Vec<u64> = acks.iter().map(|a| a.1).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "acks of acct-{stream} out of order: {versions:?}");
    }
    // ...and no event is handed out before an ack of its predecessor was at least sent.
    let mut first_settle: HashMap<Key, u64> = HashMap::new();
    let settles = journal.acked.iter().map(|a| (a.0, a.3)).chain(journal.unsure.iter().copied());
    for (key, sent) in settles {
        let first = first_settle.entry(key).or_insert(sent);
        *first = (*first).min(sent);
    }
    for (key, id, _, received) in &journal.deliveries {
        if key.1 > 1 {
            let before = first_settle.get(&(key.0, key.1 - 1));
            assert!(
                before.is_some_and(|sent| sent < received),
                "event {key:?} ({id}) was delivered while its predecessor was not settled"
            );
        }
    }
}
