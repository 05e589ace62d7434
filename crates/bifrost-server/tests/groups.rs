//! Consumer groups over HTTP: creating and changing groups, fetch / ack / nack, per-stream
//! order, retries, ack timeouts, dead letters, figures and errors. Timeouts only guard
//! against hangs, except where a test is about time (long polls, ack timeouts), and there
//! the delays are short and the bounds generous.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use bifrost_server::{ServerConfig, install_metrics_recorder};
use common::{Resp, TestApp, request};
use serde_json::{Value, json};

const GUARD: Duration = Duration::from_secs(10);

async fn put(app: &TestApp, group: &str, body: Value) -> Resp {
    app.put_json(&format!("/v1/groups/{group}"), body.to_string()).await
}

/// Creates a group and insists on 201.
async fn create(app: &TestApp, group: &str, body: Value) -> Value {
    let resp = put(app, group, body).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    resp.json()
}

/// The messages of one fetch.
async fn fetch(app: &TestApp, group: &str, query: &str) -> Vec<Value> {
    let resp = tokio::time::timeout(GUARD, app.post_empty(&format!("/v1/groups/{group}/fetch?{query}")))
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.content_type(), "application/json");
    resp.json()["messages"].as_array().unwrap().clone()
}

/// Fetches until `n` messages came (the group takes new events in from the log
/// asynchronously, so one fetch right after an append may see only some of them).
/// `extra` is more query parameters, e.g. `&consumer=a`.
async fn fetch_n(app: &TestApp, group: &str, n: usize, extra: &str) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let more = fetch(app, group, &format!("max={}&wait=5000{extra}", n - got.len())).await;
        assert!(!more.is_empty(), "expected {n} messages, got {got:?}");
        got.extend(more);
    }
    got
}

async fn ack(app: &TestApp, group: &str, leases: &[&Value]) -> Value {
    let resp =
        app.post_json(&format!("/v1/groups/{group}/ack"), json!({ "leases": leases }).to_string()).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    resp.json()
}

async fn nack(app: &TestApp, group: &str, body: Value) -> Value {
    let resp = app.post_json(&format!("/v1/groups/{group}/nack"), body.to_string()).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    resp.json()
}

async fn status(app: &TestApp, group: &str) -> Value {
    let resp = app.get(&format!("/v1/groups/{group}")).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    resp.json()
}

async fn dead_letters(app: &TestApp, group: &str) -> Vec<Value> {
    let resp = app.get(&format!("/v1/groups/{group}/dead-letters")).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    resp.json()["dead_letters"].as_array().unwrap().clone()
}

/// Appends one event of `event_type` with `data`.
async fn append(app: &TestApp, stream: &str, event_type: &str, data: Value) -> Value {
    app.append(stream, json!({"events": [{"type": event_type, "data": data}]})).await
}

fn streams_of(messages: &[Value]) -> Vec<&str> {
    messages.iter().map(|m| m["event"]["stream"].as_str().unwrap()).collect()
}

fn default_config() -> Value {
    json!({
        "filter": {"types": [], "category": null},
        "start": "beginning",
        "ack_timeout_ms": 30000,
        "max_attempts": 5,
        "backoff": {"kind": "exponential", "initial_ms": 1000, "max_ms": 60000, "jitter": true},
        "max_in_flight": 1000,
    })
}

#[tokio::test]
async fn put_without_a_body_creates_a_group_with_the_documented_defaults() {
    let app = TestApp::memory().await;
    let resp = app.call(request(Method::PUT, "/v1/groups/billing", None, "")).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["group"], "billing");
    assert_eq!(body["config"], default_config());
    assert_eq!(
        (&body["checkpoint"], &body["lag"], &body["in_flight"], &body["parked"]),
        (&json!(0), &json!(0), &json!(0), &json!(0))
    );
    assert_eq!(body["consumers"], json!([]));
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(status(&app, "billing").await, body, "the PUT answer is the group as GET shows it");
    // `{}` means the same.
    assert_eq!(create(&app, "other", json!({})).await["config"], default_config());
}

