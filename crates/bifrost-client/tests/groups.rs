//! The consumer-group calls against a live server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bifrost_client::api::{
    BackoffKindBody, BackoffRequest, GroupConfigRequest, GroupFilterRequest, NackRequest, ReplayRequest,
    StartBody,
};
use bifrost_client::{Client, Error, PutOutcome};
use bifrost_core::testkit::{event, stream};
use bifrost_core::{EventStore, ExpectedVersion};
use bifrost_server::ServerConfig;

use common::TestServer;

const WAIT: Duration = Duration::from_secs(5);

async fn append(client: &Client, name: &str, event_type: &str, data: &str) {
    client.append(stream(name), ExpectedVersion::Any, vec![event(event_type, data)]).await.unwrap();
}

#[tokio::test]
async fn put_creates_then_updates_and_get_and_list_show_the_group() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    append(&client, "order-1", "order.placed", "1").await;

    let (outcome, created) = client.put_group("billing", &GroupConfigRequest::default()).await.unwrap();
    assert_eq!(outcome, PutOutcome::Created);
    assert_eq!(created.group, "billing");
    assert_eq!(created.config.start, StartBody::Beginning);
    assert_eq!(created.config.ack_timeout_ms, 30_000);
    assert_eq!(created.config.max_attempts, 5);
    assert_eq!(created.config.backoff.kind, BackoffKindBody::Exponential);
    assert_eq!(
        (created.config.backoff.initial_ms, created.config.backoff.max_ms, created.config.backoff.jitter),
        (1000, 60_000, true)
    );
    assert_eq!((created.lag, created.in_flight, created.parked), (1, 0, 0));
    assert!(created.created_at.is_some());

    let settings = GroupConfigRequest {
        filter: Some(GroupFilterRequest {
            types: Some(vec!["order.#".into()]),
            category: Some("order".into()),
        }),
        ack_timeout_ms: Some(2500),
        max_attempts: Some(3),
        backoff: Some(BackoffRequest { kind: Some(BackoffKindBody::Fixed), ..Default::default() }),
        max_in_flight: Some(7),
        ..Default::default()
    };
    let (outcome, updated) = client.put_group("billing", &settings).await.unwrap();
    assert_eq!(outcome, PutOutcome::Updated);
    assert_eq!(updated.config.filter.types, ["order.#"]);
    assert_eq!(updated.config.filter.category.as_deref(), Some("order"));
    assert_eq!(updated.config.ack_timeout_ms, 2500);
    assert_eq!((updated.config.max_attempts, updated.config.max_in_flight), (3, 7));
    assert_eq!(updated.config.backoff.kind, BackoffKindBody::Fixed);
    assert_eq!(updated.created_at, created.created_at);

    assert_eq!(client.get_group("billing").await.unwrap(), updated);
    // What GET shows can be put back as it is.
    let (outcome, again) = client.put_group("billing", &updated.config.clone().into()).await.unwrap();
    assert_eq!((outcome, again.config), (PutOutcome::Updated, updated.config));

    client
        .put_group("audit", &GroupConfigRequest { start: Some(StartBody::End), ..Default::default() })
        .await
        .unwrap();
    let names: Vec<_> = client.list_groups().await.unwrap().into_iter().map(|g| g.group).collect();
    assert_eq!(names, ["audit", "billing"]);
    client.delete_group("audit").await.unwrap();
    assert_eq!(client.list_groups().await.unwrap().len(), 1);
}

