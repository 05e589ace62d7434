//! HTTP consumers of one consumer group for end-to-end tests, and the journal of what they
//! saw, checked for the group's promises: every event acked, an answered ack final, the
//! events of one stream handed out in order.
//!
//! The events live in streams `acct-<n>` (n < `STREAMS`), versions 1..=`PER_STREAM`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// One event of the test, by where it lives: (stream number, version).
pub type Key = (u64, u64);

/// What the consumers saw, each observation stamped from one shared counter so that
/// observations of different consumers can be ordered where causality orders them.
#[derive(Default)]
pub struct Journal {
    /// (event, its id, attempt, stamp when the fetch answer arrived, consumer).
    pub deliveries: Vec<(Key, String, u64, u64, String)>,
    /// Acks answered 200 and not listed as expired: (event, its id, attempt, stamp before
    /// sending, stamp after the answer).
    pub acked: Vec<(Key, String, u64, u64, u64)>,
    /// Acks with no clear answer (the server went away, or answered an error): the event may
    /// or may not be settled. (event, stamp before sending).
    pub unsure: Vec<(Key, u64)>,
}

pub struct Shared {
    pub group: String,
    pub clock: AtomicU64,
    pub stop: AtomicBool,
    pub journal: Mutex<Journal>,
    /// Distinct events acked with a 200 answer.
    pub acked: Mutex<HashSet<Key>>,
}

impl Shared {
    pub fn new(group: &str) -> Arc<Self> {
        Arc::new(Self {
            group: group.to_owned(),
            clock: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            journal: Mutex::new(Journal::default()),
            acked: Mutex::new(HashSet::new()),
        })
    }

    fn stamp(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

/// Where a consumer fetches, where it acks (in turn, skipping one that does not answer),
/// and a switch that makes it vanish as its process would: whatever it holds is dropped.
pub struct Consumer {
    pub name: String,
    pub fetch_from: String,
    pub ack_to: Vec<String>,
    pub dies: Arc<AtomicBool>,
    /// The consumer's "work" on each batch, so that leases are held when a server goes down.
    pub work: Duration,
    /// Counts the consumers of a node at work on leases, so a test can stop the node then.
    pub holding: Arc<AtomicUsize>,
}

pub fn key_of(event: &Value) -> Key {
    let stream = event["stream"].as_str().unwrap();
    let index = stream.strip_prefix("acct-").unwrap().parse().unwrap();
    (index, event["version"].as_u64().unwrap())
}

/// A few first deliveries are left unacked on purpose: they come back after the ack
/// timeout, and hold their stream back meanwhile.
fn drops(key: Key, attempt: u64) -> bool {
    attempt == 1 && key.0.is_multiple_of(40) && key.1 == 5
}

/// Appends `streams` × `per_stream` events, the streams interleaved in the log as
/// independent writers would leave them.
pub async fn append_accounts(
    client: &reqwest::Client,
    url: &str,
    streams: u64,
    versions: std::ops::Range<u64>,
) {
    for version in versions {
        let appends: Vec<Value> = (0..streams)
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
}

pub async fn consume(shared: Arc<Shared>, client: reqwest::Client, me: Consumer) {
    let group = shared.group.clone();
    let fetch_url = format!("{}/v1/groups/{group}/fetch?max=50&wait=200&consumer={}", me.fetch_from, me.name);
    let mut turn = 0usize;
    while !shared.stop.load(Ordering::SeqCst) && !me.dies.load(Ordering::SeqCst) {
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
                journal.deliveries.push((key, id.clone(), attempt, received, me.name.clone()));
                if !drops(key, attempt) {
                    leases.push((m["lease"].as_str().unwrap().to_owned(), key, id, attempt));
                }
            }
        }
        me.holding.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(me.work).await;
        if me.dies.load(Ordering::SeqCst) {
            // Gone with its node, holding its leases.
            return;
        }
        me.holding.fetch_sub(1, Ordering::SeqCst);
        if leases.is_empty() {
            continue;
        }
        let body = json!({ "leases": leases.iter().map(|l| &l.0).collect::<Vec<_>>() });
        let sent = shared.stamp();
        turn += 1;
        // The ack goes to the next target in turn; one that does not answer is skipped (a
        // dead node). An earlier target may have recorded the ack before failing to answer:
        // then the later one reports the leases expired, and they count as unsure.
        let mut answer = None;
        let mut tried_before = false;
        for k in 0..me.ack_to.len() {
            let ack_url = format!("{}/v1/groups/{group}/ack", me.ack_to[(turn + k) % me.ack_to.len()]);
            match client.post(&ack_url).json(&body).send().await {
                Ok(r) if r.status().as_u16() == 200 => {
                    answer = r.json::<Value>().await.ok();
                    break;
                }
                _ => tried_before = true,
            }
        }
        let answered = shared.stamp();
        let mut journal = shared.journal.lock().unwrap();
        let Some(answer) = answer else {
            journal.unsure.extend(leases.iter().map(|l| (l.1, sent)));
            continue;
        };
        if tried_before {
            let expired = answer["expired"].as_array().unwrap();
            journal.unsure.extend(
                leases
                    .iter()
                    .filter(|l| expired.iter().any(|e| e.as_str() == Some(&l.0)))
                    .map(|l| (l.1, sent)),
            );
        }
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

/// Checks the journal of a run over `streams` × `per_stream` events.
pub fn check(journal: &Journal, streams: u64, per_stream: u64) {
    let events = streams * per_stream;
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
    for s in 0..streams {
        for v in 1..=per_stream {
            assert!(
                acked.contains_key(&(s, v)) || unsure.contains(&(s, v)),
                "event acct-{s}@{v} was never acked"
            );
        }
    }
    // Not vacuous: most acks were answered, and the stops cut into leases held by consumers.
    assert!(acked.len() as u64 >= events * 3 / 4, "only {} events acked with an answer", acked.len());
    assert!(
        journal.deliveries.len() as u64 > events,
        "every event was delivered once: the stops cut into no lease"
    );

    // An answered ack is final: the event never comes back.
    for (key, id, attempt, received, _) in &journal.deliveries {
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
    for (key, id, _, received, _) in &journal.deliveries {
        if key.1 > 1 {
            let before = first_settle.get(&(key.0, key.1 - 1));
            assert!(
                before.is_some_and(|sent| sent < received),
                "event {key:?} ({id}) was delivered while its predecessor was not settled"
            );
        }
    }
}