#[tokio::test]
async fn put_again_updates_with_200_resets_omitted_fields_and_keeps_the_start() {
    let app = TestApp::memory().await;
    append(&app, "order-1", "order.placed", json!(1)).await;
    let created = create(&app, "g", json!({"start": "end", "max_attempts": 3, "ack_timeout_ms": 5000})).await;
    assert_eq!(created["config"]["start"], "end");
    assert_eq!(created["checkpoint"], 1);
    let resp =
        put(&app, "g", json!({"start": "beginning", "max_in_flight": 7, "backoff": {"kind": "fixed"}})).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let updated = resp.json();
    let mut expected = default_config();
    expected["start"] = json!("end");
    expected["max_in_flight"] = json!(7);
    expected["backoff"]["kind"] = json!("fixed");
    assert_eq!(updated["config"], expected, "a PUT replaces the settings; `start` counts only at creation");
    assert_eq!(updated["checkpoint"], 1);
    assert_eq!(updated["created_at"], created["created_at"]);
}

#[tokio::test]
async fn put_accepts_the_config_that_get_shows() {
    let app = TestApp::memory().await;
    let config = json!({
        "filter": {"types": ["order.#", "invoice.*"], "category": "order"},
        "start": {"position": 0},
        "ack_timeout_ms": 1234,
        "max_attempts": 9,
        "backoff": {"kind": "fixed", "initial_ms": 250, "max_ms": 250, "jitter": false},
        "max_in_flight": 42,
    });
    let created = create(&app, "g", config.clone()).await;
    assert_eq!(created["config"], config);
    let resp = put(&app, "g", created["config"].clone()).await;
    assert_eq!((resp.status, resp.json()["config"].clone()), (StatusCode::OK, config));
}

#[tokio::test]
async fn bad_group_settings_and_names_are_400_problems_and_create_nothing() {
    let app = TestApp::memory().await;
    append(&app, "order-1", "order.placed", json!(1)).await;
    let cases = [
        (json!({"max_attempt": 3}), "bifrost:invalid-request"),
        (json!({"filter": {"type": ["a"]}}), "bifrost:invalid-request"),
        (json!({"backoff": {"kind": "linear"}}), "bifrost:invalid-request"),
        (json!({"backoff": {"initial": 5}}), "bifrost:invalid-request"),
        (json!({"max_attempts": "3"}), "bifrost:invalid-request"),
        (json!({"max_attempts": -1}), "bifrost:invalid-request"),
        (json!({"ack_timeout_ms": 1.5}), "bifrost:invalid-request"),
        (json!({"start": "middle"}), "bifrost:invalid-request"),
        (json!({"start": {"position": "x"}}), "bifrost:invalid-request"),
        (json!({"filter": {"types": "order.#"}}), "bifrost:invalid-request"),
        (json!([1]), "bifrost:invalid-request"),
        (json!({"max_attempts": 0}), "bifrost:invalid-argument"),
        (json!({"ack_timeout_ms": 0}), "bifrost:invalid-argument"),
        (json!({"max_in_flight": 0}), "bifrost:invalid-argument"),
        (json!({"max_in_flight": 100_001}), "bifrost:invalid-argument"),
        (json!({"backoff": {"initial_ms": 5000, "max_ms": 10}}), "bifrost:invalid-argument"),
        (json!({"backoff": {"max_ms": 86_400_001}}), "bifrost:invalid-argument"),
        (json!({"filter": {"types": ["order..x"]}}), "bifrost:invalid-argument"),
        (json!({"filter": {"category": "has space"}}), "bifrost:invalid-argument"),
        (json!({"start": {"position": 99}}), "bifrost:invalid-argument"),
    ];
    for (body, problem) in cases {
        let resp = put(&app, "g", body.clone()).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{body}: {}", resp.text());
        resp.assert_problem(400, problem);
    }
    let resp = app.put_json("/v1/groups/g", "{\"max_attempts\": ").await;
    resp.assert_problem(400, "bifrost:invalid-request");
    let resp = app.call(request(Method::PUT, "/v1/groups/g", Some("text/plain"), "{}")).await;
    resp.assert_problem(415, "bifrost:unsupported-media-type");
    for name in ["has%20space", "slash%2Fname", &"g".repeat(129)] {
        put(&app, name, json!({})).await.assert_problem(400, "bifrost:invalid-argument");
        app.get(&format!("/v1/groups/{name}")).await.assert_problem(400, "bifrost:invalid-argument");
    }
    assert_eq!(app.get("/v1/groups").await.json(), json!({"groups": []}));
}