#[tokio::test]
async fn fetch_leases_events_and_ack_settles_them() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    client.put_group("g", &GroupConfigRequest::default()).await.unwrap();
    for name in ["order-1", "order-2"] {
        append(&client, name, "order.placed", "{\"n\": 1}").await;
    }
    let messages = client.fetch("g", 10, WAIT, Some("worker-1")).await.unwrap();
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().all(|m| m.attempt == 1));
    assert_eq!(messages[0].event.data.as_ref(), b"{\"n\": 1}");
    assert_eq!(messages[0].event.stream.as_str(), "order-1");
    let group = client.get_group("g").await.unwrap();
    assert_eq!(group.in_flight, 2);
    assert_eq!(group.consumers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["worker-1"]);

    let leases: Vec<String> = messages.iter().map(|m| m.lease.clone()).collect();
    let acked = client.ack("g", &leases).await.unwrap();
    assert_eq!((acked.acked, acked.expired.len()), (2, 0));
    // Settled twice: the second time the leases are no longer held.
    let again = client.ack("g", &leases).await.unwrap();
    assert_eq!((again.acked, again.expired), (0, leases));
    let group = client.get_group("g").await.unwrap();
    assert_eq!((group.lag, group.in_flight, group.checkpoint), (0, 0, 2));
    assert!(client.fetch("g", 10, Duration::ZERO, None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_long_poll_returns_when_an_event_is_appended_meanwhile() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    client.put_group("g", &GroupConfigRequest::default()).await.unwrap();
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            append(&client, "order-1", "order.placed", "1").await;
        })
    };
    let messages = client.fetch("g", 1, Duration::from_secs(20), None).await.unwrap();
    writer.await.unwrap();
    assert_eq!(messages.len(), 1);
}

#[tokio::test]
async fn nack_retry_redelivers_with_the_next_attempt() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    let fast = BackoffRequest {
        kind: Some(BackoffKindBody::Fixed),
        initial_ms: Some(50),
        max_ms: Some(50),
        jitter: Some(false),
    };
    client.put_group("g", &GroupConfigRequest { backoff: Some(fast), ..Default::default() }).await.unwrap();
    append(&client, "order-1", "order.placed", "1").await;

    let first = client.fetch("g", 1, WAIT, None).await.unwrap();
    let nacked = client
        .nack("g", &NackRequest::retry(vec![first[0].lease.clone()]).with_reason("busy"))
        .await
        .unwrap();
    assert_eq!((nacked.nacked, nacked.expired.len()), (1, 0));
    let second = client.fetch("g", 1, WAIT, None).await.unwrap();
    assert_eq!((second[0].attempt, second[0].event.id), (2, first[0].event.id));

    // An explicit delay overrides the backoff.
    client.nack("g", &NackRequest::retry(vec![second[0].lease.clone()]).with_delay_ms(0)).await.unwrap();
    let third = client.fetch("g", 1, WAIT, None).await.unwrap();
    assert_eq!(third[0].attempt, 3);
    assert!(client.get_group("g").await.unwrap().redeliveries >= 2);
}

#[tokio::test]
async fn park_lists_the_dead_letter_then_replay_and_discard_settle_it() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    client.put_group("g", &GroupConfigRequest::default()).await.unwrap();
    client
        .append(stream("order-1"), ExpectedVersion::Any, vec![event("order.a", "1"), event("order.b", "2")])
        .await
        .unwrap();
    append(&client, "order-2", "order.a", "3").await;

    let first = client.fetch("g", 1, WAIT, None).await.unwrap();
    let parked_id = first[0].event.id;
    client.nack("g", &NackRequest::park(vec![first[0].lease.clone()]).with_reason("poison")).await.unwrap();

    let page = client.dead_letters("g", None, 100).await.unwrap();
    assert_eq!(page.dead_letters.len(), 1);
    let dl = &page.dead_letters[0];
    assert_eq!((dl.event_id, dl.attempts, dl.reason.as_str()), (parked_id, 1, "poison"));
    assert_eq!((dl.stream.as_str(), dl.event_type.as_str(), dl.position), ("order-1", "order.a", 1));
    assert_eq!(dl.event.as_ref().map(|e| e.data.as_ref()), Some(&b"1"[..]));
    assert_eq!(client.get_group("g").await.unwrap().parked, 1);

    // A parked event does not hold back the rest of its stream.
    let rest = client.fetch("g", 10, WAIT, None).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.event.position).collect::<Vec<_>>(), [2, 3]);
    let leases: Vec<String> = rest.iter().map(|m| m.lease.clone()).collect();
    client.ack("g", &leases).await.unwrap();

    let replayed = client.replay_dead_letters("g", &ReplayRequest::events([parked_id])).await.unwrap();
    assert_eq!(replayed.replayed, 1);
    assert!(client.dead_letters("g", None, 100).await.unwrap().dead_letters.is_empty());
    let again = client.fetch("g", 1, WAIT, None).await.unwrap();
    assert_eq!((again[0].event.id, again[0].attempt), (parked_id, 1), "replayed with fresh attempts");

    client.nack("g", &NackRequest::park(vec![again[0].lease.clone()])).await.unwrap();
    assert_eq!(client.replay_dead_letters("g", &ReplayRequest::all()).await.unwrap().replayed, 1);
    let third = client.fetch("g", 1, WAIT, None).await.unwrap();
    client.nack("g", &NackRequest::park(vec![third[0].lease.clone()])).await.unwrap();

    client.discard_dead_letter("g", parked_id).await.unwrap();
    assert!(client.dead_letters("g", None, 100).await.unwrap().dead_letters.is_empty());
    assert!(client.fetch("g", 1, Duration::from_millis(100), None).await.unwrap().is_empty());
    let err = client.discard_dead_letter("g", parked_id).await.unwrap_err();
    assert!(
        matches!(err, Error::DeadLetterNotFound { ref group, event_id } if group == "g" && event_id == parked_id),
        "{err:?}"
    );
}

