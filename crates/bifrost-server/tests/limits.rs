//! Rate limits: requests and events per caller (GCRA), 429 with Retry-After and
//! retry_after_ms, callers counted apart, probes and metrics never limited.

#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bifrost_server::{AuthConfig, LimitsConfig, ServerConfig};
use common::{Resp, TestApp};
use serde_json::json;

const ADMIN_KEY: &str = "the-admin-key-of-the-limits-test-0123456789";

fn config(limits: LimitsConfig, auth: bool) -> ServerConfig {
    let auth = if auth {
        AuthConfig { admin_key: Some(ADMIN_KEY.into()), ..AuthConfig::default() }
    } else {
        AuthConfig::default()
    };
    ServerConfig { limits, auth, ..ServerConfig::default() }
}

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> Resp {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    app.call(request.body(Body::empty()).unwrap()).await
}

async fn append(app: &TestApp, token: Option<&str>, events: usize) -> Resp {
    let events: Vec<_> = (0..events).map(|i| json!({"type": "t.x", "data": {"i": i}})).collect();
    let mut request =
        Request::post("/v1/streams/s-1/events").header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    app.call(request.body(Body::from(json!({"events": events}).to_string())).unwrap()).await
}

fn assert_limited(resp: &Resp) {
    let body = resp.assert_problem(429, "bifrost:rate-limited");
    let retry: u64 = resp.headers.get(header::RETRY_AFTER).unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "Retry-After is whole seconds, at least 1");
    let ms = body["retry_after_ms"].as_u64().unwrap();
    assert!(ms >= 1 && ms <= retry * 1000, "{body}");
}

async fn new_key(app: &TestApp) -> String {
    let resp = app
        .call(
            Request::post("/v1/keys")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN_KEY}"))
                .body(Body::from(json!({"name": "k", "scopes": ["read", "append"]}).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    resp.json()["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn requests_over_the_rate_get_429_per_credential_and_probes_never_do() {
    let app =
        TestApp::memory_with(config(LimitsConfig { requests_per_s: 1, events_per_s: 0, burst_s: 3 }, true))
            .await;
    let a = new_key(&app).await;
    let b = new_key(&app).await;
    for _ in 0..3 {
        assert_eq!(get(&app, "/v1/head", Some(&a)).await.status, StatusCode::OK);
    }
    assert_limited(&get(&app, "/v1/head", Some(&a)).await);
    // Another caller has its own budget.
    assert_eq!(get(&app, "/v1/head", Some(&b)).await.status, StatusCode::OK);
    for _ in 0..10 {
        assert_eq!(get(&app, "/healthz", None).await.status, StatusCode::OK);
        assert_ne!(get(&app, "/metrics", None).await.status, StatusCode::TOO_MANY_REQUESTS);
    }
    // A refused credential is 401, not counted against anyone.
    assert_eq!(get(&app, "/v1/head", Some("bfk_nope")).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn events_are_cells_capped_at_the_burst() {
    let app =
        TestApp::memory_with(config(LimitsConfig { requests_per_s: 0, events_per_s: 10, burst_s: 1 }, false))
            .await;
    // More events than the burst pass a fresh limiter: the cost is capped at the burst.
    assert_eq!(append(&app, None, 50).await.status, StatusCode::CREATED);
    let refused = append(&app, None, 1).await;
    assert_limited(&refused);
    // Nothing of a refused append is stored.
    let (events, _) = app.snapshot().await;
    assert_eq!(events.len(), 50);
    // Reads are not events.
    assert_eq!(get(&app, "/v1/streams/s-1/events", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn with_auth_off_callers_are_counted_by_address_and_no_limit_is_the_default() {
    let limited =
        TestApp::memory_with(config(LimitsConfig { requests_per_s: 1, events_per_s: 0, burst_s: 2 }, false))
            .await;
    assert_eq!(get(&limited, "/v1/head", None).await.status, StatusCode::OK);
    assert_eq!(get(&limited, "/v1/head", None).await.status, StatusCode::OK);
    assert_limited(&get(&limited, "/v1/head", None).await);

    let open = TestApp::memory().await;
    for _ in 0..200 {
        assert_eq!(get(&open, "/v1/head", None).await.status, StatusCode::OK);
    }
}
