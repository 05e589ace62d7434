//! The consumer-group contract ([`GroupEngine`]) as cases, run by every engine through
//! [`group_conformance_suite!`](crate::group_conformance_suite). Each case takes a fresh
//! store with its engine, which it may restart (gracefully, or as a crash).
//!
//! Short real delays (tens to hundreds of milliseconds) stand for ack timeouts and
//! backoffs; every check on time is a lower bound (nothing comes back early) or a generous
//! upper bound (it does come back), never a measurement.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{event, events, stream};
use crate::error::Error;
use crate::group::{
    Backoff, Fetch, GroupConfig, GroupEngine, GroupFilter, GroupName, Lease, LeaseToken, NackAction, Put,
    ReplaySelection, StartFrom, Verdict,
};
use crate::name::StreamName;
use crate::store::{DeleteMode, EventStore, ExpectedVersion};
use crate::tenant::TenantScope;

/// A fresh store with a group engine on it, for one case.
#[async_trait]
pub trait GroupFixture: Send + Sync {
    /// The store the groups read (appends go here too).
    fn store(&self) -> Arc<dyn EventStore>;
    /// The engine as it runs now.
    fn engine(&self) -> Arc<dyn GroupEngine>;
    /// Stops the engine (with `crash`: drops it without closing, as a killed process
    /// would) and starts a new one on the same stored state, as a restarted process or
    /// another node would. Cases drop every handle on the old engine first.
    async fn restart(&mut self, crash: bool);
    /// Closes everything at the end of a case.
    async fn finish(self: Box<Self>);
}

type Fixture = Box<dyn GroupFixture>;

const WAIT: Duration = Duration::from_secs(5);

fn name(n: &str) -> GroupName {
    GroupName::new(n).unwrap()
}

/// Settings with a long ack timeout and a short fixed backoff.
fn quick(max_attempts: u32) -> GroupConfig {
    GroupConfig {
        ack_timeout: Duration::from_secs(30),
        max_attempts,
        backoff: Backoff::fixed(Duration::from_millis(20)),
        ..GroupConfig::default()
    }
}

async fn append(f: &Fixture, s: &str, n: usize) {
    f.store().append(stream(s), ExpectedVersion::Any, events(n)).await.unwrap();
}

async fn append_type(f: &Fixture, s: &str, event_type: &str) {
    f.store().append(stream(s), ExpectedVersion::Any, vec![event(event_type, "{}")]).await.unwrap();
}

async fn create(f: &Fixture, group: &str, config: GroupConfig) {
    assert_eq!(f.engine().put(&name(group), config).await.unwrap(), Put::Created);
}

async fn fetch(f: &Fixture, group: &str, consumer: &str, max: usize, wait: Duration) -> Vec<Lease> {
    f.engine().fetch(&name(group), Fetch::new(consumer, max, wait)).await.unwrap()
}

fn tokens(leases: &[Lease]) -> Vec<LeaseToken> {
    leases.iter().map(|l| l.token).collect()
}

async fn ack(f: &Fixture, group: &str, leases: &[Lease]) -> crate::group::Settled {
    f.engine().settle(&name(group), &tokens(leases), Verdict::Ack, false).await.unwrap()
}

async fn nack(f: &Fixture, group: &str, leases: &[Lease], action: NackAction, reason: Option<&str>) {
    let settled =
        f.engine().settle(&name(group), &tokens(leases), Verdict::Nack(action, reason), false).await.unwrap();
    assert_eq!(settled.count, leases.len(), "every nacked lease was held");
}

async fn status(f: &Fixture, group: &str) -> crate::group::GroupStatus {
    f.engine().status(&name(group)).await.unwrap()
}

/// Fetches and acks until nothing comes within `idle`; returns every lease seen.
async fn drain(f: &Fixture, group: &str, idle: Duration) -> Vec<Lease> {
    let mut out = Vec::new();
    loop {
        let leases = fetch(f, group, "drain", 100, idle).await;
        if leases.is_empty() {
            return out;
        }
        let settled = ack(f, group, &leases).await;
        assert!(settled.expired.is_empty(), "fresh leases were held");
        out.extend(leases);
    }
}

pub async fn events_of_one_stream_are_leased_one_at_a_time_in_order(f: Fixture) {
    append(&f, "order-1", 3).await;
    append(&f, "order-2", 1).await;
    create(&f, "g", quick(5)).await;
    let first = fetch(&f, "g", "a", 10, WAIT).await;
    let got: Vec<(&str, u64)> = first.iter().map(|l| (l.event.stream.as_str(), l.event.version)).collect();
    assert_eq!(got, [("order-1", 1), ("order-2", 1)]);
    assert!(first.iter().all(|l| l.attempt == 1));
    // Nothing more while order-1's first event is out, to any consumer.
    assert!(fetch(&f, "g", "b", 10, Duration::from_millis(100)).await.is_empty());
    ack(&f, "g", &first[..1]).await;
    let next = fetch(&f, "g", "b", 10, WAIT).await;
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].event.stream.as_str(), next[0].event.version), ("order-1", 2));
    f.finish().await;
}

