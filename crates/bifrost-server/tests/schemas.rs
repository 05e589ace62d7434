//! The schema registry: registration (new, the same again, another schema, invalid and
//! remote schemas), backward compatibility, validation on append with every violation and
//! its JSON Pointer, unregistered versions, the settings, and schemas per tenant.

#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bifrost_server::{AuthConfig, JwtConfig, JwtKey, SchemasConfig, ServerConfig};
use common::{Resp, TestApp};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

fn order_v1() -> Value {
    json!({"type": "object",
        "properties": {"total": {"type": "number", "minimum": 0}, "sku": {"type": "string"}},
        "required": ["total"]})
}

async fn put(app: &TestApp, path: &str, body: Value) -> Resp {
    app.put_json(path, body.to_string()).await
}

async fn append(app: &TestApp, stream: &str, events: Value) -> Resp {
    app.post_json(&format!("/v1/streams/{stream}/events"), json!({"events": events}).to_string()).await
}

#[tokio::test]
async fn a_schema_is_registered_once_shown_and_listed() {
    let app = TestApp::memory().await;
    let created = put(&app, "/v1/schemas/order.placed/1", json!({"schema": order_v1()})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let body = created.json();
    assert_eq!((body["type"].as_str(), body["version"].as_u64()), (Some("order.placed"), Some(1)));
    assert_eq!(body["compatibility"], "backward");
    // The same again: 200; another schema for the version: 409.
    assert_eq!(
        put(&app, "/v1/schemas/order.placed/1", json!({"schema": order_v1()})).await.status,
        StatusCode::OK
    );
    put(&app, "/v1/schemas/order.placed/1", json!({"schema": {"type": "object"}}))
        .await
        .assert_problem(409, "bifrost:schema-exists");

    let one = app.get("/v1/schemas/order.placed/1").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json()["schema"], order_v1());
    let list = app.get("/v1/schemas").await.json();
    assert_eq!(list["schemas"].as_array().unwrap().len(), 1);
    assert!(list["schemas"][0].get("schema").is_none(), "{list}");
    assert!(list["schemas"][0]["created_at"].is_string());
    app.get("/v1/schemas/order.placed/2").await.assert_problem(404, "bifrost:schema-not-found");
    app.get("/v1/schemas/order.placed/x").await.assert_problem(404, "bifrost:schema-not-found");
}

#[tokio::test]
async fn invalid_schemas_and_remote_refs_are_refused() {
    let app = TestApp::memory().await;
    for schema in [
        json!({"type": "no-such-type"}),
        json!({"minimum": "zero"}),
        json!({"$ref": "https://example.com/schemas/order.json"}),
        json!({"$ref": "file:///etc/passwd"}),
    ] {
        put(&app, "/v1/schemas/order.placed/1", json!({"schema": schema}))
            .await
            .assert_problem(400, "bifrost:invalid-schema");
    }
    let bad_version = put(&app, "/v1/schemas/order.placed/0", json!({"schema": {}})).await;
    assert_eq!(bad_version.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.get("/v1/schemas").await.json()["schemas"], json!([]));
}