#[tokio::test]
async fn fetch_leases_events_and_ack_settles_them() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({})).await;
    for stream in ["order-1", "order-2", "order-3"] {
        append(&app, stream, "order.placed", json!({"s": stream})).await;
    }
    let messages = fetch_n(&app, "g", 2, "&consumer=worker-1").await;
    assert_eq!(streams_of(&messages), ["order-1", "order-2"]);
    let first = &messages[0];
    assert_eq!(first["attempt"], 1);
    assert!(first["lease"].as_str().is_some_and(|l| !l.is_empty()));
    assert_eq!(first["event"]["type"], "order.placed");
    assert_eq!(first["event"]["data"], json!({"s": "order-1"}));
    assert_eq!(first["event"]["position"], 1);

    let s = status(&app, "g").await;
    assert_eq!((s["lag"].clone(), s["in_flight"].clone()), (json!(3), json!(2)));
    assert_eq!(s["consumers"][0]["name"], "worker-1");
    assert!(s["consumers"][0]["last_seen"].as_str().unwrap().ends_with('Z'));

    let answer = ack(&app, "g", &[&messages[0]["lease"], &messages[1]["lease"]]).await;
    assert_eq!(answer, json!({"acked": 2, "expired": []}));
    let s = status(&app, "g").await;
    assert_eq!(
        (s["lag"].clone(), s["in_flight"].clone(), s["checkpoint"].clone()),
        (json!(1), json!(0), json!(2))
    );

    // Acking again: those leases are no longer held.
    let again = ack(&app, "g", &[&messages[0]["lease"]]).await;
    assert_eq!(again, json!({"acked": 0, "expired": [messages[0]["lease"]]}));

    let rest = fetch_n(&app, "g", 1, "").await;
    assert_eq!(streams_of(&rest), ["order-3"]);
    ack(&app, "g", &[&rest[0]["lease"]]).await;
    assert!(fetch(&app, "g", "").await.is_empty(), "an acked event is never delivered again");
    assert_eq!(status(&app, "g").await["lag"], 0);
}

#[tokio::test]
async fn fetch_ignores_any_body_and_the_default_consumer_is_anonymous() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({})).await;
    append(&app, "order-1", "order.placed", json!(1)).await;
    let resp =
        app.call(request(Method::POST, "/v1/groups/g/fetch?wait=5000", Some("text/plain"), "whatever")).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.json()["messages"].as_array().unwrap().len(), 1);
    let consumers = status(&app, "g").await["consumers"].clone();
    assert_eq!(consumers, json!([{"name": "anonymous", "last_seen": consumers[0]["last_seen"]}]));
    assert!(consumers[0]["last_seen"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_long_poll_returns_when_an_event_is_appended_meanwhile() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({})).await;
    let started = Instant::now();
    let poller = app.clone();
    let poll = tokio::spawn(async move {
        let app = poller;
        fetch(&app, "g", "wait=8000").await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!poll.is_finished(), "the fetch must wait for an event");
    append(&app, "order-1", "order.placed", json!(1)).await;
    let messages = tokio::time::timeout(GUARD, poll).await.unwrap().unwrap();
    assert_eq!(streams_of(&messages), ["order-1"]);
    assert!(started.elapsed() < Duration::from_secs(5), "answered when the event came, not at the deadline");

    // Nothing comes: an empty answer after about `wait`.
    let started = Instant::now();
    assert!(fetch(&app, "g", "wait=200").await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_streams_next_event_is_not_handed_out_while_the_first_is_leased() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({})).await;
    app.append("order-1", json!({"events": [{"type": "a", "data": 1}, {"type": "b", "data": 2}]})).await;
    append(&app, "order-2", "a", json!(3)).await;

    let first = fetch_n(&app, "g", 2, "&consumer=a").await;
    assert_eq!(streams_of(&first), ["order-1", "order-2"]);
    assert_eq!(first[0]["event"]["version"], 1);
    assert!(
        fetch(&app, "g", "consumer=b&max=10").await.is_empty(),
        "order-1's second event waits, for anyone"
    );

    ack(&app, "g", &[&first[0]["lease"]]).await;
    let second = fetch_n(&app, "g", 1, "&consumer=b").await;
    assert_eq!(streams_of(&second), ["order-1"]);
    assert_eq!(second[0]["event"]["version"], 2);
}

#[tokio::test]
async fn nack_retry_redelivers_with_the_next_attempt() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({"backoff": {"kind": "fixed", "initial_ms": 50, "max_ms": 50}})).await;
    append(&app, "order-1", "order.placed", json!(1)).await;

    let first = fetch_n(&app, "g", 1, "").await;
    let answer =
        nack(&app, "g", json!({"leases": [first[0]["lease"]], "action": "retry", "reason": "busy"})).await;
    assert_eq!(answer, json!({"nacked": 1, "expired": []}));
    assert_eq!(status(&app, "g").await["waiting"], 1);
    let second = fetch(&app, "g", "wait=5000").await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["attempt"], 2);
    assert_eq!(second[0]["event"]["id"], first[0]["event"]["id"]);

    // An explicit delay overrides the backoff.
    nack(&app, "g", json!({"leases": [second[0]["lease"]], "action": "retry", "delay_ms": 0})).await;
    let third = fetch(&app, "g", "wait=5000").await;
    assert_eq!(third[0]["attempt"], 3);
    assert!(status(&app, "g").await["redeliveries"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn the_last_failed_attempt_parks_the_event() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({"max_attempts": 2})).await;
    append(&app, "order-1", "order.placed", json!(1)).await;
    for attempt in 1..=2 {
        let messages = fetch(&app, "g", "wait=5000").await;
        assert_eq!(messages[0]["attempt"], attempt);
        nack(&app, "g", json!({"leases": [messages[0]["lease"]], "action": "retry", "delay_ms": 0, "reason": format!("failure {attempt}")})).await;
    }
    let parked = dead_letters(&app, "g").await;
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0]["attempts"].clone(), parked[0]["reason"].clone()), (json!(2), json!("failure 2")));
    assert!(fetch(&app, "g", "wait=100").await.is_empty());
}