pub async fn an_unordered_group_hands_out_each_event_on_its_own(f: Fixture) {
    append(&f, "order-1", 3).await;
    create(&f, "g", GroupConfig { ordered: false, ..quick(5) }).await;
    let first = fetch(&f, "g", "a", 10, WAIT).await;
    let versions: Vec<u64> = first.iter().map(|l| l.event.version).collect();
    assert_eq!(versions, [1, 2, 3], "a stream's events are out at once, in log order");
    // The first waits for a long retry; the others are settled meanwhile and the
    // checkpoint stays below the one that waits.
    let engine = f.engine();
    let retry = Verdict::Nack(NackAction::Retry(Some(Duration::from_secs(60))), None);
    engine.settle(&name("g"), &tokens(&first[..1]), retry, false).await.unwrap();
    assert_eq!(ack(&f, "g", &first[1..]).await.count, 2);
    append(&f, "order-1", 1).await;
    let later = fetch(&f, "g", "b", 10, WAIT).await;
    assert_eq!(later.len(), 1, "a later event is not held back by the one waiting");
    assert_eq!(later[0].event.version, 4);
    ack(&f, "g", &later).await;
    let s = status(&f, "g").await;
    assert_eq!((s.checkpoint, s.waiting, s.lag), (0, 1, 1));

    // Back to per-stream order: the waiting event holds its stream again.
    let put = engine.put(&name("g"), GroupConfig { ordered: true, ..quick(5) }).await.unwrap();
    assert_eq!(put, Put::Updated);
    append(&f, "order-1", 1).await;
    assert!(
        fetch(&f, "g", "c", 10, Duration::from_millis(200)).await.iter().all(|l| l.event.version != 5),
        "an ordered group holds back a stream behind an event that waits (or was released by the change)"
    );
    drop(engine);
    f.finish().await;
}

pub async fn a_released_lease_comes_back_with_its_attempt_uncounted(f: Fixture) {
    append(&f, "order-1", 2).await;
    // One attempt only: a release that counted would park the event at once.
    create(&f, "g", quick(1)).await;
    let engine = f.engine();
    for _ in 0..3 {
        let leases = fetch(&f, "g", "a", 10, WAIT).await;
        assert_eq!(leases.len(), 1, "the stream's first event, alone: the release keeps its order");
        assert_eq!((leases[0].event.version, leases[0].attempt), (1, 1), "the same attempt each time");
        let release = Verdict::Nack(NackAction::Release(Duration::from_millis(30)), None);
        assert_eq!(engine.settle(&name("g"), &tokens(&leases), release, false).await.unwrap().count, 1);
    }
    let s = status(&f, "g").await;
    assert_eq!((s.parked, s.lag), (0, 2), "released, not failed: nothing parked, both still to deliver");
    let again = fetch(&f, "g", "a", 10, WAIT).await;
    assert_eq!(again[0].attempt, 1);
    ack(&f, "g", &again).await;
    assert_eq!(fetch(&f, "g", "a", 10, WAIT).await[0].event.version, 2);
    drop(engine);
    f.finish().await;
}

pub async fn ack_advances_the_checkpoint_to_below_the_lowest_unsettled_event(f: Fixture) {
    for i in 0..4 {
        append(&f, &format!("s-{i}"), 1).await;
    }
    create(&f, "g", quick(5)).await;
    let leases = fetch(&f, "g", "a", 10, WAIT).await;
    assert_eq!(leases.len(), 4);
    // Ack 2, 3, 4 but not 1: the checkpoint stays below 1.
    assert_eq!(ack(&f, "g", &leases[1..]).await.count, 3);
    let s = status(&f, "g").await;
    assert_eq!((s.checkpoint, s.lag, s.in_flight), (0, 1, 1));
    ack(&f, "g", &leases[..1]).await;
    let s = status(&f, "g").await;
    assert_eq!((s.checkpoint, s.lag, s.in_flight), (4, 0, 0));
    // Acking again: the lease is no longer held; a token never handed out neither.
    let bogus = LeaseToken::new(7, 7);
    let again = f.engine().settle(&name("g"), &[leases[0].token, bogus], Verdict::Ack, false).await.unwrap();
    assert_eq!(again.count, 0);
    assert_eq!(again.expired, [leases[0].token, bogus]);
    f.finish().await;
}

