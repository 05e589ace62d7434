//! Crash safety: every append the server acknowledged survives a SIGKILL of the server,
//! exactly where the acknowledgement said, and the log stays well-formed.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a failed test

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::Server;
use serde_json::{Value, json};
use uuid::Uuid;

const WRITERS: usize = 16;
const LOAD: Duration = Duration::from_millis(1500);

/// An acknowledged (201) append: what was sent and where the server said it landed.
#[derive(Debug, Clone)]
struct Ack {
    stream: String,
    ids: Vec<Uuid>,
    first_version: u64,
    last_version: u64,
    first_position: u64,
    last_position: u64,
}

#[derive(Debug)]
struct Stored {
    stream: String,
    version: u64,
    position: u64,
}

/// One writer: a mix of single events to many streams, batches to one stream, and
/// appends with integer expected versions. Stops at `stop` or at the first failure (the
/// server was killed).
async fn writer(client: reqwest::Client, url: String, w: usize, stop: Arc<AtomicBool>) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut expected = 0u64;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let (stream, size, expected_version) = match w % 3 {
            0 => (format!("single{w}-{i}"), 1, json!("no_stream")),
            1 => (format!("batch-{w}"), 1 + (i % 20) as usize, json!("any")),
            _ => (format!("exact-{w}"), 1 + (i % 3) as usize, json!(expected)),
        };
        let ids: Vec<Uuid> = (0..size).map(|_| Uuid::new_v4()).collect();
        let events: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| json!({"type": "crash.test", "id": id, "data": {"writer": w, "i": i, "k": k}}))
            .collect();
        let body = json!({"expected_version": expected_version, "events": events});
        let response = client.post(format!("{url}/v1/streams/{stream}/events")).json(&body).send().await;
        let Ok(response) = response else { break };
        let status = response.status().as_u16();
        let Ok(result) = response.json::<Value>().await else { break };
        assert_eq!(status, 201, "append to {stream} failed while the server was up: {result}");
        let ack = Ack {
            stream: stream.clone(),
            ids,
            first_version: result["first_version"].as_u64().unwrap(),
            last_version: result["last_version"].as_u64().unwrap(),
            first_position: result["first_position"].as_u64().unwrap(),
            last_position: result["last_position"].as_u64().unwrap(),
        };
        assert_eq!(ack.last_version - ack.first_version + 1, size as u64, "{result}");
        expected = ack.last_version;
        acks.push(ack);
    }
    acks
}

/// The whole global log, following `next_position`.
async fn read_log(client: &reqwest::Client, url: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0u64;
    for _ in 0..100_000 {
        let page: Value = client
            .get(format!("{url}/v1/events?from_position={after}&limit=1000"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let batch = page["events"].as_array().unwrap();
        let next = page["next_position"].as_u64().unwrap();
        if batch.is_empty() || next <= after {
            return events;
        }
        events.extend(batch.iter().cloned());
        after = next;
    }
    panic!("the log did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0", &[]);
    let url = server.url();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(client.clone(), url.clone(), w, Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(LOAD).await;
    // SIGKILL while the writers are still writing.
    tokio::task::spawn_blocking(move || server.kill()).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut acks = Vec::new();
    for w in writers {
        acks.extend(tokio::time::timeout(Duration::from_secs(30), w).await.expect("writer hang").unwrap());
    }
    assert!(acks.len() > 50, "too little load to mean anything: {} acknowledged appends", acks.len());

    let dir_path = dir.path().to_owned();
    let server =
        tokio::task::spawn_blocking(move || Server::start(&dir_path, "127.0.0.1:0", &[])).await.unwrap();
    let url = server.url();
    let log = read_log(&client, &url).await;

    // The log is well-formed: unique ids, increasing positions, contiguous versions.
    let mut by_id: HashMap<Uuid, Stored> = HashMap::new();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_position = 0;
    for event in &log {
        let id: Uuid = event["id"].as_str().unwrap().parse().unwrap();
        let stored = Stored {
            stream: event["stream"].as_str().unwrap().to_owned(),
            version: event["version"].as_u64().unwrap(),
            position: event["position"].as_u64().unwrap(),
        };
        assert!(stored.position > last_position, "position {} after {last_position}", stored.position);
        last_position = stored.position;
        let version = versions.entry(stored.stream.clone()).or_insert(0);
        assert_eq!(stored.version, *version + 1, "versions of {} are not contiguous", stored.stream);
        *version = stored.version;
        assert!(by_id.insert(id, stored).is_none(), "event id {id} appears twice");
    }

    // Every acknowledged event is there, where the acknowledgement said.
    let mut acked_ids = HashSet::new();
    for ack in &acks {
        let mut previous = None;
        for (k, id) in ack.ids.iter().enumerate() {
            let stored =
                by_id.get(id).unwrap_or_else(|| panic!("acknowledged event {id} of {ack:?} is lost"));
            assert_eq!(stored.stream, ack.stream);
            assert_eq!(stored.version, ack.first_version + k as u64, "{ack:?}");
            assert!((ack.first_position..=ack.last_position).contains(&stored.position), "{ack:?}");
            assert!(previous.is_none_or(|p| stored.position > p));
            previous = Some(stored.position);
            acked_ids.insert(*id);
        }
        assert_eq!(by_id[&ack.ids[0]].position, ack.first_position);
        assert_eq!(by_id[ack.ids.last().unwrap()].position, ack.last_position);
        assert_eq!(by_id[ack.ids.last().unwrap()].version, ack.last_version);
    }

    // And each can be fetched by id (the last few of every stream).
    for ack in acks.iter().rev().take(32) {
        let id = ack.ids[0];
        let event: Value =
            client.get(format!("{url}/v1/events/{id}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(event["stream"], ack.stream.as_str());
        assert_eq!(event["position"], ack.first_position);
    }

    // Appends still work on the recovered store, continuing each stream.
    let exact =
        acks.iter().filter(|a| a.stream.starts_with("exact-")).max_by_key(|a| a.last_version).unwrap();
    let stream_version = versions[&exact.stream];
    let response = client
        .post(format!("{url}/v1/streams/{}/events", exact.stream))
        .json(&json!({"expected_version": stream_version, "events": [{"type": "crash.after", "data": {}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);

    eprintln!(
        "{} acknowledged appends ({} events) of {} stored events survived SIGKILL",
        acks.len(),
        acked_ids.len(),
        log.len()
    );
    let (status, _) = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}