#[tokio::test]
async fn park_replay_and_discard_a_dead_letter() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({})).await;
    app.append("order-1", json!({"events": [{"type": "a", "data": 1}, {"type": "b", "data": 2}]})).await;

    let first = fetch_n(&app, "g", 1, "").await;
    let id = first[0]["event"]["id"].clone();
    nack(&app, "g", json!({"leases": [first[0]["lease"]], "action": "park", "reason": "poison"})).await;

    let parked = dead_letters(&app, "g").await;
    assert_eq!(parked.len(), 1);
    let dl = &parked[0];
    assert_eq!((dl["event"]["id"].clone(), dl["event_id"].clone()), (id.clone(), id.clone()));
    assert_eq!((dl["attempts"].clone(), dl["reason"].clone()), (json!(1), json!("poison")));
    assert_eq!(
        (dl["stream"].clone(), dl["type"].clone(), dl["position"].clone()),
        (json!("order-1"), json!("a"), json!(1))
    );
    assert!(dl["parked_at"].as_str().unwrap().ends_with('Z'));
    let s = status(&app, "g").await;
    assert_eq!((s["parked"].clone(), s["lag"].clone()), (json!(1), json!(1)), "a parked event is not lag");

    // A parked event does not hold back the later events of its stream.
    let next = fetch_n(&app, "g", 1, "").await;
    assert_eq!(next[0]["event"]["version"], 2);
    ack(&app, "g", &[&next[0]["lease"]]).await;

    let resp =
        app.post_json("/v1/groups/g/dead-letters/replay", json!({"event_ids": [id]}).to_string()).await;
    assert_eq!((resp.status, resp.json()), (StatusCode::OK, json!({"replayed": 1})));
    assert!(dead_letters(&app, "g").await.is_empty());
    let again = fetch(&app, "g", "wait=5000").await;
    assert_eq!((again[0]["event"]["id"].clone(), again[0]["attempt"].clone()), (id.clone(), json!(1)));

    nack(&app, "g", json!({"leases": [again[0]["lease"]], "action": "park"})).await;
    assert_eq!(dead_letters(&app, "g").await[0]["reason"], "nacked by the consumer");
    let uri = format!("/v1/groups/g/dead-letters/{}", id.as_str().unwrap());
    assert_eq!(app.delete(&uri).await.status, StatusCode::NO_CONTENT);
    assert!(dead_letters(&app, "g").await.is_empty());
    assert_eq!(status(&app, "g").await["parked"], 0);
    let body = app.delete(&uri).await.assert_problem(404, "bifrost:dead-letter-not-found");
    assert_eq!(body["event_id"], id);
    assert!(fetch(&app, "g", "wait=100").await.is_empty(), "a discarded event is not delivered again");
}

