//! The audit stream: admin writes land in `$bifrost-audit` of the resource's tenant, with
//! who did it and what changed (no secrets); `$` streams are the server's to write and
//! `admin`'s to read, and stay out of the log unless asked for by category.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use bifrost_server::ServerConfig;
use common::{Resp, TestApp};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "the-admin-key-of-the-audit-test-0123456789";

fn auth_on() -> ServerConfig {
    common::with_admin_key(ADMIN_KEY)
}

async fn call(app: &TestApp, method: &str, uri: &str, token: &str, body: Option<Value>) -> Resp {
    app.call_as(method, uri, token, body).await
}

async fn ok(app: &TestApp, method: &str, uri: &str, token: &str, body: Option<Value>) -> Value {
    let resp = call(app, method, uri, token, body).await;
    assert!(resp.status.is_success(), "{method} {uri}: {}", resp.text());
    if resp.body.is_empty() { Value::Null } else { resp.json() }
}

async fn audit(app: &TestApp, token: &str) -> Vec<Value> {
    let page = ok(app, "GET", "/v1/streams/$bifrost-audit/events", token, None).await;
    page["events"].as_array().unwrap().clone()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn admin_writes_are_audited_with_actor_resource_and_change_and_no_secrets() {
    let app = TestApp::memory_with(auth_on()).await;
    let key =
        ok(&app, "POST", "/v1/keys", ADMIN_KEY, Some(json!({"name": "reader", "scopes": ["read"]}))).await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let secret = key["secret"].as_str().unwrap().to_owned();
    ok(&app, "PUT", "/v1/groups/billing", ADMIN_KEY, Some(json!({"filter": {"types": ["order.#"]}}))).await;
    ok(&app, "PUT", "/v1/schemas/order.placed/1", ADMIN_KEY, Some(json!({"schema": {"type": "object"}})))
        .await;
    let bridge = json!({"direction": "out", "kind": "rabbitmq", "url": "amqp://bob:hunter2@127.0.0.1:1/v", "enabled": false});
    ok(&app, "PUT", "/v1/bridges/out", ADMIN_KEY, Some(bridge)).await;
    ok(&app, "DELETE", "/v1/bridges/out", ADMIN_KEY, None).await;
    ok(
        &app,
        "POST",
        "/v1/streams/order-1/events",
        ADMIN_KEY,
        Some(json!({"events": [{"type": "t.x", "data": {}}]})),
    )
    .await;
    ok(&app, "DELETE", "/v1/streams/order-1?hard=true", ADMIN_KEY, None).await;
    ok(&app, "POST", "/v1/groups/billing/dead-letters/replay", ADMIN_KEY, None).await;
    ok(&app, "DELETE", "/v1/groups/billing", ADMIN_KEY, None).await;
    ok(&app, "DELETE", &format!("/v1/keys/{key_id}"), ADMIN_KEY, None).await;
    // A write that fails changes nothing and is not audited.
    call(&app, "DELETE", "/v1/groups/billing", ADMIN_KEY, None)
        .await
        .assert_problem(404, "bifrost:group-not-found");

    let events = audit(&app, ADMIN_KEY).await;
    assert_eq!(
        types(&events),
        [
            "bifrost.audit.key.created",
            "bifrost.audit.group.put",
            "bifrost.audit.schema.registered",
            "bifrost.audit.bridge.put",
            "bifrost.audit.bridge.deleted",
            "bifrost.audit.stream.deleted",
            "bifrost.audit.group.dead_letters_replayed",
            "bifrost.audit.group.deleted",
            "bifrost.audit.key.revoked",
        ]
    );
    let created = &events[0]["data"];
    assert_eq!(created["actor"]["kind"], "admin_key", "{created}");
    assert_eq!(created["resource"], json!({"kind": "key", "id": key_id}));
    assert_eq!(created["change"]["name"], "reader");
    assert_eq!(events[8]["data"]["resource"], json!({"kind": "key", "id": key_id}));
    assert_eq!(events[2]["data"]["resource"]["id"], "order.placed/1");
    assert_eq!(events[5]["data"]["change"], json!({"query": {"hard": "true"}}));
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        !text.contains(&secret) && !text.contains("hunter2"),
        "a secret reached the audit stream: {text}"
    );
    assert!(text.contains("amqp://bob:***@127.0.0.1:1/v"), "{text}");
    assert_eq!(events[0]["stream"], "$bifrost-audit");
    assert_eq!(events[0]["aggregate_type"], "$bifrost");
}