#[tokio::test]
async fn dead_letters_page_in_log_order() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    client.put_group("g", &GroupConfigRequest::default()).await.unwrap();
    for name in ["order-1", "order-2", "order-3"] {
        append(&client, name, "order.a", "1").await;
    }
    let messages = client.fetch("g", 3, WAIT, None).await.unwrap();
    let leases: Vec<String> = messages.iter().map(|m| m.lease.clone()).collect();
    assert_eq!(client.nack("g", &NackRequest::park(leases)).await.unwrap().nacked, 3);
    let first = client.dead_letters("g", None, 2).await.unwrap();
    assert_eq!(
        first.dead_letters.iter().map(|d| d.stream.as_str()).collect::<Vec<_>>(),
        ["order-1", "order-2"]
    );
    let second = client.dead_letters("g", first.next, 2).await.unwrap();
    assert_eq!(second.dead_letters.iter().map(|d| d.stream.as_str()).collect::<Vec<_>>(), ["order-3"]);
    assert_eq!(second.next, None);
}

#[tokio::test]
async fn an_unknown_group_is_group_not_found_on_every_route() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    let is_not_found = |e: Error| matches!(e, Error::GroupNotFound(ref g) if g == "ghost");
    assert!(is_not_found(client.get_group("ghost").await.unwrap_err()));
    assert!(is_not_found(client.delete_group("ghost").await.unwrap_err()));
    assert!(is_not_found(client.fetch("ghost", 1, Duration::ZERO, None).await.unwrap_err()));
    assert!(is_not_found(client.ack("ghost", &["x".into()]).await.unwrap_err()));
    assert!(is_not_found(client.nack("ghost", &NackRequest::park(vec!["x".into()])).await.unwrap_err()));
    assert!(is_not_found(client.dead_letters("ghost", None, 10).await.unwrap_err()));
    assert!(is_not_found(client.replay_dead_letters("ghost", &ReplayRequest::all()).await.unwrap_err()));
    assert!(is_not_found(client.discard_dead_letter("ghost", uuid::Uuid::now_v7()).await.unwrap_err()));
    let err = client.get_group("ghost").await.unwrap_err();
    assert_eq!(err.to_string(), "there is no consumer group ghost");
}

#[tokio::test]
async fn bad_arguments_come_back_as_the_servers_problem() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    let err = client
        .put_group("g", &GroupConfigRequest { max_attempts: Some(0), ..Default::default() })
        .await
        .unwrap_err();
    let problem = err.problem().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(problem.status, 400);
    assert!(problem.problem_type.starts_with("bifrost:"), "{problem:?}");
    assert!(!err.is_transient());
    let err = client.put_group("bad name", &GroupConfigRequest::default()).await.unwrap_err();
    assert_eq!(err.problem().map(|p| p.status), Some(400), "{err:?}");
}

#[tokio::test]
async fn a_server_that_is_gone_is_a_transient_transport_error() {
    let server = TestServer::memory(ServerConfig::default()).await;
    let client = server.client();
    server.stop().await;
    let err = client.list_groups().await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }) && err.is_transient(), "{err:?}");
    let store_err = client.stream_info(&stream("a-1")).await.unwrap_err();
    assert!(matches!(store_err, bifrost_core::Error::Unavailable(_)), "{store_err:?}");
}