#[tokio::test]
async fn replay_without_a_body_replays_every_dead_letter() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({})).await;
    for stream in ["order-1", "order-2"] {
        append(&app, stream, "a", json!(1)).await;
    }
    let messages = fetch_n(&app, "g", 2, "").await;
    let leases: Vec<&Value> = messages.iter().map(|m| &m["lease"]).collect();
    assert_eq!(nack(&app, "g", json!({"leases": leases, "action": "park"})).await["nacked"], 2);
    assert_eq!(dead_letters(&app, "g").await.len(), 2);
    let resp = app.get("/v1/groups/g/dead-letters?limit=1").await.json();
    assert_eq!(resp["dead_letters"].as_array().unwrap().len(), 1);
    let page = app.get(&format!("/v1/groups/g/dead-letters?limit=1&after={}", resp["next"])).await.json();
    assert_eq!(page["dead_letters"][0]["stream"], "order-2");

    let resp = app.post_empty("/v1/groups/g/dead-letters/replay").await;
    assert_eq!((resp.status, resp.json()), (StatusCode::OK, json!({"replayed": 2})));
    assert_eq!(fetch_n(&app, "g", 2, "").await.len(), 2);
}

#[tokio::test]
async fn a_lease_not_acked_in_time_is_redelivered_and_its_token_expires() {
    let app = TestApp::memory().await;
    create(
        &app,
        "g",
        json!({"ack_timeout_ms": 200, "backoff": {"kind": "fixed", "initial_ms": 10, "max_ms": 10}}),
    )
    .await;
    append(&app, "order-1", "order.placed", json!(1)).await;
    let first = fetch_n(&app, "g", 1, "").await;
    let started = Instant::now();
    let second = fetch(&app, "g", "wait=5000").await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["attempt"], 2);
    assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
    let answer = ack(&app, "g", &[&first[0]["lease"]]).await;
    assert_eq!(answer, json!({"acked": 0, "expired": [first[0]["lease"]]}));
    assert_eq!(ack(&app, "g", &[&second[0]["lease"]]).await["acked"], 1);
    assert_eq!(status(&app, "g").await["timeouts"], 1);
}

#[tokio::test]
async fn garbage_lease_tokens_are_reported_expired() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({})).await;
    append(&app, "order-1", "order.placed", json!(1)).await;
    let messages = fetch_n(&app, "g", 1, "").await;
    let garbage = [json!("nonsense"), json!(""), json!("0".repeat(32)), json!("é".repeat(16))];
    let mut leases: Vec<&Value> = garbage.iter().collect();
    leases.push(&messages[0]["lease"]);
    let answer = ack(&app, "g", &leases).await;
    assert_eq!(answer["acked"], 1);
    assert_eq!(answer["expired"], json!(garbage));
    let answer = nack(&app, "g", json!({"leases": ["nonsense"], "action": "retry"})).await;
    assert_eq!(answer, json!({"nacked": 0, "expired": ["nonsense"]}));
}

#[tokio::test]
async fn lag_counts_only_matching_unacked_events() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({"filter": {"types": ["order.#"]}})).await;
    for (stream, t) in
        [("order-1", "order.placed"), ("order-2", "order.item.added"), ("user-1", "user.created")]
    {
        append(&app, stream, t, json!(1)).await;
    }
    append(&app, "order-3", "order.placed", json!(1)).await;
    let s = status(&app, "g").await;
    assert_eq!(
        (s["lag"].clone(), s["in_flight"].clone(), s["parked"].clone()),
        (json!(3), json!(0), json!(0))
    );
    let messages = fetch_n(&app, "g", 2, "").await;
    assert!(messages.iter().all(|m| m["event"]["type"].as_str().unwrap().starts_with("order.")));
    nack(&app, "g", json!({"leases": [messages[1]["lease"]], "action": "park"})).await;
    let s = status(&app, "g").await;
    assert_eq!(
        (s["lag"].clone(), s["in_flight"].clone(), s["parked"].clone()),
        (json!(2), json!(1), json!(1))
    );
    let list = app.get("/v1/groups").await.json();
    assert_eq!(list["groups"].as_array().unwrap().len(), 1);
    assert_eq!(list["groups"][0]["lag"], 2);
}

