//! Helpers shared by the HTTP tests: an app over a store, requests, problem checks and a
//! snapshot of everything stored (to prove that rejected requests changed nothing).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod ws;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use bifrost_core::{
    DurableStore, EventStore, InMemoryStore, LogFilter, RecordedEvent, StreamListQuery, StreamSummary,
};
use bifrost_server::{ServerConfig, router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;
use tower::ServiceExt;

#[derive(Clone)]
pub struct TestApp {
    pub router: Router,
    pub store: Arc<dyn EventStore>,
    pub groups: Arc<dyn bifrost_bus::GroupEngine>,
    /// Keeps a backend's directory alive for the test.
    _dir: Option<Arc<tempfile::TempDir>>,
}

impl TestApp {
    pub async fn memory() -> Self {
        Self::memory_with(ServerConfig::default()).await
    }

    pub async fn memory_with(config: ServerConfig) -> Self {
        Self::over(InMemoryStore::shared(), config, None).await
    }

    pub async fn sqlite() -> Self {
        Self::sqlite_with(ServerConfig::default()).await
    }

    pub async fn sqlite_with(config: ServerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = bifrost_sqlite::SqliteStore::open(dir.path(), bifrost_sqlite::SqliteOptions::default())
            .expect("open the sqlite store");
        Self::over(Arc::new(store), config, Some(dir)).await
    }

    /// The API over `store` and its consumer groups.
    pub async fn over(
        store: Arc<dyn DurableStore>,
        config: ServerConfig,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        Self::over_with_metrics(store, config, None, dir).await
    }

    pub async fn over_with_metrics(
        store: Arc<dyn DurableStore>,
        config: ServerConfig,
        metrics: Option<PrometheusHandle>,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        let groups = bifrost_bus::groups::open(Arc::clone(&store)).await.expect("open the groups");
        let router = router(Arc::clone(&store), Arc::clone(&groups), config, metrics);
        Self { router, store, groups, _dir: dir.map(Arc::new) }
    }

    pub async fn call(&self, request: Request<Body>) -> Resp {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Resp { status, headers, body }
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.call(Request::get(uri).body(Body::empty()).unwrap()).await
    }

    pub async fn post_json(&self, uri: &str, body: impl Into<Body>) -> Resp {
        self.call(request(Method::POST, uri, Some("application/json"), body)).await
    }

    pub async fn put_json(&self, uri: &str, body: impl Into<Body>) -> Resp {
        self.call(request(Method::PUT, uri, Some("application/json"), body)).await
    }

    /// A POST without a body or content type.
    pub async fn post_empty(&self, uri: &str) -> Resp {
        self.call(request(Method::POST, uri, None, Body::empty())).await
    }

    pub async fn delete(&self, uri: &str) -> Resp {
        self.call(Request::delete(uri).body(Body::empty()).unwrap()).await
    }

    /// A request with `Authorization: Bearer token` and, when given, a JSON body.
    pub async fn call_as(&self, method: &str, uri: &str, token: &str, body: Option<Value>) -> Resp {
        let mut builder = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(body) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        self.call(builder.body(body).unwrap()).await
    }

    /// Opens an SSE response (insisting on 200), to read with [`Sse::read_until`].
    pub async fn sse(&self, uri: &str) -> Sse {
        let response =
            self.router.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        Sse { body: response.into_body().into_data_stream(), seen: String::new() }
    }

    /// Appends and insists on 201.
    pub async fn append(&self, stream: &str, body: Value) -> Value {
        let resp = self.post_json(&format!("/v1/streams/{stream}/events"), body.to_string()).await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
        resp.json()
    }

    /// Everything the store holds: the whole log and the stream listing.
    pub async fn snapshot(&self) -> (Vec<RecordedEvent>, Vec<StreamSummary>) {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let slice = self.store.read_all(after, &LogFilter::default(), 1000).await.unwrap();
            if slice.events.is_empty() {
                break;
            }
            after = slice.events.last().unwrap().position;
            events.extend(slice.events);
        }
        let listing =
            self.store.list_streams(&StreamListQuery { limit: 1000, ..Default::default() }).await.unwrap();
        (events, listing.streams)
    }
}

/// An SSE response being read.
pub struct Sse {
    body: axum::body::BodyDataStream,
    seen: String,
}

impl Sse {
    /// Everything read so far, once `done` holds for it; fails when the stream stays quiet
    /// for 5 s.
    pub async fn read_until(&mut self, done: impl Fn(&str) -> bool) -> &str {
        while !done(&self.seen) {
            let chunk = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                futures::StreamExt::next(&mut self.body),
            )
            .await
            .unwrap_or_else(|_| panic!("the SSE stream went quiet after: {}", self.seen))
            .unwrap()
            .unwrap();
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        &self.seen
    }
}

/// Settings with auth on: `admin_key` is the admin key.
pub fn with_admin_key(admin_key: &str) -> ServerConfig {
    ServerConfig {
        auth: bifrost_server::AuthConfig { admin_key: Some(admin_key.into()), ..Default::default() },
        ..ServerConfig::default()
    }
}

pub fn request(
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    builder.body(body.into()).unwrap()
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn content_type(&self) -> &str {
        self.headers.get(header::CONTENT_TYPE).map_or("", |v| v.to_str().unwrap())
    }

    /// Asserts an RFC 9457 problem with this status and `type`; returns its body.
    pub fn assert_problem(&self, status: u16, problem_type: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(self.content_type(), "application/problem+json");
        let body = self.json();
        assert_eq!(body["type"], problem_type, "{body}");
        assert_eq!(body["status"], status, "{body}");
        assert!(body["title"].is_string(), "{body}");
        assert!(body["detail"].is_string(), "{body}");
        body
    }
}

/// A body with `n` simple events of type `order.placed`.
pub fn events_body(n: usize) -> Value {
    let events: Vec<Value> =
        (0..n).map(|i| serde_json::json!({"type": "order.placed", "data": {"n": i}})).collect();
    serde_json::json!({ "events": events })
}
