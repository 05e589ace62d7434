//! Authentication and authorisation over the whole route table: the routes come from the
//! server's own `/openapi.json`, so a route added without a line in `EXPECTED` fails here,
//! and every route meets every kind of credential (none, a bad one, a revoked key, an
//! expired JWT, a key of each scope, the admin key, JWTs with scopes).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bifrost_server::{AuthConfig, JwtConfig, JwtKey, ServerConfig};
use common::{Resp, TestApp};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tower::ServiceExt;

const ADMIN_KEY: &str = "the-admin-key-of-this-test-0123456789";
const JWT_SECRET: &str = "the-jwt-secret-of-this-test-0123456789";

/// The scope table of the API contract, written from the contract (not from the server's
/// table): the scope each route needs. `None`: open.
const EXPECTED: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/v1/streams", Some("read")),
    ("GET", "/v1/streams/{stream}", Some("read")),
    ("GET", "/v1/streams/{stream}/events", Some("read")),
    ("POST", "/v1/streams/{stream}/events", Some("append")),
    ("DELETE", "/v1/streams/{stream}", Some("admin")),
    ("POST", "/v1/append", Some("append")),
    ("GET", "/v1/events", Some("read")),
    ("GET", "/v1/events/{id}", Some("read")),
    ("GET", "/v1/head", Some("read")),
    ("GET", "/v1/schemas", Some("read")),
    ("GET", "/v1/schemas/{type}/{version}", Some("read")),
    ("PUT", "/v1/schemas/{type}/{version}", Some("admin")),
    ("GET", "/v1/subscribe", Some("subscribe")),
    ("GET", "/v1/ws", Some("subscribe")),
    ("POST", "/v1/realtime/publish", Some("append")),
    ("GET", "/v1/realtime/rooms/{room}/presence", Some("subscribe")),
    ("GET", "/v1/realtime/bridges", Some("admin")),
    ("PUT", "/v1/realtime/bridges/{name}", Some("admin")),
    ("GET", "/v1/realtime/bridges/{name}", Some("admin")),
    ("DELETE", "/v1/realtime/bridges/{name}", Some("admin")),
    ("GET", "/v1/groups", Some("groups")),
    ("GET", "/v1/groups/{group}", Some("groups")),
    ("PUT", "/v1/groups/{group}", Some("admin")),
    ("DELETE", "/v1/groups/{group}", Some("admin")),
    ("POST", "/v1/groups/{group}/fetch", Some("groups")),
    ("POST", "/v1/groups/{group}/ack", Some("groups")),
    ("POST", "/v1/groups/{group}/nack", Some("groups")),
    ("GET", "/v1/groups/{group}/dead-letters", Some("groups")),
    ("POST", "/v1/groups/{group}/dead-letters/replay", Some("admin")),
    ("DELETE", "/v1/groups/{group}/dead-letters/{event_id}", Some("admin")),
    ("POST", "/v1/webhooks", Some("admin")),
    ("GET", "/v1/webhooks", Some("admin")),
    ("GET", "/v1/webhooks/{id}", Some("admin")),
    ("PATCH", "/v1/webhooks/{id}", Some("admin")),
    ("DELETE", "/v1/webhooks/{id}", Some("admin")),
    ("POST", "/v1/webhooks/{id}/secret/rotate", Some("admin")),
    ("GET", "/v1/webhooks/{id}/messages", Some("admin")),
    ("GET", "/v1/webhooks/{id}/messages/{event_id}", Some("admin")),
    ("POST", "/v1/webhooks/{id}/messages/{event_id}/resend", Some("admin")),
    ("POST", "/v1/webhooks/{id}/recover", Some("admin")),
    ("GET", "/v1/webhooks/{id}/attempts", Some("admin")),
    ("POST", "/v1/webhooks/{id}/test", Some("admin")),
    ("PUT", "/v1/bridges/{name}", Some("admin")),
    ("GET", "/v1/bridges/{name}", Some("admin")),
    ("DELETE", "/v1/bridges/{name}", Some("admin")),
    ("GET", "/v1/bridges", Some("admin")),
    ("GET", "/v1/bridges/{name}/dead-letters", Some("admin")),
    ("DELETE", "/v1/bridges/{name}/dead-letters/{id}", Some("admin")),
    ("GET", "/v1/cluster/nodes", Some("admin")),
    ("POST", "/v1/keys", Some("admin")),
    ("GET", "/v1/keys", Some("admin")),
    ("DELETE", "/v1/keys/{id}", Some("admin")),
];