#[tokio::test]
async fn start_end_and_position_skip_the_earlier_log() {
    let app = TestApp::memory().await;
    for n in 1..=3 {
        append(&app, &format!("order-{n}"), "a", json!(n)).await;
    }
    create(&app, "from-end", json!({"start": "end"})).await;
    create(&app, "after-2", json!({"start": {"position": 2}})).await;
    append(&app, "order-4", "a", json!(4)).await;
    assert_eq!(streams_of(&fetch_n(&app, "from-end", 1, "").await), ["order-4"]);
    assert_eq!(streams_of(&fetch_n(&app, "after-2", 2, "").await), ["order-3", "order-4"]);
}

#[tokio::test]
async fn unknown_groups_are_404_group_not_found() {
    let app = TestApp::memory().await;
    let id = "01936a5e-0000-7000-8000-000000000000";
    let calls = [
        app.get("/v1/groups/nope").await,
        app.delete("/v1/groups/nope").await,
        app.post_empty("/v1/groups/nope/fetch").await,
        app.post_json("/v1/groups/nope/ack", r#"{"leases": []}"#).await,
        app.post_json("/v1/groups/nope/nack", r#"{"leases": [], "action": "park"}"#).await,
        app.get("/v1/groups/nope/dead-letters").await,
        app.post_empty("/v1/groups/nope/dead-letters/replay").await,
        app.delete(&format!("/v1/groups/nope/dead-letters/{id}")).await,
    ];
    for resp in calls {
        let body = resp.assert_problem(404, "bifrost:group-not-found");
        assert_eq!(body["group"], "nope");
    }
}

#[tokio::test]
async fn bad_fetch_ack_nack_and_dead_letter_arguments_are_400_problems() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({})).await;
    for query in
        ["max=0", "max=x", "max=-1", "wait=soon", "wait=-5", "consumer=", "consumer=a%20b", "max=1&max=2"]
    {
        let resp = app.post_empty(&format!("/v1/groups/g/fetch?{query}")).await;
        resp.assert_problem(400, "bifrost:invalid-argument");
    }
    let long = "c".repeat(129);
    app.post_empty(&format!("/v1/groups/g/fetch?consumer={long}"))
        .await
        .assert_problem(400, "bifrost:invalid-argument");

    let too_many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let cases = [
        ("ack", json!({}), "bifrost:invalid-request"),
        ("ack", json!({"leases": "x"}), "bifrost:invalid-request"),
        ("ack", json!({"leases": [], "extra": 1}), "bifrost:invalid-request"),
        ("ack", json!({"leases": too_many}), "bifrost:invalid-argument"),
        ("nack", json!({"leases": []}), "bifrost:invalid-request"),
        ("nack", json!({"leases": [], "action": "later"}), "bifrost:invalid-request"),
        ("nack", json!({"leases": [], "action": "retry", "delay_ms": -1}), "bifrost:invalid-request"),
        ("nack", json!({"leases": [], "action": "park", "delay_ms": 10}), "bifrost:invalid-argument"),
        (
            "nack",
            json!({"leases": [], "action": "retry", "delay_ms": 86_400_001}),
            "bifrost:invalid-argument",
        ),
        (
            "nack",
            json!({"leases": [], "action": "park", "reason": "r".repeat(1025)}),
            "bifrost:invalid-argument",
        ),
        ("nack", json!({"leases": too_many, "action": "park"}), "bifrost:invalid-argument"),
        ("dead-letters/replay", json!({"event_ids": ["not-a-uuid"]}), "bifrost:invalid-argument"),
        ("dead-letters/replay", json!({"ids": []}), "bifrost:invalid-request"),
    ];
    for (route, body, problem) in cases {
        let resp = app.post_json(&format!("/v1/groups/g/{route}"), body.to_string()).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{route} {body}: {}", resp.text());
        resp.assert_problem(400, problem);
    }
    let resp = app.call(request(Method::POST, "/v1/groups/g/ack", None, r#"{"leases": []}"#)).await;
    resp.assert_problem(415, "bifrost:unsupported-media-type");
    app.delete("/v1/groups/g/dead-letters/not-a-uuid").await.assert_problem(400, "bifrost:invalid-argument");
    app.get("/v1/groups/g/dead-letters?limit=0").await.assert_problem(400, "bifrost:invalid-argument");
    app.get("/v1/groups/g/dead-letters?after=x").await.assert_problem(400, "bifrost:invalid-argument");
}

#[tokio::test]
async fn a_nack_of_nothing_and_a_replay_of_no_ids_change_nothing() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({})).await;
    assert_eq!(
        nack(&app, "g", json!({"leases": [], "action": "retry"})).await,
        json!({"nacked": 0, "expired": []})
    );
    assert_eq!(ack(&app, "g", &[]).await, json!({"acked": 0, "expired": []}));
    let resp = app.post_json("/v1/groups/g/dead-letters/replay", r#"{"event_ids": []}"#).await;
    assert_eq!(resp.json(), json!({"replayed": 0}));
}

#[tokio::test]
async fn delete_removes_the_group_and_its_dead_letters() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({})).await;
    create(&app, "h", json!({})).await;
    append(&app, "order-1", "a", json!(1)).await;
    let messages = fetch_n(&app, "g", 1, "").await;
    nack(&app, "g", json!({"leases": [messages[0]["lease"]], "action": "park"})).await;

    assert_eq!(app.delete("/v1/groups/g").await.status, StatusCode::NO_CONTENT);
    app.get("/v1/groups/g").await.assert_problem(404, "bifrost:group-not-found");
    app.delete("/v1/groups/g").await.assert_problem(404, "bifrost:group-not-found");
    let list = app.get("/v1/groups").await.json();
    let names: Vec<&str> =
        list["groups"].as_array().unwrap().iter().map(|g| g["group"].as_str().unwrap()).collect();
    assert_eq!(names, ["h"]);

    // The name starts afresh.
    let again = create(&app, "g", json!({})).await;
    assert_eq!((again["parked"].clone(), again["lag"].clone()), (json!(0), json!(1)));
    assert!(dead_letters(&app, "g").await.is_empty());
}