#[tokio::test]
async fn each_tenants_actions_go_to_its_own_audit_stream_with_the_actor() {
    let app = TestApp::memory_with(auth_on()).await;
    // The default admin makes acme's key: the key is acme's, so is the event.
    let acme = ok(
        &app,
        "POST",
        "/v1/keys",
        ADMIN_KEY,
        Some(json!({"name": "a", "scopes": ["admin"], "tenant": "acme"})),
    )
    .await;
    let acme_id = acme["id"].as_str().unwrap().to_owned();
    let acme = acme["secret"].as_str().unwrap().to_owned();
    ok(&app, "PUT", "/v1/groups/billing", &acme, None).await;

    let acme_audit = audit(&app, &acme).await;
    assert_eq!(types(&acme_audit), ["bifrost.audit.key.created", "bifrost.audit.group.put"]);
    assert_eq!(acme_audit[0]["data"]["actor"]["kind"], "admin_key");
    assert_eq!(
        acme_audit[1]["data"]["actor"],
        json!({"kind": "key", "id": acme_id, "sub": null, "ip": null})
    );
    assert_eq!(acme_audit[1]["stream"], "$bifrost-audit");
    let metadata = &acme_audit[1]["metadata"];
    assert_eq!(metadata["tenant_id"], "acme", "{metadata}");
    // The default tenant's audit holds none of acme's: here, nothing at all.
    call(&app, "GET", "/v1/streams/$bifrost-audit/events", ADMIN_KEY, None)
        .await
        .assert_problem(404, "bifrost:stream-not-found");
}

#[tokio::test]
async fn dollar_streams_are_the_servers_to_write_and_admins_to_read() {
    let app = TestApp::memory_with(auth_on()).await;
    let reader =
        ok(&app, "POST", "/v1/keys", ADMIN_KEY, Some(json!({"name": "r", "scopes": ["read", "append"]})))
            .await;
    let reader = reader["secret"].as_str().unwrap().to_owned();
    ok(
        &app,
        "POST",
        "/v1/streams/order-1/events",
        ADMIN_KEY,
        Some(json!({"events": [{"type": "t.x", "data": {}}]})),
    )
    .await;

    call(&app, "GET", "/v1/streams/$bifrost-audit/events", &reader, None)
        .await
        .assert_problem(403, "bifrost:forbidden");
    let append = json!({"events": [{"type": "t.x", "data": {}}]});
    call(&app, "POST", "/v1/streams/$bifrost-audit/events", ADMIN_KEY, Some(append.clone()))
        .await
        .assert_problem(400, "bifrost:invalid-stream-name");
    let many = json!({"appends": [{"stream": "$bifrost-audit", "events": [{"type": "t.x", "data": {}}]}]});
    let refused = call(&app, "POST", "/v1/append", ADMIN_KEY, Some(many)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text());
    call(&app, "DELETE", "/v1/streams/$bifrost-audit?hard=true", ADMIN_KEY, None)
        .await
        .assert_problem(400, "bifrost:invalid-argument");

    // The log leaves `$` streams out unless their category is asked for, and only for admin.
    let log = ok(&app, "GET", "/v1/events", ADMIN_KEY, None).await;
    let streams: Vec<&str> =
        log["events"].as_array().unwrap().iter().map(|e| e["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, ["order-1"], "{log}");
    let system = ok(&app, "GET", "/v1/events?category=$bifrost", ADMIN_KEY, None).await;
    assert_eq!(system["events"].as_array().unwrap().len(), 1, "the key's creation: {system}");
    let hidden = ok(&app, "GET", "/v1/events?category=$bifrost", &reader, None).await;
    assert!(hidden["events"].as_array().unwrap().is_empty(), "{hidden}");
    let listed = ok(&app, "GET", "/v1/streams", &reader, None).await;
    assert_eq!(listed["streams"].as_array().unwrap().len(), 1, "{listed}");
}

#[tokio::test]
async fn auth_off_audits_nothing_and_dollar_names_stay_invalid() {
    let app = TestApp::memory().await;
    let resp = app.put_json("/v1/groups/g", json!({}).to_string()).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    app.get("/v1/streams/$bifrost-audit/events").await.assert_problem(400, "bifrost:invalid-stream-name");
    let log = app.get("/v1/events").await.json();
    assert!(log["events"].as_array().unwrap().is_empty(), "{log}");
}