pub async fn retries_follow_the_backoff_and_stop_at_max_attempts(f: Fixture) {
    append(&f, "order-1", 1).await;
    let config = GroupConfig {
        max_attempts: 4,
        backoff: Backoff::exponential(Duration::from_millis(100), Duration::from_millis(1000))
            .with_jitter(false),
        ..GroupConfig::default()
    };
    create(&f, "g", config).await;
    let mut attempts = Vec::new();
    let mut gaps = Vec::new();
    let mut last_nack: Option<Instant> = None;
    loop {
        let leases = fetch(&f, "g", "a", 1, Duration::from_millis(2500)).await;
        let Some(lease) = leases.into_iter().next() else { break };
        if let Some(at) = last_nack {
            gaps.push(at.elapsed());
        }
        attempts.push(lease.attempt);
        // The backoff counts from when the nack is made, so from before it is sent.
        last_nack = Some(Instant::now());
        nack(&f, "g", &[lease], NackAction::Retry(None), Some("flaky")).await;
    }
    assert_eq!(attempts, [1, 2, 3, 4]);
    // 100, 200, 400 ms between attempts: never earlier.
    for (gap, want) in gaps.iter().zip([100u64, 200, 400]) {
        assert!(*gap >= Duration::from_millis(want), "retried after {gap:?}, before its {want} ms backoff");
    }
    let dead = f.engine().dead_letters(&name("g"), None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].dead_letter.attempts, dead[0].dead_letter.reason.as_str()), (4, "flaky"));
    let s = status(&f, "g").await;
    assert_eq!((s.parked, s.lag, s.checkpoint, s.waiting), (1, 0, 1, 0));
    f.finish().await;
}

pub async fn nack_with_a_delay_waits_that_long_and_park_parks_at_once(f: Fixture) {
    append(&f, "a-1", 1).await;
    append(&f, "b-1", 1).await;
    create(&f, "g", quick(5)).await;
    let leases = fetch(&f, "g", "c", 10, WAIT).await;
    assert_eq!(leases.len(), 2);
    let nacked_at = Instant::now();
    nack(&f, "g", &leases[..1], NackAction::Retry(Some(Duration::from_millis(600))), None).await;
    nack(&f, "g", &leases[1..], NackAction::Park, Some("poison")).await;
    let s = status(&f, "g").await;
    assert_eq!((s.waiting, s.parked, s.in_flight), (1, 1, 0));
    let again = fetch(&f, "g", "c", 10, WAIT).await;
    assert!(nacked_at.elapsed() >= Duration::from_millis(600), "a delayed retry came back early");
    assert_eq!((again.len(), again[0].event.id, again[0].attempt), (1, leases[0].event.id, 2));
    let dead = f.engine().dead_letters(&name("g"), None, 10).await.unwrap();
    assert_eq!((dead[0].dead_letter.reason.as_str(), dead[0].dead_letter.attempts), ("poison", 1));
    f.finish().await;
}

pub async fn a_parked_event_is_replayed_with_fresh_attempts_and_can_be_discarded(f: Fixture) {
    append(&f, "order-1", 2).await;
    create(&f, "g", quick(3)).await;
    let lease = fetch(&f, "g", "a", 1, WAIT).await;
    nack(&f, "g", &lease, NackAction::Park, Some("poison: bad total")).await;
    // A parked event does not hold back the later events of its stream.
    let second = fetch(&f, "g", "a", 5, WAIT).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].event.version, 2);
    ack(&f, "g", &second).await;

    let engine = f.engine();
    let g = name("g");
    let dead = engine.dead_letters(&g, None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].dead_letter.reason, "poison: bad total");
    assert_eq!(dead[0].dead_letter.attempts, 1);
    assert_eq!(dead[0].event.as_ref().unwrap().version, 1);
    let id = dead[0].dead_letter.event_id;

    assert_eq!(engine.replay(&g, ReplaySelection::All).await.unwrap(), 1);
    assert!(engine.dead_letters(&g, None, 10).await.unwrap().is_empty());
    let again = fetch(&f, "g", "b", 5, WAIT).await;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].event.id, again[0].attempt), (id, 1));
    nack(&f, "g", &again, NackAction::Park, Some("still bad")).await;
    assert_eq!(status(&f, "g").await.parked, 1);

    assert!(engine.discard(&g, id).await.unwrap());
    assert!(!engine.discard(&g, id).await.unwrap());
    assert!(engine.dead_letters(&g, None, 10).await.unwrap().is_empty());
    assert_eq!(status(&f, "g").await.parked, 0);
    drop(engine);
    f.finish().await;
}

pub async fn replay_selects_by_id_and_up_to_a_position(f: Fixture) {
    for i in 0..5 {
        append(&f, &format!("s-{i}"), 1).await;
    }
    create(&f, "g", quick(1)).await;
    let leases = fetch(&f, "g", "a", 10, WAIT).await;
    // max_attempts 1: a retry parks.
    nack(&f, "g", &leases, NackAction::Retry(None), Some("boom")).await;
    assert_eq!(status(&f, "g").await.parked, 5);
    let engine = f.engine();
    let g = name("g");
    let fourth = leases.iter().find(|l| l.event.position == 4).unwrap().event.id;
    assert_eq!(engine.replay(&g, ReplaySelection::Ids(vec![fourth])).await.unwrap(), 1);
    assert_eq!(engine.replay(&g, ReplaySelection::UpTo(2)).await.unwrap(), 2);
    let again = fetch(&f, "g", "a", 10, WAIT).await;
    let mut positions: Vec<u64> = again.iter().map(|l| l.event.position).collect();
    positions.sort_unstable();
    assert_eq!(positions, [1, 2, 4]);
    let left: Vec<u64> =
        engine.dead_letters(&g, None, 10).await.unwrap().iter().map(|d| d.dead_letter.position).collect();
    assert_eq!(left, [3, 5]);
    // Pages of dead letters continue after a position.
    let page: Vec<u64> =
        engine.dead_letters(&g, Some(3), 10).await.unwrap().iter().map(|d| d.dead_letter.position).collect();
    assert_eq!(page, [5]);
    drop(engine);
    f.finish().await;
}

