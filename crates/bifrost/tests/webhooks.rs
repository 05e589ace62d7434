//! Webhooks end to end, written from the contract (`API.md`, "Webhooks (integration
//! events)"): `bifrost serve` delivering to a real HTTP receiver on a loopback port, each
//! test on the embedded store (a temporary data dir) and on PostgreSQL (a fresh schema;
//! skipped with a clear line when the database is unreachable, failed when
//! `BIFROST_REQUIRE_SERVICES=1`), and a few on several nodes of one PostgreSQL schema.
//!
//! Every server gets `--webhook-allow-cidr 127.0.0.0/8` (the receiver is on 127.0.0.1)
//! except in the SSRF test. Conditions are polled with a generous deadline; timing is only
//! ever asserted as a lower bound. Retry schedules are short, so the file runs fast.

#![allow(clippy::unwrap_used)] // a failure in a helper is a failed test

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::Server;
use common::pg::Schema;
use common::receiver::{self, Receiver, Reply, Request};
use serde_json::{Value, json};

/// How long any awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(30);
/// The flags that let the servers deliver to the receiver.
const ALLOW_LOOPBACK: [&str; 2] = ["--webhook-allow-cidr", "127.0.0.0/8"];

// ---------------------------------------------------------------------------------------
// The fixture: a store (embedded or a PostgreSQL schema), servers on it, an HTTP client.

struct Backend {
    dir: tempfile::TempDir,
    schema: Option<Schema>,
}

impl Backend {
    fn embedded() -> Backend {
        Backend::new(None)
    }

    /// `None` (the test is skipped) when PostgreSQL is unreachable.
    fn postgres() -> Option<Backend> {
        Schema::fresh().map(|schema| Backend::new(Some(schema)))
    }

    fn new(schema: Option<Schema>) -> Backend {
        Backend { dir: tempfile::tempdir().unwrap(), schema }
    }

    /// A node allowed to deliver to loopback addresses.
    fn server(&self) -> Server {
        self.server_with(&ALLOW_LOOPBACK)
    }

    /// A node with the default SSRF guard.
    fn server_without_allow_list(&self) -> Server {
        self.server_with(&[])
    }

    fn server_with(&self, extra: &[&str]) -> Server {
        let mut args: Vec<String> = self.schema.as_ref().map(|s| s.serve_args().to_vec()).unwrap_or_default();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(self.dir.path(), "127.0.0.1:0", &args)
    }

    fn api(&self, server: &Server) -> Api {
        Api { addr: server.addr.clone(), key: None }
    }
}

/// Runs each listed test function once per store: `embedded::<name>` and
/// `postgres::<name>`; the `postgres_only` ones only on PostgreSQL.
macro_rules! on_each_store {
    (both: [$($both:ident),* $(,)?], postgres_only: [$($pg:ident),* $(,)?] $(,)?) => {
        mod embedded {
            $(
                #[test]
                fn $both() {
                    super::$both(&super::Backend::embedded());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $both() {
                    let Some(backend) = super::Backend::postgres() else { return };
                    super::$both(&backend);
                }
            )*
            $(
                #[test]
                fn $pg() {
                    let Some(backend) = super::Backend::postgres() else { return };
                    super::$pg(&backend);
                }
            )*
        }
    };
}

on_each_store! {
    both: [
        endpoints_are_created_read_listed_patched_and_deleted,
        bad_endpoint_input_is_refused_and_changes_nothing,
        a_delivery_is_the_signed_integration_event,
        filters_and_start_positions_choose_the_messages,
        failed_attempts_are_retried_per_schedule_then_the_message_fails,
        nothing_is_lost_while_the_receiver_is_down,
        ordered_endpoints_deliver_each_stream_in_order_under_retries,
        unordered_endpoints_do_not_hold_a_stream_behind_a_failing_message,
        gone_disables_the_endpoint_and_reenabling_resumes_where_it_stopped,
        a_410_on_the_only_attempt_does_not_use_the_message_up,
        retry_after_on_429_delays_the_next_attempt,
        an_endpoint_failing_for_longer_than_disable_after_is_disabled,
        resend_recover_and_test_send,
        a_rotated_secret_signs_alongside_the_previous_one,
        cloudevents_mode_sends_a_structured_cloudevent,
        transforms_shape_the_message_and_a_missing_value_fails_it,
        private_and_loopback_targets_are_refused_without_the_allow_list,
        rate_limit_spaces_attempts_without_failing_them,
        webhook_metrics_are_exported,
        tenant_endpoints_deliver_only_their_tenants_events_in_their_names,
    ],
    postgres_only: [
        several_nodes_deliver_each_message_once_and_lose_nothing_when_one_is_killed,
    ],
}

// ---------------------------------------------------------------------------------------
// HTTP helpers.

/// The API of one node, by its address.
struct Api {
    addr: String,
    /// `Authorization: Bearer` of every call, when the server has auth on.
    key: Option<String>,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    json: Value,
    text: String,
}

impl Answer {
    /// The JSON body, after checking the status.
    fn expect(self, status: u16, what: &str) -> Value {
        assert_eq!(self.status, status, "{what}: {}", self.text);
        self.json
    }

    /// A problem+json answer with this status and (unless "") this type.
    fn expect_problem(&self, status: u16, kind: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.text);
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "{what}: content-type {:?}, body {}",
            self.content_type,
            self.text
        );
        assert_eq!(self.json["status"], status, "{what}: {}", self.text);
        assert!(self.json["type"].is_string(), "{what}: {}", self.text);
        if !kind.is_empty() {
            assert_eq!(self.json["type"], kind, "{what}: {}", self.text);
        }
    }
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let bearer = self.key.as_ref().map(|key| format!("Bearer {key}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer));
        }
        let answer = receiver::send(&self.addr, method, path, &headers, body.unwrap_or("").as_bytes())
            .unwrap_or_else(|e| panic!("{method} http://{}{path}: {e}", self.addr));
        let text = answer.text();
        Answer {
            status: answer.status,
            content_type: answer.header("content-type").unwrap_or("").to_owned(),
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None)
    }

    fn post(&self, path: &str, body: &Value) -> Answer {
        self.call("POST", path, Some(&body.to_string()))
    }

    fn post_raw(&self, path: &str, body: &str) -> Answer {
        self.call("POST", path, Some(body))
    }

    fn post_empty(&self, path: &str) -> Answer {
        self.call("POST", path, None)
    }

    fn patch(&self, path: &str, body: &Value) -> Answer {
        self.call("PATCH", path, Some(&body.to_string()))
    }

    fn delete(&self, path: &str) -> Answer {
        self.call("DELETE", path, None)
    }

    fn metrics(&self) -> String {
        let answer = self.get("/metrics");
        assert_eq!(answer.status, 200, "/metrics: {}", answer.text);
        answer.text
    }
}

// ---------------------------------------------------------------------------------------
// Domain helpers.

/// Polls `probe` until it gives a value; its last complaint is in the panic.
fn eventually<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    eventually_within(DEADLINE, what, &mut probe)
}

fn eventually_within<T>(deadline: Duration, what: &str, probe: &mut impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) => {
                assert!(started.elapsed() < deadline, "not within {deadline:?}: {what}; last seen: {last}")
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An id as a string (ids are opaque: a JSON string, or anything else printed).
fn id_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => panic!("no id"),
        other => other.to_string(),
    }
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// `whsec_` + base64 of `len` bytes of `byte`.
fn whsec(byte: u8, len: usize) -> String {
    format!("whsec_{}", BASE64.encode(vec![byte; len]))
}

/// An endpoint body for `url` with fast retries and a short timeout, `extra` set over it.
fn endpoint(url: &str, extra: Value) -> Value {
    let mut body = json!({"url": url, "retry_schedule_ms": [200, 400], "timeout_ms": 5000});
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

/// Creates an endpoint: its id and the 201 body (with `secret`).
fn create(api: &Api, body: &Value) -> (String, Value) {
    let created = api.post("/v1/webhooks", body).expect(201, "create a webhook endpoint");
    (id_of(&created["id"]), created)
}

fn secret_of(created: &Value) -> String {
    created["secret"].as_str().expect("the created endpoint carries its secret").to_owned()
}

fn get_endpoint(api: &Api, ep: &str) -> Value {
    api.get(&format!("/v1/webhooks/{ep}")).expect(200, "get the endpoint")
}

/// Appends events given as (id, type, data) to a stream; the 201 body.
fn append(api: &Api, stream: &str, events: &[(&str, &str, Value)]) -> Value {
    let events: Vec<Value> =
        events.iter().map(|(id, ty, data)| json!({"id": id, "type": ty, "data": data})).collect();
    api.post(&format!("/v1/streams/{stream}/events"), &json!({ "events": events })).expect(201, "append")
}

/// Appends one event with a fresh id: the id and its position.
fn append_one(api: &Api, stream: &str, ty: &str, data: Value) -> (String, u64) {
    let id = new_id();
    let appended = append(api, stream, &[(&id, ty, data)]);
    (id, appended["first_position"].as_u64().expect("first_position"))
}

fn message(api: &Api, ep: &str, event: &str) -> Answer {
    api.get(&format!("/v1/webhooks/{ep}/messages/{event}"))
}

/// Waits for the message of `event` to reach `status`.
fn wait_message(api: &Api, ep: &str, event: &str, status: &str) -> Value {
    eventually(&format!("message {event} {status}"), || {
        let m = message(api, ep, event);
        if m.status == 200 && m.json["status"] == status { Ok(m.json) } else { Err(m.text) }
    })
}

/// Waits for the message of `event` to be settled one way or the other.
fn wait_settled(api: &Api, ep: &str, event: &str) -> Value {
    eventually(&format!("message {event} settled"), || {
        let m = message(api, ep, event);
        if m.status == 200 && (m.json["status"] == "succeeded" || m.json["status"] == "failed") {
            Ok(m.json)
        } else {
            Err(m.text)
        }
    })
}

/// `GET /v1/webhooks/{ep}/attempts{query}`: the attempts, newest first.
fn attempts(api: &Api, ep: &str, query: &str) -> Vec<Value> {
    let answer = api.get(&format!("/v1/webhooks/{ep}/attempts{query}")).expect(200, "list attempts");
    answer["attempts"].as_array().expect("attempts").clone()
}

/// The requests for `event`, in arrival order.
fn for_event<'r>(requests: &'r [Request], event: &str) -> Vec<&'r Request> {
    requests.iter().filter(|r| r.event_id() == event).collect()
}

fn has_event(requests: &[Request], event: &str) -> bool {
    requests.iter().any(|r| r.event_id() == event)
}