const SCOPES: [&str; 5] = ["read", "append", "subscribe", "groups", "admin"];

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn jwt(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(JWT_SECRET.as_bytes())).unwrap()
}

fn auth_on() -> ServerConfig {
    let jwt = JwtConfig { key: JwtKey::Secret(JWT_SECRET.into()), ..JwtConfig::default() };
    ServerConfig {
        auth: AuthConfig { admin_key: Some(ADMIN_KEY.into()), jwt, ..AuthConfig::default() },
        ..ServerConfig::default()
    }
}

/// Every (method, path template) of the server's OpenAPI document.
fn routes() -> Vec<(String, String)> {
    let doc: Value = serde_json::from_str(bifrost_server::openapi_json()).unwrap();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                routes.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

/// A concrete URI for a template: every parameter gets a plausible value.
fn uri(template: &str) -> String {
    template
        .replace("{stream}", "order-1")
        .replace("{group}", "billing")
        .replace("{room}", "lobby")
        .replace("{name}", "out")
        .replace("{id}", "0190a1b2-0000-7000-8000-000000000001")
        .replace("{event_id}", "0190a1b2-0000-7000-8000-000000000002")
        .replace("{type}", "order.placed")
        .replace("{version}", "1")
}

async fn call(app: &TestApp, method: &str, template: &str, token: Option<&str>) -> Resp {
    app.call(build(method, template, token)).await
}

/// Only the status: an allowed `/v1/subscribe` answers a stream that never ends.
async fn status(app: &TestApp, method: &str, template: &str, token: Option<&str>) -> StatusCode {
    app.router.clone().oneshot(build(method, template, token)).await.unwrap().status()
}

fn build(method: &str, template: &str, token: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(uri(template))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Body::from("{}")).unwrap()
}

async fn key(app: &TestApp, body: Value) -> Value {
    let resp = app
        .call(
            Request::post("/v1/keys")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN_KEY}"))
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    resp.json()
}

fn expected(method: &str, path: &str) -> Option<&'static str> {
    EXPECTED
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .unwrap_or_else(|| panic!("{method} {path} is not in the scope table of this test: add it"))
        .2
}

#[tokio::test]
async fn every_route_of_the_router_is_in_the_scope_table() {
    let routes = routes();
    assert!(routes.len() >= EXPECTED.len(), "the document lists fewer routes than the table");
    for (method, path) in &routes {
        expected(method, path);
    }
}

#[tokio::test]
async fn without_a_valid_credential_every_v1_route_answers_401_with_www_authenticate() {
    let app = TestApp::memory_with(auth_on()).await;
    let revoked = key(&app, json!({"name": "gone", "scopes": ["admin"]})).await;
    let revoked_secret = revoked["secret"].as_str().unwrap().to_owned();
    let resp =
        call(&app, "DELETE", &format!("/v1/keys/{}", revoked["id"].as_str().unwrap()), Some(ADMIN_KEY)).await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text());
    let expired = jwt(&json!({"sub": "old", "scope": "admin", "exp": now() - 3600}));
    let no_exp = jwt(&json!({"sub": "forever", "scope": "admin"}));
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "x", "scope": "admin", "exp": now() + 600}),
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    let bad: [(&str, Option<&str>); 6] = [
        ("none", None),
        ("garbage", Some("garbage")),
        ("unknown key", Some("bfk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
        ("revoked key", Some(revoked_secret.as_str())),
        ("expired JWT", Some(expired.as_str())),
        ("JWT without exp", Some(no_exp.as_str())),
    ];
    let (events_before, _) = app.snapshot().await;
    for (method, path) in routes() {
        let scope = expected(&method, &path);
        for (label, token) in bad.iter().chain([("forged JWT", Some(forged.as_str()))].iter()) {
            if scope.is_none() {
                let status = status(&app, &method, &path, *token).await;
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path} is open ({label})");
                continue;
            }
            let resp = call(&app, &method, &path, *token).await;
            // The WebSocket may authenticate in its first frame: with no credential at all it
            // is let through to the upgrade (this is no upgrade request: 400).
            // Its tokens need no `exp` either (the WebSocket contract).
            if path == "/v1/ws" && (token.is_none() || *label == "JWT without exp") {
                assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{method} {path}");
                continue;
            }
            resp.assert_problem(401, "bifrost:unauthorized");
            assert_eq!(
                resp.headers.get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{method} {path} ({label})"
            );
        }
    }
    let (events_after, _) = app.snapshot().await;
    assert_eq!(events_before.len(), events_after.len(), "a refused request stored something");
}