pub async fn a_lease_not_acked_in_time_is_redelivered_with_its_attempt_counted(f: Fixture) {
    append(&f, "order-1", 2).await;
    let config = GroupConfig {
        ack_timeout: Duration::from_millis(300),
        backoff: Backoff::fixed(Duration::from_millis(10)),
        ..GroupConfig::default()
    };
    create(&f, "g", config).await;
    let lost = fetch(&f, "g", "crashed", 10, WAIT).await;
    assert_eq!(lost.len(), 1);
    let leased_at = Instant::now();
    // The consumer never acks; another one gets the event with its attempt count.
    let again = fetch(&f, "g", "survivor", 10, WAIT).await;
    assert!(leased_at.elapsed() >= Duration::from_millis(300), "redelivered before the ack timeout");
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].event.id, again[0].attempt), (lost[0].event.id, 2));
    // The late ack of the first consumer is refused: its lease is gone.
    let late = ack(&f, "g", &lost).await;
    assert_eq!((late.count, late.expired.len()), (0, 1));
    assert_eq!(ack(&f, "g", &again).await.count, 1);
    let s = status(&f, "g").await;
    assert_eq!((s.timeouts, s.redeliveries), (1, 1));
    let consumers: Vec<&str> = s.consumers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(consumers, ["crashed", "survivor"]);
    f.finish().await;
}

pub async fn timed_out_leases_are_parked_after_max_attempts_with_the_reason(f: Fixture) {
    append(&f, "order-1", 1).await;
    let config = GroupConfig {
        ack_timeout: Duration::from_millis(100),
        max_attempts: 2,
        backoff: Backoff::fixed(Duration::from_millis(10)),
        ..GroupConfig::default()
    };
    create(&f, "g", config).await;
    assert_eq!(fetch(&f, "g", "a", 1, WAIT).await[0].attempt, 1);
    assert_eq!(fetch(&f, "g", "a", 1, WAIT).await[0].attempt, 2);
    let deadline = Instant::now() + WAIT;
    while status(&f, "g").await.parked == 0 {
        assert!(Instant::now() < deadline, "the last timed-out attempt was not parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = f.engine().dead_letters(&name("g"), None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].dead_letter.attempts, 2);
    assert!(dead[0].dead_letter.reason.contains("timed out"), "{}", dead[0].dead_letter.reason);
    f.finish().await;
}

pub async fn a_long_poll_returns_as_soon_as_an_event_arrives(f: Fixture) {
    create(&f, "g", quick(5)).await;
    let engine = f.engine();
    let waiter =
        tokio::spawn(
            async move { engine.fetch(&name("g"), Fetch::new("a", 10, Duration::from_secs(20))).await },
        );
    tokio::time::sleep(Duration::from_millis(200)).await;
    append(&f, "order-9", 1).await;
    let got = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(got.len(), 1);
    // An empty wait returns empty.
    assert!(fetch(&f, "g", "a", 10, Duration::from_millis(50)).await.is_empty());
    f.finish().await;
}

pub async fn a_long_poll_wakes_when_an_ack_releases_the_next_event_of_a_stream(f: Fixture) {
    append(&f, "order-1", 2).await;
    create(&f, "g", quick(5)).await;
    let first = fetch(&f, "g", "a", 10, WAIT).await;
    assert_eq!(first.len(), 1);
    let engine = f.engine();
    let waiter =
        tokio::spawn(
            async move { engine.fetch(&name("g"), Fetch::new("b", 10, Duration::from_secs(20))).await },
        );
    tokio::time::sleep(Duration::from_millis(200)).await;
    ack(&f, "g", &first).await;
    let got = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(got.iter().map(|l| l.event.version).collect::<Vec<_>>(), [2]);
    f.finish().await;
}

pub async fn filters_and_start_points_choose_the_events(f: Fixture) {
    append_type(&f, "order-1", "order.placed").await;
    append_type(&f, "user-1", "user.created").await;
    create(&f, "orders", GroupConfig { filter: GroupFilter::types(["order.#"]), ..quick(5) }).await;
    create(&f, "tail", GroupConfig { start: StartFrom::End, ..quick(5) }).await;
    create(&f, "users", GroupConfig { filter: GroupFilter::default().with_category("user"), ..quick(5) })
        .await;
    create(&f, "after", GroupConfig { start: StartFrom::Position(1), ..quick(5) }).await;
    append_type(&f, "order-2", "order.item.added").await;

    // Everything each group hands out (one event per stream: all of it at once, unacked).
    let types = async |group: &str| -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let leases = fetch(&f, group, "c", 10, Duration::from_millis(500)).await;
            if leases.is_empty() {
                return out;
            }
            out.extend(leases.into_iter().map(|l| l.event.event_type.to_string()));
        }
    };
    assert_eq!(types("orders").await, ["order.placed", "order.item.added"]);
    assert_eq!(types("tail").await, ["order.item.added"]);
    assert_eq!(types("users").await, ["user.created"]);
    assert_eq!(types("after").await, ["user.created", "order.item.added"]);

    let engine = f.engine();
    let beyond = GroupConfig { start: StartFrom::Position(99), ..quick(5) };
    assert!(matches!(engine.put(&name("beyond"), beyond).await, Err(Error::InvalidArgument(_))));
    // Updating keeps the start point; listing is in name order.
    let put = engine.put(&name("tail"), GroupConfig { max_attempts: 9, ..quick(5) }).await.unwrap();
    assert_eq!(put, Put::Updated);
    let names: Vec<String> = engine.list().await.unwrap().iter().map(ToString::to_string).collect();
    assert_eq!(names, ["after", "orders", "tail", "users"]);
    let tail = status(&f, "tail").await;
    assert_eq!((tail.config.max_attempts, tail.config.start), (9, StartFrom::End));
    drop(engine);
    f.finish().await;
}