/// The events of a stream, oldest first (empty when it does not exist).
fn stream_events(api: &Api, stream: &str) -> Vec<Value> {
    let answer = api.get(&format!("/v1/streams/{stream}/events?limit=1000"));
    if answer.status == 404 {
        return Vec::new();
    }
    answer.expect(200, "read a stream")["events"].as_array().unwrap().clone()
}

/// Asserts that each key of `expected` has that value in `actual`.
fn assert_fields(actual: &Value, expected: &Value, what: &str) {
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(&actual[key], value, "{what}: field {key:?} of {actual}");
    }
}

/// A JSON value as text, strings unquoted (CloudEvents extensions may be either).
fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The receiver and verifier themselves.

/// The Standard Webhooks specification's published example.
#[test]
fn the_verifier_accepts_the_standard_webhooks_example_and_nothing_else() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    let at = 1_614_265_330;
    assert_eq!(receiver::sign(SECRET, ID, TS, BODY), SIGNATURE);
    assert_eq!(receiver::verify(SECRET, ID, TS, BODY, SIGNATURE, at), Ok(()));
    // The secret without its prefix is the same key.
    assert_eq!(receiver::verify("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", ID, TS, BODY, SIGNATURE, at), Ok(()));
    // Within 5 minutes either way, not beyond.
    assert_eq!(receiver::verify(SECRET, ID, TS, BODY, SIGNATURE, at + 300), Ok(()));
    assert_eq!(receiver::verify(SECRET, ID, TS, BODY, SIGNATURE, at - 300), Ok(()));
    assert!(matches!(
        receiver::verify(SECRET, ID, TS, BODY, SIGNATURE, at + 301),
        Err(receiver::Invalid::TimestampOutOfTolerance { .. })
    ));
    assert!(matches!(
        receiver::verify(SECRET, ID, TS, BODY, SIGNATURE, at - 301),
        Err(receiver::Invalid::TimestampOutOfTolerance { .. })
    ));
    // Any matching entry of several; other versions never match.
    let several = format!("v1,Zm9vYmFy v1a,abc {SIGNATURE}");
    assert_eq!(receiver::verify(SECRET, ID, TS, BODY, &several, at), Ok(()));
    let other_version = SIGNATURE.replacen("v1,", "v2,", 1);
    let no = Err(receiver::Invalid::NoMatchingSignature);
    assert_eq!(receiver::verify(SECRET, ID, TS, BODY, &other_version, at), no);
    // Any change to what is signed breaks it.
    assert_eq!(receiver::verify(SECRET, ID, TS, br#"{"test": 2432232315}"#, SIGNATURE, at), no);
    assert_eq!(receiver::verify(SECRET, "msg_other", TS, BODY, SIGNATURE, at), no);
    assert_eq!(receiver::verify(SECRET, ID, "1614265331", BODY, SIGNATURE, at), no);
    assert_eq!(receiver::verify(&whsec(1, 24), ID, TS, BODY, SIGNATURE, at), no);
    assert_eq!(receiver::verify(SECRET, ID, TS, BODY, "v1,", at), no);
    assert_eq!(receiver::verify(SECRET, ID, TS, BODY, "", at), no);
    assert!(matches!(
        receiver::verify(SECRET, ID, "soon", BODY, SIGNATURE, at),
        Err(receiver::Invalid::BadTimestamp(_))
    ));
    assert!(matches!(
        receiver::verify("whsec_not base64!", ID, TS, BODY, SIGNATURE, at),
        Err(receiver::Invalid::BadSecret(_))
    ));
    // Two secrets during a rotation: one entry each, each verifying with its own.
    let (new, old) = (whsec(2, 32), SECRET);
    let header = format!("{} {}", receiver::sign(&new, ID, TS, BODY), receiver::sign(old, ID, TS, BODY));
    let entries = receiver::signature_entries(&header);
    assert!(receiver::entry_matches(&new, ID, TS, BODY, entries[0]));
    assert!(!receiver::entry_matches(old, ID, TS, BODY, entries[0]));
    assert!(receiver::entry_matches(old, ID, TS, BODY, entries[1]));
}

/// The receiver answers as programmed, records what it got, refuses connections while
/// down (keep-alive ones included) and takes requests again on the same port once up.
#[test]
fn the_receiver_records_answers_as_programmed_and_goes_down_and_up() {
    let receiver = Receiver::start();
    let addr = format!("127.0.0.1:{}", receiver.port());
    let send = |path: &str, body: &str| {
        let sent = Instant::now();
        let headers = [("Webhook-Id", "msg_1"), ("x-twice", "a"), ("x-twice", "b")];
        let answer = receiver::send(&addr, "POST", path, &headers, body.as_bytes())?;
        let retry_after = answer.header("retry-after").map(ToOwned::to_owned);
        Ok::<_, std::io::Error>((answer.status, retry_after, answer.text(), sent.elapsed()))
    };
    receiver.push(Reply::status(429).retry_after("7").body("slow down"));
    receiver.push(Reply::status(500).delay(Duration::from_millis(300)));
    receiver.set_default(Reply::status(202));
    let first = send("/a?x=1", "one").unwrap();
    assert_eq!((first.0, first.1.as_deref(), first.2.as_str()), (429, Some("7"), "slow down"));
    let second = send("/b", "two").unwrap();
    assert_eq!(second.0, 500);
    assert!(second.3 >= Duration::from_millis(300), "the delay was not kept: {:?}", second.3);
    assert_eq!(send("/c", "three").unwrap().0, 202);
    receiver.respond_with(|request, before| {
        if request.path == "/teapot" && before.len() == 3 { Reply::status(418) } else { Reply::ok() }
    });
    assert_eq!(send("/teapot", "four").unwrap().0, 418);
    assert_eq!(send("/teapot", "five").unwrap().0, 200);

    let requests = receiver.requests();
    assert_eq!(requests.len(), 5);
    assert_eq!(requests[0].path, "/a?x=1");
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].body, b"one");
    assert_eq!(requests[0].webhook_id(), "msg_1");
    assert_eq!(requests[0].header("WEBHOOK-ID"), Some("msg_1"));
    assert_eq!(requests[0].header_all("x-twice"), vec!["a", "b"]);
    assert_eq!(requests.iter().map(|r| r.status).collect::<Vec<_>>(), vec![429, 500, 202, 418, 200]);
    assert!(requests.iter().all(|r| r.answered_at.is_some()));
    assert!(requests[1].answered_at.unwrap() - requests[1].at >= Duration::from_millis(300));
    assert!(requests[0].at <= requests[1].at && requests[1].at <= requests[2].at);
    assert_eq!(receiver.in_flight(), 0);

    // A keep-alive connection left idle, as a client's pool would keep it.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.write_all(b"POST /idle HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(idle.read(&mut byte).unwrap(), 1, "the idle connection closed early");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));

    let port = receiver.port();
    receiver.down();
    let refused = send("/down", "six").expect_err("the receiver is down");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused:?}");
    // The idle connection was closed too: nothing more can reach the receiver through it.
    match idle.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the idle keep-alive connection stayed open while down: {other:?}"),
    }
    assert_eq!(receiver.count(), 6);
    receiver.up();
    assert_eq!(receiver.port(), port);
    assert_eq!(send("/up", "seven").unwrap().0, 200);
    let all = receiver.wait_until("the request after coming back", DEADLINE, |rs| rs.len() == 7);
    assert_eq!(all[6].path, "/up");
    // Down and up again, at once.
    receiver.down();
    receiver.up();
    assert_eq!(send("/again", "eight").unwrap().0, 200);
}

// ---------------------------------------------------------------------------------------
// Endpoints: create, read, list, patch, delete, and what is refused.

fn endpoints_are_created_read_listed_patched_and_deleted(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let url = receiver.url("/crud");
    // Nothing here should be delivered: the endpoints match no event of the test.
    let never = json!({"types": ["never.match"]});

    let created = api.post("/v1/webhooks", &json!({"url": url})).expect(201, "create with only a url");
    let id = id_of(&created["id"]);
    let secret = secret_of(&created);
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(
        receiver::secret_key(&secret).expect("whsec_ + base64").len(),
        32,
        "32 random bytes by default"
    );
    let defaults = json!({
        "url": url,
        "filter": {"types": ["#"], "category": null, "routing_keys": ["#"]},
        "description": "",
        "headers": {},
        "enabled": true,
        "rate_limit_per_s": null,
        "ordered": false,
        "timeout_ms": 15000,
        "retry_schedule_ms": [5000, 300000, 1800000, 7200000, 18000000, 36000000, 36000000],
        "disable_after_s": 432000,
        "content_mode": "bifrost",
        "transform": null,
    });
    assert_fields(&created, &defaults, "the created endpoint");
    // Out of the way: the rest of the test appends nothing it would match.
    api.patch(&format!("/v1/webhooks/{id}"), &json!({ "filter": never })).expect(200, "narrow the filter");

    let shown = get_endpoint(&api, &id);
    assert!(shown.get("secret").is_none(), "GET shows the secret: {shown}");
    let mut expected = defaults.clone();
    expected["filter"] = json!({"types": ["never.match"], "category": null, "routing_keys": ["#"]});
    assert_fields(&shown, &expected, "GET");
    assert_eq!(id_of(&shown["id"]), id);
    assert_eq!(shown["disabled_reason"], Value::Null, "{shown}");
    assert_eq!(shown["failing_since"], Value::Null, "{shown}");
    assert!(shown["backlog"].is_u64(), "backlog: {shown}");
    assert!(shown["created_at"].is_string() && shown["updated_at"].is_string(), "{shown}");
    assert_eq!(
        api.get(&format!("/v1/webhooks/{}", uuid::Uuid::new_v4())).status,
        404,
        "an unknown id is not found"
    );

    // A given secret is kept; 24 and 64 bytes are the bounds.
    let given = whsec(7, 24);
    let (id2, created2) = create(
        &api,
        &json!({"url": url, "secret": given, "description": "second", "filter": never,
                "headers": {"x-a": "1", "x-b": "2"}}),
    );
    assert_eq!(created2["secret"], given.as_str());
    let (id3, created3) = create(&api, &json!({"url": url, "secret": whsec(9, 64), "filter": never}));
    assert_eq!(created3["secret"], whsec(9, 64).as_str());

    // Listing in pages of 2, following `next`.
    let first_page = api.get("/v1/webhooks?limit=2").expect(200, "list");
    assert_eq!(first_page["webhooks"].as_array().unwrap().len(), 2, "{first_page}");
    assert!(!first_page["next"].is_null(), "a first page of 2 of 3 has a next: {first_page}");
    let mut listed = Vec::new();
    let mut page = first_page;
    for _ in 0..10 {
        for w in page["webhooks"].as_array().unwrap() {
            assert!(w.get("secret").is_none(), "the list shows a secret: {w}");
            listed.push(id_of(&w["id"]));
        }
        if page["next"].is_null() {
            break;
        }
        page =
            api.get(&format!("/v1/webhooks?limit=2&after={}", id_of(&page["next"]))).expect(200, "next page");
    }
    assert!(page["next"].is_null(), "the list never ends");
    let mut all = vec![id.clone(), id2.clone(), id3.clone()];
    all.sort();
    listed.sort();
    assert_eq!(listed, all, "each endpoint listed once");

    // A merge patch: nested objects merge, null removes, the rest stays.
    let patched = api
        .patch(
            &format!("/v1/webhooks/{id2}"),
            &json!({"description": "changed", "headers": {"x-a": null, "x-c": "3"},
                    "filter": {"category": "order"}, "timeout_ms": 3000}),
        )
        .expect(200, "patch");
    let after_patch = json!({
        "url": url,
        "description": "changed",
        "headers": {"x-b": "2", "x-c": "3"},
        "filter": {"types": ["never.match"], "category": "order", "routing_keys": ["#"]},
        "timeout_ms": 3000,
        "retry_schedule_ms": defaults["retry_schedule_ms"],
        "enabled": true,
    });
    assert_fields(&patched, &after_patch, "the patch answer");
    assert!(patched.get("secret").is_none(), "{patched}");
    assert_fields(&get_endpoint(&api, &id2), &after_patch, "GET after the patch");
    let disabled =
        api.patch(&format!("/v1/webhooks/{id2}"), &json!({"enabled": false})).expect(200, "disable");
    assert_eq!((&disabled["enabled"], &disabled["disabled_reason"]), (&json!(false), &json!("manual")));
    let enabled = api.patch(&format!("/v1/webhooks/{id2}"), &json!({"enabled": true})).expect(200, "enable");
    assert_eq!((&enabled["enabled"], &enabled["disabled_reason"]), (&json!(true), &Value::Null));

    // Delete: 204, then not found everywhere.
    assert_eq!(api.delete(&format!("/v1/webhooks/{id2}")).status, 204);
    let not_found = "bifrost:webhook-not-found";
    api.get(&format!("/v1/webhooks/{id2}")).expect_problem(404, not_found, "GET after DELETE");
    api.delete(&format!("/v1/webhooks/{id2}")).expect_problem(404, not_found, "DELETE again");
    api.patch(&format!("/v1/webhooks/{id2}"), &json!({"description": "x"})).expect_problem(
        404,
        not_found,
        "PATCH after DELETE",
    );
    let left = api.get("/v1/webhooks?limit=100").expect(200, "list");
    let left: BTreeSet<String> =
        left["webhooks"].as_array().unwrap().iter().map(|w| id_of(&w["id"])).collect();
    assert_eq!(left, BTreeSet::from([id, id3]));
    assert_eq!(receiver.count(), 0, "nothing was to be delivered");
}

