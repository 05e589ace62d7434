//! Tenants: names and event ids per tenant, and no read path that answers another tenant's
//! data. The wrong-tenant column of the route matrix walks the server's own
//! `/openapi.json`, so a new route with a resource in its path meets it too.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use bifrost_server::ServerConfig;
use common::{Resp, TestApp};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "the-admin-key-of-the-tenancy-test-0123456789";

fn auth_on() -> ServerConfig {
    common::with_admin_key(ADMIN_KEY)
}

async fn call(app: &TestApp, method: &str, uri: &str, token: &str, body: Option<Value>) -> Resp {
    app.call_as(method, uri, token, body).await
}

/// An admin key of `tenant`.
async fn tenant_admin(app: &TestApp, tenant: &str) -> String {
    let body = json!({"name": format!("{tenant}-admin"), "scopes": ["admin"], "tenant": tenant});
    let created = call(app, "POST", "/v1/keys", ADMIN_KEY, Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    created.json()["secret"].as_str().unwrap().to_owned()
}

async fn append(app: &TestApp, token: &str, stream: &str, events: Value) -> Value {
    let resp =
        call(app, "POST", &format!("/v1/streams/{stream}/events"), token, Some(json!({"events": events})))
            .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    resp.json()
}

fn streams_of(page: &Value) -> Vec<String> {
    page["events"].as_array().unwrap().iter().map(|e| e["stream"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn two_tenants_have_their_own_streams_versions_and_event_ids() {
    let app = TestApp::memory_with(auth_on()).await;
    let acme = tenant_admin(&app, "acme").await;
    let globex = tenant_admin(&app, "globex").await;
    let id = "0190a1b2-0000-7000-8000-00000000000a";
    let a =
        append(&app, &acme, "order-1", json!([{"id": id, "type": "order.placed", "data": {"by": "acme"}}]))
            .await;
    let g = append(
        &app,
        &globex,
        "order-1",
        json!([{"id": id, "type": "order.placed", "data": {"by": "globex"}}]),
    )
    .await;
    // Same name, same id: two streams, each at version 1, two events.
    assert_eq!((a["stream"].as_str(), a["first_version"].as_u64()), (Some("order-1"), Some(1)));
    assert_eq!((g["stream"].as_str(), g["first_version"].as_u64()), (Some("order-1"), Some(1)));
    // Re-sending is idempotent within a tenant.
    let again =
        append(&app, &acme, "order-1", json!([{"id": id, "type": "order.placed", "data": {"by": "acme"}}]))
            .await;
    assert_eq!(again["first_position"], a["first_position"]);
    append(&app, ADMIN_KEY, "order-1", json!([{"type": "order.placed", "data": {"by": "default"}}])).await;
    append(&app, &acme, "payment-1", json!([{"type": "payment.taken", "data": {}}])).await;

    for (token, by) in [(&acme, "acme"), (&globex, "globex"), (&ADMIN_KEY.to_owned(), "default")] {
        let read = call(&app, "GET", "/v1/streams/order-1/events", token, None).await.json();
        let events = read["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{by}: {read}");
        assert_eq!(
            (events[0]["data"]["by"].as_str(), events[0]["stream"].as_str()),
            (Some(by), Some("order-1"))
        );
        assert_eq!(events[0]["aggregate_type"], "order");
        let info = call(&app, "GET", "/v1/streams/order-1", token, None).await.json();
        assert_eq!((info["stream"].as_str(), info["version"].as_u64()), (Some("order-1"), Some(1)), "{info}");
    }
    // Each tenant's event keeps the id it was sent with, and an id finds its tenant's event.
    for (token, by) in [(&acme, "acme"), (&globex, "globex")] {
        let event = call(&app, "GET", &format!("/v1/events/{id}"), token, None).await.json();
        assert_eq!((event["id"].as_str(), event["data"]["by"].as_str()), (Some(id), Some(by)), "{event}");
    }
    call(&app, "GET", &format!("/v1/events/{id}"), ADMIN_KEY, None)
        .await
        .assert_problem(404, "bifrost:event-not-found");

    // Lists and the log: each its own.
    let listed = call(&app, "GET", "/v1/streams", &acme, None).await.json();
    let names: Vec<&str> =
        listed["streams"].as_array().unwrap().iter().map(|s| s["stream"].as_str().unwrap()).collect();
    assert_eq!(names, ["order-1", "payment-1"], "{listed}");
    let listed = call(&app, "GET", "/v1/streams?prefix=pay", &acme, None).await.json();
    assert_eq!(listed["streams"].as_array().unwrap().len(), 1, "{listed}");
    let listed = call(&app, "GET", "/v1/streams", ADMIN_KEY, None).await.json();
    assert_eq!(listed["streams"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(
        streams_of(&call(&app, "GET", "/v1/events", &acme, None).await.json()),
        ["order-1", "payment-1"]
    );
    assert_eq!(streams_of(&call(&app, "GET", "/v1/events", &globex, None).await.json()), ["order-1"]);
    assert_eq!(streams_of(&call(&app, "GET", "/v1/events", ADMIN_KEY, None).await.json()), ["order-1"]);
    let by_category = call(&app, "GET", "/v1/events?category=payment", &acme, None).await.json();
    assert_eq!(streams_of(&by_category), ["payment-1"]);
    let by_category = call(&app, "GET", "/v1/events?category=payment", &globex, None).await.json();
    assert!(streams_of(&by_category).is_empty());

    // Another tenant's stream does not exist, and nothing names the tenant prefix.
    let missing = call(&app, "GET", "/v1/streams/payment-1/events", &globex, None).await;
    let body = missing.assert_problem(404, "bifrost:stream-not-found");
    assert!(!body.to_string().contains("acme"), "{body}");
    call(&app, "DELETE", "/v1/streams/payment-1", &globex, None)
        .await
        .assert_problem(404, "bifrost:stream-not-found");
    call(&app, "GET", "/v1/streams/payment-1", ADMIN_KEY, None)
        .await
        .assert_problem(404, "bifrost:stream-not-found");
    // A version conflict names the stream as the tenant does.
    let conflict = call(
        &app,
        "POST",
        "/v1/streams/order-1/events",
        &acme,
        Some(json!({"expected_version": 7, "events": [{"type": "order.placed", "data": {}}]})),
    )
    .await;
    let body = conflict.assert_problem(409, "bifrost:wrong-expected-version");
    assert!(!body.to_string().contains("acme/"), "{body}");
    // A tenant cannot name another's prefix; its `$` streams are its own.
    call(&app, "GET", "/v1/streams/acme%2Forder-1/events", &globex, None)
        .await
        .assert_problem(400, "bifrost:invalid-stream-name");
    let audit = call(&app, "GET", "/v1/streams/%24bifrost-audit/events", &globex, None).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text());
    assert!(audit.text().contains("globex") && !audit.text().contains("acme"), "{}", audit.text());
}

#[tokio::test]
async fn the_multi_stream_append_and_sse_stay_inside_the_tenant() {
    let app = TestApp::memory_with(auth_on()).await;
    let acme = tenant_admin(&app, "acme").await;
    let globex = tenant_admin(&app, "globex").await;
    let appends = json!({"appends": [
        {"stream": "order-1", "events": [{"type": "order.placed", "data": {}}]},
        {"stream": "stock-1", "events": [{"type": "stock.reserved", "data": {}}]},
    ]});
    let done = call(&app, "POST", "/v1/append", &acme, Some(appends)).await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", done.text());
    let results = done.json();
    let names: Vec<&str> =
        results["results"].as_array().unwrap().iter().map(|r| r["stream"].as_str().unwrap()).collect();
    assert_eq!(names, ["order-1", "stock-1"]);
    assert_eq!(
        streams_of(&call(&app, "GET", "/v1/events", &acme, None).await.json()),
        ["order-1", "stock-1"]
    );

    // SSE from the start as globex: only its own event, by its local name.
    let mut sse = app.sse(&format!("/v1/subscribe?from_position=0&access_token={globex}")).await;
    append(&app, &acme, "order-2", json!([{"type": "order.placed", "data": {"secret": "acme-only"}}])).await;
    append(&app, &globex, "order-9", json!([{"type": "order.placed", "data": {}}])).await;
    let seen = sse.read_until(|seen| seen.contains("order-9")).await;
    assert_eq!(seen.matches("event: order.placed").count(), 1, "{seen}");
    assert!(!seen.contains("acme") && !seen.contains("stock") && !seen.contains("order-1"), "{seen}");
    assert!(seen.contains("\"stream\":\"order-9\""), "{seen}");
}

#[tokio::test]
async fn consumer_groups_are_per_tenant_and_deliver_only_their_tenants_events() {
    let app = TestApp::memory_with(auth_on()).await;
    let acme = tenant_admin(&app, "acme").await;
    let globex = tenant_admin(&app, "globex").await;
    let id = "0190a1b2-0000-7000-8000-0000000000b1";
    append(&app, &acme, "order-1", json!([{"id": id, "type": "order.placed", "data": {"by": "acme"}}])).await;
    append(&app, &globex, "order-1", json!([{"type": "order.placed", "data": {"by": "globex"}}])).await;
    append(&app, ADMIN_KEY, "order-1", json!([{"type": "order.placed", "data": {"by": "default"}}])).await;
    for token in [&acme, &globex] {
        let put =
            call(&app, "PUT", "/v1/groups/billing", token, Some(json!({"filter": {"category": "order"}})))
                .await;
        assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
        assert_eq!(put.json()["group"], "billing");
    }
    let fetched = call(&app, "POST", "/v1/groups/billing/fetch?max=10", &acme, None).await.json();
    let messages = fetched["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{fetched}");
    let token = messages[0]["lease"].as_str().unwrap().to_owned();
    let event = &messages[0]["event"];
    assert_eq!(
        (event["id"].as_str(), event["stream"].as_str(), event["data"]["by"].as_str()),
        (Some(id), Some("order-1"), Some("acme"))
    );
    let fetched = call(&app, "POST", "/v1/groups/billing/fetch?max=10", &globex, None).await.json();
    let messages = fetched["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{fetched}");
    assert_eq!(messages[0]["event"]["data"]["by"], "globex");

    // Parked, its dead letter shows the tenant's id and name; discarding takes that id.
    let lease = call(&app, "POST", "/v1/groups/billing/fetch?max=10", &acme, None).await.json();
    assert!(lease["messages"].as_array().unwrap().is_empty(), "the event is leased already: {lease}");
    let nack = call(
        &app,
        "POST",
        "/v1/groups/billing/nack",
        &acme,
        Some(json!({"leases": [token], "action": "park"})),
    )
    .await;
    assert_eq!(nack.status, StatusCode::OK, "{}", nack.text());
    let letters = call(&app, "GET", "/v1/groups/billing/dead-letters", &acme, None).await.json();
    let letter = &letters["dead_letters"][0];
    assert_eq!(
        (letter["event_id"].as_str(), letter["stream"].as_str()),
        (Some(id), Some("order-1")),
        "{letters}"
    );
    assert_eq!(letter["event"]["id"], id);
    let globex_letters = call(&app, "GET", "/v1/groups/billing/dead-letters", &globex, None).await.json();
    assert!(globex_letters["dead_letters"].as_array().unwrap().is_empty(), "{globex_letters}");
    call(&app, "DELETE", &format!("/v1/groups/billing/dead-letters/{id}"), &globex, None)
        .await
        .assert_problem(404, "bifrost:dead-letter-not-found");
    let discarded = call(&app, "DELETE", &format!("/v1/groups/billing/dead-letters/{id}"), &acme, None).await;
    assert_eq!(discarded.status, StatusCode::NO_CONTENT, "{}", discarded.text());

    // Lists: each tenant its own; the default tenant none of theirs.
    for token in [&acme, &globex] {
        let groups = call(&app, "GET", "/v1/groups", token, None).await.json();
        let names: Vec<&str> =
            groups["groups"].as_array().unwrap().iter().map(|g| g["group"].as_str().unwrap()).collect();
        assert_eq!(names, ["billing"], "{groups}");
    }
    let groups = call(&app, "GET", "/v1/groups", ADMIN_KEY, None).await.json();
    assert!(groups["groups"].as_array().unwrap().is_empty(), "{groups}");
    call(&app, "GET", "/v1/groups/billing", ADMIN_KEY, None)
        .await
        .assert_problem(404, "bifrost:group-not-found");
    call(&app, "DELETE", "/v1/groups/billing", ADMIN_KEY, None)
        .await
        .assert_problem(404, "bifrost:group-not-found");
}

/// The wrong-tenant column: every route whose path names a resource of one tenant answers
/// another tenant `404` (or an empty list), never its data and never 403.
#[tokio::test]
async fn another_tenants_resources_are_404_on_every_route_that_names_one() {
    let app = TestApp::memory_with(auth_on()).await;
    let acme = tenant_admin(&app, "acme").await;
    let globex = tenant_admin(&app, "globex").await;
    let appended = append(&app, &acme, "order-1", json!([{"type": "order.placed", "data": {"n": 1}}])).await;
    let acme_event =
        call(&app, "GET", "/v1/streams/order-1/events", &acme, None).await.json()["events"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
    assert_eq!(appended["first_version"], 1);
    let put = call(&app, "PUT", "/v1/groups/billing", &acme, None).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    let schema = json!({"schema": {"type": "object"}});
    let put = call(&app, "PUT", "/v1/schemas/order.placed/1", &acme, Some(schema)).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    let bridge =
        json!({"direction": "out", "kind": "redis-stream", "url": "redis://127.0.0.1:1", "enabled": false});
    let put = call(&app, "PUT", "/v1/bridges/out", &acme, Some(bridge)).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    let keys = call(&app, "GET", "/v1/keys", &acme, None).await.json();
    let acme_key = keys["keys"][0]["id"].as_str().unwrap().to_owned();

    // Routes that create under their own name (PUT) or append are the tenant's own; the
    // real-time routes refuse tenants for now; the rest is judged here.
    let skip = |method: &str, path: &str| {
        method == "PUT"
            || path.starts_with("/v1/realtime")
            || path == "/v1/ws"
            || path == "/v1/subscribe"
            || (method == "POST" && path == "/v1/streams/{stream}/events")
            || path.starts_with("/v1/webhooks")
    };
    let doc: Value = serde_json::from_str(bifrost_server::openapi_json()).unwrap();
    let mut judged = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") || !path.contains('{') {
            continue;
        }
        for method in item.as_object().unwrap().keys().map(|m| m.to_uppercase()) {
            if !["GET", "POST", "PATCH", "DELETE"].contains(&method.as_str()) || skip(&method, path) {
                continue;
            }
            let uri = path
                .replace("{stream}", "order-1")
                .replace("{group}", "billing")
                .replace("{name}", "out")
                .replace("{type}", "order.placed")
                .replace("{version}", "1")
                .replace("{event_id}", &acme_event)
                .replace("{id}", if path.starts_with("/v1/keys") { &acme_key } else { &acme_event });
            let body = match (method.as_str(), path.as_str()) {
                ("POST", p) if p.ends_with("/ack") => Some(json!({"leases": []})),
                ("POST", p) if p.ends_with("/nack") => Some(json!({"leases": [], "action": "retry"})),
                ("POST", _) | ("PATCH", _) => Some(json!({})),
                _ => None,
            };
            let resp = call(&app, &method, &uri, &globex, body).await;
            assert_eq!(resp.status, StatusCode::NOT_FOUND, "globex {method} {uri}: {}", resp.text());
            assert!(!resp.text().contains("acme"), "{method} {uri}: {}", resp.text());
            // The owner still gets an answer that is not 404 on reads.
            if method == "GET" {
                let own = call(&app, &method, &uri, &acme, None).await;
                assert_eq!(own.status, StatusCode::OK, "acme {method} {uri}: {}", own.text());
            }
            judged += 1;
        }
    }
    assert!(judged >= 15, "only {judged} routes judged");

    // Lists: nothing of acme's.
    for list in ["/v1/streams", "/v1/events", "/v1/groups", "/v1/bridges", "/v1/keys", "/v1/schemas"] {
        let resp = call(&app, "GET", list, &globex, None).await;
        assert_eq!(resp.status, StatusCode::OK, "{list}: {}", resp.text());
        let text = resp.text();
        for acme_thing in
            [acme_event.as_str(), "order-1", "billing", "\"out\"", acme_key.as_str(), "order.placed"]
        {
            assert!(!text.contains(acme_thing), "{list} shows {acme_thing}: {text}");
        }
    }
}