/// A group inside a tenant gets that tenant's events only, its category is the tenant's,
/// and `$` streams reach only a group whose category names them.
pub async fn tenant_groups_see_their_tenant_and_dollar_streams_only_by_category(f: Fixture) {
    let put = |s: &str| {
        let store = f.store();
        let name = match s.split_once('/') {
            Some((tenant, local)) => StreamName::in_tenant(Some(tenant), &StreamName::stored(local).unwrap()),
            None => StreamName::stored(s).unwrap(),
        };
        async move { store.append(name, ExpectedVersion::Any, vec![event("order.placed", "{}")]).await.unwrap() }
    };
    for s in
        ["order-1", "acme/order-1", "globex/order-1", "acme/$bifrost-audit", "$bifrost-audit", "acme/user-1"]
    {
        put(s).await;
    }
    let only = |tenant: Option<&str>| TenantScope::Only(tenant.map(str::to_owned));
    let groups = [
        ("all", GroupFilter::default()),
        ("default", GroupFilter::default().in_tenant(only(None))),
        ("acme", GroupFilter::default().in_tenant(only(Some("acme")))),
        ("acme-orders", GroupFilter::default().with_category("order").in_tenant(only(Some("acme")))),
        ("acme-audit", GroupFilter::default().with_category("$bifrost").in_tenant(only(Some("acme")))),
    ];
    for (group, filter) in &groups {
        create(&f, group, GroupConfig { filter: filter.clone(), ..quick(5) }).await;
    }
    let streams = async |group: &str| -> Vec<String> {
        let mut out: Vec<String> = drain(&f, group, Duration::from_millis(300))
            .await
            .into_iter()
            .map(|l| l.event.stream.to_string())
            .collect();
        out.sort();
        out
    };
    assert_eq!(streams("all").await, ["acme/order-1", "acme/user-1", "globex/order-1", "order-1"]);
    assert_eq!(streams("default").await, ["order-1"]);
    assert_eq!(streams("acme").await, ["acme/order-1", "acme/user-1"]);
    assert_eq!(streams("acme-orders").await, ["acme/order-1"]);
    assert_eq!(streams("acme-audit").await, ["acme/$bifrost-audit"]);
    f.finish().await;
}

pub async fn unknown_groups_are_not_found_and_bad_settings_are_refused(f: Fixture) {
    let engine = f.engine();
    let nope = name("nope");
    let not_found = |r: Result<(), Error>| matches!(r, Err(Error::GroupNotFound(g)) if g == "nope");
    assert!(not_found(engine.status(&nope).await.map(|_| ())));
    assert!(not_found(engine.fetch(&nope, Fetch::new("a", 1, Duration::ZERO)).await.map(|_| ())));
    assert!(not_found(engine.settle(&nope, &[LeaseToken::new(1, 1)], Verdict::Ack, false).await.map(|_| ())));
    assert!(not_found(engine.dead_letters(&nope, None, 10).await.map(|_| ())));
    assert!(not_found(engine.replay(&nope, ReplaySelection::All).await.map(|_| ())));
    assert!(not_found(engine.discard(&nope, uuid::Uuid::nil()).await.map(|_| ())));
    assert!(not_found(engine.delete(&nope).await));
    let bad = GroupConfig { max_attempts: 0, ..GroupConfig::default() };
    assert!(matches!(engine.put(&nope, bad).await, Err(Error::InvalidArgument(_))));
    assert!(engine.list().await.unwrap().is_empty(), "a refused group is not created");
    drop(engine);
    f.finish().await;
}