/// Every endpoint, each without `backlog` (which may move on its own).
fn endpoint_list(api: &Api) -> Vec<Value> {
    let mut out = Vec::new();
    let mut page = api.get("/v1/webhooks?limit=1000").expect(200, "list");
    loop {
        for w in page["webhooks"].as_array().unwrap() {
            let mut w = w.clone();
            w.as_object_mut().unwrap().remove("backlog");
            out.push(w);
        }
        if page["next"].is_null() {
            return out;
        }
        page =
            api.get(&format!("/v1/webhooks?limit=1000&after={}", id_of(&page["next"]))).expect(200, "list");
    }
}

fn bad_endpoint_input_is_refused_and_changes_nothing(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let url = receiver.url("/valid");
    let never = json!({"types": ["never.match"]});

    // The bounds themselves are accepted.
    let (ok, _) = create(
        &api,
        &json!({"url": url, "filter": never, "retry_schedule_ms": vec![100; 20], "timeout_ms": 120000,
                "disable_after_s": 1, "rate_limit_per_s": 1, "secret": whsec(3, 24),
                "headers": {"x-ok": "1", "authorization": "Bearer t"}, "content_mode": "cloudevents",
                "ordered": true, "description": "bounds", "start": "beginning"}),
    );
    create(&api, &json!({"url": url, "filter": never, "retry_schedule_ms": [], "start": {"position": 0}}));
    create(&api, &json!({"url": "https://127.0.0.1:1/tls", "filter": never, "enabled": false}));

    let before = endpoint_list(&api);
    assert_eq!(before.len(), 3);
    let with = |extra: Value| endpoint(&url, extra);
    let bad: Vec<(&str, Value)> = vec![
        ("no url", json!({"filter": never})),
        ("url not a URL", json!({"url": "not a url"})),
        ("url relative", json!({"url": "/relative/hook"})),
        ("url without host", json!({"url": "http://"})),
        ("url ftp", json!({"url": "ftp://127.0.0.1/hook"})),
        ("url file", json!({"url": "file:///etc/passwd"})),
        ("url javascript", json!({"url": "javascript:alert(1)"})),
        ("url not a string", json!({"url": 42})),
        ("header webhook-id", with(json!({"headers": {"webhook-id": "x"}}))),
        ("header Webhook-Signature", with(json!({"headers": {"Webhook-Signature": "v1,x"}}))),
        ("header webhook-timestamp", with(json!({"headers": {"webhook-timestamp": "1"}}))),
        ("header content-type", with(json!({"headers": {"content-type": "text/plain"}}))),
        ("header Content-Type", with(json!({"headers": {"Content-Type": "text/plain"}}))),
        ("header content-length", with(json!({"headers": {"content-length": "3"}}))),
        ("header host", with(json!({"headers": {"host": "evil.example"}}))),
        ("header Host", with(json!({"headers": {"Host": "evil.example"}}))),
        ("21 retry entries", with(json!({"retry_schedule_ms": vec![100; 21]}))),
        ("negative retry delay", with(json!({"retry_schedule_ms": [-5]}))),
        ("timeout_ms 120001", with(json!({"timeout_ms": 120001}))),
        ("timeout_ms a string", with(json!({"timeout_ms": "fast"}))),
        ("disable_after_s 0", with(json!({"disable_after_s": 0}))),
        ("rate_limit_per_s 0", with(json!({"rate_limit_per_s": 0}))),
        ("secret without prefix", with(json!({"secret": BASE64.encode([1u8; 32])}))),
        ("secret not base64", with(json!({"secret": "whsec_!!!not*base64!!!"}))),
        ("secret empty", with(json!({"secret": "whsec_"}))),
        ("secret of 23 bytes", with(json!({"secret": whsec(1, 23)}))),
        ("secret of 65 bytes", with(json!({"secret": whsec(1, 65)}))),
        ("content_mode xml", with(json!({"content_mode": "xml"}))),
        ("start middle", with(json!({"start": "middle"}))),
        ("type pattern with an empty segment", with(json!({"filter": {"types": ["order..placed"]}}))),
        ("filter not an object", with(json!({"filter": "order"}))),
        ("headers not an object", with(json!({"headers": ["x-a"]}))),
    ];
    for (what, body) in &bad {
        let answer = api.post("/v1/webhooks", body);
        if answer.status == 201 {
            // Leave nothing behind that could deliver somewhere.
            api.delete(&format!("/v1/webhooks/{}", id_of(&answer.json["id"])));
        }
        answer.expect_problem(400, "", &format!("create with {what}"));
    }
    api.post_raw("/v1/webhooks", "{\"url\": ").expect_problem(400, "", "malformed JSON");

    let bad_patches: Vec<(&str, Value)> = vec![
        ("url ftp", json!({"url": "ftp://127.0.0.1/hook"})),
        ("url not a URL", json!({"url": "nope"})),
        ("header host", json!({"headers": {"host": "evil.example"}})),
        ("header webhook-id", json!({"headers": {"webhook-id": "x"}})),
        ("21 retry entries", json!({"retry_schedule_ms": vec![100; 21]})),
        ("timeout_ms 120001", json!({"timeout_ms": 120001})),
        ("disable_after_s 0", json!({"disable_after_s": 0})),
        ("rate_limit_per_s 0", json!({"rate_limit_per_s": 0})),
        ("content_mode xml", json!({"content_mode": "xml"})),
    ];
    for (what, patch) in &bad_patches {
        api.patch(&format!("/v1/webhooks/{ok}"), patch).expect_problem(
            400,
            "",
            &format!("patch with {what}"),
        );
    }
    // The allow-list lets loopback through, nothing else.
    for forbidden in ["http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data/"] {
        let answer = api.post("/v1/webhooks", &json!({"url": forbidden, "filter": never}));
        if answer.status == 201 {
            api.delete(&format!("/v1/webhooks/{}", id_of(&answer.json["id"])));
        }
        answer.expect_problem(422, "bifrost:webhook-url-forbidden", forbidden);
    }

    assert_eq!(endpoint_list(&api), before, "a refused request changed what is stored");
}

// ---------------------------------------------------------------------------------------
// Delivery.