#[tokio::test]
async fn each_scope_passes_its_routes_and_only_those() {
    let app = TestApp::memory_with(auth_on()).await;
    for scope in SCOPES {
        let key = key(&app, json!({"name": scope, "scopes": [scope]})).await;
        let secret = key["secret"].as_str().unwrap().to_owned();
        let token = jwt(&json!({"sub": "u", "scope": format!("openid {scope}"), "exp": now() + 600}));
        for (method, path) in routes() {
            let Some(needed) = expected(&method, &path) else { continue };
            for (label, credential) in [("key", &secret), ("JWT", &token)] {
                // The WebSocket contract lets a connection token with `append` (persistent
                // publishes) connect.
                let ws_publisher = path == "/v1/ws" && label == "JWT" && scope == "append";
                let allowed = scope == "admin" || scope == needed || ws_publisher;
                if allowed {
                    let status = status(&app, &method, &path, Some(credential)).await;
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{label} with {scope} on {method} {path}: {status}"
                    );
                } else {
                    let resp = call(&app, &method, &path, Some(credential)).await;
                    let body = resp.assert_problem(403, "bifrost:forbidden");
                    assert!(body["detail"].as_str().unwrap().contains(needed), "{body}");
                }
            }
        }
    }
}

#[tokio::test]
async fn the_admin_key_passes_everything_and_open_mode_needs_nothing() {
    let app = TestApp::memory_with(auth_on()).await;
    let open = TestApp::memory().await;
    for (method, path) in routes() {
        for (app, token) in [(&app, Some(ADMIN_KEY)), (&open, None)] {
            let status = status(app, &method, &path, token).await;
            assert!(
                status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                "{method} {path}: {status}"
            );
        }
    }
}