pub async fn deleting_a_group_ends_it_and_a_new_one_of_that_name_starts_afresh(f: Fixture) {
    append(&f, "s-1", 2).await;
    create(&f, "g", quick(1)).await;
    let leases = fetch(&f, "g", "a", 10, WAIT).await;
    nack(&f, "g", &leases, NackAction::Park, None).await;
    let out = fetch(&f, "g", "a", 10, WAIT).await;
    assert_eq!(out.len(), 1);
    f.engine().delete(&name("g")).await.unwrap();
    assert!(matches!(f.engine().status(&name("g")).await, Err(Error::GroupNotFound(_))));
    let late = f.engine().settle(&name("g"), &tokens(&out), Verdict::Ack, false).await;
    assert!(matches!(late, Err(Error::GroupNotFound(_))));
    // Same name again: no dead letters, no settled events, nothing of the old group.
    create(&f, "g", quick(1)).await;
    let s = status(&f, "g").await;
    assert_eq!((s.parked, s.checkpoint, s.lag, s.in_flight), (0, 0, 2, 0));
    let again = fetch(&f, "g", "b", 10, WAIT).await;
    assert_eq!((again.len(), again[0].event.version, again[0].attempt), (1, 1, 1));
    let stale = f.engine().settle(&name("g"), &tokens(&out), Verdict::Ack, false).await.unwrap();
    assert_eq!(stale.count, 0, "a lease of the deleted group settles nothing in the new one");
    f.finish().await;
}

pub async fn changing_the_filter_keeps_what_is_settled(f: Fixture) {
    append_type(&f, "order-1", "order.placed").await;
    append_type(&f, "user-1", "user.created").await;
    append_type(&f, "order-2", "order.placed").await;
    create(&f, "g", GroupConfig { filter: GroupFilter::types(["order.#"]), ..quick(5) }).await;
    let first = fetch(&f, "g", "a", 1, WAIT).await;
    assert_eq!(first[0].event.position, 1);
    ack(&f, "g", &first).await;
    assert_eq!(status(&f, "g").await.checkpoint, 2, "the user event did not match");
    append_type(&f, "user-2", "user.created").await;
    // Now users too, from the checkpoint on: the acked order never comes again, the user
    // event below the checkpoint is not delivered, the one above it is.
    let wider = GroupConfig { filter: GroupFilter::types(["order.#", "user.#"]), ..quick(5) };
    assert_eq!(f.engine().put(&name("g"), wider).await.unwrap(), Put::Updated);
    let rest = drain(&f, "g", Duration::from_millis(500)).await;
    let mut positions: Vec<u64> = rest.iter().map(|l| l.event.position).collect();
    positions.sort_unstable();
    assert_eq!(positions, [3, 4]);
    // And narrower again: what no longer matches is not delivered.
    let narrow = GroupConfig { filter: GroupFilter::types(["order.#"]), ..quick(5) };
    f.engine().put(&name("g"), narrow).await.unwrap();
    append_type(&f, "user-3", "user.created").await;
    append_type(&f, "other-1", "other.thing").await;
    assert!(fetch(&f, "g", "a", 10, Duration::from_millis(300)).await.is_empty());
    assert_eq!(status(&f, "g").await.checkpoint, 6);
    f.finish().await;
}

pub async fn max_in_flight_bounds_the_leases_out(f: Fixture) {
    for i in 0..10 {
        append(&f, &format!("s-{i}"), 1).await;
    }
    create(&f, "g", GroupConfig { max_in_flight: 3, ..quick(5) }).await;
    let first = fetch(&f, "g", "a", 10, WAIT).await;
    assert_eq!(first.len(), 3);
    assert!(fetch(&f, "g", "b", 10, Duration::from_millis(50)).await.is_empty());
    ack(&f, "g", &first[..1]).await;
    assert_eq!(fetch(&f, "g", "b", 10, WAIT).await.len(), 1);
    // Raising the limit lets more out at once.
    f.engine().put(&name("g"), GroupConfig { max_in_flight: 6, ..quick(5) }).await.unwrap();
    assert_eq!(fetch(&f, "g", "b", 10, WAIT).await.len(), 3);
    assert_eq!(status(&f, "g").await.in_flight, 6);
    f.finish().await;
}

pub async fn consecutive_events_of_a_stream_can_be_leased_together(f: Fixture) {
    append(&f, "s-1", 5).await;
    append(&f, "s-2", 2).await;
    create(&f, "g", quick(5)).await;
    let engine = f.engine();
    let batch = Fetch { per_stream: 3, ..Fetch::new("a", 10, WAIT) };
    let leases = engine.fetch(&name("g"), batch).await.unwrap();
    let got: Vec<(&str, u64)> = leases.iter().map(|l| (l.event.stream.as_str(), l.event.version)).collect();
    assert_eq!(got, [("s-1", 1), ("s-1", 2), ("s-1", 3), ("s-2", 1), ("s-2", 2)]);
    // A batch that fails comes back whole, in order.
    let s1: Vec<Lease> = leases.iter().filter(|l| l.event.stream.as_str() == "s-1").cloned().collect();
    nack(&f, "g", &s1, NackAction::Retry(Some(Duration::ZERO)), None).await;
    let again = engine.fetch(&name("g"), batch).await.unwrap();
    let got: Vec<(u64, u32)> = again.iter().map(|l| (l.event.version, l.attempt)).collect();
    assert_eq!(got, [(1, 2), (2, 2), (3, 2)]);
    drop(engine);
    f.finish().await;
}