fn a_delivery_is_the_signed_integration_event(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let url = receiver.url("/deliver");
    let (ep, created) = create(
        &api,
        &endpoint(
            &url,
            json!({"filter": {"types": ["order.#"]},
                   "headers": {"x-custom": "yes", "authorization": "Bearer token-1"}}),
        ),
    );
    let secret = secret_of(&created);

    // Data with odd spacing, key order and escapes: it must arrive byte for byte.
    let data = r#"{ "zeta" :1,"alpha":  [3, 2 ,1], "nested":{"b":true ,"a":null},"price":42.50,"text":"caf\u00e9 é"}"#;
    let first = new_id();
    let body = format!(
        r#"{{"events": [{{"id": "{first}", "type": "order.submitted", "schema_version": 3,
            "aggregate_type": "order", "occurred_at": "2026-11-22T10:00:00.123456Z",
            "metadata": {{"correlation_id": "c-1", "causation_id": null, "source": "checkout",
                          "user_id": "u-9", "any_other_key": "kept"}},
            "data": {data}}}]}}"#
    );
    let appended = api.post_raw("/v1/streams/order-123/events", &body).expect(201, "append");
    let position = appended["first_position"].as_u64().unwrap();
    let (second, second_position) = append_one(&api, "order-124", "order.paid", json!({"n": 1}));
    let (unmatched, _) = append_one(&api, "customer-1", "customer.created", json!({}));

    let requests =
        receiver.wait_until("both events", DEADLINE, |rs| has_event(rs, &first) && has_event(rs, &second));
    let request = for_event(&requests, &first)[0].clone();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/deliver");
    let content_type = request.header("content-type").unwrap_or("");
    assert!(content_type.starts_with("application/json"), "content-type {content_type:?}");
    assert_eq!(request.webhook_id(), format!("{first}:{ep}"), "webhook-id is <event id>:<endpoint id>");
    let timestamp: i64 = request.header("webhook-timestamp").unwrap().parse().expect("Unix seconds");
    assert!((receiver::unix_now() - timestamp).abs() <= 60, "webhook-timestamp {timestamp} is not now");
    receiver::verify_request(&secret, &request).expect("the signature verifies with the endpoint's secret");
    assert!(receiver::verify_request(&whsec(1, 32), &request).is_err(), "any secret verifies");
    assert_eq!(receiver::signature_entries(request.header("webhook-signature").unwrap()).len(), 1);
    assert_eq!(request.header("x-custom"), Some("yes"));
    assert_eq!(request.header("authorization"), Some("Bearer token-1"));

    let stored = api.get(&format!("/v1/events/{first}")).expect(200, "the stored event");
    let event = request.json();
    assert_fields(
        &event,
        &json!({"id": first, "type": "order.submitted", "version": "3", "routing_key": "order.submitted",
                "occurred_at": stored["occurred_at"], "source": "checkout", "stream": "order-123",
                "position": position}),
        "the integration event",
    );
    assert_eq!(event["data"], serde_json::from_str::<Value>(data).unwrap());
    assert!(request.body_contains(data.as_bytes()), "data is not byte for byte: {}", request.body_text());
    assert_fields(
        &event["metadata"],
        &json!({"correlation_id": "c-1", "causation_id": null, "tenant_id": null, "user_id": "u-9",
                "any_other_key": "kept"}),
        "the integration event's metadata",
    );

    let request = for_event(&requests, &second)[0].clone();
    receiver::verify_request(&secret, &request).unwrap();
    assert_eq!(request.webhook_id(), format!("{second}:{ep}"));
    assert_fields(
        &request.json(),
        &json!({"id": second, "type": "order.paid", "version": "1", "routing_key": "order.paid",
                "source": "bifrost", "stream": "order-124", "position": second_position, "data": {"n": 1}}),
        "an event without metadata.source",
    );

    // The message and its attempt, as the API shows them.
    let m = wait_message(&api, &ep, &first, "succeeded");
    assert_eq!(m["event_id"], first.as_str());
    assert_eq!(m["attempts"], 1, "{m}");
    assert!(!m["payload"].is_null(), "{m}");
    let listed = attempts(&api, &ep, &format!("?event_id={first}"));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_fields(
        &listed[0],
        &json!({"event_id": first, "attempt": 1, "trigger": "scheduled", "status": "succeeded",
                "response_status": 200, "error": null}),
        "the attempt",
    );
    assert!(listed[0]["response_time_ms"].is_number() && listed[0]["at"].is_string(), "{}", listed[0]);
    assert!(!listed[0]["id"].is_null());
    message(&api, &ep, &unmatched).expect_problem(404, "bifrost:message-not-found", "an unmatched event");
    eventually("the backlog back to 0", || {
        let e = get_endpoint(&api, &ep);
        if e["backlog"] == 0 { Ok(()) } else { Err(e.to_string()) }
    });
    assert!(!has_event(&receiver.requests(), &unmatched), "an event outside the filter was delivered");
}

fn filters_and_start_positions_choose_the_messages(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    // Before any endpoint exists.
    let (pre1, pre1_position) = append_one(&api, "order-1", "order.submitted", json!({"pre": 1}));
    let (pre2, _) = append_one(&api, "order-2", "order.submitted", json!({"pre": 2}));

    let make = |path: &str, extra: Value| create(&api, &endpoint(&receiver.url(path), extra)).0;
    let all_new = make("/end", json!({}));
    let order_star = make("/order-star", json!({"filter": {"types": ["order.*"]}, "start": "beginning"}));
    let customers = make("/customers", json!({"filter": {"category": "customer"}}));
    let order_keys = make("/order-keys", json!({"filter": {"routing_keys": ["order.#"]}}));
    let after_pre1 = make("/after-pre1", json!({"start": {"position": pre1_position}}));

    let (submitted, _) = append_one(&api, "order-1", "order.submitted", json!({}));
    let (item, _) = append_one(&api, "order-1", "order.item.added", json!({}));
    let (customer, _) = append_one(&api, "customer-7", "customer.created", json!({}));

    let expected: Vec<(&str, &str, Vec<&String>)> = vec![
        ("/end", &all_new, vec![&submitted, &item, &customer]),
        ("/order-star", &order_star, vec![&pre1, &pre2, &submitted]),
        ("/customers", &customers, vec![&customer]),
        ("/order-keys", &order_keys, vec![&submitted, &item]),
        ("/after-pre1", &after_pre1, vec![&pre2, &submitted, &item, &customer]),
    ];
    let candidates = [&pre1, &pre2, &submitted, &item, &customer];
    let got = |requests: &[Request], path: &str| -> BTreeSet<String> {
        requests
            .iter()
            .filter(|r| r.path == path)
            .map(Request::event_id)
            .filter(|id| candidates.contains(&id))
            .collect()
    };
    receiver.wait_until("every expected message", DEADLINE, |rs| {
        expected.iter().all(|(path, _, events)| events.iter().all(|e| got(rs, path).contains(*e)))
    });
    // Nothing else comes, even a while later.
    std::thread::sleep(Duration::from_millis(1000));
    let requests = receiver.requests();
    for (path, ep, events) in &expected {
        let want: BTreeSet<String> = events.iter().map(|e| (*e).clone()).collect();
        assert_eq!(got(&requests, path), want, "endpoint {path} got other messages");
        for request in requests.iter().filter(|r| r.path == *path) {
            assert!(request.webhook_id().ends_with(&format!(":{ep}")), "{}", request.webhook_id());
        }
    }
    // An event the filter does not match is no message of the endpoint.
    message(&api, &customers, &submitted).expect_problem(404, "bifrost:message-not-found", "type filter");
    message(&api, &order_star, &item).expect_problem(
        404,
        "bifrost:message-not-found",
        "order.* vs 3 segments",
    );
    wait_message(&api, &order_star, &pre1, "succeeded");
}