#[tokio::test]
async fn restrictions_by_prefix_and_category_decide_direct_reads_and_appends() {
    let app = TestApp::memory_with(auth_on()).await;
    let restricted = key(
        &app,
        json!({"name": "orders", "scopes": ["read", "append"],
            "restrict": {"append": {"prefixes": ["order-"]}, "read": {"categories": ["order", "invoice"]}}}),
    )
    .await;
    let secret = restricted["secret"].as_str().unwrap();
    let append = |stream: &str| {
        Request::post(format!("/v1/streams/{stream}/events"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {secret}"))
            .body(Body::from(json!({"events": [{"type": "t.x", "data": {}}]}).to_string()))
            .unwrap()
    };
    assert_eq!(app.call(append("order-1")).await.status, StatusCode::CREATED);
    app.call(append("invoice-1")).await.assert_problem(403, "bifrost:forbidden");
    let read = |stream: &str| {
        Request::get(format!("/v1/streams/{stream}/events"))
            .header(header::AUTHORIZATION, format!("Bearer {secret}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(app.call(read("order-1")).await.status, StatusCode::OK);
    // Allowed by category, and simply absent.
    assert_eq!(app.call(read("invoice-9")).await.status, StatusCode::NOT_FOUND);
    app.call(read("payment-1")).await.assert_problem(403, "bifrost:forbidden");
    // 403 before 404: the name decides, whether or not the stream exists.
    app.call(read("payment-404")).await.assert_problem(403, "bifrost:forbidden");
}

#[tokio::test]
async fn keys_show_their_secret_once_list_without_it_and_reject_bad_requests() {
    let app = TestApp::memory_with(auth_on()).await;
    let created = key(&app, json!({"name": "ci", "scopes": ["read", "read", "append"]})).await;
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("bfk_") && secret.len() > 40, "{created}");
    assert_eq!(created["scopes"], json!(["read", "append"]));
    assert_eq!(created["tenant"], Value::Null);
    assert!(created["created_at"].is_string() && created["last_used_at"].is_null(), "{created}");

    let list = call(&app, "GET", "/v1/keys", Some(ADMIN_KEY)).await;
    assert_eq!(list.status, StatusCode::OK);
    let keys = list.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], created["id"]);
    assert!(keys[0].get("secret").is_none(), "a listed key shows no secret: {}", keys[0]);
    assert!(!list.text().contains(secret));

    for bad in [
        json!({"name": "", "scopes": ["read"]}),
        json!({"name": "x", "scopes": []}),
        json!({"name": "x", "scopes": ["write"]}),
        json!({"name": "x", "scopes": ["read"], "tenant": "Not Valid"}),
        json!({"name": "x", "scopes": ["read"], "expires_at": "yesterday"}),
        json!({"name": "x", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"}),
        json!({"name": "x", "scopes": ["read"], "restrict": {"read": {}}}),
        json!({"name": "x", "scopes": ["read"], "colour": "red"}),
    ] {
        let resp = app
            .call(
                Request::post("/v1/keys")
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::AUTHORIZATION, format!("Bearer {ADMIN_KEY}"))
                    .body(Body::from(bad.to_string()))
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{bad}: {}", resp.text());
    }
    let missing =
        call(&app, "DELETE", "/v1/keys/0190a1b2-0000-7000-8000-00000000000f", Some(ADMIN_KEY)).await;
    missing.assert_problem(404, "bifrost:key-not-found");
}

#[tokio::test]
async fn an_expired_key_is_refused_and_a_tenant_admin_cannot_make_keys_for_another_tenant() {
    let app = TestApp::memory_with(auth_on()).await;
    let soon = time_in(2);
    let expiring = key(&app, json!({"name": "brief", "scopes": ["read"], "expires_at": soon})).await;
    let secret = expiring["secret"].as_str().unwrap().to_owned();
    assert_eq!(call(&app, "GET", "/v1/head", Some(&secret)).await.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    call(&app, "GET", "/v1/head", Some(&secret)).await.assert_problem(401, "bifrost:unauthorized");

    let acme_admin = key(&app, json!({"name": "acme", "scopes": ["admin"], "tenant": "acme"})).await;
    assert_eq!(acme_admin["tenant"], "acme");
    let acme = acme_admin["secret"].as_str().unwrap();
    let other = app
        .call(
            Request::post("/v1/keys")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, format!("Bearer {acme}"))
                .body(Body::from(json!({"name": "x", "scopes": ["read"], "tenant": "globex"}).to_string()))
                .unwrap(),
        )
        .await;
    other.assert_problem(403, "bifrost:forbidden");
    // Its own keys are of its tenant; the default tenant's list does not show them.
    let own = app
        .call(
            Request::post("/v1/keys")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, format!("Bearer {acme}"))
                .body(Body::from(json!({"name": "reader", "scopes": ["read"]}).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(own.status, StatusCode::CREATED);
    assert_eq!(own.json()["tenant"], "acme");
    let listed = call(&app, "GET", "/v1/keys", Some(ADMIN_KEY)).await.json();
    assert!(listed["keys"].as_array().unwrap().iter().all(|k| k["tenant"].is_null()), "{listed}");
    // Another tenant's key is 404, never 403.
    let foreign = format!("/v1/keys/{}", acme_admin["id"].as_str().unwrap());
    call(&app, "DELETE", &foreign, Some(ADMIN_KEY)).await.assert_problem(404, "bifrost:key-not-found");
}

/// One `t.x` event appended to `stream` with `token`.
async fn append_as(app: &TestApp, token: &str, stream: &str, metadata: Value) -> Resp {
    let body = json!({"events": [{"type": "t.x", "data": {}, "metadata": metadata}]});
    app.call(
        Request::post(format!("/v1/streams/{stream}/events"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::from(body.to_string()))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn appends_carry_the_credentials_tenant_and_the_jwts_sub() {
    let app = TestApp::memory_with(auth_on()).await;
    let acme = jwt(&json!({"sub": "ann", "scope": "append read", "tenant": "acme", "exp": now() + 600}));
    assert_eq!(append_as(&app, &acme, "order-1", json!({})).await.status, StatusCode::CREATED);
    // A user named by the event wins over `sub`; the tenant it names must be its own.
    let named = json!({"user_id": "bob", "tenant_id": "acme"});
    assert_eq!(append_as(&app, &acme, "order-1", named).await.status, StatusCode::CREATED);
    append_as(&app, &acme, "order-1", json!({"tenant_id": "globex"}))
        .await
        .assert_problem(403, "bifrost:forbidden");
    append_as(&app, ADMIN_KEY, "order-2", json!({"tenant_id": "acme"}))
        .await
        .assert_problem(403, "bifrost:forbidden");
    let (events, _) = app.snapshot().await;
    let stamped: Vec<(Value, Value)> = events
        .iter()
        .map(|e| {
            let metadata: Value = serde_json::from_slice(&e.metadata).unwrap();
            (metadata["tenant_id"].clone(), metadata["user_id"].clone())
        })
        .collect();
    assert_eq!(stamped, [(json!("acme"), json!("ann")), (json!("acme"), json!("bob"))]);

    // Auth off: kept as sent.
    let open = TestApp::memory().await;
    open.append("order-1", json!({"events": [{"type": "t.x", "data": {}, "metadata": {"tenant_id": "x"}}]}))
        .await;
    let (events, _) = open.snapshot().await;
    let metadata: Value = serde_json::from_slice(&events[0].metadata).unwrap();
    assert_eq!(metadata["tenant_id"], "x");
}

/// RFC 3339, `seconds` from now.
fn time_in(seconds: i64) -> String {
    let micros = bifrost_core::Timestamp::now().as_micros() + seconds * 1_000_000;
    bifrost_core::Timestamp::from_micros(micros).to_string()
}

#[tokio::test]
async fn protect_metrics_puts_metrics_behind_admin_and_probes_stay_open() {
    let mut config = auth_on();
    config.auth.protect_metrics = true;
    let app = TestApp::memory_with(config).await;
    call(&app, "GET", "/metrics", None).await.assert_problem(401, "bifrost:unauthorized");
    let reader = key(&app, json!({"name": "r", "scopes": ["read"]})).await;
    call(&app, "GET", "/metrics", reader["secret"].as_str()).await.assert_problem(403, "bifrost:forbidden");
    let metrics = status(&app, "GET", "/metrics", Some(ADMIN_KEY)).await;
    assert!(metrics != StatusCode::UNAUTHORIZED && metrics != StatusCode::FORBIDDEN, "{metrics}");
    for probe in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(status(&app, "GET", probe, None).await, StatusCode::OK, "{probe}");
    }
    // An unknown /v1 path asks for a credential before it says there is nothing there.
    call(&app, "GET", "/v1/nothing-here", None).await.assert_problem(401, "bifrost:unauthorized");
    call(&app, "GET", "/v1/nothing-here", Some(ADMIN_KEY)).await.assert_problem(404, "bifrost:not-found");
}

#[tokio::test]
async fn a_read_restriction_hides_other_streams_from_lists_the_log_and_sse() {
    let app = TestApp::memory_with(auth_on()).await;
    for stream in ["order-1", "payment-1", "order-2"] {
        assert_eq!(append_as(&app, ADMIN_KEY, stream, json!({})).await.status, StatusCode::CREATED);
    }
    let reader = key(
        &app,
        json!({"name": "orders", "scopes": ["read", "subscribe"],
        "restrict": {"read": {"categories": ["order"]}}}),
    )
    .await;
    let secret = reader["secret"].as_str().unwrap().to_owned();

    let listed = call(&app, "GET", "/v1/streams", Some(&secret)).await.json();
    let names: Vec<&str> =
        listed["streams"].as_array().unwrap().iter().map(|s| s["stream"].as_str().unwrap()).collect();
    assert_eq!(names, ["order-1", "order-2"], "{listed}");

    let log = call(&app, "GET", "/v1/events", Some(&secret)).await.json();
    let streams: Vec<&str> =
        log["events"].as_array().unwrap().iter().map(|e| e["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, ["order-1", "order-2"], "{log}");
    // Past the hidden payment and the key's audit event (a `$` stream) at 4.
    assert_eq!(log["next_position"], 4, "the page still moves past the hidden events: {log}");

    // The hidden event by id: 403, as a direct read of its stream.
    let all = call(&app, "GET", "/v1/events", Some(ADMIN_KEY)).await.json();
    let payment =
        all["events"].as_array().unwrap().iter().find(|e| e["stream"] == "payment-1").unwrap().clone();
    let by_id = format!("/v1/events/{}", payment["id"].as_str().unwrap());
    call(&app, "GET", &by_id, Some(&secret)).await.assert_problem(403, "bifrost:forbidden");
    assert_eq!(call(&app, "GET", &by_id, Some(ADMIN_KEY)).await.status, StatusCode::OK);

    // SSE from the start: the two order events, then (after a later payment and order) only
    // the order.
    let mut sse = app.sse(&format!("/v1/subscribe?from_position=0&access_token={secret}")).await;
    for stream in ["payment-2", "order-3"] {
        assert_eq!(append_as(&app, ADMIN_KEY, stream, json!({})).await.status, StatusCode::CREATED);
    }
    let seen = sse.read_until(|seen| seen.matches("event: t.x").count() >= 3).await;
    assert!(seen.contains("order-1") && seen.contains("order-2") && seen.contains("order-3"), "{seen}");
    assert!(!seen.contains("payment"), "{seen}");
}