pub async fn lag_counts_unread_matching_events_without_parked_ones(f: Fixture) {
    for i in 0..30 {
        let kind = if i % 3 == 0 { "order.placed" } else { "user.seen" };
        append_type(&f, &format!("s-{i}"), kind).await;
    }
    let config = GroupConfig { filter: GroupFilter::types(["order.*"]), max_in_flight: 1, ..quick(1) };
    create(&f, "g", config).await;
    assert_eq!(status(&f, "g").await.lag, 10);
    let lease = fetch(&f, "g", "a", 1, WAIT).await;
    nack(&f, "g", &lease, NackAction::Park, None).await;
    assert_eq!(status(&f, "g").await.lag, 9);
    for i in 30..36 {
        append_type(&f, &format!("s-{i}"), "order.placed").await;
    }
    assert_eq!(status(&f, "g").await.lag, 15);
    let lease = fetch(&f, "g", "a", 1, WAIT).await;
    ack(&f, "g", &lease).await;
    assert_eq!(status(&f, "g").await.lag, 14);
    f.finish().await;
}

pub async fn a_fetch_without_wait_sees_events_appended_before_it(f: Fixture) {
    create(&f, "g", quick(5)).await;
    for round in 0..20 {
        append(&f, &format!("s-{round}"), 1).await;
        let got = fetch(&f, "g", "a", 10, Duration::ZERO).await;
        assert_eq!(got.len(), 1, "round {round}");
        ack(&f, "g", &got).await;
    }
    f.finish().await;
}

pub async fn order_per_stream_holds_with_8_competing_consumers_over_300_streams(f: Fixture) {
    let config = GroupConfig {
        ack_timeout: Duration::from_secs(60),
        backoff: Backoff::fixed(Duration::from_millis(5)),
        max_attempts: 100,
        ..GroupConfig::default()
    };
    create(&f, "g", config).await;
    // Appends keep arriving while the consumers run.
    let writer = {
        let store = f.store();
        tokio::spawn(async move {
            for _ in 0..4 {
                for s in 0..300 {
                    store.append(stream(&format!("s-{s}")), ExpectedVersion::Any, events(1)).await.unwrap();
                }
            }
        })
    };
    let handled = Arc::new(std::sync::Mutex::new(HashMap::<String, Vec<u64>>::new()));
    let mut consumers = Vec::new();
    for c in 0..8 {
        let engine = f.engine();
        let handled = handled.clone();
        consumers.push(tokio::spawn(async move {
            let g = name("g");
            let consumer = format!("c{c}");
            let mut idle = 0;
            while idle < 6 {
                let leases =
                    engine.fetch(&g, Fetch::new(&consumer, 20, Duration::from_millis(300))).await.unwrap();
                if leases.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                let mut acks = Vec::new();
                for lease in leases {
                    // Some deliveries fail once and come back: order must survive retries too.
                    if lease.event.version % 3 == 2 && lease.attempt == 1 {
                        let nack = Verdict::Nack(NackAction::Retry(None), None);
                        engine.settle(&g, &[lease.token], nack, false).await.unwrap();
                        continue;
                    }
                    handled
                        .lock()
                        .unwrap()
                        .entry(lease.event.stream.to_string())
                        .or_default()
                        .push(lease.event.version);
                    acks.push(lease.token);
                }
                let settled = engine.settle(&g, &acks, Verdict::Ack, false).await.unwrap();
                assert!(settled.expired.is_empty());
            }
        }));
    }
    writer.await.unwrap();
    for c in consumers {
        c.await.unwrap();
    }
    {
        let handled = handled.lock().unwrap();
        assert_eq!(handled.len(), 300);
        for (s, versions) in handled.iter() {
            assert_eq!(versions, &[1, 2, 3, 4], "stream {s} handled out of order or twice");
        }
    }
    let s = status(&f, "g").await;
    assert_eq!((s.lag, s.in_flight, s.checkpoint), (0, 0, 1200));
    f.finish().await;
}

/// Acks half, nacks two with a delay, leaves three out; then a restart. Acked events
/// never come back; the nacked ones come back with attempt 2 once their delay is over, and
/// the ones that were out with attempt 2 too: their first delivery is counted.
async fn a_restart_keeps_acks_retries_and_attempts(mut f: Fixture, crash: bool) {
    for i in 0..50 {
        append(&f, &format!("s-{}", i % 10), 1).await;
    }
    let config = GroupConfig {
        ack_timeout: Duration::from_millis(500),
        backoff: Backoff::fixed(Duration::from_millis(100)),
        ..quick(5)
    };
    create(&f, "g", config).await;
    let leases = fetch(&f, "g", "a", 10, WAIT).await;
    assert_eq!(leases.len(), 10);
    ack(&f, "g", &leases[..5]).await;
    let mut acked: HashSet<_> = leases[..5].iter().map(|l| l.event.id).collect();
    let nacked_at = Instant::now();
    nack(&f, "g", &leases[5..7], NackAction::Retry(Some(Duration::from_millis(1500))), Some("later")).await;
    f.restart(crash).await;

    let mut attempts = HashMap::new();
    let mut first_retry_at = None;
    loop {
        let got = fetch(&f, "g", "b", 50, Duration::from_millis(2500)).await;
        if got.is_empty() {
            break;
        }
        for lease in &got {
            assert!(!acked.contains(&lease.event.id), "an acked event came back after a restart");
            attempts.insert(lease.event.id, lease.attempt);
            if leases[5..7].iter().any(|l| l.event.id == lease.event.id) {
                first_retry_at.get_or_insert_with(|| nacked_at.elapsed());
            }
        }
        ack(&f, "g", &got).await;
        acked.extend(got.iter().map(|l| l.event.id));
    }
    assert_eq!(acked.len(), 50);
    for lease in &leases[5..7] {
        assert_eq!(attempts[&lease.event.id], 2, "a nacked event keeps its attempt count");
    }
    let waited = first_retry_at.unwrap();
    assert!(waited >= Duration::from_millis(1500), "a retry fired after {waited:?}, before its delay");
    for lease in &leases[7..10] {
        assert_eq!(attempts[&lease.event.id], 2, "a lease out at the restart counts as an attempt");
    }
    let s = status(&f, "g").await;
    assert_eq!((s.checkpoint, s.lag, s.in_flight, s.waiting), (50, 0, 0, 0));
    f.finish().await;
}