fn failed_attempts_are_retried_per_schedule_then_the_message_fails(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let (doomed, later) = (new_id(), new_id());
    {
        let doomed = doomed.clone();
        receiver.respond_with(move |request, _| {
            if request.event_id() == doomed {
                Reply::status(500).body("boom: out of cheese")
            } else {
                Reply::ok()
            }
        });
    }
    // Ordered, so that the later event of the stream shows the failed one holds nothing back.
    let (ep, created) = create(
        &api,
        &endpoint(&receiver.url("/retry"), json!({"filter": {"types": ["job.#"]}, "ordered": true})),
    );
    let secret = secret_of(&created);
    append(&api, "job-1", &[(&doomed, "job.run", json!({"n": 1})), (&later, "job.run", json!({"n": 2}))]);

    let failed = wait_message(&api, &ep, &doomed, "failed");
    assert_eq!(failed["attempts"], 3, "[200, 400]: three attempts; {failed}");
    assert!(failed["last_error"].is_string(), "{failed}");
    let requests = receiver.requests();
    let tries = for_event(&requests, &doomed);
    assert_eq!(tries.len(), 3, "one request per attempt");
    for (n, t) in tries.iter().enumerate() {
        assert_eq!(t.webhook_id(), format!("{doomed}:{ep}"), "attempt {n}: the same webhook-id");
        assert_eq!(t.body, tries[0].body, "attempt {n}: the same body, byte for byte");
        receiver::verify_request(&secret, t).unwrap_or_else(|e| panic!("attempt {n}: {e:?}"));
    }
    // The schedule is kept (±20 %): a lower bound only.
    assert!(tries[1].at - tries[0].at >= Duration::from_millis(150), "retry 1 came too early");
    assert!(tries[2].at - tries[1].at >= Duration::from_millis(300), "retry 2 came too early");

    // The later event of the stream went out once the failed one was done with.
    wait_message(&api, &ep, &later, "succeeded");
    let requests = receiver.requests();
    let later_first = for_event(&requests, &later)[0].at;
    assert!(later_first > tries[2].at, "an ordered endpoint sent a later event before the failed one ended");

    // Attempts, newest first.
    let listed = attempts(&api, &ep, &format!("?event_id={doomed}"));
    assert_eq!(listed.iter().map(|a| a["attempt"].as_u64().unwrap()).collect::<Vec<_>>(), vec![3, 2, 1]);
    for a in &listed {
        assert_fields(
            a,
            &json!({"event_id": doomed, "trigger": "scheduled", "status": "failed", "response_status": 500}),
            "a failed attempt",
        );
        assert!(a["response_body"].as_str().unwrap_or("").contains("out of cheese"), "{a}");
    }
    let only_failed = attempts(&api, &ep, "?status=failed");
    assert_eq!(only_failed.len(), 3, "{only_failed:?}");
    assert!(only_failed.iter().all(|a| a["event_id"] == doomed.as_str()));
    let only_succeeded = attempts(&api, &ep, "?status=succeeded");
    assert_eq!(only_succeeded.len(), 1, "{only_succeeded:?}");
    assert_eq!(only_succeeded[0]["event_id"], later.as_str());
    // Paging with `before`.
    let page =
        api.get(&format!("/v1/webhooks/{ep}/attempts?event_id={doomed}&limit=2")).expect(200, "page 1");
    assert_eq!(page["attempts"].as_array().unwrap().len(), 2);
    let rest = api
        .get(&format!(
            "/v1/webhooks/{ep}/attempts?event_id={doomed}&limit=2&before={}",
            as_text(&page["next"])
        ))
        .expect(200, "page 2");
    assert_eq!(rest["attempts"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["attempts"][0]["attempt"], 1);
    // Messages by status.
    let failed_list = api.get(&format!("/v1/webhooks/{ep}/messages?status=failed")).expect(200, "messages");
    let failed_ids: Vec<&Value> =
        failed_list["messages"].as_array().unwrap().iter().map(|m| &m["event_id"]).collect();
    assert_eq!(failed_ids, vec![&json!(doomed)]);
    // No attempt after the last.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(for_event(&receiver.requests(), &doomed).len(), 3, "an attempt after the schedule ended");
}

fn nothing_is_lost_while_the_receiver_is_down(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let (ep, created) = create(
        &api,
        &endpoint(
            &receiver.url("/down"),
            json!({"filter": {"types": ["down.#"]},
                   "retry_schedule_ms": [200, 400, 600, 800, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000]}),
        ),
    );
    let secret = secret_of(&created);
    receiver.down();
    let mut ids = Vec::new();
    for round in 0..4 {
        for stream in 0..3 {
            ids.push(append_one(&api, &format!("down-{stream}"), "down.tick", json!({"round": round})).0);
        }
    }
    // The server tries, and fails: the receiver refuses connections.
    let failure = eventually("a failed attempt while the receiver is down", || {
        let failed = attempts(&api, &ep, "?status=failed");
        failed.first().cloned().ok_or_else(|| "no failed attempt yet".to_owned())
    });
    assert_eq!(failure["response_status"], Value::Null, "{failure}");
    assert!(!failure["error"].as_str().unwrap_or("").is_empty(), "a network error has an error: {failure}");
    assert_eq!(receiver.count(), 0);
    std::thread::sleep(Duration::from_millis(500));
    receiver.up();

    let requests = receiver.wait_until("every event after coming back", DEADLINE, |rs| {
        ids.iter().all(|id| rs.iter().any(|r| r.event_id() == *id && r.status == 200))
    });
    for request in &requests {
        receiver::verify_request(&secret, request).unwrap();
    }
    for id in &ids {
        wait_message(&api, &ep, id, "succeeded");
    }
}

fn ordered_endpoints_deliver_each_stream_in_order_under_retries(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let (a1, a2, b1) = (new_id(), new_id(), new_id());
    {
        // a1 fails twice, and keeps failing until b1 (another stream) got through.
        let (a1, b1) = (a1.clone(), b1.clone());
        receiver.respond_with(move |request, before| {
            if request.event_id() == a1 {
                let failures = before.iter().filter(|r| r.event_id() == a1).count();
                let b1_seen = before.iter().any(|r| r.event_id() == b1);
                if failures < 2 || !b1_seen {
                    return Reply::status(500);
                }
            }
            Reply::ok()
        });
    }
    let (ep, _) = create(
        &api,
        &endpoint(
            &receiver.url("/ordered"),
            json!({"ordered": true, "filter": {"types": ["seq.#"]}, "retry_schedule_ms": vec![300; 10]}),
        ),
    );
    append(&api, "seq-a", &[(&a1, "seq.step", json!({"n": 1})), (&a2, "seq.step", json!({"n": 2}))]);
    append(&api, "seq-b", &[(&b1, "seq.step", json!({"n": 1}))]);

    let settled = wait_settled(&api, &ep, &a1);
    assert_eq!(
        settled["status"], "succeeded",
        "the first event of seq-a never succeeded: was seq-b held back behind it? {settled}"
    );
    wait_message(&api, &ep, &a2, "succeeded");
    wait_message(&api, &ep, &b1, "succeeded");
    let requests = receiver.requests();
    let a1_tries = for_event(&requests, &a1);
    assert!(a1_tries.len() >= 3, "a1 was tried {} times", a1_tries.len());
    let a1_success = a1_tries.iter().find(|r| r.status == 200).expect("a1's success");
    assert!(a1_tries.iter().filter(|r| r.status == 200).count() == 1);
    let answered = a1_success.answered_at.unwrap();
    for r in for_event(&requests, &a2) {
        assert!(r.at >= answered, "a2 was attempted before a1 had succeeded");
    }
    let b1_first = for_event(&requests, &b1)[0];
    assert!(b1_first.at < a1_success.at, "seq-b waited for seq-a");
}

fn unordered_endpoints_do_not_hold_a_stream_behind_a_failing_message(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let (a1, a2) = (new_id(), new_id());
    {
        // a1 fails at least once, and until a2, the later event of its stream, got through:
        // behind a1 in per-stream order, a2 would never be sent.
        let (a1, a2) = (a1.clone(), a2.clone());
        receiver.respond_with(move |request, before| {
            let first_try = !before.iter().any(|r| r.event_id() == a1);
            let a2_delivered = before.iter().any(|r| r.event_id() == a2 && r.status == 200);
            if request.event_id() == a1 && (first_try || !a2_delivered) {
                return Reply::status(500);
            }
            Reply::ok()
        });
    }
    let (ep, _) = create(
        &api,
        &endpoint(
            &receiver.url("/unordered"),
            json!({"filter": {"types": ["loose.#"]}, "retry_schedule_ms": vec![300; 10]}),
        ),
    );
    append(&api, "loose-a", &[(&a1, "loose.step", json!({"n": 1})), (&a2, "loose.step", json!({"n": 2}))]);
    wait_message(&api, &ep, &a2, "succeeded");
    let settled = wait_settled(&api, &ep, &a1);
    assert_eq!(settled["status"], "succeeded", "{settled}");
    let requests = receiver.requests();
    let a1_tries = for_event(&requests, &a1);
    assert!(a1_tries.len() >= 2, "a1 failed first, then succeeded: {} tries", a1_tries.len());
    let a2_success = for_event(&requests, &a2).into_iter().find(|r| r.status == 200).expect("a2's success");
    let a1_success = a1_tries.iter().find(|r| r.status == 200).expect("a1's success");
    assert!(a2_success.at < a1_success.at, "a2 waited for a1 on an unordered endpoint");
}

fn gone_disables_the_endpoint_and_reenabling_resumes_where_it_stopped(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    receiver.set_default(Reply::status(410));
    let url = receiver.url("/gone");
    let (ep, created) = create(&api, &endpoint(&url, json!({"filter": {"types": ["gone.#"]}})));
    let secret = secret_of(&created);
    let (g1, _) = append_one(&api, "gone-1", "gone.thing", json!({"n": 1}));

    let disabled = eventually("the endpoint disabled as gone", || {
        let e = get_endpoint(&api, &ep);
        if e["disabled_reason"] == "gone" { Ok(e) } else { Err(e.to_string()) }
    });
    assert_eq!(disabled["enabled"], false, "{disabled}");
    assert_eq!(receiver.count(), 1, "410 is not retried");
    let m = message(&api, &ep, &g1).expect(200, "the message");
    assert_eq!(m["status"], "pending", "after a 410 the message stays pending: {m}");
    let notice = eventually("bifrost.webhook.endpoint_disabled for gone", || {
        stream_events(&api, "_bifrost-webhooks")
            .into_iter()
            .find(|e| {
                e["type"] == "bifrost.webhook.endpoint_disabled" && as_text(&e["data"]["endpoint_id"]) == ep
            })
            .ok_or_else(|| "not yet".to_owned())
    });
    assert_fields(&notice["data"], &json!({"url": url, "reason": "gone", "last_status": 410}), "the notice");

    // Disabled: nothing more is sent, and resend/recover are refused.
    let (g2, _) = append_one(&api, "gone-1", "gone.thing", json!({"n": 2}));
    let (g3, _) = append_one(&api, "gone-2", "gone.thing", json!({"n": 3}));
    api.post_empty(&format!("/v1/webhooks/{ep}/messages/{g1}/resend")).expect_problem(
        409,
        "bifrost:webhook-disabled",
        "resend on a disabled endpoint",
    );
    api.post(&format!("/v1/webhooks/{ep}/recover"), &json!({"since": "2020-01-01T00:00:00Z"}))
        .expect_problem(409, "bifrost:webhook-disabled", "recover on a disabled endpoint");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(receiver.count(), 1, "a disabled endpoint sent something");

    receiver.set_default(Reply::ok());
    let enabled =
        api.patch(&format!("/v1/webhooks/{ep}"), &json!({"enabled": true})).expect(200, "re-enable");
    assert_fields(
        &enabled,
        &json!({"enabled": true, "disabled_reason": null, "failing_since": null}),
        "the re-enabled endpoint",
    );
    let requests = receiver.wait_until("g1, g2 and g3 after re-enabling", DEADLINE, |rs| {
        [&g1, &g2, &g3].iter().all(|id| rs.iter().any(|r| r.event_id() == **id && r.status == 200))
    });
    for request in &requests {
        receiver::verify_request(&secret, request).unwrap();
    }
    let g1_tries = for_event(&requests, &g1);
    assert_eq!(g1_tries[0].body, g1_tries.last().unwrap().body, "the same message resumed");
    for id in [&g1, &g2, &g3] {
        wait_message(&api, &ep, id, "succeeded");
    }
}

fn a_410_on_the_only_attempt_does_not_use_the_message_up(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    receiver.push(Reply::status(410));
    let (ep, _) = create(
        &api,
        &endpoint(&receiver.url("/once"), json!({"filter": {"types": ["once.#"]}, "retry_schedule_ms": []})),
    );
    let (e, _) = append_one(&api, "once-1", "once.thing", json!({}));
    eventually("the endpoint disabled as gone", || {
        let got = get_endpoint(&api, &ep);
        if got["disabled_reason"] == "gone" { Ok(got) } else { Err(got.to_string()) }
    });
    let m = message(&api, &ep, &e).expect(200, "the message");
    assert_eq!(m["status"], "pending", "a 410 is not a failed attempt, even the last one: {m}");
    let waiting = get_endpoint(&api, &ep);
    assert_eq!(waiting["backlog"], 1, "the message waiting for the endpoint is in its backlog: {waiting}");
    api.patch(&format!("/v1/webhooks/{ep}"), &json!({"enabled": true})).expect(200, "re-enable");
    wait_message(&api, &ep, &e, "succeeded");
    assert_eq!(for_event(&receiver.requests(), &e).len(), 2, "one 410, then one delivery");
}

fn retry_after_on_429_delays_the_next_attempt(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    receiver.push(Reply::status(429).retry_after("1"));
    let (ep, _) = create(
        &api,
        &endpoint(
            &receiver.url("/busy"),
            json!({"filter": {"types": ["busy.#"]}, "retry_schedule_ms": [100, 100, 100]}),
        ),
    );
    let (e, _) = append_one(&api, "busy-1", "busy.call", json!({}));
    let requests =
        receiver.wait_until("the attempt after the 429", DEADLINE, |rs| for_event(rs, &e).len() >= 2);
    let tries = for_event(&requests, &e);
    assert_eq!((tries[0].status, tries[1].status), (429, 200));
    let gap = tries[1].at - tries[0].at;
    assert!(
        gap >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured: the next attempt came after {gap:?}"
    );
    let m = wait_message(&api, &ep, &e, "succeeded");
    assert_eq!(m["attempts"], 2, "{m}");
}

fn an_endpoint_failing_for_longer_than_disable_after_is_disabled(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    receiver.set_default(Reply::status(500).body("down for maintenance"));
    let url = receiver.url("/always-500");
    let (ep, _) = create(
        &api,
        &endpoint(
            &url,
            json!({"filter": {"types": ["fail.#"]}, "disable_after_s": 1, "retry_schedule_ms": vec![300; 6]}),
        ),
    );
    let (f1, _) = append_one(&api, "fail-1", "fail.now", json!({}));
    let disabled = eventually("the endpoint disabled as failing", || {
        let e = get_endpoint(&api, &ep);
        if e["disabled_reason"] == "failing" { Ok(e) } else { Err(e.to_string()) }
    });
    assert_eq!(disabled["enabled"], false, "{disabled}");
    assert!(disabled["failing_since"].is_string(), "{disabled}");
    let sent = receiver.count();
    assert!((2..=7).contains(&sent), "{sent} attempts before disabling");

    let notice = eventually("bifrost.webhook.endpoint_disabled in _bifrost-webhooks", || {
        stream_events(&api, "_bifrost-webhooks")
            .into_iter()
            .find(|e| {
                e["type"] == "bifrost.webhook.endpoint_disabled" && as_text(&e["data"]["endpoint_id"]) == ep
            })
            .ok_or_else(|| "not yet".to_owned())
    });
    let data = &notice["data"];
    assert_fields(data, &json!({"url": url, "reason": "failing", "last_status": 500}), "the notice");
    assert!(data["failing_since"].is_string(), "{data}");
    assert!(data.get("last_error").is_some(), "{data}");

    // Disabled: a new event waits, nothing is sent.
    append_one(&api, "fail-1", "fail.now", json!({}));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(receiver.count(), sent, "a disabled endpoint sent something");
    assert!(message_status(&api, &ep, &f1) != "succeeded");

    let enabled =
        api.patch(&format!("/v1/webhooks/{ep}"), &json!({"enabled": true})).expect(200, "re-enable");
    assert_fields(
        &enabled,
        &json!({"enabled": true, "disabled_reason": null, "failing_since": null}),
        "re-enabled",
    );
}

/// The current status of a message.
fn message_status(api: &Api, ep: &str, event: &str) -> String {
    let m = message(api, ep, event).expect(200, "a message");
    m["status"].as_str().unwrap_or("").to_owned()
}

fn resend_recover_and_test_send(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let failing = Arc::new(AtomicBool::new(true));
    {
        let failing = Arc::clone(&failing);
        receiver.respond_with(move |_, _| {
            if failing.load(Ordering::SeqCst) { Reply::status(500).body("nope") } else { Reply::ok() }
        });
    }
    let (ep, created) = create(
        &api,
        &endpoint(&receiver.url("/rr"), json!({"filter": {"types": ["rr.#"]}, "retry_schedule_ms": []})),
    );
    let secret = secret_of(&created);
    let ids = [new_id(), new_id(), new_id()];
    append(
        &api,
        "rr-1",
        &[
            (&ids[0], "rr.made", json!({"n": 0})),
            (&ids[1], "rr.made", json!({"n": 1})),
            (&ids[2], "rr.made", json!({"n": 2})),
        ],
    );
    for id in &ids {
        let m = wait_message(&api, &ep, id, "failed");
        assert_eq!(m["attempts"], 1, "[]: one attempt; {m}");
    }
    let since =
        api.get(&format!("/v1/events/{}", ids[0])).expect(200, "the first event")["recorded_at"].clone();
    assert!(since.is_string());
    failing.store(false, Ordering::SeqCst);

    // Recover: every failed message of the window, again, in position order.
    let recovered =
        api.post(&format!("/v1/webhooks/{ep}/recover"), &json!({ "since": since })).expect(202, "recover");
    assert_eq!(recovered["recovering"], 3, "{recovered}");
    for id in &ids {
        wait_message(&api, &ep, id, "succeeded");
    }
    let requests = receiver.requests();
    let second_tries: Vec<&Request> = ids.iter().map(|id| for_event(&requests, id)[1]).collect();
    assert!(
        second_tries[0].at <= second_tries[1].at && second_tries[1].at <= second_tries[2].at,
        "recover did not resend in position order"
    );
    for id in &ids {
        let tries = for_event(&requests, id);
        assert_eq!(tries.len(), 2);
        assert_eq!(tries[1].webhook_id(), tries[0].webhook_id(), "recover keeps the webhook-id");
        assert_eq!(tries[1].body, tries[0].body, "recover sends the same body");
        receiver::verify_request(&secret, tries[1]).unwrap();
        let listed = attempts(&api, &ep, &format!("?event_id={id}"));
        let triggers: Vec<&Value> = listed.iter().map(|a| &a["trigger"]).collect();
        assert_eq!(triggers, vec![&json!("recover"), &json!("scheduled")], "{listed:?}");
    }

    // Resend: any status, now.
    api.post_empty(&format!("/v1/webhooks/{ep}/messages/{}/resend", ids[1])).expect(202, "resend");
    let requests =
        receiver.wait_until("the resent message", DEADLINE, |rs| for_event(rs, &ids[1]).len() >= 3);
    let tries = for_event(&requests, &ids[1]);
    assert_eq!(tries[2].webhook_id(), tries[0].webhook_id(), "resend keeps the webhook-id");
    assert_eq!(tries[2].body, tries[0].body, "resend sends the same body");
    receiver::verify_request(&secret, tries[2]).unwrap();
    let newest = eventually("the resend attempt listed", || {
        let listed = attempts(&api, &ep, &format!("?event_id={}", ids[1]));
        if listed.len() == 3 { Ok(listed[0].clone()) } else { Err(format!("{listed:?}")) }
    });
    assert_fields(
        &newest,
        &json!({"trigger": "resend", "status": "succeeded", "response_status": 200}),
        "resend",
    );

    // A test send: not stored, no stream, no position.
    let tested = api
        .post(&format!("/v1/webhooks/{ep}/test"), &json!({"data": {"hello": "world"}}))
        .expect(200, "test");
    assert_fields(
        &tested["attempt"],
        &json!({"trigger": "test", "response_status": 200}),
        "the test attempt",
    );
    let requests = receiver.wait_until("the test event", DEADLINE, |rs| {
        rs.iter().any(|r| r.json()["type"] == "bifrost.webhook.test")
    });
    let test = requests.iter().find(|r| r.json()["type"] == "bifrost.webhook.test").unwrap();
    let body = test.json();
    assert_fields(
        &body,
        &json!({"stream": null, "position": null, "data": {"hello": "world"}}),
        "the test event",
    );
    let test_id = as_text(&body["id"]);
    assert!(!ids.contains(&test_id), "the test event reuses an event id");
    assert_eq!(test.webhook_id(), format!("{test_id}:{ep}"));
    receiver::verify_request(&secret, test).unwrap();
    api.get(&format!("/v1/events/{test_id}")).expect_problem(
        404,
        "bifrost:event-not-found",
        "a stored test event",
    );
    api.post(&format!("/v1/webhooks/{ep}/test"), &json!({})).expect(200, "a test without data");

    // Disabled by hand: resend and recover are refused.
    let disabled =
        api.patch(&format!("/v1/webhooks/{ep}"), &json!({"enabled": false})).expect(200, "disable");
    assert_eq!(disabled["disabled_reason"], "manual");
    let conflict = "bifrost:webhook-disabled";
    api.post_empty(&format!("/v1/webhooks/{ep}/messages/{}/resend", ids[0]))
        .expect_problem(409, conflict, "resend");
    api.post(&format!("/v1/webhooks/{ep}/recover"), &json!({ "since": since }))
        .expect_problem(409, conflict, "recover");

    // An unknown endpoint.
    let unknown = uuid::Uuid::new_v4();
    let not_found = "bifrost:webhook-not-found";
    api.post_empty(&format!("/v1/webhooks/{unknown}/messages/{}/resend", ids[0])).expect_problem(
        404,
        not_found,
        "resend, unknown endpoint",
    );
    api.post(&format!("/v1/webhooks/{unknown}/recover"), &json!({ "since": since })).expect_problem(
        404,
        not_found,
        "recover, unknown endpoint",
    );
    api.post(&format!("/v1/webhooks/{unknown}/test"), &json!({})).expect_problem(
        404,
        not_found,
        "test, unknown",
    );
    api.get(&format!("/v1/webhooks/{unknown}/attempts")).expect_problem(404, not_found, "attempts, unknown");
    api.get(&format!("/v1/webhooks/{unknown}/messages/{}", ids[0])).expect_problem(404, not_found, "message");
    api.post(&format!("/v1/webhooks/{unknown}/secret/rotate"), &json!({}))
        .expect_problem(404, not_found, "rotate");
}

fn a_rotated_secret_signs_alongside_the_previous_one(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let old = whsec(1, 24);
    let (ep, _) = create(
        &api,
        &endpoint(&receiver.url("/rot"), json!({"filter": {"types": ["rot.#"]}, "secret": old})),
    );
    let (r1, _) = append_one(&api, "rot-1", "rot.one", json!({}));
    let requests = receiver.wait_until("r1", DEADLINE, |rs| has_event(rs, &r1));
    let first = for_event(&requests, &r1)[0];
    assert_eq!(receiver::signature_entries(first.header("webhook-signature").unwrap()).len(), 1);
    assert!(receiver::nth_entry_matches(&old, first, 0));

    let rotated = api.post(&format!("/v1/webhooks/{ep}/secret/rotate"), &json!({})).expect(200, "rotate");
    let new = rotated["secret"].as_str().expect("the new secret").to_owned();
    assert!(new.starts_with("whsec_") && new != old, "{rotated}");
    assert_eq!(receiver::secret_key(&new).unwrap().len(), 32);
    assert!(rotated["previous_valid_until"].is_string(), "{rotated}");
    assert!(get_endpoint(&api, &ep).get("secret").is_none());

    let (r2, _) = append_one(&api, "rot-1", "rot.two", json!({}));
    let requests = receiver.wait_until("r2", DEADLINE, |rs| has_event(rs, &r2));
    let second = for_event(&requests, &r2)[0];
    let header = second.header("webhook-signature").unwrap();
    assert_eq!(receiver::signature_entries(header).len(), 2, "one entry per valid secret: {header}");
    assert!(receiver::nth_entry_matches(&new, second, 0), "the newest secret comes first: {header}");
    assert!(receiver::nth_entry_matches(&old, second, 1), "then the previous one: {header}");
    receiver::verify_request(&new, second).unwrap();
    receiver::verify_request(&old, second).unwrap();

    // A given secret, with a grace of its own.
    let third = whsec(5, 48);
    let rotated = api
        .post(&format!("/v1/webhooks/{ep}/secret/rotate"), &json!({"secret": third, "grace_s": 60}))
        .expect(200, "rotate to a given secret");
    assert_eq!(rotated["secret"], third.as_str());
    let (r3, _) = append_one(&api, "rot-1", "rot.three", json!({}));
    let requests = receiver.wait_until("r3", DEADLINE, |rs| has_event(rs, &r3));
    let third_request = for_event(&requests, &r3)[0];
    assert!(receiver::nth_entry_matches(&third, third_request, 0), "the newest secret comes first");
    receiver::verify_request(&new, third_request).unwrap();
    api.post(&format!("/v1/webhooks/{ep}/secret/rotate"), &json!({"secret": "nope"})).expect_problem(
        400,
        "",
        "rotate to a bad secret",
    );
}

fn cloudevents_mode_sends_a_structured_cloudevent(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let (ep, created) = create(
        &api,
        &endpoint(
            &receiver.url("/ce"),
            json!({"filter": {"types": ["ce.#"]}, "content_mode": "cloudevents"}),
        ),
    );
    let secret = secret_of(&created);
    let id = new_id();
    let data = r#"{"b" : 2,  "a":[true,false]}"#;
    let body = format!(
        r#"{{"events": [{{"id": "{id}", "type": "ce.created", "schema_version": 2,
            "occurred_at": "2026-11-22T10:00:00.123456Z",
            "metadata": {{"correlation_id": "c-9", "source": "shop", "user_id": "u-1"}}, "data": {data}}}]}}"#
    );
    let position =
        api.post_raw("/v1/streams/ce-1/events", &body).expect(201, "append")["first_position"].clone();
    let requests = receiver.wait_until("the CloudEvent", DEADLINE, |rs| has_event(rs, &id));
    let request = for_event(&requests, &id)[0];
    let content_type = request.header("content-type").unwrap_or("");
    assert!(content_type.starts_with("application/cloudevents+json"), "content-type {content_type:?}");
    receiver::verify_request(&secret, request).unwrap();
    assert_eq!(request.webhook_id(), format!("{id}:{ep}"));
    let ce = request.json();
    assert_fields(
        &ce,
        &json!({"specversion": "1.0", "id": id, "type": "ce.created", "subject": "ce-1",
                "datacontenttype": "application/json", "correlationid": "c-9", "userid": "u-1"}),
        "the CloudEvent",
    );
    assert!(!ce["source"].as_str().unwrap_or("").is_empty(), "source: {ce}");
    assert!(ce["time"].as_str().unwrap_or("").starts_with("2026-11-22T10:00:00"), "time: {ce}");
    assert_eq!(ce["data"], serde_json::from_str::<Value>(data).unwrap());
    assert!(request.body_contains(data.as_bytes()), "data is not byte for byte: {}", request.body_text());
    assert_eq!(as_text(&ce["eventversion"]), "2");
    assert_eq!(as_text(&ce["routingkey"]), "ce.created");
    assert_eq!(as_text(&ce["position"]), as_text(&position));
    for absent in ["causationid", "tenantid"] {
        assert!(ce.get(absent).is_none(), "{absent} is null and must be left out: {ce}");
    }
}