#[tokio::test]
async fn a_long_poll_on_a_deleted_group_answers_404() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({})).await;
    let poller = app.clone();
    let poll = tokio::spawn(async move {
        let app = poller;
        app.post_empty("/v1/groups/g/fetch?wait=8000").await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.delete("/v1/groups/g").await.status, StatusCode::NO_CONTENT);
    let resp = tokio::time::timeout(GUARD, poll).await.unwrap().unwrap();
    resp.assert_problem(404, "bifrost:group-not-found");
}

#[tokio::test]
async fn a_long_poll_survives_a_filter_change() {
    let app = TestApp::memory().await;
    create(&app, "g", json!({"filter": {"types": ["a"]}})).await;
    let poller = app.clone();
    let poll = tokio::spawn(async move {
        let app = poller;
        fetch(&app, "g", "wait=8000").await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(put(&app, "g", json!({"filter": {"types": ["b"]}})).await.status, StatusCode::OK);
    append(&app, "order-1", "b", json!(1)).await;
    let messages = tokio::time::timeout(GUARD, poll).await.unwrap().unwrap();
    assert_eq!(messages[0]["event"]["type"], "b");
}

#[tokio::test]
async fn the_whole_flow_works_on_sqlite_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open =
        || bifrost_sqlite::SqliteStore::open(dir.path(), bifrost_sqlite::SqliteOptions::default()).unwrap();
    let id;
    {
        let app = TestApp::over(std::sync::Arc::new(open()), ServerConfig::default(), None).await;
        create(&app, "g", json!({"max_attempts": 3})).await;
        app.append("order-1", json!({"events": [{"type": "a", "data": 1}, {"type": "b", "data": 2}]})).await;
        append(&app, "order-2", "a", json!(3)).await;
        let messages = fetch_n(&app, "g", 2, "").await;
        assert_eq!(streams_of(&messages), ["order-1", "order-2"]);
        id = messages[0]["event"]["id"].clone();
        nack(&app, "g", json!({"leases": [messages[0]["lease"]], "action": "park", "reason": "bad"})).await;
        assert_eq!(ack(&app, "g", &[&messages[1]["lease"]]).await["acked"], 1);
        app.groups.close().await.unwrap();
        app.store.close().await.unwrap();
    }
    let app = TestApp::over(std::sync::Arc::new(open()), ServerConfig::default(), None).await;
    let s = status(&app, "g").await;
    assert_eq!(s["config"]["max_attempts"], 3);
    assert_eq!(s["parked"], 1);
    let parked = dead_letters(&app, "g").await;
    assert_eq!((parked[0]["event_id"].clone(), parked[0]["reason"].clone()), (id.clone(), json!("bad")));
    let next = fetch_n(&app, "g", 1, "").await;
    assert_eq!(next[0]["event"]["stream"], "order-1");
    assert_eq!(next[0]["event"]["version"], 2);
    let s = status(&app, "g").await;
    assert_eq!((s["lag"].clone(), s["in_flight"].clone()), (json!(1), json!(1)));
    let none = fetch(&app, "g", "max=10&wait=300").await;
    assert!(none.is_empty(), "the acked event is not delivered again: {none:?}");
    assert_eq!(app.post_empty("/v1/groups/g/dead-letters/replay").await.json()["replayed"], 1);
    assert!(fetch(&app, "g", "wait=100").await.is_empty(), "order-1 is busy with its version 2");
    assert_eq!(ack(&app, "g", &[&next[0]["lease"]]).await["acked"], 1);
    let replayed = fetch(&app, "g", "wait=5000").await;
    assert_eq!((replayed[0]["event"]["id"].clone(), replayed[0]["attempt"].clone()), (id, json!(1)));
    app.groups.close().await.unwrap();
}

#[tokio::test]
async fn metrics_show_per_group_gauges_and_engine_counters() {
    let handle = install_metrics_recorder().unwrap();
    let store = bifrost_core::InMemoryStore::shared();
    let app = TestApp::over_with_metrics(store, ServerConfig::default(), Some(handle), None).await;
    create(&app, "metered", json!({})).await;
    for stream in ["order-1", "order-2", "order-3"] {
        append(&app, stream, "a", json!(1)).await;
    }
    let messages = fetch_n(&app, "metered", 2, "").await;
    ack(&app, "metered", &[&messages[0]["lease"]]).await;
    nack(&app, "metered", json!({"leases": [messages[1]["lease"]], "action": "park"})).await;
    let text = app.get("/metrics").await.text();
    for line in [
        "bifrost_group_lag{group=\"metered\"} 1",
        "bifrost_group_in_flight{group=\"metered\"} 0",
        "bifrost_group_parked{group=\"metered\"} 1",
        "bifrost_group_redeliveries{group=\"metered\"} 0",
        "bifrost_group_delivered_total{group=\"metered\"} 2",
        "bifrost_group_acked_total{group=\"metered\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
    assert!(text.contains("bifrost_group_ack_seconds"), "{text}");
}

#[tokio::test]
async fn shutdown_ends_long_polls_at_once_and_closes_the_groups() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = bifrost_core::InMemoryStore::shared();
    let groups = bifrost_bus::groups::open(store.clone()).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bifrost_server::serve(
        listener,
        store.clone(),
        groups.clone(),
        None,
        ServerConfig::default(),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::new();
    let resp = client.put(format!("http://{addr}/v1/groups/g")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let poll = tokio::spawn(async move {
        let resp = client.post(format!("http://{addr}/v1/groups/g/fetch?wait=30000")).send().await.unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    stop.send(()).unwrap();
    let (status, body) = tokio::time::timeout(GUARD, poll).await.unwrap().unwrap();
    assert_eq!((status, body), (200, json!({"messages": []})));
    tokio::time::timeout(GUARD, server).await.unwrap().unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown waited for the long poll");
    let name = bifrost_bus::GroupName::new("g").unwrap();
    let late = groups.fetch(&name, bifrost_bus::Fetch::new("late", 1, Duration::ZERO)).await;
    assert!(late.is_err(), "serve closes the groups");
}