#[tokio::test]
async fn appends_are_checked_and_every_violation_is_listed_with_its_pointer() {
    let app = TestApp::memory().await;
    assert_eq!(
        put(&app, "/v1/schemas/order.placed/1", json!({"schema": order_v1()})).await.status,
        StatusCode::CREATED
    );
    let ok =
        append(&app, "order-1", json!([{"type": "order.placed", "data": {"total": 5, "sku": "a"}}])).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text());
    let (before, _) = app.snapshot().await;

    let bad = append(
        &app,
        "order-1",
        json!([
            {"type": "order.placed", "data": {"total": 1}},
            {"type": "order.placed", "data": {"total": -3, "sku": 7}},
            {"type": "order.placed", "data": {"sku": "b"}},
        ]),
    )
    .await;
    let problem = bad.assert_problem(422, "bifrost:schema-violation");
    let errors = problem["errors"].as_array().unwrap();
    let at: Vec<(u64, &str)> =
        errors.iter().map(|e| (e["index"].as_u64().unwrap(), e["path"].as_str().unwrap())).collect();
    assert!(at.contains(&(1, "/total")), "{problem}");
    assert!(at.contains(&(1, "/sku")), "{problem}");
    assert!(at.contains(&(2, "")), "a missing required property is reported at the object: {problem}");
    assert!(errors.iter().all(|e| e["stream"] == "order-1" && e["message"].is_string()), "{problem}");
    let (after, _) = app.snapshot().await;
    assert_eq!(before.len(), after.len(), "a rejected append stores nothing, not even its valid events");

    // The multi-stream append names each stream.
    let multi = app
        .post_json(
            "/v1/append",
            json!({"appends": [
                {"stream": "order-2", "events": [{"type": "order.placed", "data": {"total": 1}}]},
                {"stream": "order-3", "events": [{"type": "other.thing", "data": 1},
                                                  {"type": "order.placed", "data": {"total": "x"}}]},
            ]})
            .to_string(),
        )
        .await;
    let problem = multi.assert_problem(422, "bifrost:schema-violation");
    assert_eq!(problem["errors"][0]["stream"], "order-3");
    assert_eq!(problem["errors"][0]["index"], 1);
    assert_eq!(problem["errors"][0]["path"], "/total");
    // Types without a schema pass.
    assert_eq!(
        append(&app, "misc-1", json!([{"type": "misc.x", "data": [1]}])).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn an_unregistered_version_is_refused_unless_the_server_accepts_them() {
    let app = TestApp::memory().await;
    put(&app, "/v1/schemas/order.placed/1", json!({"schema": order_v1()})).await;
    let v2 = json!([{"type": "order.placed", "schema_version": 2, "data": {}}]);
    append(&app, "order-1", v2.clone()).await.assert_problem(422, "bifrost:schema-not-registered");

    let lenient = TestApp::memory_with(ServerConfig {
        schemas: SchemasConfig { accept_unknown_versions: true, ..SchemasConfig::default() },
        ..ServerConfig::default()
    })
    .await;
    put(&lenient, "/v1/schemas/order.placed/1", json!({"schema": order_v1()})).await;
    assert_eq!(append(&lenient, "order-1", v2).await.status, StatusCode::CREATED);

    let strict = TestApp::memory_with(ServerConfig {
        schemas: SchemasConfig { required: true, ..SchemasConfig::default() },
        ..ServerConfig::default()
    })
    .await;
    append(&strict, "misc-1", json!([{"type": "misc.x", "data": 1}]))
        .await
        .assert_problem(422, "bifrost:schema-not-registered");
}

#[tokio::test]
async fn a_new_version_must_accept_what_the_highest_lower_one_accepted() {
    let app = TestApp::memory().await;
    put(&app, "/v1/schemas/order.placed/1", json!({"schema": order_v1()})).await;
    // Widening: a looser bound, a described property. (A new typed property would not be:
    // version 1 let any value through under that name.)
    let v2 = json!({"type": "object", "properties": {"total": {"type": "number"}, "sku": {"type": "string"},
        "note": {"description": "free text"}}, "required": ["total"]});
    assert_eq!(
        put(&app, "/v1/schemas/order.placed/2", json!({"schema": v2})).await.status,
        StatusCode::CREATED
    );

    let cases = [
        (
            json!({"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total", "sku"]}),
            "/required",
        ),
        (
            json!({"type": "object", "properties": {"total": {"type": "string"}}, "required": ["total"]}),
            "/properties/total/type",
        ),
        (
            json!({"type": "object", "properties": {"total": {"type": "number", "maximum": 10}}, "required": ["total"]}),
            "/properties/total/maximum",
        ),
        (
            json!({"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"], "additionalProperties": false}),
            "/additionalProperties",
        ),
    ];
    for (schema, path) in cases {
        let refused = put(&app, "/v1/schemas/order.placed/3", json!({"schema": schema})).await;
        let problem = refused.assert_problem(409, "bifrost:schema-incompatible");
        let paths: Vec<&str> =
            problem["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
        assert!(paths.contains(&path), "{path}: {problem}");
    }
    // A removed enum value, against an enum version.
    put(&app, "/v1/schemas/color.set/1", json!({"schema": {"enum": ["red", "green"]}})).await;
    put(&app, "/v1/schemas/color.set/2", json!({"schema": {"enum": ["red"]}}))
        .await
        .assert_problem(409, "bifrost:schema-incompatible");
    // `none` skips the check.
    let forced =
        put(&app, "/v1/schemas/color.set/2", json!({"schema": {"enum": ["red"]}, "compatibility": "none"}))
            .await;
    assert_eq!(forced.status, StatusCode::CREATED, "{}", forced.text());
    assert_eq!(forced.json()["compatibility"], "none");
}

#[tokio::test]
async fn schemas_belong_to_their_tenant() {
    const SECRET: &str = "the-jwt-secret-of-the-schema-test-0123456789";
    let jwt = JwtConfig { key: JwtKey::Secret(SECRET.into()), ..JwtConfig::default() };
    let app = TestApp::memory_with(ServerConfig {
        auth: AuthConfig { jwt, ..AuthConfig::default() },
        ..ServerConfig::default()
    })
    .await;
    let exp = bifrost_core::Timestamp::now().as_micros() / 1_000_000 + 600;
    let token = |tenant: Option<&str>| {
        let claims = json!({"sub": "u", "scope": "admin", "exp": exp, "tenant": tenant});
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    };
    let call = |token: String, method: &str, path: &str, body: Option<Value>| {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        app.call(request.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap())
    };
    let acme = token(Some("acme"));
    let made =
        call(acme.clone(), "PUT", "/v1/schemas/order.placed/1", Some(json!({"schema": order_v1()}))).await;
    assert_eq!(made.status, StatusCode::CREATED);
    // The default tenant neither sees it nor is checked by it.
    let other = token(None);
    assert_eq!(call(other.clone(), "GET", "/v1/schemas", None).await.json()["schemas"], json!([]));
    call(other.clone(), "GET", "/v1/schemas/order.placed/1", None)
        .await
        .assert_problem(404, "bifrost:schema-not-found");
    let events = json!({"events": [{"type": "order.placed", "data": {"total": "not a number"}}]});
    let appended = call(other, "POST", "/v1/streams/order-1/events", Some(events.clone())).await;
    assert_eq!(appended.status, StatusCode::CREATED, "{}", appended.text());
    let refused = call(acme, "POST", "/v1/streams/order-1/events", Some(events)).await;
    refused.assert_problem(422, "bifrost:schema-violation");
}