pub async fn a_group_resumes_after_a_graceful_restart(f: Fixture) {
    a_restart_keeps_acks_retries_and_attempts(f, false).await;
}

pub async fn a_group_resumes_after_a_crash(f: Fixture) {
    a_restart_keeps_acks_retries_and_attempts(f, true).await;
}

pub async fn a_lease_out_at_a_crash_on_its_last_attempt_is_parked(mut f: Fixture) {
    append(&f, "poison-1", 1).await;
    append(&f, "fine-1", 1).await;
    let config = GroupConfig { ack_timeout: Duration::from_millis(300), max_attempts: 2, ..quick(2) };
    create(&f, "g", config).await;
    let first = fetch(&f, "g", "a", 1, WAIT).await;
    assert_eq!((first[0].event.stream.as_str(), first[0].attempt), ("poison-1", 1));
    nack(&f, "g", &first, NackAction::Retry(Some(Duration::ZERO)), None).await;
    let second = fetch(&f, "g", "a", 1, WAIT).await;
    assert_eq!((second[0].event.stream.as_str(), second[0].attempt), ("poison-1", 2));
    // The process dies while the last attempt is out: it counts, so the event is parked
    // instead of coming back forever.
    f.restart(true).await;
    let rest = drain(&f, "g", Duration::from_millis(1500)).await;
    assert_eq!(rest.iter().map(|l| l.event.stream.as_str()).collect::<Vec<_>>(), ["fine-1"]);
    let dead = f.engine().dead_letters(&name("g"), None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].dead_letter.event_id, dead[0].dead_letter.attempts), (first[0].event.id, 2));
    f.finish().await;
}

pub async fn lag_right_after_a_restart_does_not_count_what_was_acked(mut f: Fixture) {
    for i in 0..6 {
        append(&f, &format!("s-{i}"), 1).await;
    }
    create(&f, "g", GroupConfig { max_in_flight: 6, ..quick(5) }).await;
    let leases = fetch(&f, "g", "a", 6, WAIT).await;
    // Everything but the first acked: the checkpoint stays at 0, five settled above it.
    ack(&f, "g", &leases[1..]).await;
    nack(&f, "g", &leases[..1], NackAction::Retry(Some(Duration::from_secs(60))), None).await;
    f.restart(false).await;
    let s = status(&f, "g").await;
    assert_eq!((s.lag, s.checkpoint, s.waiting), (1, 0, 1));
    f.finish().await;
}

pub async fn a_dead_letter_whose_event_was_deleted_is_found_by_id_and_dropped_on_replay(f: Fixture) {
    append(&f, "gone-1", 1).await;
    append(&f, "kept-1", 1).await;
    create(&f, "g", quick(1)).await;
    let leases = fetch(&f, "g", "a", 10, WAIT).await;
    nack(&f, "g", &leases, NackAction::Park, Some("bad")).await;
    let gone = leases.iter().find(|l| l.event.stream.as_str() == "gone-1").unwrap().event.id;
    f.store().delete_stream(&stream("gone-1"), DeleteMode::Hard).await.unwrap();

    let engine = f.engine();
    let g = name("g");
    let dead = engine.dead_letters(&g, None, 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().any(|d| d.dead_letter.event_id == gone && d.event.is_none()));
    // Found by id although its event is gone: replay drops it.
    assert_eq!(engine.replay(&g, ReplaySelection::Ids(vec![gone])).await.unwrap(), 0);
    assert!(engine.dead_letters(&g, None, 10).await.unwrap().iter().all(|d| d.dead_letter.event_id != gone));
    assert_eq!(status(&f, "g").await.parked, 1);
    let kept = engine.dead_letters(&g, None, 10).await.unwrap()[0].dead_letter.event_id;
    assert!(engine.discard(&g, kept).await.unwrap());
    assert_eq!(status(&f, "g").await.parked, 0);
    drop(engine);
    f.finish().await;
}