fn transforms_shape_the_message_and_a_missing_value_fails_it(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let (ep, _) = create(
        &api,
        &endpoint(
            &receiver.url("/tr"),
            json!({"transform": {"routing_key": "proj.{data.project_id}", "type": "acme.{category}.{type}",
                                 "version": "v{schema_version}",
                                 "data": {"pid": "/project_id", "first_tag": "/tags/0", "nothing": "/nope"}},
                   "filter": {"types": ["tr.#"], "routing_keys": ["proj.p1", "proj.7"]}}),
        ),
    );
    let (t1, _) = append_one(&api, "tr-1", "tr.made", json!({"project_id": "p1", "tags": ["x", "y"]}));
    let (t2, _) = append_one(&api, "tr-1", "tr.made", json!({"project_id": "p2"}));
    let (t3, _) = append_one(&api, "tr-2", "tr.made", json!({"project_id": 7}));
    let (t4, _) = append_one(&api, "tr-3", "tr.made", json!({"other": true}));
    let (t5, _) = append_one(&api, "tr-4", "tr.made", json!({"project_id": {"nested": 1}}));

    let requests = receiver.wait_until("t1 and t3", DEADLINE, |rs| has_event(rs, &t1) && has_event(rs, &t3));
    assert_fields(
        &for_event(&requests, &t1)[0].json(),
        &json!({"routing_key": "proj.p1", "type": "acme.tr.tr.made", "version": "v1",
                "data": {"pid": "p1", "first_tag": "x", "nothing": null}}),
        "the transformed message",
    );
    assert_eq!(for_event(&requests, &t3)[0].json()["routing_key"], "proj.7", "a number as JSON text");
    for missing in [&t4, &t5] {
        let m = wait_message(&api, &ep, missing, "failed");
        assert_eq!(m["attempts"], 0, "no attempt for a placeholder without a value: {m}");
        let error = m["last_error"].as_str().unwrap_or("");
        assert!(error.contains("data.project_id"), "last_error does not name the placeholder: {m}");
        assert!(attempts(&api, &ep, &format!("?event_id={missing}")).is_empty());
    }
    std::thread::sleep(Duration::from_millis(500));
    let requests = receiver.requests();
    for not_sent in [&t2, &t4, &t5] {
        assert!(!has_event(&requests, not_sent), "{not_sent} was sent");
    }
}

/// The machine's own host name when it resolves to loopback addresses only (and is not
/// `localhost`), with those addresses.
fn loopback_host_name() -> Result<(String, Vec<std::net::IpAddr>), String> {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .or_else(|| {
            let out = std::process::Command::new("hostname").output().ok()?;
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|n| !n.is_empty())
        })
        .ok_or("no host name")?;
    if name.eq_ignore_ascii_case("localhost") || name.trim_end_matches('.').eq_ignore_ascii_case("localhost")
    {
        return Err(format!("the host name is {name:?}"));
    }
    let ips: Vec<std::net::IpAddr> = (name.as_str(), 80)
        .to_socket_addrs()
        .map_err(|e| format!("{name} does not resolve: {e}"))?
        .map(|a| a.ip())
        .collect();
    if ips.is_empty() || !ips.iter().all(std::net::IpAddr::is_loopback) {
        return Err(format!("{name} resolves to {ips:?}, not only loopback"));
    }
    Ok((name, ips))
}

fn private_and_loopback_targets_are_refused_without_the_allow_list(b: &Backend) {
    let server = b.server_without_allow_list();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let never = json!({"types": ["never.match"]});
    let port = receiver.port();
    let forbidden = [
        format!("http://127.0.0.1:{port}/hook"),
        "https://127.0.0.1/".to_owned(),
        "http://127.1/".to_owned(),
        "http://2130706433/".to_owned(),
        "http://0x7f000001/".to_owned(),
        "http://localhost/".to_owned(),
        "http://LOCALHOST:8080/x".to_owned(),
        "http://localhost./".to_owned(),
        "http://[::1]/".to_owned(),
        "http://[::]/".to_owned(),
        "http://0.0.0.0/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://172.16.0.1/".to_owned(),
        "http://192.168.1.1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://224.0.0.1/".to_owned(),
        "http://255.255.255.255/".to_owned(),
        "http://[fc00::1]/".to_owned(),
        "http://[fe80::1]/".to_owned(),
        "http://[::ffff:127.0.0.1]/".to_owned(),
        "http://[::ffff:10.0.0.1]/".to_owned(),
        "http://[64:ff9b::a00:1]/".to_owned(),
        "http://[2002:a00:1::]/".to_owned(),
    ];
    let mut accepted = Vec::new();
    for url in &forbidden {
        let answer = api.post("/v1/webhooks", &json!({"url": url, "filter": never}));
        if answer.status == 201 {
            api.delete(&format!("/v1/webhooks/{}", id_of(&answer.json["id"])));
            accepted.push(url.clone());
            continue;
        }
        answer.expect_problem(422, "bifrost:webhook-url-forbidden", url);
    }
    assert!(accepted.is_empty(), "accepted at create: {accepted:?}");
    // A name that never resolves (RFC 2606) is accepted; patching it to a forbidden
    // literal is not.
    let (named, _) =
        create(&api, &json!({"url": "http://hooks.invalid/x", "filter": never, "enabled": false}));
    for url in ["http://127.0.0.1/", "http://localhost/", "http://[::1]/"] {
        api.patch(&format!("/v1/webhooks/{named}"), &json!({ "url": url })).expect_problem(
            422,
            "bifrost:webhook-url-forbidden",
            &format!("patch to {url}"),
        );
    }
    assert_eq!(get_endpoint(&api, &named)["url"], "http://hooks.invalid/x");

    // A host name that resolves to loopback passes at create and is refused at delivery.
    match loopback_host_name() {
        Err(why) => eprintln!("skipped the resolve-time case: {why}"),
        Ok((host, ips)) => {
            let (ep, _) = create(
                &api,
                &endpoint(
                    &format!("http://{host}:{port}/ssrf"),
                    json!({"filter": {"types": ["ssrf.#"]}, "retry_schedule_ms": []}),
                ),
            );
            let (s1, _) = append_one(&api, "ssrf-1", "ssrf.try", json!({}));
            let m = wait_message(&api, &ep, &s1, "failed");
            let listed = attempts(&api, &ep, &format!("?event_id={s1}"));
            assert_eq!(listed.len(), 1, "{listed:?}");
            let error = listed[0]["error"].as_str().unwrap_or("");
            assert!(
                ips.iter().any(|ip| error == format!("forbidden address {ip}")),
                "the attempt's error is not \"forbidden address <ip>\" for {ips:?}: {}; message {m}",
                listed[0]
            );
            assert_eq!(listed[0]["response_status"], Value::Null);
        }
    }
    assert_eq!(receiver.count(), 0, "a forbidden address was reached");
}

fn rate_limit_spaces_attempts_without_failing_them(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    let (ep, _) = create(
        &api,
        &endpoint(&receiver.url("/rl"), json!({"filter": {"types": ["rl.#"]}, "rate_limit_per_s": 2})),
    );
    let ids: Vec<String> = (0..6).map(|_| new_id()).collect();
    let events: Vec<(&str, &str, Value)> = ids.iter().map(|id| (id.as_str(), "rl.tick", json!({}))).collect();
    append(&api, "rl-1", &events);
    let requests = receiver.wait_until("six attempts", DEADLINE, |rs| ids.iter().all(|id| has_event(rs, id)));
    let first = requests.iter().map(|r| r.at).min().unwrap();
    let last = requests.iter().map(|r| r.at).max().unwrap();
    assert!(last - first >= Duration::from_millis(900), "6 attempts at 2/s took only {:?}", last - first);
    for id in &ids {
        let m = wait_message(&api, &ep, id, "succeeded");
        assert_eq!(m["attempts"], 1, "waiting for the rate limit counted as an attempt: {m}");
    }
}

fn webhook_metrics_are_exported(b: &Backend) {
    let server = b.server();
    let api = b.api(&server);
    let receiver = Receiver::start();
    receiver.respond_with(|request, _| if request.path == "/bad" { Reply::status(500) } else { Reply::ok() });
    let filter = json!({"filter": {"types": ["m.#"]}, "retry_schedule_ms": []});
    let (good, _) = create(&api, &endpoint(&receiver.url("/good"), filter.clone()));
    let (bad, _) = create(&api, &endpoint(&receiver.url("/bad"), filter));
    let (m1, _) = append_one(&api, "m-1", "m.x", json!({}));
    wait_message(&api, &good, &m1, "succeeded");
    wait_message(&api, &bad, &m1, "failed");
    // Gauges may be refreshed periodically: everything is awaited, then checked.
    let wanted: [(&str, &str); 9] = [
        ("bifrost_webhook_attempts_total{", "outcome=\"success\""),
        ("bifrost_webhook_attempts_total{", "outcome=\"http_error\""),
        ("bifrost_webhook_attempts_total{", "endpoint="),
        ("bifrost_webhook_deliveries_total{", "outcome=\"delivered\""),
        ("bifrost_webhook_deliveries_total{", "outcome=\"failed\""),
        ("bifrost_webhook_attempt_duration_seconds_bucket{", "endpoint="),
        ("bifrost_webhook_attempt_duration_seconds_count", ""),
        ("bifrost_webhook_backlog{", "endpoint="),
        ("bifrost_webhook_endpoints_disabled", ""),
    ];
    eventually("every webhook series in /metrics", || {
        let text = api.metrics();
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(prefix, needle)| !text.lines().any(|l| l.starts_with(prefix) && l.contains(needle)))
            .map(|(prefix, needle)| format!("{prefix}…{needle}"))
            .collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("missing {missing:?} in:\n{text}")) }
    });
}

// ---------------------------------------------------------------------------------------
// Several nodes on one PostgreSQL schema.

/// The attempts a node's `/metrics` counts for an endpoint (0 when not labelled by id).
fn attempts_counted(api: &Api, ep: &str) -> f64 {
    api.metrics()
        .lines()
        .filter(|l| l.starts_with("bifrost_webhook_attempts_total{") && l.contains(ep))
        .filter_map(|l| l.rsplit_once('}')?.1.split_whitespace().next()?.parse::<f64>().ok())
        .sum()
}

fn several_nodes_deliver_each_message_once_and_lose_nothing_when_one_is_killed(b: &Backend) {
    // Three nodes on one database, as they would run behind a load balancer.
    let mut nodes = [Some(b.server()), Some(b.server()), Some(b.server())];
    let receiver = Receiver::start();
    let apis: Vec<Api> = nodes.iter().map(|n| b.api(n.as_ref().unwrap())).collect();
    let (ep, created) = create(
        &apis[0],
        &endpoint(
            &receiver.url("/cluster"),
            json!({"filter": {"types": ["cl.#"]}, "timeout_ms": 2000,
                   "retry_schedule_ms": [200, 400, 800, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000]}),
        ),
    );
    let secret = secret_of(&created);
    for other in &apis[1..] {
        eventually("the endpoint on the other nodes", || {
            let answer = other.get(&format!("/v1/webhooks/{ep}"));
            if answer.status == 200 { Ok(()) } else { Err(answer.text) }
        });
    }

    // 200 events through every node: each delivered exactly once.
    let mut first_batch = Vec::new();
    for round in 0..40 {
        let ids: Vec<String> = (0..5).map(|_| new_id()).collect();
        let events: Vec<(&str, &str, Value)> =
            ids.iter().map(|id| (id.as_str(), "cl.tick", json!({"round": round}))).collect();
        append(&apis[round % 3], &format!("cl-{}", round % 10), &events);
        first_batch.extend(ids);
    }
    receiver.wait_until("all 200 messages", Duration::from_secs(60), |rs| {
        first_batch.iter().all(|id| rs.iter().any(|r| r.event_id() == *id))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let requests = receiver.requests();
    let mut per_webhook_id: HashMap<&str, usize> = HashMap::new();
    for request in &requests {
        *per_webhook_id.entry(request.webhook_id()).or_default() += 1;
    }
    for id in &first_batch {
        let webhook_id = format!("{id}:{ep}");
        assert_eq!(
            per_webhook_id.get(webhook_id.as_str()),
            Some(&1),
            "{webhook_id} was not sent exactly once"
        );
    }
    for request in requests.iter().take(20) {
        receiver::verify_request(&secret, request).unwrap();
    }

    // A slow receiver, a second batch, and a node killed while attempts are in flight.
    receiver.set_default(Reply::ok().delay(Duration::from_millis(300)));
    let before = receiver.count();
    let mut second_batch = Vec::new();
    for round in 0..6 {
        let ids: Vec<String> = (0..5).map(|_| new_id()).collect();
        let events: Vec<(&str, &str, Value)> =
            ids.iter().map(|id| (id.as_str(), "cl.tock", json!({"round": round}))).collect();
        append(&apis[round % 3], &format!("cl-{}", round % 3), &events);
        second_batch.extend(ids);
    }
    eventually("attempts in flight", || {
        let (count, in_flight) = (receiver.count(), receiver.in_flight());
        if count > before + 2 && in_flight > 0 {
            Ok(())
        } else {
            Err(format!("{count} requests, {in_flight} in flight"))
        }
    });
    // The node making the attempts, as its own /metrics tells (node 0 when they do not say).
    let counted: Vec<f64> = apis.iter().map(|api| attempts_counted(api, &ep)).collect();
    let victim = (0..counted.len()).max_by(|&a, &b| counted[a].total_cmp(&counted[b])).unwrap_or(0);
    eprintln!("attempts counted per node: {counted:?}; killing node {victim}");
    nodes[victim].take().unwrap().kill();
    let survivors: Vec<&Api> = (0..apis.len()).filter(|&i| i != victim).map(|i| &apis[i]).collect();
    let survivor = survivors[0];

    get_endpoint(survivor, &ep);
    receiver.wait_until("every message of the second batch after the kill", Duration::from_secs(90), |rs| {
        second_batch.iter().all(|id| rs.iter().any(|r| r.event_id() == *id))
    });
    receiver.set_default(Reply::ok());
    for id in &second_batch {
        eventually_within(
            Duration::from_secs(60),
            &format!("message {id} succeeded on the survivor"),
            &mut || {
                let m = message(survivor, &ep, id);
                if m.json["status"] == "succeeded" { Ok(()) } else { Err(m.text) }
            },
        );
    }
    // The survivors deliver new events too, appended through either of them.
    for (i, node) in survivors.iter().enumerate() {
        let (last, _) = append_one(node, &format!("cl-{i}"), "cl.last", json!({}));
        receiver.wait_until("an event appended on a survivor", DEADLINE, |rs| has_event(rs, &last));
    }
    let tested =
        survivor.post(&format!("/v1/webhooks/{ep}/test"), &json!({})).expect(200, "test on the survivor");
    assert_eq!(tested["attempt"]["response_status"], 200, "{tested}");
}

/// A tenant's endpoint delivers its tenant's events only, with the names and ids the tenant
/// appended them with; another tenant's endpoint is 404 and missing from its list.
fn tenant_endpoints_deliver_only_their_tenants_events_in_their_names(b: &Backend) {
    const ADMIN: &str = "the-admin-key-of-the-webhook-tenancy-test-0123";
    let mut args = ALLOW_LOOPBACK.to_vec();
    args.extend(["--admin-key", ADMIN]);
    let server = b.server_with(&args);
    let admin = Api { addr: server.addr.clone(), key: Some(ADMIN.to_owned()) };
    let tenant = |name: &str| {
        let body = json!({"name": name, "scopes": ["admin"], "tenant": name});
        let key = admin.post("/v1/keys", &body).expect(201, "a tenant's admin key");
        Api { addr: server.addr.clone(), key: Some(key["secret"].as_str().unwrap().to_owned()) }
    };
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let receiver = Receiver::start();
    let (acme_ep, _) =
        create(&acme, &endpoint(&receiver.url("/acme"), json!({"filter": {"category": "order"}})));
    let (globex_ep, _) = create(&globex, &endpoint(&receiver.url("/globex"), json!({})));
    let (default_ep, _) = create(&admin, &endpoint(&receiver.url("/default"), json!({})));

    // One id, three tenants: three events.
    let id = new_id();
    for api in [&acme, &globex, &admin] {
        append(api, "order-1", &[(&id, "order.placed", json!({}))]);
    }
    let (acme_payment, _) = append_one(&acme, "payment-1", "payment.taken", json!({}));
    // A last event of each tenant, after the others: once each endpoint has it, whatever
    // else it was going to get has come too.
    let markers: Vec<String> = [&acme, &globex, &admin]
        .iter()
        .map(|api| append_one(api, "order-2", "order.done", json!({})).0)
        .collect();
    let requests =
        receiver.wait_until("every marker", DEADLINE, |rs| markers.iter().all(|m| has_event(rs, m)));
    for (path, ep) in [("/acme", &acme_ep), ("/globex", &globex_ep), ("/default", &default_ep)] {
        let mine: Vec<&Request> = requests
            .iter()
            .filter(|r| r.path == path && !markers.iter().any(|m| r.webhook_id().starts_with(m.as_str())))
            .collect();
        assert_eq!(mine.len(), 1, "{path}: {:?}", mine.iter().map(|r| r.body_text()).collect::<Vec<_>>());
        let event = mine[0].json();
        assert_eq!(
            (event["id"].as_str(), event["stream"].as_str()),
            (Some(id.as_str()), Some("order-1")),
            "{path}: {event}"
        );
        assert_eq!(mine[0].webhook_id(), format!("{id}:{ep}"));
        assert!(!mine[0].body_text().contains("acme/"), "{}", mine[0].body_text());
    }
    assert!(!has_event(&requests, &acme_payment), "the category filter is the tenant's");

    // The message is found by the tenant's id; another tenant's endpoint does not exist.
    let settled = wait_settled(&acme, &acme_ep, &id);
    assert_eq!(settled["event_id"], id.as_str());
    globex.get(&format!("/v1/webhooks/{acme_ep}")).expect_problem(
        404,
        "bifrost:webhook-not-found",
        "another tenant's",
    );
    admin.get(&format!("/v1/webhooks/{acme_ep}")).expect_problem(
        404,
        "bifrost:webhook-not-found",
        "a tenant's",
    );
    globex.delete(&format!("/v1/webhooks/{acme_ep}")).expect_problem(
        404,
        "bifrost:webhook-not-found",
        "delete",
    );
    globex.get(&format!("/v1/webhooks/{acme_ep}/messages/{id}")).expect_problem(
        404,
        "bifrost:webhook-not-found",
        "another tenant's messages",
    );
    let listed = endpoint_list(&globex);
    assert_eq!(listed.iter().map(|e| id_of(&e["id"])).collect::<Vec<_>>(), [globex_ep.as_str()]);
    let listed = endpoint_list(&admin);
    assert_eq!(listed.iter().map(|e| id_of(&e["id"])).collect::<Vec<_>>(), [default_ep.as_str()]);
}
